#!/usr/bin/env bash
# Runs inside the test VM (hw-tests/vm/run.sh -- bash hw-tests/guest-matrix.sh [--gst V] [ARGS]):
# reloads vivid as two instances (vb2 vmalloc and dma-contig allocators), makes the FWHT
# fixture if it is missing (only vicodec can encode it), and runs the hardware matrix with
# the rows CI requires. ARGS go to fdlink-hwmatrix (e.g. --write docs/hardware-matrix.md).
#
# --gst 1.26 | 1.28: runs the matrix on that GStreamer release instead of the host's, inside
# the chroot scripts/gst-versions.sh makes and builds for (target/gst-V/debug). The guest's
# root is an overlay, so the chroot's mount points are made in the guest alone: proc, sysfs,
# the guest's /dev (dri, dma_heap, udmabuf, video*), a fresh /tmp, the repository and the
# guest's registry directory at the same paths. They are unmounted on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
GST=""
if [ "${1:-}" = --gst ]; then
  GST=${2:?--gst needs a version: 1.26 or 1.28}
  shift 2
fi
# Only the repository is written through to the host (the guest's / is a throw-away overlay,
# and a chroot has its own /tmp): refuse a --write that would be lost.
prev=""
for a in "$@"; do
  if [ "$prev" = --write ]; then
    case $(realpath -m "$a") in
      "$REPO"/*) ;;
      *) echo "guest-matrix: --write $a: the guest keeps only files in $REPO; give a path in it (e.g. target/matrix.md)" >&2; exit 2 ;;
    esac
  fi
  prev=$a
done
BIN=${FDLINK_BIN_DIR:-target/debug}
export FDLINK_IN_VM=1
REQUIRED=udmabuf,udmabuf-app-consumer,dma-heap,vgem,v4l2src-vivid-vmalloc,v4l2src-vivid-dma-contig,v4l2fwhtdec,v4l2slh264dec,v4l2slh264dec-slow-consumer,v4l2slh264dec-app-consumer,v4l2slvp8dec,v4l2src-vivid-dma-contig-kmssink,v4l2src-vivid-vmalloc-kmssink,udmabuf-glupload,v4l2fwhtdec-pool-size,v4l2slh264dec-pool-size

modprobe -r vivid 2>/dev/null || true
modprobe vivid n_devs=2 allocators=0,1
# udev does not run in the guest: wait for the nodes the kernel creates.
for _ in $(seq 50); do ls /dev/video* >/dev/null 2>&1 && break; sleep 0.1; done

if [ ! -f fixtures/fwht-640x360.gdp ]; then
  echo "guest-matrix: making the FWHT fixture with vicodec"
  bash fixtures/make-fixtures.sh fwht
fi
[ -n "$GST" ] || exec "$BIN/fdlink-hwmatrix" --require "$REQUIRED" "$@"

case "$GST" in
  1.26) codename=trixie ;;
  1.28) codename=forky ;;
  *) echo "guest-matrix: --gst $GST: no chroot for it (1.26 or 1.28)" >&2; exit 2 ;;
esac
CHROOT=${FDLINK_GST_CACHE:-/var/cache}/fdlink-gst-$codename/root
BIN=${FDLINK_BIN_DIR:-target/gst-$GST/debug}
[ -x "$CHROOT/usr/bin/gst-inspect-1.0" ] ||
  { echo "guest-matrix: no GStreamer $GST chroot at $CHROOT: run scripts/gst-versions.sh --setup-only $GST on the host" >&2; exit 2; }
for f in fdlink-hwmatrix fdlink-peer libgstfdlink.so; do
  [ -e "$BIN/$f" ] ||
    { echo "guest-matrix: $BIN/$f missing: build it with scripts/gst-versions.sh $GST on the host" >&2; exit 2; }
done

. scripts/lib/mounts.sh
trap unmount_all EXIT
mount_at "$CHROOT/proc" -t proc proc
mount_at "$CHROOT/sys" -t sysfs sysfs
mount_at "$CHROOT/dev" --rbind /dev
mount_at "$CHROOT/tmp" -t tmpfs -o mode=1777 tmpfs
bind "$REPO" "$CHROOT$REPO"
# The release's own registry, beside the guest's (run.sh's GST_REGISTRY, in the VM cache,
# read-write and kept between boots): its plugins are not the host's.
REGDIR=$(dirname "${GST_REGISTRY:-/tmp/x}")
if [ -n "${GST_REGISTRY:-}" ] && [ -d "$REGDIR" ] && [ -w "$REGDIR" ]; then
  bind "$REGDIR" "$CHROOT$REGDIR"
  # Named like run.sh's (registry-KVER.*), which setup.sh keeps when it clears old kernels' ones.
  registry=$REGDIR/registry-$(uname -r).gst-$GST.bin
else
  registry=/tmp/registry-gst-$GST.bin
fi
echo "guest-matrix: GStreamer $GST in $CHROOT, binaries in $BIN" >&2
rc=0
chroot "$CHROOT" env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  TERM="${TERM:-dumb}" FDLINK_IN_VM=1 GST_REGISTRY="$registry" \
  GST_PLUGIN_PATH="$(cd "$BIN" && pwd)" ${GST_DEBUG:+GST_DEBUG=$GST_DEBUG} \
  bash -c 'cd "$1" && shift && exec "$@"' - "$REPO" \
  "$BIN/fdlink-hwmatrix" --require "$REQUIRED" "$@" || rc=$?
exit $rc

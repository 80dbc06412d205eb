#!/bin/bash
# setup.sh [--refresh]
#
# One-command, idempotent setup of the fdlink test VM (see README.md):
#   1. host packages (apt, only when something is missing),
#   2. Debian bookworm-backports 6.12 kernel + out-of-tree vicodec/visl/vim2m/v4l2-mem2mem/vkms,
#   3. the initramfs.
# Everything lives in ${FDLINK_VM_CACHE:-/var/cache/fdlink-vm}, outside the clone, so CI can
# cache it. When the cache is complete this touches no network and takes well under a second.
# --refresh asks bookworm-backports for its current kernel and rebuilds if it changed (the
# backports mirror only keeps the newest version, so a cold setup always gets the newest).
set -euo pipefail

CACHE=${FDLINK_VM_CACHE:-/var/cache/fdlink-vm}
# Bump when the layout of the kernel tree or the module build changes: forces a rebuild.
FORMAT=2
HOST_PKGS=(qemu-system-x86 busybox-static kmod xz-utils gcc make libelf-dev bc strace)
# Test drivers Debian does not build; compiled out of tree from linux-source.
OOT_MODULES=(v4l2-mem2mem vim2m vicodec visl vkms)
# What the guest needs; each must be built in or a module (checked below).
GUEST_MODULES=(vicodec vivid vgem visl vim2m vkms udmabuf)
# Loaded by the initramfs before the root filesystem is reachable (dependencies resolved).
INITRD_MODULES=(virtio_pci 9pnet_virtio 9p overlay)
# A local mirror, or snapshot.debian.org/archive/debian/<time> to pin an older kernel (the live
# mirror keeps only the newest backports kernel).
MIRROR=${FDLINK_VM_MIRROR:-http://deb.debian.org/debian}

T0=$EPOCHREALTIME
log() {
  local us=$((${EPOCHREALTIME//[!0-9]/} - ${T0//[!0-9]/}))
  printf '[setup %4d.%ds] %s\n' $((us / 1000000)) $((us / 100000 % 10)) "$*"
}
die() { printf 'setup.sh: error: %s\n' "$*" >&2; exit 1; }

REFRESH=0
case "${1:-}" in
  --refresh) REFRESH=1 ;;
  "") ;;
  *) echo "usage: $0 [--refresh]" >&2; exit 2 ;;
esac

missing=()
for p in "${HOST_PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing host packages: ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "not root: install these first: apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  log "host packages installed"
else
  log "host packages present"
fi

mkdir -p "$CACHE"
# Parallel CI jobs (or run.sh instances) may call us at the same time.
exec 9>"$CACHE/.lock"
flock 9

STAMP=$CACHE/stamp
stamp_get() { if [ -f "$STAMP" ]; then sed -n "s/^$1=//p" "$STAMP" | head -1; fi; }

# The kernel part of the cache is complete when the stamp matches FORMAT and its files exist.
kernel_complete() {
  local kver=$1 k=$CACHE/kernel-$1 m
  [ -n "$kver" ] && [ "$(stamp_get FORMAT)" = "$FORMAT" ] || return 1
  [ -f "$k/boot/vmlinuz-$kver" ] && [ -f "$k/lib/modules/$kver/modules.dep" ] || return 1
  for m in "${OOT_MODULES[@]}"; do [ -f "$k/lib/modules/$kver/extra/$m.ko" ] || return 1; done
}

build_kernel() {
  local B=$CACHE/build
  rm -rf "$B"
  mkdir -p "$B/apt/lists/partial" "$B/apt/cache/archives/partial" "$B/debs"
  # Private apt state for bookworm-backports: the host's sources stay untouched.
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR bookworm-backports main" \
    >"$B/apt/sources.list"
  local APTO=(-o "Dir::Etc::SourceList=$B/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$B/apt/lists" -o "Dir::Cache=$B/apt/cache" -o Dir::State::status=/dev/null
    -o APT::Sandbox::User=root)
  # Snapshots are past their Release files' Valid-Until by design.
  [[ $MIRROR != *snapshot.debian.org* ]] || APTO+=(-o Acquire::Check-Valid-Until=false)
  apt-get "${APTO[@]}" -qq update
  local IMG KVER PKGVER ABI SER
  IMG=$(apt-cache "${APTO[@]}" depends linux-image-amd64 | sed -n 's/.*Depends: \(linux-image-.*-amd64\)$/\1/p' | head -1)
  [ -n "$IMG" ] || die "cannot resolve linux-image-amd64 in bookworm-backports"
  KVER=${IMG#linux-image-}                     # e.g. 6.12.95+deb12-amd64
  PKGVER=$(apt-cache "${APTO[@]}" show "$IMG" | sed -n 's/^Version: //p' | head -1)
  ABI=${KVER%-amd64}                           # e.g. 6.12.95+deb12
  SER=$(cut -d. -f1,2 <<<"$KVER")              # e.g. 6.12
  log "bookworm-backports kernel: $KVER ($PKGVER)"
  if [ "$REFRESH" = 1 ] && [ "$KVER" = "$(stamp_get KVER)" ] && kernel_complete "$KVER"; then
    log "cached kernel is current"; rm -rf "$B"; return
  fi
  (cd "$B/debs" && apt-get "${APTO[@]}" -qq download "$IMG-unsigned" "linux-headers-$KVER" \
    "linux-headers-$ABI-common" "linux-kbuild-$ABI" "linux-source-$SER=$PKGVER")
  log "downloaded $(du -sm "$B/debs" | cut -f1) MB"

  # Only these few source files are needed from the 150 MB linux-source tarball; unpacking it
  # is the slowest step, so it runs while the binary packages are unpacked.
  mkdir "$B/src" "$B/mod"
  dpkg --fsys-tarfile "$B"/debs/linux-source-"${SER}"_*.deb | tar -xO "./usr/src/linux-source-$SER.tar.xz" |
    tar -xJ -C "$B/src" --strip-components=1 --wildcards \
      "linux-source-$SER/drivers/media/test-drivers/vicodec/*" \
      "linux-source-$SER/drivers/media/test-drivers/visl/*" \
      "linux-source-$SER/drivers/media/test-drivers/vim2m.c" \
      "linux-source-$SER/drivers/media/v4l2-core/v4l2-mem2mem.c" \
      "linux-source-$SER/drivers/gpu/drm/vkms/*" &
  local srcpid=$!
  local d R=$B/root
  mkdir "$R"
  for d in "$B"/debs/linux-image-*.deb "$B"/debs/linux-headers-*.deb "$B"/debs/linux-kbuild-*.deb; do
    dpkg -x "$d" "$R"
  done
  # Packages may ship modules under /lib or /usr/lib; normalise to lib/modules.
  local MODS=$R/lib/modules/$KVER
  [ -d "$MODS" ] || { mkdir -p "$R/lib/modules"; mv "$R/usr/lib/modules/$KVER" "$MODS"; }
  local H=$R/usr/src/linux-headers-$KVER
  sed -i "s|^include /usr/src/|include $R/usr/src/|" "$H/Makefile"
  log "unpacked kernel packages"
  wait "$srcpid" || die "extracting driver sources failed"
  log "extracted driver sources"
  cp "$B"/src/drivers/media/v4l2-core/v4l2-mem2mem.c "$B"/src/drivers/media/test-drivers/vim2m.c \
    "$B"/src/drivers/media/test-drivers/vicodec/*.[ch] "$B"/src/drivers/media/test-drivers/visl/*.[ch] "$B/mod/"
  # debugfs support needs a config symbol the out-of-tree build lacks; tracepoints need a local include.
  rm -f "$B/mod/visl-debugfs.c"
  sed -i 's|^#define TRACE_INCLUDE_PATH .*|#define TRACE_INCLUDE_PATH .|' "$B"/mod/visl-trace-*.h
  cat >"$B/mod/Kbuild" <<'EOK'
obj-m += v4l2-mem2mem.o vim2m.o vicodec.o visl.o
vicodec-y := vicodec-core.o codec-fwht.o codec-v4l2-fwht.o
visl-y := visl-core.o visl-video.o visl-dec.o visl-trace-points.o
CFLAGS_visl-trace-points.o := -I$(src)
EOK
  make -s -C "$H" M="$B/mod" CONFIG_DEBUG_INFO_BTF_MODULES= -j"$(nproc)" modules
  # vkms builds with its own Makefile (its object list follows the kernel version).
  make -s -C "$H" M="$B/src/drivers/gpu/drm/vkms" CONFIG_DRM_VKMS=m CONFIG_DEBUG_INFO_BTF_MODULES= \
    -j"$(nproc)" modules
  cp "$B/src/drivers/gpu/drm/vkms/vkms.ko" "$B/mod/"
  log "built out-of-tree modules: ${OOT_MODULES[*]}"

  # Keep only what the guest needs (vmlinuz, config, modules): ~10x smaller CI cache.
  local K=$CACHE/kernel-$KVER
  rm -rf "$K.tmp" && mkdir -p "$K.tmp/boot" "$K.tmp/lib/modules"
  cp "$R/boot/vmlinuz-$KVER" "$R/boot/config-$KVER" "$K.tmp/boot/"
  mv "$MODS" "$K.tmp/lib/modules/"
  rm -f "$K.tmp/lib/modules/$KVER/build" "$K.tmp/lib/modules/$KVER/source"
  mkdir -p "$K.tmp/lib/modules/$KVER/extra"
  cp "$B"/mod/*.ko "$K.tmp/lib/modules/$KVER/extra/"
  strip --strip-debug "$K.tmp/lib/modules/$KVER/extra/"*.ko
  # Under TCG, xz-decompressing the ~20 modules the guest loads costs about a second per boot:
  # store that dependency closure uncompressed (resolved with modinfo: depmod takes 7 s).
  local f m deps q=("${GUEST_MODULES[@]}") seen=" "
  while ((${#q[@]})); do
    m=${q[0]//-/_}; q=("${q[@]:1}")
    [[ $seen == *" $m "* ]] && continue
    seen+="$m "
    f=$(find "$K.tmp/lib/modules/$KVER" -name "${m//_/[-_]}.ko*" | head -1)
    [ -n "$f" ] || continue # built in
    IFS=, read -r -a deps <<<"$(modinfo -F depends "$f")"
    q+=("${deps[@]}")
    [[ $f != *.ko.xz ]] || xz -d "$f"
  done
  depmod -a -b "$K.tmp" "$KVER"
  rm -rf "$K" && mv "$K.tmp" "$K"
  # Drop other kernel versions only now that the new one is complete.
  find "$CACHE" -maxdepth 1 \( -name 'kernel-*' -o -name 'initramfs-*' \) ! -name "kernel-$KVER" \
    ! -name "initramfs-$KVER.*" -exec rm -rf {} +
  find "$CACHE/gst-registry" -name 'registry-*' ! -name "registry-$KVER.*" -delete 2>/dev/null || true
  rm -rf "$B"
  printf 'KVER=%s\nPKGVER=%s\nFORMAT=%s\n' "$KVER" "$PKGVER" "$FORMAT" >"$STAMP.tmp"
  mv "$STAMP.tmp" "$STAMP"
  log "kernel ready: $K ($(du -sm "$K" | cut -f1) MB)"
}

KVER=$(stamp_get KVER)
if [ "$REFRESH" = 1 ] || ! kernel_complete "$KVER"; then
  build_kernel
  KVER=$(stamp_get KVER)
  kernel_complete "$KVER" || die "kernel cache incomplete after build"
else
  log "kernel cached: $KVER"
fi
K=$CACHE/kernel-$KVER
MODS=$K/lib/modules/$KVER

# How the guest gets each driver. Bool options (udmabuf) are in neither modules.builtin nor the
# module tree, so fall back to the config. run.sh modprobes only the "module" ones.
declare -A CONFIG_OF=([vicodec]=VIDEO_VICODEC [vivid]=VIDEO_VIVID [vgem]=DRM_VGEM [visl]=VIDEO_VISL
  [vim2m]=VIDEO_VIM2M [vkms]=DRM_VKMS [udmabuf]=UDMABUF)
: >"$K/fdlink-drivers.tmp"
for m in "${GUEST_MODULES[@]}"; do
  if modinfo -b "$K" -k "$KVER" -F filename "$m" >/dev/null 2>&1; then how=module
  elif grep -q "/$m\.ko" "$MODS/modules.builtin" ||
    grep -q "^CONFIG_${CONFIG_OF[$m]:-NONE}=y" "$K/boot/config-$KVER"; then how=builtin
  else die "driver $m is neither built in nor a module of $KVER"; fi
  echo "$m $how" >>"$K/fdlink-drivers.tmp"
done
grep -q '^CONFIG_DMABUF_HEAPS_SYSTEM=y' "$K/boot/config-$KVER" ||
  die "CONFIG_DMABUF_HEAPS_SYSTEM is not built in: no /dev/dma_heap/system"
echo "dma-heap-system builtin" >>"$K/fdlink-drivers.tmp"
mv "$K/fdlink-drivers.tmp" "$K/fdlink-drivers"
log "guest drivers: $(paste -sd, "$K/fdlink-drivers" | sed 's/,/, /g')"

# ---- initramfs: busybox + 9p/overlay modules + /init that switch_roots into the host's / ----
# The init script is fixed here; per-run behaviour lives in stage2.sh, which run.sh writes.
read -r -d '' INIT <<'EOI' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
fail() { echo "fdlink-vm init: $*"; poweroff -f; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do insmod "/lib/$m.ko" || fail "insmod $m"; done </lib/modules.list
P9="trans=virtio,version=9p2000.L,msize=512000"
# The host's / read-only, with a tmpfs overlay so the guest can write anywhere.
mount -t 9p -o "ro,$P9,cache=loose" hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "mount overlay"
mkdir -p /newroot/lib/modules /newroot/fdlink-ctl
mount -t 9p -o "ro,$P9,cache=loose" kmods /newroot/lib/modules || fail "mount kmods"
mount -t 9p -o "$P9" ctl /newroot/fdlink-ctl || fail "mount ctl"
# Read-write shares (work dir, GStreamer registry), one "tag path" per line.
while read -r tag path; do
  mkdir -p "/newroot$path" && mount -t 9p -o "$P9" "$tag" "/newroot$path" || fail "mount $tag on $path"
done </newroot/fdlink-ctl/mounts
for d in proc sys dev; do mount --move "/$d" "/newroot/$d"; done
# The rest of a minimal userspace setup, done here with busybox: every host binary run after
# switch_root is first read over 9p, which costs ~0.1 s each under TCG.
R=/newroot
mount -t tmpfs -o mode=755 tmpfs $R/run
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
ln -sfn /proc/self/fd $R/dev/fd
ln -sf /proc/self/fd/0 $R/dev/stdin
ln -sf /proc/self/fd/1 $R/dev/stdout
ln -sf /proc/self/fd/2 $R/dev/stderr
# hvc0/hvc1 (virtio consoles) carry the command's stdout/stderr. Raw, so "\n" stays "\n"; held
# open as fds 3/4 across switch_root, as hvc resets its settings on the last close.
exec 3>$R/dev/hvc0 4>$R/dev/hvc1 || fail "virtio consoles missing"
stty -F $R/dev/hvc0 raw -echo && stty -F $R/dev/hvc1 raw -echo || fail "stty hvc"
exec switch_root $R /fdlink-ctl/stage2.sh
EOI

mapfile -t IMODS < <(for m in "${INITRD_MODULES[@]}"; do modprobe -d "$K" -S "$KVER" --show-depends "$m"; done |
  awk '$1 == "insmod" && !seen[$2]++ { print $2 }')
[ "${#IMODS[@]}" -gt 0 ] || die "cannot resolve initramfs modules"
INITRD=$CACHE/initramfs-$KVER.gz
KEY=$( { echo "$FORMAT $KVER"; echo "$INIT"; printf '%s\n' "${IMODS[@]}"; sha256sum /bin/busybox; } | sha256sum | cut -d' ' -f1)
if [ -f "$INITRD" ] && [ "$(cat "$INITRD.key" 2>/dev/null)" = "$KEY" ]; then
  log "initramfs cached: $INITRD"
else
  T=$(mktemp -d)
  trap '[ "$BASHPID" != "$$" ] || rm -rf "$T"' EXIT # on failure; not from subshells
  mkdir -p "$T"/{bin,lib,proc,sys,dev,lower,rw,newroot}
  cp /bin/busybox "$T/bin/busybox"
  for f in "${IMODS[@]}"; do
    n=$(basename "$f"); n=${n%.xz}; n=${n%.zst}; n=${n%.ko}
    case $f in
      *.ko.xz) xz -dc "$f" >"$T/lib/$n.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$T/lib/$n.ko" ;;
      *.ko) cp "$f" "$T/lib/$n.ko" ;;
      *) die "unexpected module file $f" ;;
    esac
    echo "$n" >>"$T/lib/modules.list"
  done
  printf '%s\n' "$INIT" >"$T/init"
  chmod +x "$T/init"
  (cd "$T" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) >"$INITRD.tmp"
  mv "$INITRD.tmp" "$INITRD"
  echo "$KEY" >"$INITRD.key"
  log "initramfs built: $INITRD (modules: $(paste -sd' ' "$T/lib/modules.list"))"
  rm -rf "$T"
  trap - EXIT
fi
mkdir -p "$CACHE/gst-registry"
# run.sh compares mtimes against setup.sh to know whether to call us again.
touch "$STAMP"
log "done: kernel $KVER, cache $CACHE ($(du -sm "$CACHE" | cut -f1) MB)"

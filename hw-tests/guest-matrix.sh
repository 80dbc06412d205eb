#!/usr/bin/env bash
# Runs inside the test VM (hw-tests/vm/run.sh -- bash hw-tests/guest-matrix.sh [ARGS]):
# reloads vivid as two instances (vb2 vmalloc and dma-contig allocators), makes the FWHT
# fixture if it is missing (only vicodec can encode it), and runs the hardware matrix with
# the rows CI requires. ARGS go to fdlink-hwmatrix (e.g. --write docs/hardware-matrix.md).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FDLINK_BIN_DIR:-target/debug}
export FDLINK_IN_VM=1
REQUIRED=udmabuf,udmabuf-app-consumer,dma-heap,vgem,v4l2src-vivid-vmalloc,v4l2src-vivid-dma-contig,v4l2fwhtdec,v4l2slh264dec,v4l2slh264dec-slow-consumer,v4l2slh264dec-app-consumer,v4l2slvp8dec

modprobe -r vivid 2>/dev/null || true
modprobe vivid n_devs=2 allocators=0,1
# udev does not run in the guest: wait for the nodes the kernel creates.
for _ in $(seq 50); do ls /dev/video* >/dev/null 2>&1 && break; sleep 0.1; done

if [ ! -f fixtures/fwht-640x360.gdp ]; then
  echo "guest-matrix: making the FWHT fixture with vicodec"
  bash fixtures/make-fixtures.sh fwht
fi
exec "$BIN/fdlink-hwmatrix" --require "$REQUIRED" "$@"

#!/bin/bash
# Guest-side smoke test of the fdlink VM; run it through the harness:
#   hw-tests/vm/run.sh -- bash hw-tests/vm/smoke.sh
# Checks that the kernel dmabuf sources, the V4L2 test drivers and the GStreamer V4L2 elements
# the tests rely on are all there; exits 1 naming whatever is missing.
set -euo pipefail

missing=()
ok() { printf 'ok      %s\n' "$*"; }
bad() { printf 'MISSING %s\n' "$*"; missing+=("$1"); }
uptime_s() { cut -d' ' -f1 /proc/uptime; }

echo "kernel $(uname -r), guest uptime $(uptime_s) s"

for dev in /dev/udmabuf /dev/dma_heap/system; do
  if [ -c "$dev" ]; then ok "$dev"; else bad "$dev"; fi
done

# vgem's and vkms's cards have no bound driver in sysfs; each lives under its platform device.
# Tests find each card by that path, not by number (vgem is card0 and vkms card1 today).
for drm in vgem vkms; do
  cards=()
  for c in /sys/class/drm/card[0-9]*; do
    # card1-Virtual-1 and the like are vkms's connectors, not cards.
    [[ ${c##*/} =~ ^card[0-9]+$ && $(readlink -f "$c") == */platform/$drm/* ]] && cards+=("/dev/dri/${c##*/}")
  done
  if [ ${#cards[@]} -gt 0 ] && [ -c "${cards[0]}" ]; then ok "$drm: ${cards[*]}"; else bad "$drm /dev/dri/card*"; fi
done

# /dev/video* nodes grouped by the V4L2 driver behind them.
declare -A nodes=()
for v in /sys/class/video4linux/video*; do
  [ -e "$v/device/driver" ] || continue
  drv=$(basename "$(readlink -f "$v/device/driver")")
  nodes[$drv]+=" /dev/${v##*/}($(<"$v/name"))"
done
for drv in vivid vicodec visl vim2m; do
  if [ -n "${nodes[$drv]:-}" ]; then ok "$drv:${nodes[$drv]}"; else bad "$drv /dev/video*"; fi
done

# The first scan in a fresh GST_REGISTRY takes tens of seconds under TCG; run.sh keeps it
# in the host cache so later boots only rescan what changed.
reg=${GST_REGISTRY:-}
state="fresh"
[ -n "$reg" ] && [ -s "$reg" ] && state="existing"
t0=$EPOCHREALTIME
if ! elements=$(gst-inspect-1.0 2>/dev/null); then
  bad "gst-inspect-1.0 (failed to run)"
  elements=""
fi
t1=$EPOCHREALTIME
printf 'gst-inspect-1.0 took %s s with %s registry %s\n' \
  "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')" "$state" "${reg:-(default)}"
for el in v4l2fwhtdec v4l2slh264dec v4l2slvp8dec kmssink; do
  if grep -q "^[^:]*: *$el:" <<<"$elements"; then ok "gst element $el"; else bad "gst element $el"; fi
done
echo "v4l2 elements: $(grep -o ' v4l2[a-z0-9]*:' <<<"$elements" | tr -d ' :' | sort | paste -sd' ' || true)"

if [ ${#missing[@]} -gt 0 ]; then
  echo "smoke: FAILED, missing: ${missing[*]}" >&2
  exit 1
fi
echo "smoke: all checks passed (guest uptime $(uptime_s) s)"

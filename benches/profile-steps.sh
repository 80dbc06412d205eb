#!/usr/bin/env bash
# Where each side's CPU per frame goes, step by step, in the comparison's latency run: one
# producer/consumer pair of the compare harness per transport (live videotestsrc at 30 fps,
# 640x480 NV12 by default), both processes under `perf record -e cpu-clock -F 20000` (no call
# graphs), then benches/profile-steps.py splits each side's CPU per frame (the harness's own
# figure) by the steady state's samples: kernel, fdlink, GStreamer, other threads.
#
#   benches/profile-steps.sh [--size WxH] [--frames N] [TRANSPORT...]   (default: raw fdlink fdlink-app)
#   benches/profile-steps.sh --fanout "1 32"   the producer of the fan-out sweep (live 4K30,
#                                              prefilled source) with each number of consumers
#
# Needs perf (linux-perf) and a release build of the plugin and the harness in target/release
# (benches/compare-peers.sh makes one; or cargo build --release -p gst-plugin-fdlink -p
# fdlink-tools --bin compare-harness). Sampling costs some CPU itself: compare the steps of
# one run with each other, not with the comparison's tables.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=640x480
FRAMES=600
FANOUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --frames) FRAMES=$2; shift 2 ;;
        --fanout) FANOUT=$2; shift 2 ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) break ;;
    esac
done
TRANSPORTS=("$@")
[ ${#TRANSPORTS[@]} -gt 0 ] || TRANSPORTS=(raw fdlink fdlink-app)
command -v perf >/dev/null || { echo "profile-steps: perf is missing: apt-get install linux-perf" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HARNESS=$TARGET/release/compare-harness
[ -x "$HARNESS" ] && [ -f "$TARGET/release/libgstfdlink.so" ] ||
    { echo "profile-steps: no release build in $TARGET/release: see the comment at the top" >&2; exit 1; }
W=${SIZE%x*} H=${SIZE#*x}
OUT=$(mktemp -d /tmp/fdlink-profile.XXXXXX)
dirs=()
if [ -n "$FANOUT" ]; then
    # As benches/compare-peers-fanout.py runs it: the stream starts once all N consumers are
    # connected, 60 frames of warm-up; only the producer is recorded.
    for n in $FANOUT; do
        d=$OUT/fanout-$n
        mkdir -p "$d"
        args=(fdlink width=3840 height=2160 "frames=$FRAMES" rate=30 source=prefilled warmup=60
            "path=$d/sock" "timeout=$((FRAMES / 30 + 90))")
        env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" \
            perf record -q -e cpu-clock -F 20000 -o "$d/p.data" "$HARNESS" produce "${args[@]}" \
            "consumers=$n" "go=$d/go" "done=$d/done" > "$d/p.out" 2> "$d/p.err" &
        ppid=$!
        cpids=()
        for i in $(seq 1 "$n"); do
            env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" "$HARNESS" consume \
                "${args[@]}" "go=$d/go$i" "done=$d/done$i" > "$d/c$i.out" 2> "$d/c$i.err" &
            cpids+=($!)
        done
        wait "${cpids[@]}" || true
        : > "$d/done"  # the producer lingers until its consumers are done
        wait "$ppid" || true
        dirs+=("$n-consumers=$d")
    done
    echo "profile-steps: fan-out, live 4K30 prefilled, $FRAMES frames, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg); raw data in $OUT"
    python3 "$ROOT/benches/profile-steps.py" --producer-only "${dirs[@]}"
    exit 0
fi
for t in "${TRANSPORTS[@]}"; do
    d=$OUT/$t
    mkdir -p "$d"
    args=("$t" "width=$W" "height=$H" "frames=$FRAMES" "rate=30" "path=$d/sock" "go=$d/go"
        "done=$d/done" "timeout=$((FRAMES / 30 + 60))")
    env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" \
        perf record -q -e cpu-clock -F 20000 -o "$d/p.data" "$HARNESS" produce "${args[@]}" \
        > "$d/p.out" 2> "$d/p.err" &
    ppid=$!
    env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" \
        perf record -q -e cpu-clock -F 20000 -o "$d/c.data" "$HARNESS" consume "${args[@]}" \
        > "$d/c.out" 2> "$d/c.err" || true
    wait "$ppid" || true
    dirs+=("$t=$d")
done
echo "profile-steps: $SIZE, $FRAMES frames at 30 fps, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg); raw data in $OUT"
python3 "$ROOT/benches/profile-steps.py" "${dirs[@]}"

#!/usr/bin/env bash
# Where a frame's one-way latency goes, step by step: latency runs of the compare harness
# (live videotestsrc at 30 fps, as in the comparison's latency table) under
# `perf record -k CLOCK_MONOTONIC` of the socket syscalls and the scheduler's wake-ups and
# switches; benches/latency-steps.py lines every frame's stamp and arrival (the consumer's
# `samples=` file, same clock) up with the events between them and prints the median of each
# step: the producer from the stamp to its sendmsg, the kernel to the consumer's wake-up, the
# wake-up to running, the consumer's receive, and its way to the probe.
#
#   benches/latency-steps.sh [--size WxH] [--frames N] [--runs N] [TRANSPORT...]
#                            (default: raw fdlink fdlink-app; 640x480, 300 frames, 1 run each)
#
# Needs root and perf (linux-perf) and a release build in $CARGO_TARGET_DIR/release (see
# benches/profile-steps.sh). The tracer itself slows each step a little: compare the
# transports of one run with each other, not with the comparison's tables.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SIZE=640x480
FRAMES=300
RUNS=1
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --frames) FRAMES=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        -h|--help) sed -n 2,16p "$0"; exit 0 ;;
        *) break ;;
    esac
done
TRANSPORTS=("$@")
[ ${#TRANSPORTS[@]} -gt 0 ] || TRANSPORTS=(raw fdlink fdlink-app)
command -v perf >/dev/null || { echo "latency-steps: perf is missing: apt-get install linux-perf" >&2; exit 1; }
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
HARNESS=$TARGET/release/compare-harness
[ -x "$HARNESS" ] && [ -f "$TARGET/release/libgstfdlink.so" ] ||
    { echo "latency-steps: no release build in $TARGET/release" >&2; exit 1; }
W=${SIZE%x*} H=${SIZE#*x}
OUT=$(mktemp -d /tmp/fdlink-latency-steps.XXXXXX)
EVENTS=syscalls:sys_enter_sendmsg,syscalls:sys_exit_recvmsg,sched:sched_wakeup,sched:sched_switch
dirs=()
for run in $(seq 1 "$RUNS"); do
    for t in "${TRANSPORTS[@]}"; do
        d=$OUT/$t-$run
        mkdir -p "$d"
        args=("$t" "width=$W" "height=$H" "frames=$FRAMES" "rate=30" "path=$d/sock" "go=$d/go"
            "done=$d/done" "timeout=$((FRAMES / 30 + 60))")
        perf record -q -k CLOCK_MONOTONIC -a -e "$EVENTS" -o "$d/trace.data" \
            -- sleep $((FRAMES / 30 + 6)) > "$d/perf.log" 2>&1 &
        perf_pid=$!
        sleep 0.5
        env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" "$HARNESS" produce "${args[@]}" \
            > "$d/p.out" 2> "$d/p.err" &
        echo $! > "$d/producer.pid"
        env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" "$HARNESS" consume "${args[@]}" \
            "samples=$d/samples.txt" > "$d/c.out" 2> "$d/c.err" &
        echo $! > "$d/consumer.pid"
        wait "$(cat "$d/consumer.pid")" || true
        wait "$(cat "$d/producer.pid")" || true
        wait "$perf_pid" || true
        dirs+=("$t=$d")
    done
done
echo "latency-steps: $SIZE, $FRAMES frames at 30 fps, $RUNS run(s) each, $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg); traces in $OUT"
python3 "$ROOT/benches/latency-steps.py" "${dirs[@]}"

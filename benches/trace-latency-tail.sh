#!/usr/bin/env bash
# Traces the scheduler during latency runs of the comparison harness and says, for every slow
# frame, whether the CPU running our threads was taken away by the hypervisor meanwhile.
#
#   benches/trace-latency-tail.sh [--runs N] [--size WxH] [--transport T] [--frames N]
#                                 [--keep DIR]
#
# Each run is one latency run of benches/compare-peers.sh (live videotestsrc at 30 fps, the
# default 300 frames at 3840x2160 over fdlink) under `perf sched record -k CLOCK_MONOTONIC`,
# the clock the harness stamps frames with, and the consumer writes every frame's send and
# receive time (`samples=`). benches/trace-latency-tail.py then lists each frame slower than
# twice the run's p50 with the "lost" time of the CPUs during it: the wall time between two
# of the kernel's runtime accounts of one running thread minus the runtime it accounted. A
# guest kernel leaves out the time the hypervisor ran something else on that vCPU (steal), so
# a gap there is a vCPU that was not running while our thread was on it. The tracer slows
# each frame by some tens of µs; compare the tails, not the p50, with untraced runs.
# Needs root and perf (Debian: linux-perf).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
RUNS=3
SIZE=3840x2160
TRANSPORT=fdlink
FRAMES=300
KEEP=""
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift ;;
        --size) SIZE=$2; shift ;;
        --transport) TRANSPORT=$2; shift ;;
        --frames) FRAMES=$2; shift ;;
        --keep) KEEP=$2; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
command -v perf >/dev/null || { echo "perf not found (Debian: apt-get install linux-perf)" >&2; exit 1; }

(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p gst-plugin-fdlink --lib \
    -p fdlink-tools --bin compare-harness >&2)
HARNESS=$TARGET/release/compare-harness
WORK=${KEEP:-$(mktemp -d)}
mkdir -p "$WORK"
W=${SIZE%x*}
H=${SIZE#*x}
# The run's length: the frames at 30 fps, plus start-up.
TRACE_S=$((FRAMES / 30 + 4))

for run in $(seq 1 "$RUNS"); do
    d=$WORK/run$run
    rm -rf "$d"
    mkdir -p "$d"
    args=("$TRANSPORT" width="$W" height="$H" frames="$FRAMES" rate=30 path="$d/sock"
        go="$d/go" done="$d/done" timeout=120)
    perf sched record -k CLOCK_MONOTONIC -o "$d/sched.data" -a -- sleep "$TRACE_S" \
        > "$d/perf.log" 2>&1 &
    perf_pid=$!
    sleep 0.5
    env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" "$HARNESS" produce "${args[@]}" \
        > "$d/produce.out" 2> "$d/produce.err" &
    producer=$!
    env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$TARGET/release" "$HARNESS" consume "${args[@]}" \
        samples="$d/samples.txt" > "$d/consume.out" 2> "$d/consume.err"
    wait "$producer"
    wait "$perf_pid" || true
    echo "== run $run/$RUNS: $TRANSPORT $SIZE, $FRAMES frames at 30 fps, traced"
    python3 "$ROOT/benches/trace-latency-tail.py" "$d/samples.txt" "$d/sched.data"
done
if [ -z "$KEEP" ]; then
    rm -rf "$WORK"
else
    echo "traces and samples in $WORK"
fi

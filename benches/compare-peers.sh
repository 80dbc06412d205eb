#!/usr/bin/env bash
# Side-by-side comparison of fdlink with its peers, on this machine, in one run.
#
#   benches/compare-peers.sh [--quick] [--reps N] [--no-forky] [--out FILE]
#
# Every transport moves the same stream, NV12 from `videotestsrc pattern=black`, from one
# process to another (`<src> ! fakesink sync=false`), at 640x480, 1920x1080 and 3840x2160:
#   local        no transport: `videotestsrc ! fakesink` in one process, what the source
#                alone costs (its fps and CPU are the producer's)
#   raw          SCM_RIGHTS baseline, no GStreamer: one memfd fd + 100 B, 16 B reply
#   fdlink       fdlinksink/fdlinksrc, upstream allocates from fdlinksink's memfd pool
#   fdlink-copy  the same with `identity drop-allocation=true` before the sink, so upstream
#                uses system memory and fdlinksink copies each frame into a memfd
#   fdlink-app   fdlinksink, and a consumer made of fdlink::consumer alone (an application:
#                no GStreamer on its side)
#   fdlink-py    fdlinksink, and a Python program on the fdlink module (python/) as consumer:
#                benches/compare-harness-consumer.py, run from target/pyenv (made by
#                scripts/python-setup.sh; without it the row is left out, saying so)
#   shm          shmsink/shmsrc (copy into shmsink's area)
#   ipcpipeline  ipcpipelinesink / ipcslavepipeline(ipcpipelinesrc) over a fifo pair
#   unixfd       unixfdsink/unixfdsrc (GStreamer 1.28, Debian forky chroot)
#   unixfd-copy  the same with `identity drop-allocation=true` (1.28's memfd copy fallback)
# fdlink and fdlink-copy also run in the chroot, so unixfd is compared on the same GStreamer.
#
# Three runs per (transport, size): "throughput" (non-live source, nothing syncs: the
# transport sets the pace; fps is counted on the consumer); "throughput-prefilled", the same
# with the harness's prefilled source in place of videotestsrc (frames from the same pool,
# each pool buffer written once and never again, as a hardware decoder's frames are never
# written by the CPU: the transport's own cost, not the drawing, sets the pace); and
# "latency" (live videotestsrc at 30 fps; one-way latency from a stamp written just before
# the sink to a probe just after the source). How each figure is taken:
# tools/src/compare-harness/. The Markdown tables go to stdout and to --out (default:
# benches/compare-peers.last.md); raw results sit beside it, with every latency run's
# per-frame latencies (.samples.tsv) and one SVG latency CDF per size drawn from them
# (.cdf-WxH.svg).
#   --sizes "640x480 1920x1080"  only these sizes (of the three above)
#   --transports "raw fdlink"    only these transports (of the ones above)
#
#   benches/compare-peers.sh --fanout [--reps N] [--source prefilled|videotestsrc] [--out FILE]
#
# The fan-out sweep instead (fdlink only, on the host's GStreamer): one live 3840x2160 NV12
# 30 fps producer, N = 0 (the baseline: nobody connected), 1, 2, 4, 8, 16, 32 consumer
# processes, 10 s counted per N after 2 s of warm-up; producer and consumer CPU per frame and
# the frames each consumer got (benches/compare-peers-fanout.py says how each is taken).
# --source: the live producer's source, the harness's prefilled one (default) or
# videotestsrc. The table goes to stdout and to --out (default:
# benches/results/fanout-4k30-COMMIT-DATE.md), the raw results and the curve (.svg) beside
# it; with the default source the curve is also docs/img/fanout-4k30.svg. About 1.5
# minutes per repetition (default 1).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
FORKY=${FDLINK_FORKY_DIR:-/var/cache/fdlink-forky}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
QUICK=0
REPS=""
ONLY_SIZES=()
ONLY_TRANSPORTS=()
USE_FORKY=1
OUT=$ROOT/benches/compare-peers.last.md
OUT_SET=0
FANOUT=0
FANOUT_SOURCE=prefilled

while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --reps) REPS=$2; shift ;;
        --no-forky) USE_FORKY=0 ;;
        --out) OUT=$2; OUT_SET=1; shift ;;
        --fanout) FANOUT=1 ;;
        --source) FANOUT_SOURCE=$2; shift ;;
        --sizes) read -r -a ONLY_SIZES <<< "$2"; shift ;;
        --transports) read -r -a ONLY_TRANSPORTS <<< "$2"; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

FANOUT_REPS=${REPS:-1}
SIZES=(640x480 1920x1080 3840x2160)
if [ "$QUICK" = 1 ]; then
    # Frames per size for the throughput run; the latency run is LAT_FRAMES at 30 fps.
    TP_FRAMES=(1000 300 100)
    PF_FRAMES=(2000 1000 300)
    LAT_FRAMES=90
    REPS=${REPS:-1}
else
    TP_FRAMES=(3000 1000 300)
    PF_FRAMES=(6000 3000 1000)
    LAT_FRAMES=300
    REPS=${REPS:-3}
fi
HOST_TRANSPORTS=(local raw fdlink fdlink-app fdlink-py fdlink-copy shm ipcpipeline)
FORKY_TRANSPORTS=(local fdlink fdlink-copy unixfd unixfd-copy)
# Whole-run limit per process; a hung transport shows up as "not run", never as a number.
RUN_TIMEOUT=150

RESULTS=${OUT%.md}.results.tsv
# One line per latency run: env mode transport size rep, then each frame's latency in µs.
SAMPLES=${OUT%.md}.samples.tsv
if [ "$FANOUT" = 0 ]; then
    mkdir -p "$(dirname "$OUT")"
    : > "$RESULTS"
    : > "$SAMPLES"
fi
log() { echo "[compare-peers] $*" >&2; }

# ---------------------------------------------------------------- build
log "building plugin and harness in $TARGET"
(cd "$ROOT" && CARGO_TARGET_DIR=$TARGET cargo build --release --locked -p gst-plugin-fdlink --lib \
    -p fdlink-tools --bin compare-harness >&2)
# Measured from a private copy: another cargo build into the same target directory during
# the run (other work on the machine) would otherwise change the plugin between rows.
BIN_DIR=$(mktemp -d /tmp/fdlink-cmp-bin.XXXXXX)
cp "$TARGET/release/libgstfdlink.so" "$TARGET/release/compare-harness" "$BIN_DIR/"
PLUGIN_DIR=$BIN_DIR
HARNESS=$BIN_DIR/compare-harness

# ---------------------------------------------------------------- fan-out sweep
if [ "$FANOUT" = 1 ]; then
    rm_bins() { rm -rf "$BIN_DIR"; }
    trap rm_bins EXIT
    if [ "$OUT_SET" = 0 ]; then
        OUT=$ROOT/benches/results/fanout-4k30-$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null ||
            echo unknown)-$(date -u +%Y%m%dT%H%MZ).md
    fi
    python3 "$ROOT/benches/compare-peers-fanout.py" --harness "$HARNESS" \
        --plugin-dir "$PLUGIN_DIR" --reps "$FANOUT_REPS" --source "$FANOUT_SOURCE" \
        --out "$OUT" --svg "${OUT%.md}.svg"
    if [ "$FANOUT_SOURCE" = prefilled ]; then
        cp "${OUT%.md}.svg" "$ROOT/docs/img/fanout-4k30.svg"
    fi
    exit 0
fi

# ---------------------------------------------------------------- forky chroot
FORKY_ROOT=$FORKY/root
FORKY_REASON=""
MOUNTED=()
cleanup() {
    local m
    for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    rm -rf "$BIN_DIR"
}
trap cleanup EXIT

setup_forky() {
    if [ ! -x "$FORKY_ROOT/usr/bin/gst-launch-1.0" ]; then
        command -v debootstrap >/dev/null || apt-get install -y debootstrap >&2 ||
            { FORKY_REASON="debootstrap not installable"; return 1; }
        log "building the forky chroot in $FORKY (once; about 5 minutes)"
        local tmp=$FORKY/root.tmp
        rm -rf "$tmp"
        mkdir -p "$FORKY"
        # Debian's debootstrap has no forky script yet; forky is made like sid. Only minbase
        # here: debootstrap's resolver trips over the alternatives in GStreamer's
        # dependencies, apt does not.
        debootstrap --variant=minbase forky "$tmp" "$MIRROR" \
            /usr/share/debootstrap/scripts/sid > "$FORKY/debootstrap.log" 2>&1 ||
            { FORKY_REASON="debootstrap failed, see $FORKY/debootstrap.log"; return 1; }
        # The machine's clock may be past the Release file's Valid-Until.
        chroot "$tmp" sh -c 'apt-get -o Acquire::Check-Valid-Until=false update &&
            DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
            install -y --no-install-recommends gstreamer1.0-tools \
            gstreamer1.0-plugins-base gstreamer1.0-plugins-bad' > "$FORKY/apt.log" 2>&1 ||
            { FORKY_REASON="apt-get in the chroot failed, see $FORKY/apt.log"; return 1; }
        mv "$tmp" "$FORKY_ROOT"
    fi
    # The 1.22-built plugin and harness run unchanged on 1.28 (forward ABI compatible).
    mkdir -p "$FORKY_ROOT/opt/fdlink" "$FORKY_ROOT/tmp"
    cp "$PLUGIN_DIR/libgstfdlink.so" "$HARNESS" "$FORKY_ROOT/opt/fdlink/"
    if ! mountpoint -q "$FORKY_ROOT/proc"; then
        mount -t proc proc "$FORKY_ROOT/proc" && MOUNTED+=("$FORKY_ROOT/proc")
    fi
    if ! mountpoint -q "$FORKY_ROOT/dev"; then
        mount --bind /dev "$FORKY_ROOT/dev" && MOUNTED+=("$FORKY_ROOT/dev")
    fi
    if ! chroot "$FORKY_ROOT" env GST_PLUGIN_PATH=/opt/fdlink gst-inspect-1.0 unixfdsink \
        >/dev/null 2>&1; then
        FORKY_REASON="unixfdsink not found in the chroot"; return 1
    fi
    if ! chroot "$FORKY_ROOT" env GST_PLUGIN_PATH=/opt/fdlink gst-inspect-1.0 fdlinksink \
        >/dev/null 2>&1; then
        FORKY_REASON="the 1.22-built fdlink plugin does not load on forky's GStreamer"; return 1
    fi
}

if [ "$USE_FORKY" = 1 ]; then
    setup_forky || log "forky: $FORKY_REASON"
else
    FORKY_REASON="skipped (--no-forky)"
fi

# ---------------------------------------------------------------- one run
# run ENV MODE TRANSPORT SIZE FRAMES RATE REP: starts producer and consumer as two processes
# and appends their RESULT lines (or why there are none) to $RESULTS.
run_one() {
    local env=$1 mode=$2 transport=$3 size=$4 frames=$5 rate=$6 rep=$7
    local w=${size%x*} h=${size#*x}
    local base prefix=() plugin_path=$PLUGIN_DIR harness=$HARNESS
    if [ "$env" = forky ]; then
        base=$(mktemp -d "$FORKY_ROOT/tmp/cmp.XXXXXX")
        prefix=(chroot "$FORKY_ROOT")
        plugin_path=/opt/fdlink
        harness=/opt/fdlink/compare-harness
        local inner=${base#"$FORKY_ROOT"}
    else
        base=$(mktemp -d /tmp/fdlink-cmp.XXXXXX)
        local inner=$base
    fi
    local args=("$transport" "width=$w" "height=$h" "frames=$frames" "rate=$rate"
        "path=$inner/sock" "go=$inner/go" "done=$inner/done" "timeout=$RUN_TIMEOUT")
    # The prefilled source writes a pool buffer in full at its first use: the first tenth of
    # the frames, while upstream's pool grows to its working size, is sent but not counted.
    if [ "$mode" = throughput-prefilled ]; then args+=("source=prefilled" "warmup=$((frames / 10))"); fi
    # Only the consumer records arrivals; the producer would write an empty file.
    local cargs=("${args[@]}")
    if [ "$mode" = latency ]; then cargs+=("samples=$inner/samples"); fi
    # fdlink-py: fdlinksink as for fdlink-app; the consumer is the Python program.
    local pargs=("${args[@]}") consumer=("$harness")
    if [ "$transport" = fdlink-py ]; then
        consumer=("$PYENV_PY" -I "$ROOT/benches/compare-harness-consumer.py")
    fi
    # GST_PLUGIN_PATH_1_0 would override GST_PLUGIN_PATH; clear it.
    env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$plugin_path" \
        timeout $((RUN_TIMEOUT + 30)) "${prefix[@]}" "$harness" produce "${pargs[@]}" \
        > "$base/p.out" 2> "$base/p.err" &
    local ppid=$!
    local crc=0 prc=0 roles=(produce consume)
    if [ "$transport" = local ]; then
        roles=(produce)  # no consumer: the source alone
    else
        env -u GST_PLUGIN_PATH_1_0 GST_PLUGIN_PATH="$plugin_path" \
            timeout $((RUN_TIMEOUT + 30)) "${prefix[@]}" "${consumer[@]}" consume "${cargs[@]}" \
            > "$base/c.out" 2> "$base/c.err" || crc=$?
    fi
    wait "$ppid" || prc=$?
    local role f line
    for role in "${roles[@]}"; do
        f=$base/${role:0:1}.out
        line=$(grep -m1 '^RESULT ' "$f" | cut -d' ' -f2- || true)
        if [ -z "$line" ]; then
            # Why: the exit status and the last line of stderr.
            local rc=$prc; [ "$role" = consume ] && rc=$crc
            local why
            why=$(grep -v '^\s*$' "$base/${role:0:1}.err" | tail -n1 | tr '\t' ' ' | cut -c1-200)
            line="{\"failed\":\"exit $rc: ${why//\"/\'}\"}"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$env" "$mode" "$transport" "$size" "$rep" \
            "$role $line" >> "$RESULTS"
    done
    if [ -s "$base/samples" ]; then
        printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$env" "$mode" "$transport" "$size" "$rep" \
            "$(awk '!/^#/ { printf "%s%s", sep, $4; sep = " " }' "$base/samples")" >> "$SAMPLES"
    fi
    rm -rf "$base"
}

# run_size ENV I TRANSPORT...: both runs of each transport at size I.
run_size() {
    local env=$1 i=$2; shift 2
    local t rep size=${SIZES[$i]}
    for t in "$@"; do
        for rep in $(seq 1 "$REPS"); do
            log "$env throughput $t $size (${TP_FRAMES[$i]} frames, rep $rep/$REPS)"
            run_one "$env" throughput "$t" "$size" "${TP_FRAMES[$i]}" 0 "$rep"
        done
        # raw has no GStreamer source: its throughput row serves both tables.
        if [ "$t" != raw ]; then
            for rep in $(seq 1 "$REPS"); do
                log "$env throughput-prefilled $t $size (${PF_FRAMES[$i]} frames, rep $rep/$REPS)"
                run_one "$env" throughput-prefilled "$t" "$size" "${PF_FRAMES[$i]}" 0 "$rep"
            done
        fi
        # Latency repeats too: one run's p99 is its third-worst frame, and a vCPU the
        # hypervisor takes away for a millisecond makes one (each run reports its steal time).
        # "local" has no latency, only the source's CPU at 30 fps: one run is enough.
        local lat_reps=$REPS
        [ "$t" = local ] && lat_reps=1
        for rep in $(seq 1 "$lat_reps"); do
            log "$env latency $t $size ($LAT_FRAMES frames at 30 fps, rep $rep/$lat_reps)"
            run_one "$env" latency "$t" "$size" "$LAT_FRAMES" 30 "$rep"
        done
    done
}

# ---------------------------------------------------------------- transports to run
# fdlink-py's consumer runs in target/pyenv, on the module built from the sources as they are.
PYENV_PY=$ROOT/target/pyenv/bin/python
SKIP_TRANSPORTS=()
if ! PY_WHY=$("$ROOT/scripts/python-setup.sh" --check 2>&1); then
    log "fdlink-py left out: ${PY_WHY:-target/pyenv is not ready (run scripts/python-setup.sh)}"
    SKIP_TRANSPORTS+=(fdlink-py)
fi
# keep_transports NAME: drops from array NAME what --transports or the checks above leave out.
keep_transports() {
    local -n list=$1
    local t kept=()
    for t in "${list[@]}"; do
        if [[ " ${SKIP_TRANSPORTS[*]} " == *" $t "* ]]; then continue; fi
        if [ ${#ONLY_TRANSPORTS[@]} -gt 0 ] && [[ " ${ONLY_TRANSPORTS[*]} " != *" $t "* ]]; then
            continue
        fi
        kept+=("$t")
    done
    list=("${kept[@]}")
}
keep_transports HOST_TRANSPORTS
keep_transports FORKY_TRANSPORTS

START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Size by size, all transports together: rows that are divided by each other run minutes
# apart, not a whole run apart, so a change in the machine's load hits them alike.
for i in "${!SIZES[@]}"; do
    if [ ${#ONLY_SIZES[@]} -gt 0 ] && [[ " ${ONLY_SIZES[*]} " != *" ${SIZES[$i]} "* ]]; then
        continue
    fi
    run_size host "$i" "${HOST_TRANSPORTS[@]}"
    if [ -z "$FORKY_REASON" ]; then
        run_size forky "$i" "${FORKY_TRANSPORTS[@]}"
    fi
done

# ---------------------------------------------------------------- report
HOST_GST=$(gst-launch-1.0 --version | sed -n 's/^GStreamer //p' | head -n1)
if [ -z "$FORKY_REASON" ]; then
    FORKY_GST=$(chroot "$FORKY_ROOT" gst-launch-1.0 --version | sed -n 's/^GStreamer //p' | head -n1)
else
    FORKY_GST="not run: $FORKY_REASON"
fi
LOAD="$LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
python3 "$ROOT/benches/compare-peers-table.py" "$RESULTS" \
    --kernel "$(uname -r)" \
    --cpu "$(sed -n 's/^model name\s*:\s*//p' /proc/cpuinfo | head -n1)" \
    --cores "$(nproc)" \
    --host-gst "$HOST_GST" --forky-gst "$FORKY_GST" \
    --date "$START" --load "$LOAD" --quick "$QUICK" --reps "$REPS" \
    --lat-frames "$LAT_FRAMES" --tp-frames "${TP_FRAMES[*]}" --pf-frames "${PF_FRAMES[*]}" \
    --forky-reason "$FORKY_REASON" | tee "$OUT"
python3 "$ROOT/benches/compare-peers-cdf.py" "$SAMPLES" --prefix "${OUT%.md}.cdf-" \
    --note "Run of $START, $(nproc) cores, GStreamer $HOST_GST (host) and ${FORKY_GST%% *} (chroot); ${REPS} run(s) per transport pooled" >&2
log "tables in $OUT, raw results in $RESULTS, latency samples in $SAMPLES"

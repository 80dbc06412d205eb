#!/usr/bin/env bash
# Runs every fuzz target for a while and fails if any crashes.
#
#   fuzz/run.sh [SECONDS]        each target for SECONDS (default 30): what CI runs
#   fuzz/run.sh --runs N         each target for N inputs (the long campaign: --runs 10000000)
#   fuzz/run.sh ... -- TARGET..  only these targets
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The committed corpus
# (fuzz/corpus/TARGET) and the inputs of past crashes (fuzz/regressions/TARGET) are read, never
# written: inputs that find new coverage go to fuzz/target/new-corpus/TARGET (merge them into
# the corpus with `cargo +nightly fuzz cmin`, or the binary's -merge=1). A crash leaves its
# input in fuzz/artifacts/TARGET/. One summary line per target: inputs run, exec/s, crashes.
set -euo pipefail

cd "$(dirname "$0")"
limit=(-max_total_time=30)
what="30 s"
targets=(packet_decode hello structure_text frame_import)
while [ $# -gt 0 ]; do
    case "$1" in
    --runs)
        limit=(-runs="$2")
        what="$2 inputs"
        shift 2
        ;;
    --)
        shift
        targets=("$@")
        break
        ;;
    [0-9]*)
        limit=(-max_total_time="$1")
        what="$1 s"
        shift
        ;;
    *)
        echo "usage: $0 [SECONDS | --runs N] [-- TARGET...]" >&2
        exit 2
        ;;
    esac
done

# The core's targets keep debug assertions and overflow checks (cargo-fuzz's default). The
# GStreamer target is built as the plugin ships (-O: no debug assertions), in its own target
# directory so the two builds do not rebuild each other: with debug assertions, glib panics
# on a NUL inside any string it converts, which release builds do not do.
build_flags() {
    case "$1" in
    structure_text | frame_import) echo "-O --target-dir target/gst" ;;
    *) echo "--no-default-features --target-dir target/core" ;;
    esac
}

# Options for each target: inputs up to a full datagram plus the control byte. The GStreamer
# targets run without leak checks: GLib keeps the quarks it interns for every new field name
# (and each outgrown quark table) for good, which LeakSanitizer reports.
target_options() {
    case "$1" in
    structure_text) echo "-max_len=66000 -detect_leaks=0" ;;
    # A few packets are enough to register, use and retire files; longer inputs only cost.
    frame_import) echo "-max_len=4096 -detect_leaks=0" ;;
    *) echo "-max_len=66000" ;;
    esac
}

failed=0
summary=()
for t in "${targets[@]}"; do
    # shellcheck disable=SC2046
    nice -n 10 cargo +nightly fuzz build $(build_flags "$t") "$t" >&2
    dir=$(build_flags "$t" | sed 's/.*--target-dir //')
    bin="$dir/x86_64-unknown-linux-gnu/release/$t"
    mkdir -p "target/new-corpus/$t" "artifacts/$t" "corpus/$t" "regressions/$t"
    log="target/fuzz-$t.log"
    echo "== $t: $what" >&2
    status=0
    leaks=1
    case "$t" in structure_text | frame_import) leaks=0 ;; esac
    # shellcheck disable=SC2046
    ASAN_OPTIONS="detect_leaks=$leaks${ASAN_OPTIONS:+:$ASAN_OPTIONS}" \
        nice -n 10 "$bin" "target/new-corpus/$t" "corpus/$t" "regressions/$t" "${limit[@]}" \
        $(target_options "$t") -timeout=20 -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    crashes=0
    if [ "$status" -ne 0 ]; then
        crashes=1
        failed=1
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" >&2 || tail -20 "$log" >&2
    fi
    summary+=("$(printf '%-15s inputs %-10s exec/s %-7s peak-rss %-5s MB crashes %s' \
        "$t" "${runs:-?}" "${speed:-?}" "${rss:-?}" "$crashes")")
done
printf '%s\n' "${summary[@]}"
exit "$failed"

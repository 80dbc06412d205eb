#!/usr/bin/env bash
# The crossprocess bench's real-dmabuf rows, run where real dmabufs exist: inside the project's
# test VM (hw-tests/vm, qemu TCG, the host's build over 9p). This host exports no dmabufs, so
# `cargo bench -p fdlink-tools` here runs only the labelled stand-in. In the guest the bench
# finds /dev/dma_heap/system and /dev/udmabuf and adds the rows `dmabuf-heap` and
# `dmabuf-udmabuf`.
# They run with the raw baseline, the memfd path and the stand-in of the same run, so every
# figure reads as a ratio to the limit measured in the same guest.
#
# Usage: bash benches/vm-dmabuf.sh [CRITERION_FILTER]
#   Default filter: handoff and throughput groups of raw-scm-rights, memfd, dmabuf-standin,
#   dmabuf-heap and dmabuf-udmabuf at every size (about 10 min under TCG on 2 cores).
#   Summary: target/criterion/fdlink-crossprocess-vm.md (also printed).
#   FDLINK_BENCH_QUICK defaults to 1 here (criterion's short warm-up and measurement).
#
# TCG emulates every guest instruction: absolute times are several times the host's, and only
# ratios within the run mean anything (docs/performance-benches.md, "Real dmabufs in the test
# VM").
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

FILTER=${1:-'^(handoff|throughput)-[^/]+/(raw-scm-rights|memfd|dmabuf-standin|dmabuf-heap|dmabuf-udmabuf)(/|$)'}
OUT=target/criterion/fdlink-crossprocess-vm.md

exe=$(cargo bench --locked -p fdlink-tools --bench crossprocess --no-run --message-format=json 2>/dev/null |
  python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "crossprocess":
        print(m["executable"])
')
[ -x "$exe" ] || { echo "vm-dmabuf: the crossprocess bench did not build" >&2; exit 1; }

bash hw-tests/vm/setup.sh
rm -f "$OUT"
mkdir -p "$(dirname "$OUT")"
FDLINK_BENCH_QUICK=${FDLINK_BENCH_QUICK:-1} FDLINK_BENCH_SUMMARY=$PWD/$OUT \
  hw-tests/vm/run.sh -m 4G -t "${FDLINK_VM_TIMEOUT:-3000}" -- "$exe" --bench "$FILTER"

# The bench writes the summary only at its end; a guest without the exporters would say
# "NOT run" in it, which is a failure here.
[ -s "$OUT" ] || { echo "vm-dmabuf: no summary was written" >&2; exit 1; }
if ! grep -q '^Real kernel dmabuf paths .*: run ' "$OUT"; then
  echo "vm-dmabuf: the real dmabuf rows did not run in the guest" >&2
  exit 1
fi
echo "vm-dmabuf: summary in $OUT"

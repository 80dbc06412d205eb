#!/usr/bin/env bash
# Everything the issues ask to be tested, in one command: scripts/test.sh (what CI runs: fmt,
# clippy, every test on GStreamer 1.22, 1.26 and 1.28, musl, 30 s of each fuzzer, the hardware
# matrix in the VM on 1.22 and 1.26), then what does not fit CI's time on a fresh machine: the
# aarch64 cross build with its process tests under qemu (scripts/cross-aarch64.sh --test), and
# the installs (cargo cinstall, the amd64 and arm64 .deb in clean Debian 12 chroots:
# scripts/test-install.sh --arm64). The chroots are cached under /var/cache/fdlink-*; a first
# run builds them (and cargo-c).
# Needs root (chroots, binfmt_misc). Prints each part's result and time; exits 1 if one failed.
set -uo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

parts=(
  "suite on 1.22, 1.26 and 1.28, VM matrix (scripts/test.sh)|$SUDO bash scripts/test.sh"
  "aarch64 under qemu (scripts/cross-aarch64.sh --test)|$SUDO bash scripts/cross-aarch64.sh --test"
  "installs: cinstall, .deb amd64 and arm64 (scripts/test-install.sh --arm64)|$SUDO bash scripts/test-install.sh --arm64"
)
summary=()
failed=0
for part in "${parts[@]}"; do
  name=${part%%|*}
  cmd=${part#*|}
  echo "test-all: ---- $name"
  start=$(date +%s)
  if eval "$cmd"; then result=pass; else result=FAIL; failed=1; fi
  summary+=("$(printf '%-4s %5ss  %s' "$result" $(( $(date +%s) - start )) "$name")")
done
echo "test-all: summary"
printf '  %s\n' "${summary[@]}"
exit $failed

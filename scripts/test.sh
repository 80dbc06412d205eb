#!/usr/bin/env bash
# Installs what is missing and runs every check CI runs, printing each part's result and time:
#   - on GStreamer 1.22 (the host): fmt, clippy (warnings are errors), all cargo tests
#     (protocol/transport/memory unit tests, process tests with real sockets), the musl type
#     check, 30 s of each fuzzer;
#   - the hardware matrix inside the test VM (real udmabuf, dma-heap, vgem, vivid, vicodec and
#     visl drivers), which rewrites docs/hardware-matrix.md;
#   - as root: the whole suite again on GStreamer 1.26 and 1.28 (scripts/gst-versions.sh, in
#     Debian chroots made in the background while the 1.22 part runs, cached in /var/cache),
#     and the VM's matrix on 1.26, whose rows join the 1.22 ones in docs/hardware-matrix.md.
# FDLINK_SKIP_VM=1 skips the VM parts and FDLINK_SKIP_GST_VERSIONS=1 the newer releases; each
# skip is printed, and the run does not count as complete. FDLINK_CI_BUDGET_MIN (default 55):
# a part that would start after that many minutes is left out, and the summary says so.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
START=$SECONDS
BUDGET_S=$(( ${FDLINK_CI_BUDGET_MIN:-55} * 60 ))
SUMMARY=()
LEFT_OUT=("the aarch64 tests under qemu (scripts/cross-aarch64.sh --test)"
  "the cargo-c and .deb installs (scripts/test-install.sh --arm64)")
FAILED=0

# part NAME CMD...: runs CMD, recording its result and time; a failure fails the run at the end.
part() {
  local name=$1 t0=$SECONDS rc=0
  shift
  echo "test.sh: ---- $name"
  "$@" || rc=$?
  local result=pass
  [ "$rc" = 0 ] || { result="FAIL (exit $rc)"; FAILED=1; }
  SUMMARY+=("$(printf '%5s s  %-11s %s' $((SECONDS - t0)) "$result" "$name")")
}
# in_budget NAME: whether a part may still start; records it as left out if not.
in_budget() {
  if [ $((SECONDS - START)) -lt "$BUDGET_S" ]; then return 0; fi
  LEFT_OUT+=("$1 (past the ${FDLINK_CI_BUDGET_MIN:-55}-minute budget)")
  return 1
}

# The newer releases' chroots (debootstrap and apt: network and disk, little CPU) are made
# while the 1.22 part compiles.
GST_VERSIONS=0
if [ "${FDLINK_SKIP_GST_VERSIONS:-0}" = 1 ]; then
  LEFT_OUT+=("the suite on GStreamer 1.26 and 1.28 (FDLINK_SKIP_GST_VERSIONS=1)")
elif [ "$(id -u)" -ne 0 ]; then
  LEFT_OUT+=("the suite on GStreamer 1.26 and 1.28 (needs root for its chroots: sudo scripts/gst-versions.sh)")
else
  GST_VERSIONS=1
  mkdir -p target
  bash scripts/gst-versions.sh --setup-only 1.26 1.28 >target/gst-versions-setup.log 2>&1 &
  CHROOT_SETUP=$!
  trap 'kill "$CHROOT_SETUP" 2>/dev/null || true' EXIT
fi

suite_1_22() {
  # The Python module (python/) in target/pyenv, which tools/tests/python_consumer.rs runs.
  bash scripts/python-setup.sh &&
  cargo fmt --all --check &&
  cargo clippy --locked --workspace --all-targets -q -- -D warnings &&
  # python/ is a workspace of its own (an extension module does not link as a test binary).
  (cd python && cargo fmt --check && CARGO_TARGET_DIR=../target/python cargo clippy --locked --all-targets -q -- -D warnings) &&
  # The plugin .so (cdylib) first: `cargo test` builds only the rlib, and the launcher test
  # runs gst-launch-1.0 processes that load the plugin.
  cargo build --locked --workspace -q &&
  cargo test --locked --workspace
}
musl_check() {
  # The code type-checks against musl's libc structs (no musl GStreamer here, so a check).
  { rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl; } &&
  RUSTFLAGS="-D warnings -C target-feature=-crt-static" PKG_CONFIG_ALLOW_CROSS=1 \
    cargo check --locked --workspace --all-targets --target x86_64-unknown-linux-musl -q
}
fuzz() {
  # Coverage-guided fuzzing, 30 s a target (the 10M-input campaign is
  # `fuzz/run.sh --runs 10000000`). cargo-fuzz is installed if missing.
  { command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked -q cargo-fuzz; } &&
  fuzz/run.sh 30
}
vm_matrix() { # [GSTREAMER-VERSION]: the matrix in the VM, on the host's 1.22 or a chroot's release
  bash hw-tests/vm/setup.sh &&
  hw-tests/vm/run.sh -t 1500 -- bash hw-tests/guest-matrix.sh ${1:+--gst "$1"} --write docs/hardware-matrix.md
}
gst_versions() {
  local rc=0 line
  wait "$CHROOT_SETUP" || { echo "test.sh: the chroot setup failed: target/gst-versions-setup.log"; tail -5 target/gst-versions-setup.log; }
  trap - EXIT
  # A failed setup is retried by the run itself. One that fails again (exit 3: the Debian
  # mirror or the network, not the code) leaves that release out, named below.
  bash scripts/gst-versions.sh --clippy 1.26 1.28 2>&1 | tee target/gst-versions.log
  rc=${PIPESTATUS[0]}
  while IFS= read -r line; do LEFT_OUT+=("$line"); done < <(grep '^GStreamer .*: NOT run' target/gst-versions.log)
  [ "$rc" = 3 ] && return 0
  return "$rc"
}

export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
part "GStreamer 1.22: fmt, clippy, build, cargo test --workspace" suite_1_22
part "musl type check" musl_check
if rustup run nightly cargo --version >/dev/null 2>&1; then
  part "fuzz/run.sh 30 (four targets, 30 s each)" fuzz
else
  LEFT_OUT+=("the fuzz targets (no nightly toolchain: rustup toolchain install nightly; fuzz/run.sh 30)")
fi
if [ "${FDLINK_SKIP_VM:-0}" = 1 ]; then
  LEFT_OUT+=("the hardware matrix in the VM (FDLINK_SKIP_VM=1)")
else
  part "hardware matrix in the VM on GStreamer 1.22" vm_matrix
fi
if [ "$GST_VERSIONS" = 1 ]; then
  if in_budget "the suite on GStreamer 1.26 and 1.28"; then
    part "GStreamer 1.26 and 1.28: build, clippy, cargo test --workspace (scripts/gst-versions.sh)" gst_versions
  fi
  if [ "${FDLINK_SKIP_VM:-0}" = 1 ]; then
    LEFT_OUT+=("the hardware matrix in the VM on GStreamer 1.26 (FDLINK_SKIP_VM=1)")
  elif [ ! -x "target/gst-1.26/debug/fdlink-hwmatrix" ]; then
    LEFT_OUT+=("the hardware matrix in the VM on GStreamer 1.26 (no 1.26 build: see above)")
  elif in_budget "the hardware matrix in the VM on GStreamer 1.26"; then
    part "hardware matrix in the VM on GStreamer 1.26" vm_matrix 1.26
  fi
fi

echo "test.sh: summary (total $((SECONDS - START)) s)"
printf '  %s\n' "${SUMMARY[@]}"
echo "test.sh: NOT run here:"
printf '  %s\n' "${LEFT_OUT[@]}"
echo "test.sh: sudo scripts/test-all.sh runs everything"
exit $FAILED

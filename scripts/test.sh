#!/usr/bin/env bash
# Installs what is missing and runs every check: formatting, clippy (warnings are errors),
# all cargo tests (protocol/transport/memory unit tests, two-process tests with real sockets),
# then the hardware matrix inside the test VM (real udmabuf, dma-heap, vgem, vivid, vicodec
# and visl drivers), which rewrites docs/hardware-matrix.md.
# FDLINK_SKIP_VM=1 skips the VM part (it says so, and the run does not count as complete).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# The Python module (python/) in target/pyenv, which tools/tests/python_consumer.rs runs.
bash scripts/python-setup.sh
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -q -- -D warnings
# python/ is a workspace of its own (an extension module does not link as a test binary).
(cd python && cargo fmt --check && CARGO_TARGET_DIR=../target/python cargo clippy --locked --all-targets -q -- -D warnings)
# The plugin .so (cdylib) first: `cargo test` builds only the rlib, and the launcher test runs
# gst-launch-1.0 processes that load the plugin.
cargo build --locked --workspace -q
cargo test --locked --workspace

# musl: the code type-checks against musl's libc structs (no musl GStreamer here, so a check).
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
RUSTFLAGS="-D warnings -C target-feature=-crt-static" PKG_CONFIG_ALLOW_CROSS=1 \
  cargo check --locked --workspace --all-targets --target x86_64-unknown-linux-musl -q

# Coverage-guided fuzzing, 30 s a target (fuzz/run.sh; the 10M-input campaign is
# `fuzz/run.sh --runs 10000000`). Needs the nightly toolchain; cargo-fuzz is installed if
# missing.
if rustup run nightly cargo --version >/dev/null 2>&1; then
  command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked -q cargo-fuzz
  fuzz/run.sh 30
else
  echo "test.sh: no nightly toolchain: the fuzz targets were NOT run (rustup toolchain install nightly; fuzz/run.sh 30)"
fi

# What a fresh machine cannot do within CI's time (chroots to build, cargo-c to compile).
not_here() {
  echo "test.sh: NOT run here: the suite on GStreamer 1.26 and 1.28, the aarch64 tests under qemu, the cargo-c and .deb installs; scripts/test-all.sh runs everything"
}
if [ "${FDLINK_SKIP_VM:-0}" = 1 ]; then
  echo "test.sh: FDLINK_SKIP_VM=1: the hardware matrix (VM) was NOT run"
  not_here
  exit 0
fi
bash hw-tests/vm/setup.sh
hw-tests/vm/run.sh -t 1500 -- bash hw-tests/guest-matrix.sh --write docs/hardware-matrix.md
not_here

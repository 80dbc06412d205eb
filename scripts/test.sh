#!/usr/bin/env bash
# Installs what is missing and runs every check: formatting, clippy (warnings are errors),
# and all tests (protocol/transport/memory unit tests, two-process tests with real sockets).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
export RUSTFLAGS="${RUSTFLAGS:-} -D warnings"
cargo fmt --check
cargo clippy --locked --all-targets -q -- -D warnings
cargo test --locked

#!/usr/bin/env bash
# Builds fdlink (release) and runs the hardware matrix on this machine: one row per decoder or
# dmabuf source, pass / fail / not run (no device). Arguments go to fdlink-hwmatrix
# (--write FILE, --only ROW,..., --require ROW,...).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --locked -q --bins
exec target/release/fdlink-hwmatrix "$@"

#!/usr/bin/env bash
# Installs what is missing, builds fdlink (release) and runs the demo: a producer process
# (videotestsrc -> fdlinksink) and a consumer process (fdlinksrc -> queue -> fakesink
# sync=true), 1080p NV12 at 60 fps; prints a line a second while they run, then the link's
# latency (producer send -> fdlinksrc), the consumer pipeline's latency, frames and zero-copy
# share.
# Extra arguments go to `fdlink-peer demo` (e.g. --frames 120 --size 3840x2160 --copy).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --locked -q
# The plugin .so beside the binary also lets gst-launch-1.0 find fdlinksink/fdlinksrc:
#   GST_PLUGIN_PATH=$PWD/target/release gst-launch-1.0 ...
exec target/release/fdlink-peer demo "$@"

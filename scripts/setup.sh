#!/usr/bin/env bash
# Installs what building and testing fdlink needs on Debian 12 (bookworm), only what is
# missing. The Rust toolchain (cargo >= 1.92) must already be installed (rustup).
set -euo pipefail

PACKAGES=(
  pkg-config
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  # The hardware matrix's glupload row: GL elements and Mesa's EGL/GBM (llvmpipe in the VM).
  gstreamer1.0-gl libegl-mesa0 libgl1-mesa-dri libgbm1
  musl-tools
  # scripts/gst-versions.sh's chroots (GStreamer 1.26 and 1.28), which test.sh makes in the
  # background: installed here, before, so two apt-gets never race for the lock.
  debootstrap
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo not found; install Rust >= 1.92 with rustup" >&2
  exit 1
}

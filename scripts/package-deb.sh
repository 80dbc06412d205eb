#!/usr/bin/env bash
# Builds the Debian package gstreamer1.0-fdlink for amd64 or arm64:
#
#   scripts/package-deb.sh [amd64|arm64]        (default: amd64)
#
# -> target/deb/gstreamer1.0-fdlink_<version>_<arch>.deb, with
#   /usr/lib/<multiarch>/gstreamer-1.0/libgstfdlink.so   the release plugin, stripped
#   /usr/share/doc/gstreamer1.0-fdlink/copyright         DEP-5, MPL-2.0 (common-licenses)
#   /usr/share/doc/gstreamer1.0-fdlink/changelog.gz      CHANGELOG.md
# Depends is what dpkg-shlibdeps computes from the plugin's NEEDED libraries (GStreamer core,
# base, video, allocators, audio, GLib, libc, libgcc). amd64 builds on this machine; arm64
# cross-builds in scripts/cross-aarch64.sh's chroot and runs this script's packaging step
# there (the arm64 libraries dpkg-shlibdeps reads are installed only there).
# Needs: cargo, dpkg-dev (dpkg-shlibdeps), binutils; arm64 also root (chroot).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
ARCH=${1:-amd64}
PKG=gstreamer1.0-fdlink
log() { echo "package-deb: $*" >&2; }

case "$ARCH" in
    amd64) TRIPLE=x86_64-unknown-linux-gnu MULTIARCH=x86_64-linux-gnu STRIP=strip ;;
    arm64) TRIPLE=aarch64-unknown-linux-gnu MULTIARCH=aarch64-linux-gnu STRIP=aarch64-linux-gnu-strip ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) log "unknown architecture '$ARCH' (amd64 or arm64)"; exit 2 ;;
esac

# pack SO: makes the .deb from the unstripped release plugin SO. Runs where $STRIP and the
# $ARCH libraries are (this machine for amd64, the cross chroot for arm64).
pack() {
    local so=$1 version stage deb depends
    version=$(cargo pkgid --offline -p gst-plugin-fdlink | sed 's/.*[#@]//')
    stage=$(mktemp -d "${TMPDIR:-/tmp}/fdlink-deb.XXXXXX")
    trap 'rm -rf "$stage"' RETURN
    local root=$stage/$PKG doc=$stage/$PKG/usr/share/doc/$PKG
    local plugdir=$root/usr/lib/$MULTIARCH/gstreamer-1.0
    install -d "$plugdir" "$doc" "$root/DEBIAN"
    # The debug info stays in target/ (the .so there is unstripped).
    "$STRIP" --strip-unneeded -o "$plugdir/libgstfdlink.so" "$so"
    chmod 0644 "$plugdir/libgstfdlink.so"
    cat > "$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: fdlink
Source: $(cargo metadata --offline --no-deps --format-version 1 | grep -o '"repository":"[^"]*"' | head -n 1 | cut -d'"' -f4)

Files: *
Copyright: fdlink contributors
License: MPL-2.0
 This Source Code Form is subject to the terms of the Mozilla Public License, v. 2.0. If a
 copy of the MPL was not distributed with this file, You can obtain one at
 https://mozilla.org/MPL/2.0/.
 .
 On Debian systems, the full text of the Mozilla Public License 2.0 can be found in
 /usr/share/common-licenses/MPL-2.0.
EOF
    gzip -9n < CHANGELOG.md > "$doc/changelog.gz"
    chmod 0644 "$doc/copyright" "$doc/changelog.gz"
    # dpkg-shlibdeps wants a source tree: a minimal debian/control in the stage.
    mkdir -p "$stage/debian"
    printf 'Source: %s\n\nPackage: %s\nArchitecture: any\n' "$PKG" "$PKG" > "$stage/debian/control"
    depends=$(cd "$stage" && DEB_HOST_ARCH=$ARCH DEB_HOST_MULTIARCH=$MULTIARCH \
        dpkg-shlibdeps -O "$PKG/usr/lib/$MULTIARCH/gstreamer-1.0/libgstfdlink.so" 2>/dev/null |
        sed -n 's/^shlibs:Depends=//p')
    [ -n "$depends" ] || { log "dpkg-shlibdeps found no dependencies (are the $ARCH GStreamer libraries installed?)"; return 1; }
    cat > "$root/DEBIAN/control" <<EOF
Package: $PKG
Version: $version
Architecture: $ARCH
Maintainer: fdlink maintainers <fdlink@example.invalid>
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends
Section: libs
Priority: optional
Multi-Arch: same
Description: GStreamer elements joining pipelines in different processes, zero-copy
 fdlinksink and fdlinksrc join GStreamer pipelines that run in different processes:
 frames cross as memfd and dmabuf file descriptors (SCM_RIGHTS) over an AF_UNIX
 SOCK_SEQPACKET socket, without copies; system memory is copied once into sealed memfds.
EOF
    (cd "$root" && find usr -type f -print0 | sort -z | xargs -0 md5sum > DEBIAN/md5sums)
    mkdir -p target/deb
    deb=target/deb/${PKG}_${version}_$ARCH.deb
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
    log "$deb: $(du -k "$deb" | cut -f1) KiB; plugin $(stat -c %s "$plugdir/libgstfdlink.so") bytes stripped, $(stat -c %s "$so") unstripped"
    log "Depends: $depends"
    echo "$REPO/$deb"
}

if [ "${FDLINK_PACK_ONLY:-0}" = 1 ]; then
    # Inside the cross chroot (see below): the plugin is built, package it.
    pack "target/$TRIPLE/release/libgstfdlink.so"
    exit
fi

t0=$SECONDS
case "$ARCH" in
    amd64)
        log "cargo build --release -p gst-plugin-fdlink"
        nice -n 10 cargo build --locked --release -p gst-plugin-fdlink
        pack target/release/libgstfdlink.so
        ;;
    arm64)
        bash scripts/cross-aarch64.sh --release
        bash scripts/cross-aarch64.sh --run "FDLINK_PACK_ONLY=1 bash scripts/package-deb.sh arm64"
        ;;
esac
log "took $((SECONDS - t0)) s"

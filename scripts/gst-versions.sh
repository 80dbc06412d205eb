#!/usr/bin/env bash
# Builds fdlink and runs the whole host test suite on newer GStreamer releases, each inside a
# Debian chroot that this script makes once and caches:
#   1.26  Debian 13 trixie   /var/cache/fdlink-gst-trixie/root   features v1_24 v1_26
#   1.28  Debian forky       /var/cache/fdlink-gst-forky/root    features v1_24 v1_26 v1_28
# (1.22, Debian 12, is the host itself: scripts/test.sh.)
#
#   scripts/gst-versions.sh [--setup-only] [--clippy] [VERSION...] [-- CARGO-TEST-ARGS...]
#       VERSION: 1.26, 1.28 (default: both); CARGO-TEST-ARGS narrow the test run, e.g.
#       `-- --test dma_drm_v124` (default: the whole suite); --clippy also runs
#       `cargo clippy --workspace --all-targets -- -D warnings` with the version's features
#
# The repository is bind-mounted at the same path, so the build lands in target/gst-<VERSION>
# (the host's target/ is untouched); ~/.cargo and ~/.rustup are bind-mounted too (the host's
# toolchain runs on the newer glibc). Prints a summary line per version and how long each part
# took; exits 1 if a build or a test failed, 3 if only a chroot could not be made (debootstrap
# or apt failed). Needs root (debootstrap, chroot, mount).
# Environment: DEBIAN_MIRROR, FDLINK_GST_CACHE (default /var/cache), FDLINK_GST_JOBS (cargo -j).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=${FDLINK_GST_CACHE:-/var/cache}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
SETUP_ONLY=0
CLIPPY=0
VERSIONS=()
TEST_ARGS=""
while [ $# -gt 0 ]; do
    a=$1; shift
    case "$a" in
        --) TEST_ARGS=$(printf " %q" "$@"); break ;;
        --setup-only) SETUP_ONLY=1 ;;
        --clippy) CLIPPY=1 ;;
        1.26|1.28) VERSIONS+=("$a") ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "gst-versions: unknown argument '$a' (versions: 1.26 1.28; --setup-only)" >&2; exit 2 ;;
    esac
done
[ ${#VERSIONS[@]} -gt 0 ] || VERSIONS=(1.26 1.28)

log() { echo "gst-versions: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot, mount): run it with sudo"; exit 1; }

codename() { case "$1" in 1.26) echo trixie ;; 1.28) echo forky ;; esac; }
# The features each release allows: gstreamer-rs exposes (and deprecates) API per release.
features() {
    local f="gst-plugin-fdlink/v1_24 fdlink-tools/v1_24"
    case "$1" in
        1.26) f="$f gst-plugin-fdlink/v1_26 fdlink-tools/v1_26" ;;
        1.28) f="$f gst-plugin-fdlink/v1_26 fdlink-tools/v1_26 gst-plugin-fdlink/v1_28 fdlink-tools/v1_28" ;;
    esac
    echo "$f"
}

# What building and running the tests needs (scripts/setup.sh's list, plus the compiler and
# what scripts/python-setup.sh needs for the Python module's tests), and strace, with which
# the VM's matrix counts the consumers' sync ioctls.
PACKAGES="build-essential pkg-config ca-certificates python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev libgstreamer-plugins-bad1.0-dev
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav
  gstreamer1.0-gl libegl-mesa0 libgl1-mesa-dri libgbm1 strace"

. "$REPO/scripts/lib/mounts.sh"
trap unmount_all EXIT
trap 'exit 130' INT TERM

# setup VERSION: makes (once) and mounts the chroot of VERSION; sets CHROOT.
setup() {
    local v=$1 name dir tmp
    name=$(codename "$v")
    dir=$CACHE/fdlink-gst-$name
    CHROOT=$dir/root
    mkdir -p "$dir"
    if [ ! -d "$CHROOT" ]; then
        command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2 ||
            { log "$v: debootstrap not installable"; return 1; }
        tmp=$dir/root.tmp
        if [ ! -e "$tmp/.debootstrapped" ]; then
            rm -rf "$tmp"
            if [ "$name" = forky ] && [ -x "$CACHE/fdlink-forky/root/usr/bin/gst-launch-1.0" ]; then
                # benches/compare-peers.sh's runtime chroot: the same base, already downloaded.
                log "$v: copying $CACHE/fdlink-forky/root as the base"
                cp -a --one-file-system "$CACHE/fdlink-forky/root" "$tmp" ||
                    { log "$v: copying the forky base failed"; return 1; }
            else
                log "$v: debootstrap $name into $tmp (once; a few minutes)"
                # Debian's debootstrap has no forky script: forky is made like sid. Minbase
                # only: apt resolves GStreamer's alternatives, debootstrap does not.
                local script=/usr/share/debootstrap/scripts/$name
                [ -e "$script" ] || script=/usr/share/debootstrap/scripts/sid
                debootstrap --variant=minbase "$name" "$tmp" "$MIRROR" "$script" \
                    > "$dir/debootstrap.log" 2>&1 ||
                    { log "$v: debootstrap failed, see $dir/debootstrap.log"; return 1; }
            fi
            touch "$tmp/.debootstrapped"
        fi
        mv "$tmp" "$CHROOT"
    fi
    # The package list the chroot has is in .fdlink-packages: a changed list is installed.
    if [ "$(cat "$CHROOT/.fdlink-packages" 2>/dev/null)" != "$(echo $PACKAGES)" ]; then
        log "$v: installing the build packages (log: $dir/apt.log)"
        # The machine's clock may be past the Release file's Valid-Until.
        # shellcheck disable=SC2086
        chroot "$CHROOT" sh -c "apt-get -o Acquire::Check-Valid-Until=false update &&
            DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
            install -y --no-install-recommends $(echo $PACKAGES)" > "$dir/apt.log" 2>&1 ||
            { log "$v: apt-get in the chroot failed, see $dir/apt.log"; return 1; }
        echo $PACKAGES > "$CHROOT/.fdlink-packages"
    fi
    mountpoint -q "$CHROOT/proc" || { mount -t proc proc "$CHROOT/proc" && MOUNTED+=("$CHROOT/proc"); } ||
        return 1
    mountpoint -q "$CHROOT/dev" || bind /dev "$CHROOT/dev" || return 1
    mountpoint -q "$CHROOT/dev/shm" || bind /dev/shm "$CHROOT/dev/shm" || return 1
    mountpoint -q "$CHROOT/tmp" || bind /tmp "$CHROOT/tmp" || return 1
    mountpoint -q "$CHROOT$REPO" || bind "$REPO" "$CHROOT$REPO" || return 1
    # Read-write: cargo writes its registry cache and locks there.
    mountpoint -q "$CHROOT/root/.cargo" || bind "$CARGO_DIR" "$CHROOT/root/.cargo" || return 1
    mountpoint -q "$CHROOT/root/.rustup" || bind "$RUSTUP_DIR" "$CHROOT/root/.rustup" ro || return 1
    # The Python module's venv and build (scripts/python-setup.sh: target/pyenv,
    # target/python) are the chroot's own: the host's venv runs the host's Python. The venv
    # is made in place before python-setup.sh runs (it cannot replace a mount point).
    local d
    for d in pyenv python; do
        mkdir -p "$REPO/target/gst-$v/$d" "$REPO/target/$d"
        mountpoint -q "$CHROOT$REPO/target/$d" ||
            bind "$REPO/target/gst-$v/$d" "$CHROOT$REPO/target/$d" || return 1
    done
    cp /etc/resolv.conf "$CHROOT/etc/resolv.conf" 2>/dev/null || true
    # The host's own CAs (a TLS-inspecting proxy's) for pip in the chroot.
    local crt changed=0
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -e "$crt" ] || continue
        cmp -s "$crt" "$CHROOT$crt" && continue
        mkdir -p "$CHROOT/usr/local/share/ca-certificates"
        cp "$crt" "$CHROOT$crt" && changed=1
    done
    [ "$changed" = 0 ] || chroot "$CHROOT" update-ca-certificates >/dev/null 2>&1 || true
}

# in_chroot COMMAND: runs a shell command in $CHROOT, in the repository, with the version's
# target dir. GST_PLUGIN_PATH names that build, so nothing loads the host's 1.22 plugin.
in_chroot() {
    chroot "$CHROOT" env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin \
        CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup TERM=dumb \
        CARGO_TARGET_DIR="$REPO/target/gst-$V" GST_PLUGIN_PATH="$REPO/target/gst-$V/debug" \
        RUSTFLAGS="-D warnings" ${GST_DEBUG:+GST_DEBUG=$GST_DEBUG} ${FDLINK_GST_JOBS:+CARGO_BUILD_JOBS=$FDLINK_GST_JOBS} \
        bash -c "cd '$REPO' && $1"
}

SUMMARY=()
FAILED=0
SETUP_FAILED=0
for V in "${VERSIONS[@]}"; do
    t0=$SECONDS
    if ! setup "$V"; then
        SUMMARY+=("GStreamer $V: NOT run: the chroot setup failed after $((SECONDS - t0)) s (debootstrap or apt: see $CACHE/fdlink-gst-$(codename "$V")/*.log)")
        SETUP_FAILED=1; unmount_all; continue
    fi
    t_setup=$((SECONDS - t0))
    gst=$(chroot "$CHROOT" pkg-config --modversion gstreamer-1.0 2>/dev/null || echo "$V.?")
    log "$V: GStreamer $gst in $CHROOT (setup $t_setup s)"
    if [ "$SETUP_ONLY" = 1 ]; then
        SUMMARY+=("GStreamer $gst: chroot ready, setup took $t_setup s")
        unmount_all; continue
    fi
    feats=$(features "$V")
    log "$V: cargo build --workspace --features '$feats'"
    t1=$SECONDS
    if ! in_chroot "cargo build --locked --workspace --features '$feats' &&
        cargo test --locked --workspace --features '$feats' --no-run &&
        { [ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv; } &&
        bash scripts/python-setup.sh"; then
        SUMMARY+=("GStreamer $gst: BUILD FAILED (features $feats), setup $t_setup s, build $((SECONDS - t1)) s")
        FAILED=1; unmount_all; continue
    fi
    if [ "$CLIPPY" = 1 ] && ! in_chroot "cargo clippy --locked --workspace --all-targets \
        --features '$feats' -- -D warnings"; then
        SUMMARY+=("GStreamer $gst: CLIPPY FAILED (features $feats)")
        FAILED=1
    fi
    t_build=$((SECONDS - t1))
    log "$V: cargo test --workspace$TEST_ARGS"
    t2=$SECONDS
    out=$CACHE/fdlink-gst-$(codename "$V")/test.log
    in_chroot "cargo test --locked --workspace --features '$feats' --no-fail-fast$TEST_ARGS 2>&1" | tee "$out"
    rc=${PIPESTATUS[0]}
    t_test=$((SECONDS - t2))
    passed=$(grep -Eo '^test result: .* ([0-9]+) passed' "$out" | grep -Eo '[0-9]+ passed' |
        awk '{s += $1} END {print s + 0}')
    failed=$(grep -Eo '^test result: .* ([0-9]+) failed' "$out" | grep -Eo '[0-9]+ failed' |
        awk '{s += $1} END {print s + 0}')
    [ "$rc" = 0 ] || FAILED=1
    line="GStreamer $gst: $passed passed, $failed failed"
    [ "$rc" = 0 ] || [ "$failed" != 0 ] || line="$line (cargo test exited $rc)"
    SUMMARY+=("$line, took $((SECONDS - t0)) s (setup $t_setup s, build $t_build s, tests $t_test s; log $out)")
    unmount_all
done

printf '%s\n' "${SUMMARY[@]}"
# 1: a build or a test failed; 3: nothing failed, but a chroot could not be made (the Debian
# mirror, the network: not the code).
[ "$FAILED" = 1 ] && exit 1
[ "$SETUP_FAILED" = 1 ] && exit 3
exit 0

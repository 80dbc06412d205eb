#!/usr/bin/env bash
# Cross-builds fdlink for aarch64 (arm64) on an x86_64 Debian 12 machine, and with --test runs
# the process tests of the build on arm64 under qemu-user emulation.
#
#   scripts/cross-aarch64.sh [--test] [--all] [--release] [--run 'COMMAND']
#
# Build: the plugin (target/aarch64-unknown-linux-gnu/debug/libgstfdlink.so) and the test
# binaries that --test runs (`cargo test --no-run`: the core crate's unit tests and
# tools/tests/{two_process,fanout,crashes}.rs with fdlink-peer); --all builds every test
# binary of the workspace instead; --release builds the release plugin only (what
# scripts/package-deb.sh arm64 packages). --run runs COMMAND in the build chroot, in the
# repository, with the cross environment (scripts/package-deb.sh uses it).
#
# Where it builds: Debian 12's libgstreamer-plugins-base1.0-dev is not Multi-Arch (its
# :arm64 and :amd64 packages cannot be installed together, and the host's amd64 one is what
# every other script builds with), so the cross build runs in an amd64 Debian 12 chroot with
# the arm64 architecture added, made once and cached in /var/cache/fdlink-cross-arm64:
# gcc-aarch64-linux-gnu as the linker, libgstreamer1.0-dev:arm64 and
# libgstreamer-plugins-base1.0-dev:arm64, pkg-config pointed at the arm64 .pc files. The
# repository is bind-mounted at the same path and ~/.cargo, ~/.rustup too (the host's
# toolchain, with the aarch64-unknown-linux-gnu target that rustup adds), so the build lands
# in the host's target/aarch64-unknown-linux-gnu.
#
# --test: an arm64 Debian 12 chroot (debootstrap --foreign, second stage run by qemu-user-static
# through binfmt_misc; cached in /var/cache/fdlink-arm64) with GStreamer's runtime packages,
# the repository bind-mounted at the same path (the test binaries name fdlink-peer by its
# absolute path, CARGO_BIN_EXE_fdlink-peer), runs the tests in TESTS and TIMING_TESTS below
# under emulation and prints which ran, passed, failed, and which were not run and why. Exits
# non-zero if the build or a test of TESTS failed.
#
# Needs root (debootstrap, chroot, mount, binfmt_misc). Environment: DEBIAN_MIRROR,
# FDLINK_CROSS_JOBS (cargo -j), FDLINK_TEST_THREADS (test threads under qemu, default 1),
# FDLINK_STRICT_TIMING=1 (a failed test of TIMING_TESTS fails the run too).
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CARGO_DIR=${CARGO_HOME:-$HOME/.cargo}
RUSTUP_DIR=${RUSTUP_HOME:-$HOME/.rustup}
TARGET=aarch64-unknown-linux-gnu
BUILD_DIR=/var/cache/fdlink-cross-arm64
RUN_DIR=/var/cache/fdlink-arm64
OUT=$REPO/target/$TARGET

# What --test runs (test binary, name filter, what it shows). Chosen to cover memfd zero-copy
# with per-frame checksums, the copy path, fan-out to two consumers and a killed consumer;
# each name is exact (--exact).
TESTS=(
    "two_process frames_cross_zero_copy_in_order_byte_identical_same_file memfd zero-copy across two processes, CRC of every frame on both sides, same file (dev, inode)"
    "two_process system_memory_is_copied_exactly_once_per_frame copy path: system memory copied once into a memfd, CRCs equal"
    "two_process two_consumers_each_get_every_frame fan-out: two consumer processes each get every frame"
    "two_process killed_consumers_free_their_buffers_and_fds consumers killed (SIGKILL): buffers and fds freed, producer goes on"
    "fanout block_policy_loses_nothing fan-out: a slow and a fast consumer, slow-policy=block, every frame to both, pattern checked"
)
# Run too, but their time bounds are the host's (a producer never waits 100 ms for a frame,
# never waits for its pool) and emulation on a loaded machine can exceed them: their results
# are printed and do not change the exit status unless FDLINK_STRICT_TIMING=1.
TIMING_TESTS=(
    "crashes a_hundred_killed_consumers_neither_stall_nor_leak 100 consumers SIGKILLed while streaming: the producer drops every one, keeps no fd, buffer or memory of them (then: no gap over 100 ms at its sink)"
    "fanout a_stopped_consumer_stalls_neither_the_producer_nor_the_others 8 consumers, one SIGSTOPped for 5 s: the others get every frame (then: the producer never waits for its pool)"
)
# What --test leaves out, and why (printed in the summary).
NOT_RUN=(
    "fdlink unit test transport::tests::too_many_fds_is_ctrunc_and_nothing_leaks: qemu-user receives into a control buffer twice the guest's and drops the fds that do not fit the guest's on copy-out without closing them, so the fd-leak check fails under emulation (fdlink closes every fd it is given; the test passes on the host)"
    "the other process tests (tools/tests/*.rs), the plugin's unit tests: not built for aarch64 by default (--all builds them); they run on the host (scripts/test.sh)"
    "dmabuf tests: no dmabuf exporter (udmabuf, dma-heap) under qemu-user in a chroot"
)

TEST=0 ALL=0 RELEASE=0 RUN=""
while [ $# -gt 0 ]; do
    case "$1" in
        --test) TEST=1 ;;
        --all) ALL=1 ;;
        --release) RELEASE=1 ;;
        --run) shift; RUN=${1:?--run needs a command} ;;
        -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
        *) echo "cross-aarch64: unknown argument '$1' (--test, --all, --release, --run CMD)" >&2; exit 2 ;;
    esac
    shift
done

log() { echo "cross-aarch64: $*" >&2; }
[ "$(id -u)" -eq 0 ] || { log "needs root (debootstrap, chroot, mount): run it with sudo"; exit 1; }
[ "$(uname -m)" = x86_64 ] || { log "cross-builds from x86_64; this machine is $(uname -m)"; exit 1; }

. "$REPO/scripts/lib/mounts.sh"
trap unmount_all EXIT
trap 'exit 130' INT TERM

# mount_common ROOT: what both chroots need: /proc, /dev, /dev/shm, /tmp and the repository.
mount_common() {
    local root=$1
    mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc" && MOUNTED+=("$root/proc"); } || return 1
    mountpoint -q "$root/dev" || bind /dev "$root/dev" || return 1
    mountpoint -q "$root/dev/shm" || bind /dev/shm "$root/dev/shm" || return 1
    mountpoint -q "$root/tmp" || bind /tmp "$root/tmp" || return 1
    mountpoint -q "$root$REPO" || bind "$REPO" "$root$REPO" || return 1
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
}

# make_chroot DIR ARCH PACKAGES: debootstraps (once) DIR/root for ARCH (amd64, arm64, or cross:
# amd64 with the arm64 architecture added) and installs PACKAGES there with apt, again whenever
# the list changes (DIR/root/.fdlink-ready holds the list installed). Logs in DIR.
make_chroot() {
    local dir=$1 arch=$2 tmp=$1/root.tmp root=$1/root packages
    # One line: the list goes into a sh -c command, and into the marker.
    packages=$(echo $3)
    [ "$(cat "$root/.fdlink-ready" 2>/dev/null)" = "$packages" ] && return 0
    mkdir -p "$dir"
    if [ ! -d "$root" ]; then
        command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2 ||
            { log "debootstrap not installable"; return 1; }
        if [ ! -e "$tmp/.debootstrapped" ]; then
            rm -rf "$tmp"
            log "debootstrap bookworm ($arch) into $tmp (once; a few minutes, more for arm64 under qemu)"
            if [ "$arch" = arm64 ]; then
                debootstrap --variant=minbase --arch=arm64 --foreign bookworm "$tmp" "$MIRROR" \
                    > "$dir/debootstrap.log" 2>&1 &&
                    chroot "$tmp" /debootstrap/debootstrap --second-stage >> "$dir/debootstrap.log" 2>&1
            else
                debootstrap --variant=minbase bookworm "$tmp" "$MIRROR" > "$dir/debootstrap.log" 2>&1
            fi || { log "debootstrap failed, see $dir/debootstrap.log"; return 1; }
            touch "$tmp/.debootstrapped"
        fi
        mv "$tmp" "$root"
    fi
    log "installing $packages in $root (log: $dir/apt.log)"
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    local pre="" unmount=0
    [ "$arch" = cross ] && pre="dpkg --add-architecture arm64 &&"
    mountpoint -q "$root/proc" || { mount -t proc proc "$root/proc" && unmount=1; } || return 1
    # The machine's clock may be past the Release file's Valid-Until.
    chroot "$root" sh -c "$pre apt-get -o Acquire::Check-Valid-Until=false update &&
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
        install -y --no-install-recommends $packages && apt-get clean" > "$dir/apt.log" 2>&1
    local rc=$?
    [ $unmount = 0 ] || umount "$root/proc" 2>/dev/null || umount -l "$root/proc" 2>/dev/null || true
    [ $rc = 0 ] || { log "apt-get in $root failed, see $dir/apt.log"; return 1; }
    echo "$packages" > "$root/.fdlink-ready"
}

# binfmt_misc with qemu-aarch64 registered with the F flag, so the interpreter is the host's
# and nothing needs copying into the chroot.
setup_binfmt() {
    dpkg -s qemu-user-static >/dev/null 2>&1 ||
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support >&2 ||
        { log "qemu-user-static not installable"; return 1; }
    [ -e /proc/sys/fs/binfmt_misc/status ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        { log "cannot mount binfmt_misc (mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc)"; return 1; }
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >&2 ||
        { log "cannot register qemu-aarch64 with binfmt_misc (update-binfmts --enable qemu-aarch64)"; return 1; }
    grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
        { log "qemu-aarch64 is registered but disabled in binfmt_misc"; return 1; }
}

BUILD_ROOT=$BUILD_DIR/root
setup_build() {
    rustup target list --installed 2>/dev/null | grep -qx "$TARGET" || rustup target add "$TARGET" >&2 ||
        { log "rustup target add $TARGET failed"; return 1; }
    make_chroot "$BUILD_DIR" cross "gcc libc6-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross pkg-config dpkg-dev git file
        ca-certificates libgstreamer1.0-dev:arm64 libgstreamer-plugins-base1.0-dev:arm64" || return 1
    mount_common "$BUILD_ROOT" || return 1
    # Read-write: cargo writes its registry cache and locks there.
    mountpoint -q "$BUILD_ROOT/root/.cargo" || bind "$CARGO_DIR" "$BUILD_ROOT/root/.cargo" || return 1
    mountpoint -q "$BUILD_ROOT/root/.rustup" || bind "$RUSTUP_DIR" "$BUILD_ROOT/root/.rustup" ro || return 1
}

# in_build COMMAND: runs a shell command in the build chroot, in the repository, with the
# cross environment. pkg-config reads only the arm64 .pc files (PKG_CONFIG_LIBDIR replaces
# the default path, so no amd64 library can be picked up).
in_build() {
    chroot "$BUILD_ROOT" env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin \
        CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup TERM=dumb \
        CARGO_BUILD_TARGET=$TARGET \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
        PKG_CONFIG_ALLOW_CROSS=1 \
        PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig \
        ${FDLINK_CROSS_JOBS:+CARGO_BUILD_JOBS=$FDLINK_CROSS_JOBS} \
        bash -c "cd '$REPO' && $1"
}

RUN_ROOT=$RUN_DIR/root
setup_run() {
    setup_binfmt || return 1
    make_chroot "$RUN_DIR" arm64 "gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good" ||
        return 1
    mount_common "$RUN_ROOT"
}

t0=$SECONDS
setup_build || { log "build chroot setup FAILED"; exit 1; }
t_setup=$((SECONDS - t0))

if [ -n "$RUN" ]; then
    in_build "$RUN"
    exit $?
fi

t1=$SECONDS
if [ "$RELEASE" = 1 ]; then
    log "cargo build --release -p gst-plugin-fdlink --target $TARGET"
    in_build "nice -n 10 cargo build --locked --release -p gst-plugin-fdlink" ||
        { log "release build FAILED"; exit 1; }
    log "built $OUT/release/libgstfdlink.so in $((SECONDS - t1)) s (chroot setup $t_setup s)"
    exit 0
fi

if [ "$ALL" = 1 ]; then
    tests_args="--workspace"
else
    tests_args="-p fdlink --lib -p fdlink-tools --test two_process --test fanout --test crashes"
fi
log "cargo build -p gst-plugin-fdlink -p fdlink-tools && cargo test --no-run $tests_args (target $TARGET)"
manifest=$OUT/fdlink-test-binaries.txt
mkdir -p "$OUT"
# The JSON messages name each test binary; the manifest maps the test target's name to it.
if ! in_build "nice -n 10 cargo build --locked -p gst-plugin-fdlink -p fdlink-tools &&
    nice -n 10 cargo test --locked --no-run $tests_args --message-format=json-render-diagnostics" \
    > "$OUT/build-messages.json"; then
    log "build FAILED (messages: $OUT/build-messages.json)"
    exit 1
fi
grep -o '"target":{[^}]*"name":"[^"]*"[^}]*}.*"executable":"[^"]*"' "$OUT/build-messages.json" |
    sed -E 's/.*"target":\{[^}]*"name":"([^"]*)".*"executable":"([^"]*)".*/\1 \2/' > "$manifest"
t_build=$((SECONDS - t1))
so=$OUT/debug/libgstfdlink.so
log "built in $t_build s (chroot setup $t_setup s): $so ($(file -b "$so" | cut -d, -f1-2)); $(wc -l < "$manifest") executables:"
sed 's/^/  /' "$manifest" >&2

[ "$TEST" = 1 ] || exit 0

t2=$SECONDS
setup_run || { log "arm64 run chroot setup FAILED"; exit 1; }
t_run_setup=$((SECONDS - t2))
log "arm64 chroot ready in $t_run_setup s: $(chroot "$RUN_ROOT" uname -m), $(chroot "$RUN_ROOT" gst-launch-1.0 --version | sed -n 2p)"

SUMMARY=()
FAILED=0
run_test() { # run_test BINARY_NAME FILTER DESCRIPTION [timing]
    local name=$1 filter=$2 what=$3 timing=${4:-} exe log ts rc
    exe=$(awk -v n="$name" '$1 == n { print $2; exit }' "$manifest")
    if [ -z "$exe" ]; then
        SUMMARY+=("NOT RUN  $name::$filter ($what): no test binary built")
        FAILED=1; return
    fi
    log "running $name::$filter under qemu-aarch64"
    log=$OUT/test-$name-${filter:-all}.log
    ts=$SECONDS
    chroot "$RUN_ROOT" env -i HOME=/root PATH=/usr/bin:/bin TERM=dumb RUST_BACKTRACE=1 \
        bash -c "cd '$REPO/tools' && '$exe' --exact '$filter' --test-threads=${FDLINK_TEST_THREADS:-1}" \
        > "$log" 2>&1
    rc=$?
    local res
    res=$(grep -E '^test result:' "$log" | tail -n 1)
    if [ $rc = 0 ] && grep -q ' 1 passed' <<< "$res"; then
        SUMMARY+=("PASSED   $name::$filter ($what), $((SECONDS - ts)) s")
    elif [ -n "$timing" ] && [ "${FDLINK_STRICT_TIMING:-0}" != 1 ]; then
        SUMMARY+=("FAILED (timing test, exit status unchanged) $name::$filter ($what), $((SECONDS - ts)) s: $(sed -n '/panicked at/,/stack backtrace/p' "$log" | sed '1d;$d' | tr -s '\n ' ' '); log $log")
    else
        SUMMARY+=("FAILED   $name::$filter ($what), exit $rc, $((SECONDS - ts)) s: log $log")
        FAILED=1
    fi
}
# The core crate's unit tests (wire codec, SCM_RIGHTS transport, memfd checks), all of them.
run_lib() {
    local exe log ts rc res
    exe=$(awk '$1 == "fdlink" { print $2; exit }' "$manifest")
    [ -n "$exe" ] || { SUMMARY+=("NOT RUN  fdlink unit tests: no test binary built"); FAILED=1; return; }
    log "running the fdlink core crate's unit tests under qemu-aarch64"
    log=$OUT/test-fdlink-lib.log
    ts=$SECONDS
    chroot "$RUN_ROOT" env -i HOME=/root PATH=/usr/bin:/bin TERM=dumb RUST_BACKTRACE=1 \
        bash -c "cd '$REPO/fdlink' && '$exe' --test-threads=${FDLINK_TEST_THREADS:-1} \
            --skip too_many_fds_is_ctrunc_and_nothing_leaks" > "$log" 2>&1
    rc=$?
    res=$(grep -E '^test result:' "$log" | tail -n 1)
    if [ $rc = 0 ]; then
        SUMMARY+=("PASSED   fdlink unit tests (codec, transport, fd checks; one skipped, below): ${res#test result: }, $((SECONDS - ts)) s")
    else
        SUMMARY+=("FAILED   fdlink unit tests, exit $rc: ${res#test result: }, $((SECONDS - ts)) s: log $log")
        FAILED=1
    fi
}

run_lib
for t in "${TESTS[@]}"; do
    read -r name filter what <<< "$t"
    run_test "$name" "$filter" "$what"
done
for t in "${TIMING_TESTS[@]}"; do
    read -r name filter what <<< "$t"
    run_test "$name" "$filter" "$what" timing
done

echo
echo "aarch64 under qemu-user ($(qemu-aarch64-static --version | head -n 1)), in $RUN_ROOT:"
printf '  %s\n' "${SUMMARY[@]}"
echo "  not run under emulation:"
printf '    %s\n' "${NOT_RUN[@]}"
echo "  times: build chroot $t_setup s, build $t_build s, run chroot $t_run_setup s, tests $((SECONDS - t2 - t_run_setup)) s"
exit $FAILED

#!/usr/bin/env bash
# Checks that fdlink installs like any GStreamer plugin, both ways users install it:
#
#   scripts/test-install.sh [--skip-cinstall] [--skip-deb] [--arm64]
#
# 1. cargo-c: `cargo cinstall` into a temporary prefix puts libgstfdlink.so in
#    $prefix/lib/gstreamer-1.0 (and gstfdlink.pc in $prefix/lib/pkgconfig), and
#    gst-inspect-1.0 finds fdlinksink and fdlinksrc there with only GST_PLUGIN_SYSTEM_PATH
#    pointed at that directory (GST_PLUGIN_PATH unset, a fresh registry). cargo-c is installed
#    if missing (`cargo install cargo-c`, several minutes). Then the C library of the
#    application API (`cargo cinstall -p fdlink-capi`: libfdlink, fdlink.h, fdlink.pc):
#    capi/examples/consume.c built against it through pkg-config alone takes 30 frames from a
#    producer using the plugin installed just before. And the core crate alone (`cargo
#    package -p fdlink`) and the tools (`cargo install --path tools`).
# 2. Debian package: scripts/package-deb.sh amd64 builds the .deb; it is installed with
#    dpkg -i (so its Depends must already be met by GStreamer's runtime packages) into a clean
#    Debian 12 chroot holding only gstreamer1.0-tools, -plugins-base and -plugins-good
#    (debootstrap minbase, made once and cached in /var/cache/fdlink-install-chroot; each run
#    works on an overlay of it, so the cache stays clean). There, with no environment variable:
#    gst-inspect-1.0 finds both elements, the plugin's libraries all resolve (ldd), and a
#    two-process pipeline runs: videotestsrc num-buffers=30 ! fdlinksink in one gst-launch-1.0
#    process, fdlinksrc ! filesink in another; both must exit 0 and the consumer's file must
#    be byte-identical to the producer's frames (30 frames of 320x240 I420).
#    --arm64: the same with the arm64 package too (scripts/package-deb.sh arm64), in an
#    overlay of scripts/cross-aarch64.sh --test's arm64 chroot (GStreamer's runtime packages
#    only), under qemu-user.
# Prints a summary; exits non-zero if anything failed. Needs root for part 2 (debootstrap,
# chroot, mount). Environment: DEBIAN_MIRROR.
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
CACHE=/var/cache/fdlink-install-chroot
CINSTALL=1 DEB=1 ARM64=0
for a in "$@"; do
    case "$a" in
        --skip-cinstall) CINSTALL=0 ;;
        --skip-deb) DEB=0 ;;
        --arm64) ARM64=1 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "test-install: unknown argument '$a' (--skip-cinstall, --skip-deb, --arm64)" >&2; exit 2 ;;
    esac
done
log() { echo "test-install: $*" >&2; }

SUMMARY=()
FAILED=0
ok() { SUMMARY+=("ok      $*"); }
bad() { SUMMARY+=("FAILED  $*"); FAILED=1; }

. "$REPO/scripts/lib/mounts.sh"
TMPDIRS=()
cleanup() {
    local i
    unmount_all
    for i in "${TMPDIRS[@]}"; do rm -rf "$i"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The elements and the plugin's name, as gst-inspect-1.0 prints them.
check_inspect() { # check_inspect WHERE OUTPUT_FILE
    if grep -q 'Factory Details' "$2" && grep -qE '^ +Filename +.*/libgstfdlink\.so$' "$2"; then
        return 0
    fi
    log "$1: gst-inspect-1.0 did not find the plugin:"; sed 's/^/    /' "$2" >&2
    return 1
}

cinstall_test() {
    local t0=$SECONDS prefix so
    if ! cargo cinstall --version >/dev/null 2>&1; then
        log "installing cargo-c (cargo install --locked cargo-c; several minutes)"
        # cargo-c's newest release may need a newer rustc than this one; cargo then names the
        # newest release that builds with it ("`cargo-c 0.10.24+cargo-0.98.0` supports rustc
        # 1.95"), which is installed instead.
        local out v
        if ! out=$(nice -n 10 cargo install --locked cargo-c 2>&1); then
            v=$(grep -o '`cargo-c [^` ]*` supports rustc' <<< "$out" | head -n 1 | cut -d' ' -f2 | tr -d '`')
            [ -n "$v" ] && log "cargo-c: installing $v, the newest for $(rustc --version)" &&
                nice -n 10 cargo install --locked cargo-c --version "${v%%+*}" >&2 ||
                { echo "$out" >&2; bad "cargo-c: cargo install cargo-c failed"; return; }
        fi
    fi
    prefix=$(mktemp -d /tmp/fdlink-cinstall.XXXXXX)
    TMPDIRS+=("$prefix")
    PLUGIN_DIR=$prefix/lib/gstreamer-1.0
    log "cargo cinstall -p gst-plugin-fdlink --prefix=$prefix --libdir=$prefix/lib"
    if ! nice -n 10 cargo cinstall --locked -p gst-plugin-fdlink --prefix="$prefix" \
        --libdir="$prefix/lib" > "$prefix.log" 2>&1; then
        sed 's/^/    /' "$prefix.log" >&2
        bad "cargo cinstall failed"; return
    fi
    log "installed: $(cd "$prefix" && find . -type f -o -type l | sort | tr '\n' ' ')"
    so=$prefix/lib/gstreamer-1.0/libgstfdlink.so
    [ -f "$so" ] || { bad "cargo cinstall: no $so"; return; }
    # A plugin is loaded by its file name: no soname versioning, no versioned copies.
    if compgen -G "$so.*" >/dev/null || [ -L "$so" ]; then
        bad "cargo cinstall: versioned plugin files ($(ls "$so"*)): versioning = false is missing"; return
    fi
    [ -f "$prefix/lib/pkgconfig/gstfdlink.pc" ] || { bad "cargo cinstall: no gstfdlink.pc"; return; }
    # Only the system path: the plugin is found where a distribution would put it.
    if env -u GST_PLUGIN_PATH GST_PLUGIN_SYSTEM_PATH="$prefix/lib/gstreamer-1.0" \
        GST_REGISTRY="$prefix/registry.bin" gst-inspect-1.0 fdlinksink > "$prefix/inspect.txt" 2>&1 &&
        check_inspect cinstall "$prefix/inspect.txt" &&
        env -u GST_PLUGIN_PATH GST_PLUGIN_SYSTEM_PATH="$prefix/lib/gstreamer-1.0" \
            GST_REGISTRY="$prefix/registry.bin" gst-inspect-1.0 fdlinksrc > "$prefix/inspect2.txt" 2>&1 &&
        check_inspect cinstall "$prefix/inspect2.txt"; then
        ok "cargo cinstall: lib/gstreamer-1.0/libgstfdlink.so ($(stat -c %s "$so") bytes) and lib/pkgconfig/gstfdlink.pc; gst-inspect-1.0 finds fdlinksink and fdlinksrc with GST_PLUGIN_SYSTEM_PATH only ($((SECONDS - t0)) s)"
    else
        bad "cargo cinstall: gst-inspect-1.0 fdlinksink/fdlinksrc with GST_PLUGIN_SYSTEM_PATH=$prefix/lib/gstreamer-1.0"
    fi
}

# The C library of the application API: `cargo cinstall -p fdlink-capi` installs libfdlink,
# fdlink.h and fdlink.pc; capi/examples/consume.c builds against them through pkg-config alone
# and takes 30 frames from a producer whose plugin the first check installed.
capi_cinstall_test() {
    local t0=$SECONDS prefix plugin_dir=${PLUGIN_DIR:-} sock out
    prefix=$(mktemp -d /tmp/fdlink-capi.XXXXXX)
    TMPDIRS+=("$prefix")
    log "cargo cinstall -p fdlink-capi --prefix=$prefix --libdir=$prefix/lib"
    if ! nice -n 10 cargo cinstall --locked -p fdlink-capi --prefix="$prefix" \
        --libdir="$prefix/lib" > "$prefix.log" 2>&1; then
        sed 's/^/    /' "$prefix.log" >&2
        bad "cargo cinstall -p fdlink-capi failed"; return
    fi
    for f in include/fdlink.h lib/pkgconfig/fdlink.pc lib/libfdlink.a; do
        [ -f "$prefix/$f" ] || { bad "cargo cinstall -p fdlink-capi: no $f"; return; }
    done
    # shellcheck disable=SC2046 # pkg-config's words are separate arguments
    if ! cc -std=c99 -Wall -Werror -o "$prefix/consume" capi/examples/consume.c \
        $(PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --cflags --libs fdlink) \
        2> "$prefix/cc.log"; then
        sed 's/^/    /' "$prefix/cc.log" >&2
        bad "capi/examples/consume.c does not build against the installed fdlink.pc"; return
    fi
    if [ -z "$plugin_dir" ]; then
        bad "the C consumer: no installed plugin to produce with (run without --skip-cinstall)"; return
    fi
    sock=$prefix/s.sock
    # The installed plugin beside GStreamer's own (videotestsrc).
    env -u GST_PLUGIN_PATH GST_REGISTRY="$prefix/registry.bin" \
        GST_PLUGIN_SYSTEM_PATH="$plugin_dir:$(pkg-config --variable=pluginsdir gstreamer-1.0)" \
        gst-launch-1.0 -q videotestsrc num-buffers=30 ! video/x-raw,format=NV12,width=320,height=240 \
        ! fdlinksink socket-path="$sock" wait-for-connection=true sync=false > "$prefix/producer.log" 2>&1 &
    local producer=$! i
    for i in $(seq 300); do [ -S "$sock" ] && break; sleep 0.1; done
    out=$(LD_LIBRARY_PATH="$prefix/lib" timeout 60 "$prefix/consume" "$sock" 2>&1)
    local rc=$?
    wait $producer
    if [ $rc -eq 0 ] && grep -q '^end frames 30' <<< "$out"; then
        ok "cargo cinstall -p fdlink-capi: include/fdlink.h, lib/libfdlink.{so,a}, lib/pkgconfig/fdlink.pc; consume.c built with pkg-config alone took 30 frames from the installed plugin ($((SECONDS - t0)) s)"
    else
        echo "$out" | tail -5 | sed 's/^/    /' >&2
        bad "the installed C library's example did not take 30 frames (rc $rc)"
    fi
}

# The GStreamer-free core crate stands alone (`cargo package` builds it from its own packaged
# sources, crates.io dependencies only), and the tools install as a cargo target.
crate_and_tools_test() {
    local t0=$SECONDS root
    if nice -n 10 cargo package --locked -p fdlink --allow-dirty > /tmp/fdlink-package.log 2>&1; then
        ok "cargo package -p fdlink: the core crate builds from its packaged sources alone ($((SECONDS - t0)) s)"
    else
        tail -5 /tmp/fdlink-package.log | sed 's/^/    /' >&2
        bad "cargo package -p fdlink failed (log: /tmp/fdlink-package.log)"
    fi
    t0=$SECONDS
    root=$(mktemp -d /tmp/fdlink-tools.XXXXXX)
    TMPDIRS+=("$root")
    if nice -n 10 cargo install --locked --path tools --root "$root" > "$root.log" 2>&1 &&
        grep -q 'usage: fdlink-peer' <<< "$("$root/bin/fdlink-peer" 2>&1)"; then
        ok "cargo install --path tools: $(cd "$root/bin" && ls | tr '\n' ' ')($((SECONDS - t0)) s)"
    else
        tail -5 "$root.log" | sed 's/^/    /' >&2
        bad "cargo install --path tools failed"
    fi
}

# make_chroot: the cached clean chroot, made once.
make_chroot() {
    local tmp=$CACHE/root.tmp
    [ -e "$CACHE/root/.fdlink-ready" ] && return 0
    mkdir -p "$CACHE"
    command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >&2 ||
        { log "debootstrap not installable"; return 1; }
    if [ ! -e "$tmp/.debootstrapped" ]; then
        rm -rf "$tmp"
        log "debootstrap bookworm into $tmp (once; a few minutes)"
        debootstrap --variant=minbase bookworm "$tmp" "$MIRROR" > "$CACHE/debootstrap.log" 2>&1 ||
            { log "debootstrap failed, see $CACHE/debootstrap.log"; return 1; }
        touch "$tmp/.debootstrapped"
    fi
    log "installing GStreamer's runtime packages in $tmp (log: $CACHE/apt.log)"
    cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
    # The machine's clock may be past the Release file's Valid-Until.
    chroot "$tmp" sh -c "apt-get -o Acquire::Check-Valid-Until=false update &&
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false install -y \
        --no-install-recommends gstreamer1.0-tools gstreamer1.0-plugins-base \
        gstreamer1.0-plugins-good && apt-get clean" > "$CACHE/apt.log" 2>&1 ||
        { log "apt-get in the chroot failed, see $CACHE/apt.log"; return 1; }
    touch "$tmp/.fdlink-ready"
    mv "$tmp" "$CACHE/root"
}

deb_test() { # deb_test ARCH
    local arch=$1 t0=$SECONDS deb work root base multiarch
    log "scripts/package-deb.sh $arch"
    deb=$(bash scripts/package-deb.sh "$arch" | tail -n 1)
    [ -f "$deb" ] || { bad "package-deb.sh $arch made no package"; return; }
    if [ "$arch" = arm64 ]; then
        # scripts/cross-aarch64.sh --test's chroot: GStreamer's runtime packages only.
        base=/var/cache/fdlink-arm64/root multiarch=aarch64-linux-gnu
        [ -e "$base/.fdlink-ready" ] && grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 ||
            { bad "arm64: no arm64 chroot with qemu-aarch64 in binfmt_misc: run scripts/cross-aarch64.sh --test once"; return; }
    else
        base=$CACHE/root multiarch=x86_64-linux-gnu
        make_chroot || { bad "clean Debian 12 chroot setup"; return; }
    fi
    # A throwaway overlay of the cached chroot: what dpkg installs goes to $work/upper.
    work=$(mktemp -d "${base%/root}/run.XXXXXX")
    TMPDIRS+=("$work")
    root=$work/root
    mkdir -p "$work/upper" "$work/work" "$root"
    mount -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/work" "$root" ||
        { bad "overlay mount of $base"; return; }
    MOUNTED+=("$root")
    mount -t proc proc "$root/proc" && MOUNTED+=("$root/proc")
    mount --bind /dev "$root/dev" && MOUNTED+=("$root/dev")
    mount --bind /dev/shm "$root/dev/shm" && MOUNTED+=("$root/dev/shm")
    cp "$deb" "$root/tmp/"
    in_root() { chroot "$root" env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=dumb sh -c "$1"; }

    local name=${deb##*/}
    if ! in_root "dpkg -i /tmp/$name" > "$work/dpkg.log" 2>&1; then
        sed 's/^/    /' "$work/dpkg.log" >&2
        bad "$arch: dpkg -i $name in the clean chroot (Depends not met by GStreamer's runtime packages?)"
        return
    fi
    local so=/usr/lib/$multiarch/gstreamer-1.0/libgstfdlink.so
    ok "dpkg -i $name into a clean Debian 12 $arch chroot (only gstreamer1.0-tools, -plugins-base, -plugins-good): installed $so"
    if in_root "ldd $so" > "$work/ldd.txt" 2>&1 && ! grep -q 'not found' "$work/ldd.txt"; then
        ok "$arch: ldd: all $(grep -c '=>' "$work/ldd.txt") libraries of the plugin resolve in the chroot"
    else
        sed 's/^/    /' "$work/ldd.txt" >&2; bad "$arch: ldd $so in the chroot"
    fi
    if in_root "gst-inspect-1.0 fdlinksink" > "$work/inspect.txt" 2>&1 &&
        check_inspect chroot "$work/inspect.txt" &&
        in_root "gst-inspect-1.0 fdlinksrc" > "$work/inspect2.txt" 2>&1 &&
        check_inspect chroot "$work/inspect2.txt"; then
        ok "$arch: gst-inspect-1.0 fdlinksink and fdlinksrc in the chroot, no environment variable"
    else
        bad "$arch: gst-inspect-1.0 in the chroot"
    fi

    # Two processes: the producer writes what it sends to prod.raw through a tee, the consumer
    # what it receives to cons.raw.
    local caps="video/x-raw,format=I420,width=320,height=240,framerate=30/1" n=30
    local sock=/tmp/fdlink-install.sock
    in_root "rm -f $sock /tmp/prod.raw /tmp/cons.raw"
    in_root "timeout 60 gst-launch-1.0 -q videotestsrc num-buffers=$n pattern=ball ! $caps ! tee name=t \
        t. ! queue ! fdlinksink socket-path=$sock wait-for-connection=true \
        t. ! queue ! filesink location=/tmp/prod.raw" > "$work/producer.log" 2>&1 &
    local ppid=$!
    in_root "timeout 60 gst-launch-1.0 -q fdlinksrc socket-path=$sock ! filesink location=/tmp/cons.raw" \
        > "$work/consumer.log" 2>&1
    local crc=$?
    wait $ppid
    local prc=$?
    local want=$((n * 320 * 240 * 3 / 2)) got sum_p sum_c
    got=$(stat -c %s "$root/tmp/cons.raw" 2>/dev/null || echo 0)
    sum_p=$(md5sum < "$root/tmp/prod.raw" 2>/dev/null | cut -d' ' -f1)
    sum_c=$(md5sum < "$root/tmp/cons.raw" 2>/dev/null | cut -d' ' -f1)
    if [ $prc = 0 ] && [ $crc = 0 ] && [ "$got" = "$want" ] && [ "$sum_p" = "$sum_c" ]; then
        ok "$arch: two-process pipeline in the chroot: producer and consumer exited 0, $n frames ($got bytes) crossed, consumer's bytes equal the producer's (md5 $sum_c)"
    else
        log "producer (exit $prc):"; sed 's/^/    /' "$work/producer.log" >&2
        log "consumer (exit $crc):"; sed 's/^/    /' "$work/consumer.log" >&2
        bad "$arch: two-process pipeline in the chroot: producer exit $prc, consumer exit $crc, $got of $want bytes, md5 producer $sum_p consumer $sum_c"
    fi
    ok "$arch: Debian package checks took $((SECONDS - t0)) s"
}

PLUGIN_DIR=""
if [ "$CINSTALL" = 1 ]; then
    cinstall_test
    capi_cinstall_test
    crate_and_tools_test
fi
if [ "$DEB" = 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        bad "Debian package: needs root (debootstrap, chroot, mount): run with sudo, or --skip-deb"
    else
        deb_test amd64
        [ "$ARM64" = 0 ] || deb_test arm64
    fi
fi

echo
echo "test-install summary:"
printf '  %s\n' "${SUMMARY[@]}"
exit $FAILED

# Mounts a script makes for its chroots, kept in MOUNTED and undone innermost first by
# unmount_all (the sourcing script calls it from its EXIT trap). Sourced by gst-versions.sh,
# cross-aarch64.sh, test-install.sh and, in the test VM, hw-tests/guest-matrix.sh.
MOUNTED=()

unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        # -R: an --rbind (the guest's /dev) comes with the mounts under it.
        umount -R "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" 2>/dev/null || true
    done
    MOUNTED=()
}

mount_at() { # mount_at DST MOUNT-ARGS...: mounts onto DST (made if missing)
    local dst=$1
    shift
    mkdir -p "$dst"
    mount "$@" "$dst" || return 1
    MOUNTED+=("$dst")
}

bind() { # bind SRC DST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2" || return 1
    MOUNTED+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2" || return 1; fi
}

# Mounts a script makes for its chroots, kept in MOUNTED and undone innermost first by
# unmount_all (the sourcing script calls it from its EXIT trap). Sourced by gst-versions.sh,
# cross-aarch64.sh and test-install.sh.
MOUNTED=()

unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount "${MOUNTED[$i]}" 2>/dev/null || umount -l "${MOUNTED[$i]}" 2>/dev/null || true
    done
    MOUNTED=()
}

bind() { # bind SRC DST [ro]
    mkdir -p "$2"
    mount --bind "$1" "$2" || return 1
    MOUNTED+=("$2")
    if [ "${3:-}" = ro ]; then mount -o remount,bind,ro "$2" || return 1; fi
}

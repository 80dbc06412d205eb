#!/bin/bash
# run.sh [-m MEM] [-c CPUS] [-t TIMEOUT_S] [-w WORKDIR] [-v] -- cmd [args...]
#
# Boots the fdlink test VM (qemu, TCG) and runs cmd as root in WORKDIR (default: $PWD) inside it.
# The host's / is the guest's / (read-only 9p + tmpfs overlay); WORKDIR is shared read-write at
# the same path. Exits with cmd's exit status; 125 if the guest panics, hangs past TIMEOUT_S or
# the harness itself fails. Works as a cargo runner:
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="/abs/path/hw-tests/vm/run.sh --"
# cmd's stdout goes to our stdout and its stderr to our stderr (each over its own virtio
# console), so callers that parse stdout (cargo, nextest --list) see only cmd's output; the
# kernel console goes to our stderr.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
CACHE=${FDLINK_VM_CACHE:-/var/cache/fdlink-vm}
MEM=${FDLINK_VM_MEM:-2G}
CPUS=${FDLINK_VM_CPUS:-$(nproc)}
TMO=${FDLINK_VM_TIMEOUT:-600}
WORK=$PWD
VERBOSE=${FDLINK_VM_VERBOSE:-0}

# A guest kernel that dies before it finished booting (before cmd ran) is booted once more:
# under TCG with several vCPUs the kernel's int3 code patching very rarely oopses at boot
# (seen once, 2026-12-04, in sched_clock_cpu during an initcall).
BOOT_TRY=${FDLINK_VM_BOOT_TRY:-1}
BOOT_TRIES=2
ARGS=("$@")
usage() { echo "usage: $0 [-m MEM] [-c CPUS] [-t TIMEOUT_S] [-w WORKDIR] [-v] -- cmd [args...]" >&2; exit 125; }
say() { echo "fdlink-vm: $*" >&2; }
while getopts "m:c:t:w:vh" o; do
  case $o in
    m) MEM=$OPTARG ;;
    c) CPUS=$OPTARG ;;
    t) TMO=$OPTARG ;;
    w) WORK=$OPTARG ;;
    v) VERBOSE=1 ;;
    *) usage ;;
  esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || usage
WORK=$(cd "$WORK" && pwd -P) || usage
[ "$WORK" != / ] || { say "WORKDIR must not be /"; exit 125; }
T0=$EPOCHREALTIME

# setup.sh is a quick no-op on a complete cache; only call it when the cache looks incomplete
# or setup.sh changed since (a fresh checkout is newer than a restored cache: one cheap call).
STAMP=$CACHE/stamp
kver() { sed -n 's/^KVER=//p' "$STAMP" 2>/dev/null | head -1; }
KVER=$(kver || true)
if [ -z "$KVER" ] || [ "$HERE/setup.sh" -nt "$STAMP" ] || [ ! -f "$CACHE/initramfs-$KVER.gz" ] ||
  [ ! -f "$CACHE/kernel-$KVER/fdlink-drivers" ]; then
  "$HERE/setup.sh" >&2 || { say "setup.sh failed"; exit 125; }
  KVER=$(kver)
fi
K=$CACHE/kernel-$KVER
REGDIR=$CACHE/gst-registry
mkdir -p "$REGDIR"

CTL=$(mktemp -d "${TMPDIR:-/tmp}/fdlink-vm.XXXXXX")
PIDS=()
# shellcheck disable=SC2317 # called via trap
cleanup() {
  # bash may run an inherited EXIT trap in a subshell (e.g. one killed by a signal): not ours.
  [ "$BASHPID" = "$$" ] || return 0
  local p
  [ -z "${QPID:-}" ] || kill "$QPID" 2>/dev/null || true
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$CTL"
}
trap cleanup EXIT

# Everything the guest's stage2 needs comes through this read-write "ctl" share.
echo "$WORK" >"$CTL/workdir"
[ -t 1 ] && : >"$CTL/stdout-tty"
[ -t 2 ] && : >"$CTL/stderr-tty"
printf '%q ' "$@" >"$CTL/cmd"
printf '%s %s\n' work "$WORK" reg "$REGDIR" >"$CTL/mounts"
if [ -n "${FDLINK_VM_MODULES+x}" ]; then
  echo "$FDLINK_VM_MODULES" >"$CTL/modules"
else
  awk '$2 == "module" { print $1 }' "$K/fdlink-drivers" | paste -sd' ' >"$CTL/modules"
fi
{
  # cargo/rustc, GStreamer and our own knobs, plus what shapes a program's output and the
  # LD_LIBRARY_PATH cargo sets for dylib crates; FDLINK_VM_ENV names any extra variables.
  re="^(CARGO|RUST|GST_|FDLINK_|LC_)|^(LD_LIBRARY_PATH|TERM|NO_COLOR|CLICOLOR|CLICOLOR_FORCE|LANG|TZ)\$"
  for v in ${FDLINK_VM_ENV:-}; do re+="|^$v\$"; done
  # (No process substitution here: a bash 5.2 bug makes a later wait print "wait_for: No
  # record of process".)
  for v in $(compgen -e); do
    [[ $v =~ $re ]] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  # Same filesystem as the host, so the host's PATH and HOME (cargo, rustup) are valid.
  printf 'export HOME=%q PATH=%q\n' "$HOME" "/usr/local/sbin:/usr/sbin:/sbin:$PATH"
  # The guest's plugins see devices the host lacks, so it keeps its own registry; it persists
  # in the cache: the first scan under TCG takes 20-50 s, later boots about 3 s.
  printf 'export GST_REGISTRY=%q\n' "$REGDIR/registry-$KVER.x86_64.bin"
} >"$CTL/env"

# Per-run part of the guest's boot; /init (setup.sh) did the mounts and the virtio consoles.
# Uses bash builtins where it can: each host binary costs a 9p read under TCG.
cat >"$CTL/stage2.sh" <<'EOS'
#!/bin/bash
# PID 1 of the guest after switch_root. fds 3/4: the command's stdout/stderr (hvc0/hvc1).
# No rc file on the host means "harness failure" (125).
C=/fdlink-ctl
# The kernel booted: from here on a failure is not retried (see BOOT_TRY).
: >$C/booted
halt() { echo o >/proc/sysrq-trigger; sleep 10; }
fatal() { echo "fdlink-vm guest: $*" >&2; halt; }
# shellcheck disable=SC1091
. $C/env
read -r -a mods <$C/modules
if [ ${#mods[@]} -gt 0 ]; then modprobe -a "${mods[@]}" || fatal "modprobe ${mods[*]} failed"; fi
for d in /dev/udmabuf /dev/dma_heap/system; do [ -c $d ] || fatal "$d missing"; done
cd "$(<$C/workdir)" || fatal "cannot cd to work dir"
# hvc writes are synchronous (the guest waits until qemu has written the bytes to its chardev),
# and the 9p shares are uncached: nothing to flush before the power-off.
# The command's stdout/stderr are ttys only where ours are (colours, buffering, isatty checks);
# otherwise a cat relays a pipe to the console.
o=3 e=4 relays=()
if [ ! -e $C/stdout-tty ]; then exec 5> >(exec cat >&3); relays+=($!); o=5; fi
if [ ! -e $C/stderr-tty ]; then exec 6> >(exec cat >&4); relays+=($!); e=6; fi
bash -c "$(<$C/cmd)" </dev/null >&$o 2>&$e 3>&- 4>&- 5>&- 6>&-
rc=$?
exec 5>&- 6>&-
# Leftover processes could hold the pipes open: stop everything but us and the relays.
for p in /proc/[0-9]*; do
  p=${p#/proc/}
  [[ $p == 1 || " ${relays[*]} " == *" $p "* ]] || kill -KILL "$p" 2>/dev/null
done
for p in "${relays[@]}"; do wait "$p"; done
echo $rc >$C/rc
halt
EOS
chmod +x "$CTL/stage2.sh"

# qemu "pipe" chardevs write NAME.out; readers copy them to our fds (not /proc/self/fd/N:
# reopening a redirected file truncates it). out/err: cmd's stdout/stderr; con: kernel console,
# minus the two lines every poweroff prints. We hold each FIFO open until qemu has
# exited, so no reader blocks in open() if qemu never starts, and none sees EOF early.
mkfifo "$CTL"/{out,err,con}.{in,out}
exec {HO}<>"$CTL/out.out" {HE}<>"$CTL/err.out" {HC}<>"$CTL/con.out"
cat "$CTL/out.out" {HO}>&- {HE}>&- {HC}>&- &
PIDS+=($!)
cat "$CTL/err.out" >&2 {HO}>&- {HE}>&- {HC}>&- &
PIDS+=($!)
grep --line-buffered -avE '\] (sysrq: Power Off|reboot: Power down)' "$CTL/con.out" >&2 {HO}>&- {HE}>&- {HC}>&- &
PIDS+=($!)

P9=security_model=none,multidevs=remap
read -r -a QEXTRA <<<"${FDLINK_VM_QEMU_EXTRA:-}"
# In the background so that a signal to us (Ctrl-C, CI cancel) runs the trap below at once
# instead of after qemu exits; timeout passes it on to qemu.
timeout --foreground -k 5 "$TMO" qemu-system-x86_64 -nodefaults -no-user-config -machine q35 \
  -accel tcg,thread=multi -cpu max -smp "$CPUS" -m "$MEM" -display none -vga none -no-reboot \
  -chardev pipe,id=con,path="$CTL/con" -serial chardev:con \
  -chardev pipe,id=out,path="$CTL/out" -chardev pipe,id=err,path="$CTL/err" \
  -device virtio-serial-pci,max_ports=2 \
  -device virtconsole,chardev=out,name=fdlink.stdout,nr=0 \
  -device virtconsole,chardev=err,name=fdlink.stderr,nr=1 \
  -kernel "$K/boot/vmlinuz-$KVER" -initrd "$CACHE/initramfs-$KVER.gz" \
  -append "console=ttyS0 quiet loglevel=3 panic=-1 mitigations=off ${FDLINK_VM_APPEND:-}" \
  -fsdev "local,id=r,path=/,readonly=on,$P9" -device virtio-9p-pci,fsdev=r,mount_tag=hostroot \
  -fsdev "local,id=k,path=$K/lib/modules,readonly=on,$P9" -device virtio-9p-pci,fsdev=k,mount_tag=kmods \
  -fsdev "local,id=c,path=$CTL,$P9" -device virtio-9p-pci,fsdev=c,mount_tag=ctl \
  -fsdev "local,id=w,path=$WORK,$P9" -device virtio-9p-pci,fsdev=w,mount_tag=work \
  -fsdev "local,id=g,path=$REGDIR,$P9" -device virtio-9p-pci,fsdev=g,mount_tag=reg \
  "${QEXTRA[@]}" </dev/null {HO}>&- {HE}>&- {HC}>&- &
QPID=$!
SIG=
for s in INT TERM HUP; do
  # shellcheck disable=SC2064 # expand $s now
  trap "SIG=$s; kill -$s $QPID 2>/dev/null" "$s"
done
while :; do
  qrc=0
  wait "$QPID" || qrc=$?
  # A trapped signal interrupts wait while qemu is still shutting down: wait again.
  kill -0 "$QPID" 2>/dev/null || break
done
trap - INT TERM HUP

# qemu is gone: dropping our ends gives the readers EOF once they have drained the FIFOs.
exec {HO}>&- {HE}>&- {HC}>&-
wait "${PIDS[@]}" 2>/dev/null || true
PIDS=()

el=$((${EPOCHREALTIME//[!0-9]/} - ${T0//[!0-9]/}))
el=$((el / 1000000)).$((el / 100000 % 10))
if [ -n "$SIG" ]; then
  say "interrupted by SIG$SIG (${el}s)"
  case $SIG in INT) rc=130 ;; TERM) rc=143 ;; *) rc=129 ;; esac
elif [ -f "$CTL/rc" ]; then
  read -r rc <"$CTL/rc"
  [ "$VERBOSE" = 1 ] && say "exit $rc after ${el}s"
else
  case $qrc in
    124 | 137) say "timed out after ${TMO}s (${el}s)" ;;
    *) say "guest did not report an exit status: panic or init failure, see above (qemu rc=$qrc, ${el}s)" ;;
  esac
  rc=125
  if [ "$qrc" != 124 ] && [ "$qrc" != 137 ] && [ ! -f "$CTL/booted" ] &&
    [ "$BOOT_TRY" -lt "$BOOT_TRIES" ]; then
    say "the guest kernel died before it finished booting, before cmd ran: booting again (try $((BOOT_TRY + 1)) of $BOOT_TRIES)"
    rm -rf "$CTL"
    trap - EXIT
    FDLINK_VM_BOOT_TRY=$((BOOT_TRY + 1)) exec "$0" "${ARGS[@]}"
  fi
fi
# Clean up here rather than in the EXIT trap: external commands run from an exiting bash's
# trap sometimes made it print "wait_for: No record of process".
rm -rf "$CTL"
trap - EXIT
exit "$rc"

#!/usr/bin/env python3
"""Splits each side's CPU per frame into steps, from `perf record` profiles of one harness pair.

benches/profile-steps.sh runs the pair; this reads its directory: `p.data`/`c.data` (perf,
cpu-clock, no call graphs) and `p.out`/`c.out` (the harness's RESULT lines). Each sample of
the steady state (the middle of the run, --time) is put in one step by its thread, library
and symbol; a step's share of the samples times the process's CPU per frame (the harness's
own CLOCK_PROCESS_CPUTIME_ID figure) is its µs per frame.
"""
import argparse
import json
import re
import subprocess
import sys
from collections import defaultdict

GST_LIBS = ("libgstreamer", "libgstbase", "libglib", "libgobject", "libgstvideo",
            "libgstallocators", "libgstcoreelements", "libgstvideotestsrc", "libgstapp")


def step(side, comm, dso, sym, threaded):
    """The step a sample belongs to (a short name), by who ran it and where. `threaded`: the
    process has a GStreamer streaming thread, so its main thread only waits (the raw baseline
    and the application consumer do everything on the main thread)."""
    kernel = dso == "[kernel.kallsyms]"
    if comm.startswith("fdlinksrc-read"):
        return "fdlinksrc's reader thread (its timed looks)"
    if comm.startswith("fdlinksink-ctl"):
        return "fdlinksink's control thread (reads the releases)"
    if threaded and (comm == "compare-harness" or comm.startswith("pool")):
        return "the harness's main thread"
    if kernel:
        if any(k in sym for k in ("unix_stream", "unix_dgram", "unix_seqpacket", "skb", "sock_", "scm_",
                                  "___sys_sendmsg", "___sys_recvmsg", "sendmsg", "recvmsg", "kmem_cache",
                                  "__alloc_skb", "fget", "fput")):
            return "kernel: socket send/receive"
        if any(k in sym for k in ("clear_page", "page_fault", "handle_mm", "do_anonymous", "filemap",
                                  "shmem", "mmap", "munmap", "unmap", "zap_", "tlb")):
            return "kernel: memory (map, fault, unmap)"
        return "kernel: wake-up, scheduling, poll, timers"
    if side == "produce" and (re.search(r"mem(move|cpy|set)", sym) or "copy_plane" in sym
                              or "videotestsrc" in dso or "orc" in dso):
        return "source (videotestsrc fills the frame)"
    if "compare-harness" in dso or "compare_harness" in sym:
        return "the harness binary (raw: its own code; fdlink-app: fdlink::consumer)" if not threaded else "harness probe (stamp)"
    if "libgstfdlink" in dso or "fdlink" in sym:
        if side == "produce":
            return "fdlink (hub, policy, packet, send)"
        return "fdlink (packet, import, buffer, release)"
    if any(lib in dso for lib in GST_LIBS):
        return "GStreamer (base class, pads, probes, fakesink)"
    if "libc" in dso or "ld-linux" in dso or "[vdso]" in dso:
        return "libc (syscall stubs, memcpy, malloc)"
    return "other: " + dso


def steady_window(data, share=(0.2, 0.9)):
    """perf's --time for the steady state: the middle of the span over which the streaming
    thread ran (GStreamer names it ELEMENT:src), or of all samples if there is none (the raw
    baseline is one thread)."""
    out = subprocess.run(["perf", "script", "-i", data, "-F", "comm,time"],
                         capture_output=True, text=True, check=True).stdout
    times, others = [], []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        t = float(parts[-1].rstrip(":"))
        times.append(t)
        if " ".join(parts[:-1]).endswith(":src"):
            others.append(t)
    # Percentiles, not the ends: a stray sample at teardown would stretch the span.
    span = sorted(others or times)
    a, b = span[len(span) // 50], span[len(span) * 49 // 50]
    return f"{a + share[0] * (b - a):.6f},{a + share[1] * (b - a):.6f}"


def steps(data, time_range):
    if time_range == "auto":
        time_range = steady_window(data)
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--sort", "comm,dso,sym", "--stdio",
         "-g", "none", "-n", "--time", time_range, "--field-separator", "\t"],
        capture_output=True, text=True, check=True).stdout
    counts = defaultdict(int)
    for line in out.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) < 5:
            continue
        n = int(parts[1])
        comm, dso, sym = parts[2].strip(), parts[3].strip(), re.sub(r"^\[.\]\s*", "", parts[4].strip())
        counts[(comm, dso, sym)] += n
    return counts


def result(path):
    for line in open(path):
        if line.startswith("RESULT "):
            return json.loads(line.split(" ", 1)[1])
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="directories of benches/profile-steps.sh (TRANSPORT=DIR)")
    ap.add_argument("--time", default="auto",
                    help="perf report --time for the steady state; auto: 20-90 %% of the "
                         "span the streaming thread ran over")
    ap.add_argument("--producer-only", action="store_true", help="no consumer was recorded (fan-out)")
    a = ap.parse_args()
    table = defaultdict(dict)
    cpu = {}
    for item in a.dirs:
        name, d = item.split("=", 1)
        for side, f in (("produce", "p"),) + ((("consume", "c"),) if not a.producer_only else ()):
            r = result(f"{d}/{f}.out")
            if r is None:
                print(f"profile-steps: no RESULT in {d}/{f}.out", file=sys.stderr)
                continue
            counts = steps(f"{d}/{f}.data", a.time)
            total = sum(counts.values()) or 1
            per = defaultdict(int)
            threaded = any(comm.endswith(":src") for comm, _, _ in counts)
            for (comm, dso, sym), n in counts.items():
                per[step(side, comm, dso, sym, threaded)] += n
            cpu[(name, side)] = r["cpu_us_per_frame"]
            for s, n in per.items():
                table[(side, s)][name] = n / total * r["cpu_us_per_frame"]
            table[(side, "(samples in the window)")][name] = total
    names = [i.split("=", 1)[0] for i in a.dirs]
    for side in ("produce",) if a.producer_only else ("consume", "produce"):
        print(f"\n**{'Consumer' if side == 'consume' else 'Producer'}**, µs per frame\n")
        print("| step | " + " | ".join(names) + " |")
        print("|---|" + "---:|" * len(names))
        rows = sorted((s for (sd, s) in table if sd == side and not s.startswith("(")),
                      key=lambda s: -max(table[(side, s)].values()))
        for s in rows:
            print(f"| {s} | " + " | ".join(
                f"{table[(side, s)].get(n, 0):.1f}" for n in names) + " |")
        print("| **CPU per frame (harness)** | " + " | ".join(
            f"**{cpu.get((n, side), 0):.1f}**" for n in names) + " |")
        print("| samples in the window | " + " | ".join(
            str(table[(side, '(samples in the window)')].get(n, 0)) for n in names) + " |")


if __name__ == "__main__":
    main()

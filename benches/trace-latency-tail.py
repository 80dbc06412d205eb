#!/usr/bin/env python3
"""For each slow frame of a harness latency run, the time the CPUs lost while it was in flight.

    trace-latency-tail.py SAMPLES PERF_SCHED_DATA

SAMPLES is the consumer's `samples=` file (sequence number, send and receive time in
CLOCK_MONOTONIC ns, latency in µs); PERF_SCHED_DATA a `perf sched record -k CLOCK_MONOTONIC`
trace of the same run. "Lost" is the wall time between two consecutive runtime accounts
(sched_stat_runtime) of one thread that stayed on its CPU, minus the runtime the kernel
accounted for it: a guest kernel leaves out steal time, the time the hypervisor ran
something else on that vCPU. Only gaps between two accounts of the same running thread are
counted: a gap that starts at a switch from idle is not, since the trace does not always
hold that switch. Used by benches/trace-latency-tail.sh.
"""
import re
import subprocess
import sys

# Gaps below this are accounting granularity, not a vCPU taken away.
MIN_LOST_NS = 50_000
EVENT = re.compile(r"\s*(.+?)\s+(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)")


def lost_intervals(perf_data):
    out = subprocess.run(
        ["perf", "script", "-i", perf_data, "-F", "comm,tid,cpu,time,event,trace"],
        capture_output=True, text=True, check=True).stdout
    last = {}  # cpu -> (time of the last account or switch, tid running since)
    lost = []  # (start s, end s, lost ns, cpu, thread name)
    for line in out.splitlines():
        m = EVENT.match(line)
        if not m:
            continue
        comm, tid, cpu, t, event, trace = m.groups()
        t, cpu = float(t), int(cpu)
        if event.endswith("sched_stat_runtime"):
            runtime = int(re.search(r"runtime=(\d+)", trace).group(1))
            if cpu in last and last[cpu][1] == tid and tid != "0":
                wall = (t - last[cpu][0]) * 1e9
                if wall - runtime > MIN_LOST_NS:
                    lost.append((last[cpu][0], t, wall - runtime, cpu, comm))
            last[cpu] = (t, tid)
        elif event.endswith("sched_switch"):
            last[cpu] = (t, re.search(r"next_pid=(\d+)", trace).group(1))
    return lost


def main():
    samples = []
    with open(sys.argv[1]) as f:
        for line in f:
            if not line.startswith("#"):
                seq, sent, received, us = line.split()
                samples.append((int(seq), int(sent), int(received), float(us)))
    if not samples:
        sys.exit("no samples: did the run deliver frames?")
    latencies = sorted(s[3] for s in samples)
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) * 99 // 100, len(latencies) - 1)]
    lost = lost_intervals(sys.argv[2])
    slow = [s for s in samples if s[3] > 2 * p50]
    print(f"{len(samples)} frames: p50 {p50:.1f} µs, p99 {p99:.1f} µs, worst {latencies[-1]:.1f} µs; "
          f"{len(slow)} slower than 2x p50")
    explained = 0
    for seq, sent, received, us in slow:
        a, b = sent / 1e9, received / 1e9
        hits = [(cpu, comm, ns / 1000) for (s, e, ns, cpu, comm) in lost if s < b and e > a]
        explained += bool(hits)
        where = ", ".join(f"CPU {c} ({comm}) lost {l:.0f} µs" for c, comm, l in hits)
        print(f"  frame {seq}: {us:.0f} µs; {where or 'no CPU lost time meanwhile'}")
    total_ms = sum(ns for (_, _, ns, _, _) in lost) / 1e6
    print(f"  slow frames with lost CPU time meanwhile: {explained} of {len(slow)}; the whole "
          f"trace has {len(lost)} gaps over {MIN_LOST_NS // 1000} µs, {total_ms:.1f} ms in all")


if __name__ == "__main__":
    main()

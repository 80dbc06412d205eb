#!/usr/bin/env python3
"""The steps of each frame's one-way latency, from a traced harness latency run.

    latency-steps.py TRANSPORT=DIR...

Each DIR is one run of benches/latency-steps.sh: `samples.txt` (the consumer's sequence,
stamp and arrival times, CLOCK_MONOTONIC ns), `trace.data` (perf, same clock: sendmsg
entries, recvmsg exits, wake-ups and switches of every thread), `producer.pid` and
`consumer.pid`. For every frame, from its stamp t0 to its arrival t5:
  t1  the producer's first sendmsg entered after t0 (the frame's packet),
  t2  the first wake-up of a consumer thread after t1 (its socket became readable),
  t3  that thread switched in,
  t4  its first recvmsg returned after t3 with bytes (the packet read),
and the steps are t1-t0 ... t5-t4; a frame whose consumer thread was already running (no
wake-up between t1 and t4) counts its wake-up steps as 0. Prints each step's median, the
median of the whole, the consumer's wake-ups per frame (its threads switched in over the
run), and how many frames were matched.
"""
import bisect
import re
import statistics
import subprocess
import sys
from collections import defaultdict

LINE = re.compile(r"\s*(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")
STEPS = [
    ("producer: stamp to sendmsg", 0, 1),
    ("kernel: sendmsg to the consumer's wake-up", 1, 2),
    ("scheduler: wake-up to running", 2, 3),
    ("consumer: running to the packet read", 3, 4),
    ("consumer: packet read to the probe", 4, 5),
]


def events(data, producer, consumer):
    out = subprocess.run(["perf", "script", "-i", data, "-F", "pid,tid,time,event,trace"],
                         capture_output=True, text=True, check=True).stdout
    sends, wakes, recvs = [], defaultdict(list), defaultdict(list)
    switches_in = defaultdict(list)
    consumer_tids = set()
    # Every thread of the consumer: those that ran (switched out) while recorded.
    threads = set()
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, tid, t, ev, trace = int(m[1]), int(m[2]), int(float(m[3]) * 1e9), m[4], m[5]
        if ev == "syscalls:sys_enter_sendmsg" and pid == producer:
            sends.append(t)
        elif ev == "syscalls:sys_exit_recvmsg" and pid == consumer:
            ret = int(trace.strip(), 16) if trace.strip().startswith("0x") else -1
            if 0 < ret < 1 << 31:
                recvs[tid].append(t)
                consumer_tids.add(tid)
        elif ev == "sched:sched_wakeup":
            w = re.search(r"pid=(\d+)", trace)
            if w:
                wakes[int(w[1])].append(t)
        elif ev == "sched:sched_switch":
            if pid == consumer:
                threads.add(tid)
            s = re.search(r"next_pid=(\d+)", trace)
            if s:
                switches_in[int(s[1])].append(t)
    return sorted(sends), wakes, switches_in, recvs, consumer_tids, threads


def first_at_or_after(times, t):
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def last_before(times, t):
    i = bisect.bisect_left(times, t)
    return times[i - 1] if i > 0 else None


def steps_of(d):
    producer = int(open(f"{d}/producer.pid").read())
    consumer = int(open(f"{d}/consumer.pid").read())
    sends, wakes, switches_in, recvs, tids, threads = events(
        f"{d}/trace.data", producer, consumer)
    frames = []
    for line in open(f"{d}/samples.txt"):
        if line.startswith("#"):
            continue
        seq, t0, t5, _ = line.split()
        frames.append((int(t0), int(t5)))
    per_step = defaultdict(list)
    totals = []
    for t0, t5 in frames:
        t1 = first_at_or_after(sends, t0)
        if t1 is None or t1 > t5:
            continue
        # The consumer thread that read the packet: the first recvmsg with bytes after t1.
        best = None
        for tid in tids:
            t4 = first_at_or_after(recvs[tid], t1)
            if t4 is not None and t4 <= t5 and (best is None or t4 < best[1]):
                best = (tid, t4)
        if best is None:
            continue
        tid, t4 = best
        t2 = first_at_or_after(wakes[tid], t1)
        t3 = last_before(switches_in[tid], t4)
        if t2 is None or t2 > t4 or t3 is None or t3 < t2:
            t2 = t3 = t1  # already running: no wake-up in the way
        ts = (t0, t1, t2, t3, t4, t5)
        for name, a, b in STEPS:
            per_step[name].append((ts[b] - ts[a]) / 1000)
        totals.append((t5 - t0) / 1000)
    # The consumer's wake-ups: its threads switched in, from the first frame's stamp to the
    # last one's arrival, per frame.
    wakeups = 0.0
    if len(frames) > 1:
        a, b = frames[0][0], frames[-1][1]
        n = sum(1 for tid in threads for t in switches_in[tid] if a <= t <= b)
        wakeups = n / len(frames)
    return per_step, totals, len(frames), wakeups


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    runs = defaultdict(list)
    for item in sys.argv[1:]:
        name, d = item.split("=", 1)
        runs[name].append(d)
    names = list(runs)
    cols = {}
    for name in names:
        per_step, totals, n, wakes = defaultdict(list), [], 0, []
        for d in runs[name]:
            p, t, f, w = steps_of(d)
            for k, v in p.items():
                per_step[k] += v
            totals += t
            n += f
            wakes.append(w)
        cols[name] = (per_step, totals, n, sum(wakes) / len(wakes))
    print("\n**One-way latency by step**, median µs over the matched frames\n")
    print("| step | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for step, _, _ in STEPS:
        print(f"| {step} | " + " | ".join(
            f"{statistics.median(cols[n][0][step]):.1f}" if cols[n][0][step] else "-"
            for n in names) + " |")
    print("| **stamp to probe (p50)** | " + " | ".join(
        f"**{statistics.median(cols[n][1]):.1f}**" if cols[n][1] else "-" for n in names) + " |")
    print("| consumer wake-ups per frame (its threads switched in) | " + " | ".join(
        f"{cols[n][3]:.2f}" for n in names) + " |")
    print("| frames matched / traced | " + " | ".join(
        f"{len(cols[n][1])}/{cols[n][2]}" for n in names) + " |")


if __name__ == "__main__":
    main()

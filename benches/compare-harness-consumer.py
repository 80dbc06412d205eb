#!/usr/bin/env python3
"""The consumer side of the `fdlink-py` transport of benches/compare-peers.sh: a Python
program on the `fdlink` module (python/, built into target/pyenv by scripts/python-setup.sh)
takes the frames of the harness's fdlinksink producer, as tools/src/compare-harness/app.rs
does for `fdlink-app` with `fdlink::consumer`.

    target/pyenv/bin/python -I benches/compare-harness-consumer.py consume fdlink-py key=value...

It takes the harness's arguments (tools/src/compare-harness/main.rs) and measures as
tools/src/compare-harness/record.rs does: per frame it reads the producer's 16-byte header
(magic, sequence number, CLOCK_MONOTONIC ns) in place through the frame's buffer (a
memoryview on the mapped memfd, no copy), releases the frame, and counts latency, gaps,
arrival times and process CPU. It prints the same `RESULT {json}` line, with the same keys.
"""
import os
import struct
import sys
import time

import fdlink

MAGIC = 0x4B4C4446  # "FDLK"
# Latency samples of the first frames are left out (record.rs WARMUP_FRAMES).
WARMUP_FRAMES = 10
HEADER = struct.Struct("<IIQ")


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def cpu_us():
    """User + system CPU of the whole process (all threads), in microseconds."""
    return time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID) // 1000


def steal_ms():
    """Time the hypervisor ran something else on this machine's CPUs, in ms (see record.rs)."""
    try:
        with open("/proc/stat") as f:
            ticks = int(f.readline().split()[8])
    except (OSError, IndexError, ValueError):
        ticks = 0
    return ticks * 1000 // max(os.sysconf("SC_CLK_TCK"), 1)


def parse_args(argv):
    if len(argv) < 2:
        sys.exit("usage: compare-harness-consumer.py consume fdlink-py key=value...")
    a = {
        "role": argv[0], "transport": argv[1], "width": 640, "height": 480, "frames": 300,
        "rate": 0, "path": "/tmp/fdlink-compare.sock", "go": "/tmp/fdlink-compare.go",
        "done": "/tmp/fdlink-compare.done", "timeout": 120, "source": "videotestsrc",
        "samples": None, "consumers": None, "warmup": 0,
    }
    for kv in argv[2:]:
        k, v = kv.split("=", 1)
        if k not in a:
            sys.exit(f"unknown argument {k}")
        a[k] = int(v) if k in ("width", "height", "frames", "rate", "timeout", "consumers",
                               "warmup") else v
    return a


class Record:
    """record.rs's Record, consumer side: the same counts and the same JSON."""

    def __init__(self, warmup):
        self.warmup = warmup
        self.frames = 0
        self.first_ns = self.last_ns = 0
        self.first_cpu = self.last_cpu = 0
        self.first_steal_ms = 0
        self.next_seq = 0
        self.gaps = 0
        self.bad = 0
        self.arrivals = []  # (seq, sent ns, received ns) after the warm-up

    def mark(self):
        now = mono_ns()
        if self.frames == 0:
            self.first_ns = now
            self.first_cpu = cpu_us()
            self.first_steal_ms = steal_ms()
        self.last_ns = now
        self.last_cpu = cpu_us()
        self.frames += 1

    def consumed(self, header):
        now = mono_ns()
        if header is None:
            self.bad += 1
        else:
            seq, ts = header
            if seq < self.warmup:
                self.next_seq = seq + 1
                return
            expect = max(self.next_seq, self.warmup)
            if seq > expect:
                self.gaps += seq - expect
            self.next_seq = seq + 1
            if seq >= WARMUP_FRAMES and now >= ts:
                self.arrivals.append((seq, ts, now))
        self.mark()

    def json(self, a, extra):
        steal = steal_ms() - self.first_steal_ms if self.frames > 0 else 0
        steal = max(steal, 0)
        if a["samples"]:
            with open(a["samples"], "w") as f:
                f.write("# seq sent_ns received_ns latency_us\n")
                for seq, sent, received in self.arrivals:
                    f.write(f"{seq} {sent} {received} {(received - sent) / 1000:.1f}\n")
        lat = sorted(r - s for _, s, r in self.arrivals)

        def pct(p):
            if not lat:
                return "null"
            return f"{lat[min(len(lat) * p // 100, len(lat) - 1)] / 1000:.1f}"

        span = max(self.last_ns - self.first_ns, 0)
        n = max(self.frames - 1, 0)
        fps = f"{n * 1e9 / span:.1f}" if span > 0 else "null"
        cpu = f"{(self.last_cpu - self.first_cpu) / n:.1f}" if n > 0 else "null"
        worst = f"{lat[-1] / 1000:.1f}" if lat else "null"
        expected = max(a["frames"] - a["warmup"], 0)
        return (
            f'{{"role":"{a["role"]}","transport":"{a["transport"]}","width":{a["width"]},'
            f'"height":{a["height"]},"rate":{a["rate"]},"expected":{expected},'
            f'"frames":{self.frames},"gaps":{self.gaps},"bad":{self.bad},"fps":{fps},'
            f'"cpu_us_per_frame":{cpu},"lat_samples":{len(lat)},"lat_p50_us":{pct(50)},'
            f'"lat_p99_us":{pct(99)},"lat_max_us":{worst},"steal_ms":{steal}{extra}}}'
        )


def json_str(s):
    return s.replace("\\", "\\\\").replace('"', '\\"')


def read_header(frame):
    """(sequence, sent ns) from the frame's first 16 bytes, read in place; None if absent."""
    with memoryview(frame) as view:
        if len(view) < HEADER.size:
            return None
        magic, seq, ts = HEADER.unpack_from(view)
    return (seq, ts) if magic == MAGIC else None


def main():
    a = parse_args(sys.argv[1:])
    deadline = time.monotonic() + a["timeout"]
    while not os.path.exists(a["path"]):
        if time.monotonic() > deadline:
            sys.exit(f"{a['path']} never appeared")
        time.sleep(0.01)
    while True:
        try:
            consumer = fdlink.Consumer(a["path"])
            break
        except fdlink.ConnectError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
    with open(a["go"], "wb") as f:
        f.write(b"go")
    rec = Record(a["warmup"])
    end, error = "timeout", ""
    try:
        while (left := deadline - time.monotonic()) > 0:
            frame = consumer.poll(left)
            if frame is None:
                if consumer.ended:
                    end = "eos"
                    break
                continue
            try:
                header = read_header(frame)
            except (BufferError, ValueError, OSError):
                header = None
            # Counted before the release, as app.rs drops its frame after the count.
            rec.consumed(header)
            frame.release()
            if rec.frames == max(a["frames"] - a["warmup"], 0):
                end = "all"
                break
    except fdlink.Error as e:
        end, error = "error", str(e)
    with open(a["done"], "wb") as f:
        f.write(b"done")
    print("RESULT " + rec.json(a, f',"end":"{end}","error":"{json_str(error)}"'), flush=True)
    consumer.close()


if __name__ == "__main__":
    main()

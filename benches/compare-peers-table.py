#!/usr/bin/env python3
"""Turns the results of benches/compare-peers.sh into Markdown tables (stdlib only).

Input: TSV lines `env mode transport size rep "role {json}"`, one per process and run, as
written by compare-peers.sh. Figures come straight from the harness; this only takes the
median over repetitions and divides.
"""
import argparse
import json
import re
import statistics
from collections import defaultdict

SIZES = ["640x480", "1920x1080", "3840x2160"]
ORDER = [
    ("host", "local"), ("host", "raw"), ("host", "fdlink"), ("host", "fdlink-app"),
    ("host", "fdlink-py"), ("host", "fdlink-copy"), ("host", "shm"),
    ("host", "ipcpipeline"), ("forky", "local"), ("forky", "fdlink"), ("forky", "fdlink-copy"),
    ("forky", "unixfd"), ("forky", "unixfd-copy"),
]
LABEL = {
    "local": "no transport: source alone (one process)",
    "raw": "raw SCM_RIGHTS baseline",
    "fdlink": "fdlink (memfd pool, zero-copy)",
    "fdlink-app": "fdlink to an application (fdlink::consumer)",
    "fdlink-py": "fdlink, Python consumer",
    "fdlink-copy": "fdlink copy path",
    "shm": "shmsink/shmsrc",
    "ipcpipeline": "ipcpipelinesink/src",
    "unixfd": "unixfdsink/src",
    "unixfd-copy": "unixfd copy path",
}
# Ratio references: (env, transport) each row is divided by, same size.
REFS = [("raw", ("host", "raw")), ("shm", ("host", "shm")),
        ("ipcpipeline", ("host", "ipcpipeline")), ("unixfd", ("forky", "unixfd"))]


def load(path):
    runs = defaultdict(lambda: defaultdict(dict))  # (env,mode,transport,size) -> rep -> role
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6:
                continue
            env, mode, transport, size, rep, rest = parts
            role, js = rest.split(" ", 1)
            runs[(env, mode, transport, size)][rep][role] = json.loads(js)
    return runs


def num(x, digits=0):
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{digits}f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    if r >= 10:
        return f"{r:.0f}"
    return f"{r:.2f}" if r >= 0.1 else f"{r:.2g}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summarize(reps):
    """Median figures over repetitions, plus the checks."""
    out = {"failed": None}
    prods = [r.get("produce", {}) for r in reps.values()]
    cons = [r.get("consume", {}) for r in reps.values()]
    fails = [d["failed"] for d in prods + cons if "failed" in d]
    if not any(cons):
        # "local": producer only; its own fps and stamps stand in.
        cons = [{k: v for k, v in p.items() if k != "cpu_us_per_frame"} | {"end": "all"}
                for p in prods]
    if fails and all("failed" in c for c in cons):
        out["failed"] = fails[0]
        return out
    ok_cons = [c for c in cons if "failed" not in c]
    ok_prod = [p for p in prods if "failed" not in p]
    out["fps"] = med([c.get("fps") for c in ok_cons])
    fpss = [c.get("fps") for c in ok_cons if c.get("fps") is not None]
    out["fps_range"] = (min(fpss), max(fpss)) if len(fpss) > 1 else None
    out["p50"] = med([c.get("lat_p50_us") for c in ok_cons])
    out["p99"] = med([c.get("lat_p99_us") for c in ok_cons])
    maxes = [c.get("lat_max_us") for c in ok_cons if c.get("lat_max_us") is not None]
    out["max"] = max(maxes) if maxes else None
    # Older result files have no steal_ms: None, shown as "-".
    steals = [c.get("steal_ms") for c in ok_cons if c.get("steal_ms") is not None]
    out["steal"] = sum(steals) if steals else None
    out["cpu_p"] = med([p.get("cpu_us_per_frame") for p in ok_prod])
    out["cpu_c"] = med([c.get("cpu_us_per_frame") for c in ok_cons])
    recv = sum(c.get("frames", 0) for c in ok_cons)
    sent = sum(p.get("frames", 0) for p in ok_prod)
    expected = sum(c.get("expected", 0) for c in ok_cons)
    gaps = sum(c.get("gaps", 0) for c in ok_cons)
    bad = sum(c.get("bad", 0) for c in ok_cons)
    check = f"{recv}/{sent}"
    notes = []
    if sent != expected:
        notes.append(f"{expected} asked")
    if gaps:
        notes.append(f"{gaps} dropped")
    if bad:
        notes.append(f"{bad} unreadable stamps")
    ends = {c.get("end") for c in ok_cons} - {"all", "eos"}
    if ends:
        notes.append("end: " + ",".join(sorted(ends)))
    errs = {d.get("error") for d in ok_cons + ok_prod} - {"", None}
    if errs:
        notes.append("error: " + "; ".join(sorted(errs))[:120])
    if fails:
        notes.append(f"{len(fails)} process(es) failed: {fails[0][:80]}")
    wc = sum(p.get("writable_copies", 0) for p in ok_prod)
    if wc:
        notes.append(f"stamp probe copied {wc} buffers")
    out["check"] = check + (" (" + "; ".join(notes) + ")" if notes else "")
    # The sink's own account of its path (fdlinksink only has it).
    zc = cp = 0
    have = False
    for p in ok_prod:
        s = p.get("sink_stats", "")
        m1 = re.search(r"frames-zero-copy=\(guint64\)(\d+)", s)
        m2 = re.search(r"frames-copied=\(guint64\)(\d+)", s)
        if m1 and m2:
            have = True
            zc += int(m1.group(1))
            cp += int(m2.group(1))
    mems = sorted({p.get("sink_input_memory", "") for p in ok_prod} - {""})
    path = []
    if mems:
        path.append("sink gets " + "/".join(mems))
    if have:
        path.append(f"fdlinksink: zero-copy {zc}, copied {cp}")
    out["path"] = "; ".join(path)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    for k in ["kernel", "cpu", "cores", "host-gst", "forky-gst", "date", "load", "quick",
              "reps", "lat-frames", "tp-frames", "pf-frames", "forky-reason"]:
        ap.add_argument("--" + k, default="")
    a = ap.parse_args()
    runs = load(a.results)
    summ = {k: summarize(v) for k, v in runs.items()}

    gst = {"host": a.host_gst, "forky": a.forky_gst if not a.forky_reason else "1.28"}
    mode = "quick" if a.quick == "1" else "full"
    tp_frames = dict(zip(SIZES, a.tp_frames.split()))
    print(f"Run of {a.date} ({mode} mode): kernel {a.kernel}, {a.cpu}, {a.cores} cores; "
          f"GStreamer {a.host_gst} (Debian 12, host) and {a.forky_gst} (Debian forky "
          f"chroot). Load average (1/5/15 min): {a.load}.")
    print()

    def rows(mode_name, cells):
        for size in SIZES:
            for env, t in ORDER:
                label = LABEL[t]
                ver = "-" if t == "raw" else (gst[env].split() or ["?"])[0]
                key = (env, mode_name, t, size)
                if env == "forky" and a.forky_reason:
                    yield [label, "1.28", size, f"not run: {a.forky_reason}"]
                    continue
                if key not in summ:
                    continue
                s = summ[key]
                if s["failed"]:
                    yield [label, ver, size, f"not run: {s['failed']}"]
                    continue
                yield [label, ver, size] + cells(s, size, env, t)

    def ref(mode_name, size, refkey, field):
        s = summ.get((refkey[0], mode_name, refkey[1], size))
        if not s or s["failed"]:
            return None
        return s.get(field)

    def table(header, body):
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" for _ in header) + "|")
        for r in body:
            if len(r) < len(header):
                r = r + [""] * (len(header) - len(r))
            print("| " + " | ".join(r) + " |")
        print()

    print(f"**Throughput** (unthrottled: non-live source, `sync=false`, consumer releases each "
          f"frame at once; frames per run {tp_frames.get('640x480')}/"
          f"{tp_frames.get('1920x1080')}/{tp_frames.get('3840x2160')} by size; median of "
          f"{a.reps} run(s), range in brackets). fps is counted on the consumer. "
          f"Ratios: this row's fps / the reference's fps at the same size (higher is better).")
    print()

    def tp_cells_of(mode_name):
        def tp_cells(s, size, env, t):
            fps = num(s["fps"])
            if s["fps_range"]:
                fps += f" [{num(s['fps_range'][0])}-{num(s['fps_range'][1])}]"
            # raw has no GStreamer source: its one throughput row is every table's reference.
            rs = [ratio(s["fps"], ref("throughput" if rk[1] == "raw" else mode_name, size, rk,
                                      "fps")) if t != "local" else ""
                  for _, rk in REFS]
            return [fps] + rs + [num(s["cpu_p"], 1), num(s["cpu_c"], 1), s["check"], s["path"]]
        return tp_cells

    tp_header = ["transport", "GStreamer", "size", "fps", "×raw", "×shm", "×ipcpipeline",
                 "×unixfd", "producer CPU µs/frame", "consumer CPU µs/frame",
                 "frames received/sent", "path check"]
    table(tp_header, list(rows("throughput", tp_cells_of("throughput"))))

    pf_frames = dict(zip(SIZES, a.pf_frames.split()))
    if any(k[1] == "throughput-prefilled" for k in summ):
        print(f"**Throughput, prefilled source** (as above, with the harness's prefilled source "
              f"instead of videotestsrc: frames from the same pool, each pool buffer written "
              f"once before or at its first use and never again, as a hardware decoder's "
              f"frames are not written by the CPU; frames per run "
              f"{pf_frames.get('640x480')}/{pf_frames.get('1920x1080')}/"
              f"{pf_frames.get('3840x2160')} by size, the first tenth of them, while "
              f"upstream's pool grows to its working size, sent but not counted; median of "
              f"{a.reps} run(s)). The raw "
              f"row is the one above (it has no GStreamer source).")
        print()
        pf_rows = [r for r in rows("throughput-prefilled", tp_cells_of("throughput-prefilled"))
                   if r[0] != LABEL["raw"]]
        table(tp_header, pf_rows)

    print(f"**One-way latency** (separate runs: live source at 30 fps, {a.lat_frames} frames, "
          f"first 10 left out; producer probe before the sink to consumer probe after the "
          f"source, CLOCK_MONOTONIC; p50 and p99 are medians of {a.reps} run(s), except "
          f"\"no transport\", one run). Ratios: this row's p50 (p99) / the reference's p50 "
          f"(p99) (lower is better). \"worst\" is the slowest frame of all runs. \"steal\" is "
          f"the time the hypervisor ran something else on this machine's CPUs during the "
          f"runs, all runs and CPUs together (`/proc/stat`, 10 ms ticks): a vCPU taken away "
          f"for a millisecond makes a tail no transport caused. CPU per frame here includes "
          f"what a process spends while idle between frames.")
    print()

    def lat_cells(s, size, env, t):
        rs = [ratio(s["p50"], ref("latency", size, rk, "p50")) for _, rk in REFS]
        p99_raw = ratio(s["p99"], ref("latency", size, REFS[0][1], "p99"))
        steal = "-" if s.get("steal") is None else f"{s['steal']:.0f}"
        return [num(s["p50"]), num(s["p99"]), num(s.get("max")), rs[0], p99_raw] + rs[1:] + [
            steal, num(s["cpu_p"], 1), num(s["cpu_c"], 1), s["check"], s["path"]]

    table(["transport", "GStreamer", "size", "p50 µs", "p99 µs", "worst µs", "p50 ×raw",
           "p99 ×raw", "p50 ×shm", "p50 ×ipcpipeline", "p50 ×unixfd", "steal ms",
           "producer CPU µs/frame", "consumer CPU µs/frame", "frames received/sent",
           "path check"],
          list(rows("latency", lat_cells)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The fan-out sweep of benches/compare-peers.sh --fanout: one fdlink producer, N consumers.

A live 3840x2160 NV12 stream at 30 fps goes from one producer process (`SOURCE ! fdlinksink`)
to N consumer processes (`fdlinksrc ! fakesink sync=false`), N = 0 (nobody connected: the
sink drops every frame, the baseline), 1, 2, 4, 8, 16, 32. Both sides are the compare
harness (tools/src/compare-harness/), as in the other comparison runs. The producer starts
its stream once all N consumers are connected; the first --warmup seconds of frames are sent
but not counted, then every process measures the next --window seconds of frames (the same
sequence numbers on every side): its CPU (CLOCK_PROCESS_CPUTIME_ID, all threads, user +
system; /proc/PID/stat counts in 10 ms ticks, too coarse for a few µs per frame) from the
first to the last frame of the window, divided by the frames in between, and the frames it
saw. SOURCE is the harness's prefilled source made live (default: frames from fdlinksink's
pool, each pool buffer written once, paced by the clock like a camera; the producer's CPU
is then the transport's) or `videotestsrc is-live=true pattern=black` (--source
videotestsrc: it writes all 12 MB of every frame, which the producer's CPU then includes).

    compare-peers-fanout.py --harness BIN --plugin-dir DIR [--reps N] [--out FILE.md]
        [--svg FILE.svg] [--source prefilled|videotestsrc] [--counts "0 1 2 4 8 16 32"]

Writes the Markdown table to stdout and --out, the raw RESULT lines beside it (.tsv), and the
curve (producer and consumer µs per frame against N) to --svg. With --reps, each figure is
the median over the repetitions (runs go N by N within a repetition, so a change in the
machine's load hits every N alike); frames received is the lowest of all.
"""
import argparse
import html
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

FPS = 30
WIDTH, HEIGHT = 3840, 2160


def log(msg):
    print(f"[fanout] {msg}", file=sys.stderr, flush=True)


def result_of(path):
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("RESULT "):
                    return json.loads(line[len("RESULT "):])
    except (OSError, ValueError) as e:
        return {"failed": f"{e}"}
    return None


def why_failed(err_path, rc):
    try:
        with open(err_path) as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        lines = []
    return f"exit {rc}: {lines[-1][:200] if lines else 'no output'}"


def run_one(a, n, rep):
    """One producer and n consumers; returns {"producer": result, "consumers": [result]}."""
    base = tempfile.mkdtemp(prefix="fdlink-fanout.")
    frames = (a.warmup + a.window) * FPS
    common = ["fdlink", f"width={WIDTH}", f"height={HEIGHT}", f"frames={frames}",
              f"rate={FPS}", f"warmup={a.warmup * FPS}", f"path={base}/sock",
              f"timeout={a.timeout}", f"source={a.source}"]
    env = dict(os.environ, GST_PLUGIN_PATH=a.plugin_dir)
    env.pop("GST_PLUGIN_PATH_1_0", None)  # it would override GST_PLUGIN_PATH

    def spawn(role, name, extra):
        out = open(f"{base}/{name}.out", "w")
        err = open(f"{base}/{name}.err", "w")
        return subprocess.Popen(["timeout", str(a.timeout + 30), a.harness, role] + common + extra,
                                stdout=out, stderr=err, env=env)

    log(f"N={n} rep {rep}/{a.reps}")
    producer = spawn("produce", "p", [f"consumers={n}", f"go={base}/go", f"done={base}/done"])
    consumers = [spawn("consume", f"c{i}", [f"go={base}/go.{i}", f"done={base}/done.{i}"])
                 for i in range(n)]
    crcs = [c.wait() for c in consumers]
    # The producer keeps its frames until every consumer is gone.
    open(f"{base}/done", "w").close()
    prc = producer.wait()
    run = {"producer": result_of(f"{base}/p.out") or {"failed": why_failed(f"{base}/p.err", prc)},
           "consumers": [result_of(f"{base}/c{i}.out")
                         or {"failed": why_failed(f"{base}/c{i}.err", crcs[i])}
                         for i in range(n)]}
    shutil.rmtree(base, ignore_errors=True)
    return run


def num(r, key):
    v = r.get(key) if r else None
    return v if isinstance(v, (int, float)) else None


def summarise(runs, counts):
    """counts -> medians over the repetitions; None where a run gave no figure."""
    rows = {}
    for n in counts:
        reps = runs[n]
        prod, cmean, cmax, got_min, failures = [], [], [], None, []
        expected = None
        for run in reps:
            p = run["producer"]
            if "failed" in p or p.get("error"):
                failures.append(f"producer: {p.get('failed') or p.get('error')}")
            elif num(p, "cpu_us_per_frame") is not None:
                prod.append(p["cpu_us_per_frame"])
            expected = num(p, "expected") or expected
            cs = [c for c in run["consumers"] if "failed" not in c]
            failures += [f"consumer: {c['failed']}" for c in run["consumers"] if "failed" in c]
            cpus = [c["cpu_us_per_frame"] for c in cs if num(c, "cpu_us_per_frame") is not None]
            if cpus:
                cmean.append(statistics.mean(cpus))
                cmax.append(max(cpus))
            for c in run["consumers"]:
                got = num(c, "frames") or 0
                got_min = got if got_min is None else min(got_min, got)
        med = (lambda v: statistics.median(v) if v else None)
        rows[n] = {"prod": med(prod), "cmean": med(cmean), "cmax": med(cmax),
                   "got_min": got_min, "expected": expected, "failures": failures}
    return rows


def fmt(v, digits=0):
    return "–" if v is None else f"{v:.{digits}f}"


def table(rows, counts, meta):
    one = rows.get(1, {}).get("prod")
    zero = rows.get(0, {}).get("prod")
    out = [f"### Fan-out, {WIDTH}x{HEIGHT} NV12 live at {FPS} fps, "
           f"source {meta['source_label']}", "",
           f"{meta['date']}; {meta['machine']}; {meta['reps']} repetition(s), medians; "
           f"{meta['window']} s counted after {meta['warmup']} s of warm-up; load "
           f"{meta['load']}; sweep took {meta['took']:.0f} s.", "",
           "| consumers | producer µs/frame | ratio to 1 | µs per added consumer | "
           "consumer µs/frame mean | consumer µs/frame max | frames received min/expected |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for n in counts:
        r = rows[n]
        p = r["prod"]
        ratio = p / one if (p is not None and one and n >= 1) else None
        added = (p - one) / (n - 1) if (p is not None and one is not None and n >= 2) else None
        got = "–" if n == 0 else f"{r['got_min']}/{r['expected']}"
        label = "0 (none: baseline)" if n == 0 else str(n)
        out.append(f"| {label} | {fmt(p)} | {fmt(ratio, 2)} | {fmt(added, 1)} | "
                   f"{fmt(r['cmean'])} | {fmt(r['cmax'])} | {got} |")
    out.append("")
    big = max((n for n in counts if rows[n]["prod"] is not None), default=None)
    if one is not None and big and big > 1:
        p = rows[big]["prod"]
        ratio, added = p / one, (p - one) / (big - 1)
        out.append(f"Targets at N={big}: producer CPU per frame {ratio:.2f}x N=1 "
                   f"(target <= 1.5x: {'met' if ratio <= 1.5 else 'not met'}); "
                   f"{added:.1f} µs per added consumer per frame (target <= 10 µs: "
                   f"{'met' if added <= 10 else 'not met'}).")
        if zero is not None:
            out.append(f"Against no consumer at all ({zero:.0f} µs/frame): "
                       f"{(p - zero) / big:.1f} µs per consumer per frame at N={big}.")
    for n in counts:
        for f in rows[n]["failures"]:
            out.append(f"- N={n}: {f}")
    return "\n".join(out) + "\n"


def svg(rows, counts, note, title):
    W, H = 840, 420
    LEFT, RIGHT, TOP, BOTTOM = 70, 560, 60, 360
    ns = [n for n in counts if n >= 1]
    vals = [rows[n][k] for n in counts for k in ("prod", "cmean", "cmax")
            if rows[n][k] is not None]
    one = rows.get(1, {}).get("prod")
    if one is not None:
        vals += [one * 1.5, one + 10 * (max(ns) - 1)]
    ymax = max(vals) * 1.1 if vals else 1
    step = 10 ** math.floor(math.log10(ymax / 5)) if ymax > 0 else 1
    for m in (1, 2, 5, 10):
        if ymax / (step * m) <= 8:
            step *= m
            break
    ymax = math.ceil(ymax / step) * step
    lx1 = math.log2(max(ns))

    def px(n):
        return LEFT + (math.log2(n) / lx1 if lx1 else 0) * (RIGHT - LEFT)

    def py(v):
        return BOTTOM - v / ymax * (BOTTOM - TOP)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="22" font-size="15">{html.escape(title)}</text>',
           f'<text x="{LEFT}" y="40" fill="#555555">{html.escape(note)}</text>']
    v = 0
    while v <= ymax + 1e-9:
        y = py(v)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" stroke="#e4e4e4"/>')
        out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
        v += step
    for n in ns:
        x = px(n)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{BOTTOM}" stroke="#eeeeee"/>')
        out.append(f'<text x="{x:.1f}" y="{BOTTOM + 16}" text-anchor="middle">{n}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
               f'fill="none" stroke="#333333"/>')
    out.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{BOTTOM + 36}" text-anchor="middle">'
               f'consumer processes (log scale)</text>')
    out.append(f'<text transform="translate(18 {(TOP + BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">CPU per frame, µs (user + system)</text>')
    series = [("prod", "#1f77b4", "", "producer"),
              ("cmean", "#2ca02c", "", "consumer, mean"),
              ("cmax", "#2ca02c", ' stroke-dasharray="4,3"', "consumer, max")]
    ly = TOP + 8
    for key, colour, dash, label in series:
        pts = [(px(n), py(rows[n][key])) for n in ns if rows[n][key] is not None]
        if not pts:
            continue
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.8"{dash} points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y in pts) + '"/>')
        for x, y in pts:
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"/>')
        out.append(f'<line x1="{RIGHT + 20}" y1="{ly}" x2="{RIGHT + 48}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{RIGHT + 54}" y="{ly + 4}">{label}</text>')
        ly += 22
    if one is not None:
        # The other target: 10 µs per added consumer over N=1.
        pts = " ".join(f"{px(n):.1f},{py(one + 10 * (n - 1)):.1f}" for n in ns)
        out.append(f'<polyline fill="none" stroke="#ff7f0e" stroke-dasharray="2,3" '
                   f'points="{pts}"/>')
        out.append(f'<line x1="{RIGHT + 20}" y1="{ly}" x2="{RIGHT + 48}" y2="{ly}" '
                   f'stroke="#ff7f0e" stroke-dasharray="2,3"/>')
        out.append(f'<text x="{RIGHT + 54}" y="{ly + 4}">target: +10 µs per added consumer</text>')
        ly += 22
    refs = []
    if one is not None:
        refs.append((one * 1.5, "#d62728", "target: 1.5x producer at N=1"))
    zero = rows.get(0, {}).get("prod")
    if zero is not None:
        refs.append((zero, "#999999", "producer, no consumer"))
    for value, colour, label in refs:
        y = py(value)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" '
                   f'stroke="{colour}" stroke-dasharray="2,3"/>')
        out.append(f'<line x1="{RIGHT + 20}" y1="{ly}" x2="{RIGHT + 48}" y2="{ly}" '
                   f'stroke="{colour}" stroke-dasharray="2,3"/>')
        out.append(f'<text x="{RIGHT + 54}" y="{ly + 4}">{label}</text>')
        ly += 22
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--harness")
    ap.add_argument("--plugin-dir")
    ap.add_argument("--replot", metavar="TSV",
                    help="no runs: the table and curve again from an earlier run's .tsv")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--counts", default="0 1 2 4 8 16 32")
    ap.add_argument("--warmup", type=int, default=2, help="seconds sent but not counted")
    ap.add_argument("--window", type=int, default=10, help="seconds counted")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per process")
    ap.add_argument("--source", choices=("prefilled", "videotestsrc"), default="prefilled")
    ap.add_argument("--out", required=True, help="the Markdown table; .tsv beside it")
    ap.add_argument("--svg", help="the curve")
    a = ap.parse_args()
    if a.replot:
        return replot(a)
    if not (a.harness and a.plugin_dir):
        ap.error("--harness and --plugin-dir are needed unless --replot")
    counts = [int(c) for c in a.counts.split()]
    start = time.time()
    load_start = open("/proc/loadavg").read().split()[:3]
    runs = {n: [] for n in counts}
    tsv = os.path.splitext(a.out)[0] + ".tsv"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(tsv, "w") as raw:
        raw.write("# meta " + json.dumps(vars(a)) + "\n")
        for rep in range(1, a.reps + 1):
            for n in counts:
                run = run_one(a, n, rep)
                runs[n].append(run)
                raw.write(f"{n}\t{rep}\tproducer\t{json.dumps(run['producer'])}\n")
                for i, c in enumerate(run["consumers"]):
                    raw.write(f"{n}\t{rep}\tconsumer {i}\t{json.dumps(c)}\n")
                raw.flush()
    took = time.time() - start
    load_end = open("/proc/loadavg").read().split()[:3]
    gst = subprocess.run(["gst-launch-1.0", "--version"], capture_output=True, text=True).stdout
    gst = next((ln.split()[-1] for ln in gst.splitlines() if ln.startswith("GStreamer ")), "?")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "?")
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    source_label = ("prefilled (harness source made live: pool buffers written once)"
                    if a.source == "prefilled" else "videotestsrc is-live=true pattern=black")
    meta = {"date": date, "reps": a.reps, "window": a.window, "warmup": a.warmup,
            "machine": f"{os.cpu_count()} cores ({cpu}), kernel {platform.release()}, "
                       f"GStreamer {gst}",
            "load": f"{' '.join(load_start)} at the start, {' '.join(load_end)} at the end",
            "took": took, "source_label": source_label}
    with open(tsv, "a") as raw:
        raw.write("# report " + json.dumps(meta) + "\n")
    report(a, runs, counts, meta, gst)
    log(f"table in {a.out}, raw results in {tsv}; {took:.0f} s")


def report(a, runs, counts, meta, gst):
    rows = summarise(runs, counts)
    text = table(rows, counts, meta)
    with open(a.out, "w") as f:
        f.write(text)
    sys.stdout.write(text)
    if a.svg:
        note = (f"{meta['date']}, {os.cpu_count()} cores, GStreamer {gst}, source "
                f"{a.source}; median of {meta['reps']} run(s), {meta['window']} s each")
        with open(a.svg, "w") as f:
            f.write(svg(rows, counts, note,
                        f"Fan-out: CPU per frame, {WIDTH}x{HEIGHT} NV12 live at {FPS} fps"))
        log(f"curve in {a.svg}")


def replot(a):
    """The report of an earlier run, from its .tsv (its `# report` line has the run's facts)."""
    runs, meta = {}, None
    with open(a.replot) as f:
        for line in f:
            if line.startswith("# report "):
                meta = json.loads(line[len("# report "):])
            if line.startswith("#"):
                continue
            n, rep, role, js = line.rstrip("\n").split("\t", 3)
            reps = runs.setdefault(int(n), {})
            run = reps.setdefault(int(rep), {"producer": None, "consumers": []})
            if role == "producer":
                run["producer"] = json.loads(js)
            else:
                run["consumers"].append(json.loads(js))
    if meta is None:
        sys.exit(f"{a.replot} has no '# report' line: it is not a finished run")
    counts = sorted(runs)
    runs = {n: [r for _, r in sorted(reps.items())] for n, reps in runs.items()}
    a.source = "videotestsrc" if "videotestsrc" in meta["source_label"] else "prefilled"
    gst = meta["machine"].rsplit("GStreamer ", 1)[-1]
    report(a, runs, counts, meta, gst)


if __name__ == "__main__":
    main()

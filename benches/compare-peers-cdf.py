#!/usr/bin/env python3
"""Draws one SVG latency CDF per size from the per-frame samples of benches/compare-peers.sh.

Input: TSV lines `env mode transport size rep "lat_us lat_us ..."` (the .samples.tsv beside
the results), one per latency run. Each line of a picture is one transport (all repetitions
pooled): the fraction of frames that arrived within x µs, on a log-x axis. Stdlib only: the
SVG is written by hand, so the comparison needs nothing matplotlib would pull in.

    compare-peers-cdf.py SAMPLES --prefix OUT/compare.cdf- [--note "run of ..."]

writes OUT/compare.cdf-640x480.svg and so on, one per size found.
"""
import argparse
import html
import math
from collections import defaultdict

# (env, transport) in legend order, with a colour per transport; 1.28 (forky) rows dashed.
ORDER = [
    ("host", "raw"), ("host", "fdlink"), ("host", "fdlink-app"), ("host", "fdlink-py"),
    ("host", "fdlink-copy"),
    ("host", "shm"), ("host", "ipcpipeline"), ("forky", "fdlink"), ("forky", "fdlink-copy"),
    ("forky", "unixfd"), ("forky", "unixfd-copy"),
]
COLOUR = {
    "raw": "#000000", "fdlink": "#1f77b4", "fdlink-app": "#8c564b", "fdlink-py": "#e377c2",
    "fdlink-copy": "#17becf",
    "shm": "#2ca02c",
    "ipcpipeline": "#9467bd", "unixfd": "#d62728", "unixfd-copy": "#ff7f0e",
}
LABEL = {
    "raw": "raw SCM_RIGHTS", "fdlink": "fdlink zero-copy", "fdlink-app": "fdlink to an app",
    "fdlink-py": "fdlink, Python consumer",
    "fdlink-copy": "fdlink copy path",
    "shm": "shmsink/shmsrc", "ipcpipeline": "ipcpipeline", "unixfd": "unixfd",
    "unixfd-copy": "unixfd copy path",
}
GST = {"host": "1.22", "forky": "1.28"}

W, H = 990, 460
LEFT, RIGHT, TOP, BOTTOM = 70, 660, 50, 390  # plot area; the legend sits right of it


def load(path):
    samples = defaultdict(list)  # (size, env, transport) -> latencies in µs
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 6 or parts[1] != "latency":
                continue
            env, _, transport, size, _, values = parts
            samples[(size, env, transport)] += [float(v) for v in values.split()]
    return samples


def nice_ticks(lo, hi):
    """1-2-5 ticks from lo to hi (log axis)."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def label_us(v):
    if v >= 1000:
        ms = v / 1000
        return f"{ms:g} ms"
    return f"{v:g}"


def svg_for(size, lines, note):
    """lines: [(env, transport, sorted latencies)]."""
    # The axis starts at the decade below the lowest line's 1st percentile: a stray frame of
    # a few µs would otherwise add decades of empty axis (frames below sit on its left edge).
    lo = min(s[len(s) // 100] for _, _, s in lines)
    hi = max(s[-1] for _, _, s in lines)
    x0 = 10 ** math.floor(math.log10(max(lo, 1.0)))
    x1 = 10 ** math.ceil(math.log10(hi))
    if x1 / hi >= 2:
        x1 = hi * 1.2  # no empty half-decade on the right
    lx0, lx1 = math.log10(x0), math.log10(x1)

    def px(v):
        return LEFT + (math.log10(max(v, x0)) - lx0) / (lx1 - lx0) * (RIGHT - LEFT)

    def py(p):
        return BOTTOM - p * (BOTTOM - TOP)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="#ffffff"/>',
           f'<text x="{LEFT}" y="22" font-size="15">One-way latency CDF, {size} NV12, '
           f'live videotestsrc at 30 fps</text>',
           f'<text x="{LEFT}" y="40" fill="#555555">{html.escape(note)}</text>']
    # Grid and axes.
    for i in range(11):
        p = i / 10
        y = py(p)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{RIGHT}" y2="{y:.1f}" '
                   f'stroke="#e4e4e4"/>')
        if i % 2 == 0:
            out.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                       f'{i * 10}%</text>')
    y99 = py(0.99)
    out.append(f'<line x1="{LEFT}" y1="{y99:.1f}" x2="{RIGHT}" y2="{y99:.1f}" '
               f'stroke="#999999" stroke-dasharray="2,3"/>')
    out.append(f'<text x="{RIGHT + 4}" y="{y99 + 4:.1f}" fill="#777777">p99</text>')
    y50 = py(0.5)
    out.append(f'<text x="{RIGHT + 4}" y="{y50 + 4:.1f}" fill="#777777">p50</text>')
    # Labels at 1-2-5 for up to three decades, at the decades only beyond (they would overlap).
    few = lx1 - lx0 <= 3.05
    for t in nice_ticks(x0, x1):
        x = px(t)
        decade = str(t)[0] == "1"
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{BOTTOM}" '
                   f'stroke="{"#d0d0d0" if decade else "#eeeeee"}"/>')
        if decade or few:
            out.append(f'<text x="{x:.1f}" y="{BOTTOM + 16}" text-anchor="middle">'
                       f'{label_us(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{RIGHT - LEFT}" height="{BOTTOM - TOP}" '
               f'fill="none" stroke="#333333"/>')
    out.append(f'<text x="{(LEFT + RIGHT) / 2}" y="{BOTTOM + 36}" text-anchor="middle">'
               f'latency, µs (log scale): producer stamp before the sink to consumer probe '
               f'after the source</text>')
    out.append(f'<text transform="translate(18 {(TOP + BOTTOM) / 2}) rotate(-90)" '
               f'text-anchor="middle">frames arrived within x</text>')
    # One polyline per transport; a point is kept once it moved over a pixel, so a few
    # hundred points draw a thousand frames.
    ly = TOP + 8
    for env, t, s in lines:
        n = len(s)
        pts, last = [], None
        for i, v in enumerate(s):
            p = (px(v), py((i + 1) / n))
            if last is None or i == n - 1 or abs(p[0] - last[0]) + abs(p[1] - last[1]) >= 1.5:
                pts.append(f"{p[0]:.1f},{p[1]:.1f}")
                last = p
        dash = ' stroke-dasharray="6,3"' if env == "forky" else ""
        colour = COLOUR[t]
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6"{dash} '
                   f'points="{" ".join(pts)}"/>')
        p50 = s[n // 2]
        p99 = s[min(n * 99 // 100, n - 1)]
        out.append(f'<line x1="{RIGHT + 34}" y1="{ly}" x2="{RIGHT + 62}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"{dash}/>')
        gst = "" if t == "raw" else f" ({GST[env]})"
        out.append(f'<text x="{RIGHT + 68}" y="{ly + 4}">{LABEL[t]}{gst}</text>')
        out.append(f'<text x="{RIGHT + 68}" y="{ly + 18}" fill="#666666" font-size="11">'
                   f'p50 {p50:.0f}, p99 {p99:.0f} µs, {n} frames</text>')
        ly += 36
    out.append('</svg>')
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("samples")
    ap.add_argument("--prefix", required=True, help="output path before WxH.svg")
    ap.add_argument("--note", default="", help="a line under the title: the run")
    a = ap.parse_args()
    samples = load(a.samples)
    sizes = sorted({k[0] for k in samples}, key=lambda s: int(s.split("x")[0]))
    for size in sizes:
        lines = [(env, t, sorted(samples[(size, env, t)])) for env, t in ORDER
                 if samples.get((size, env, t))]
        if not lines:
            continue
        path = f"{a.prefix}{size}.svg"
        with open(path, "w") as f:
            f.write(svg_for(size, lines, a.note))
        print(path)


if __name__ == "__main__":
    main()

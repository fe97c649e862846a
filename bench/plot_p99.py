#!/usr/bin/env python3
"""Draws p99 latency against store size, one panel per search query and one line per backend,
from the JSON lines `bench/search.sh` prints (the query lines of a run, in its order; runs from
before `_revinclude` and history were timed have the first six only, and those panels lack
their points).

    python3 bench/plot_p99.py OUT.svg BACKEND:N:RUN.jsonl [BACKEND:N:RUN.jsonl ...]

BACKEND names the line (sqlite, postgres), N the Observations in the store, RUN.jsonl one
search.sh run's output (lines of other labels than trialbridge or trialbridge-BACKEND, and load
lines, are skipped). Plain SVG, no dependencies.
"""
import json
import math
import sys

QUERIES = ["token", "subject= page", "date range", "code-value-quantity", "_include", "_sort",
           "_revinclude", "type history"]
EARLIER_RUNS = 6
COLOURS = {"sqlite": "#1f77b4", "postgres": "#d62728"}


def query_lines(path, backend):
    rows = []
    for line in open(path, encoding="utf-8"):
        line = line.strip()
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("scenario") != "query":
            continue
        if d.get("label") not in ("trialbridge", f"trialbridge-{backend}"):
            continue
        rows.append(d["p99_ms"])
    if len(rows) not in (EARLIER_RUNS, len(QUERIES)):
        sys.exit(f"{path}: {len(rows)} query lines for {backend}, expected {len(QUERIES)}")
    return rows + [None] * (len(QUERIES) - len(rows))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    out = sys.argv[1]
    series = {}  # backend -> [(n, [p99 per query])]
    for arg in sys.argv[2:]:
        backend, n, path = arg.split(":", 2)
        series.setdefault(backend, []).append((int(n), query_lines(path, backend)))
    for pts in series.values():
        pts.sort()
    sizes = sorted({n for pts in series.values() for n, _ in pts})
    w, h, cols = 300, 220, 3
    rows_n = math.ceil(len(QUERIES) / cols)
    width, height = cols * w + 20, rows_n * h + 60
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="18" font-size="14">p99 latency (ms, 16 clients) against store size '
           f'(Observations)</text>']
    x_lo, x_hi = math.log10(min(sizes)), math.log10(max(sizes))
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    for qi, q in enumerate(QUERIES):
        ox, oy = 10 + (qi % cols) * w, 40 + (qi // cols) * h
        px, py, pw, ph = ox + 45, oy + 20, w - 70, h - 60
        measured = [v[qi] for pts in series.values() for _, v in pts if v[qi] is not None]
        y_max = max(measured, default=1.0) * 1.15
        svg.append(f'<text x="{ox + 45}" y="{oy + 12}" font-size="12">{q}</text>')
        svg.append(f'<rect x="{px}" y="{py}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        for t in range(5):
            yv = y_max * t / 4
            yy = py + ph - ph * t / 4
            svg.append(f'<text x="{px - 4}" y="{yy + 4:.1f}" text-anchor="end">{yv:.0f}</text>')
            svg.append(f'<line x1="{px}" x2="{px + pw}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#eee"/>')
        for n in sizes:
            xx = px + pw * (math.log10(n) - x_lo) / (x_hi - x_lo)
            label = f"{n // 1000}k" if n < 1_000_000 else f"{n // 1_000_000}M"
            svg.append(f'<text x="{xx:.1f}" y="{py + ph + 14}" text-anchor="middle">{label}</text>')
        for backend, pts in series.items():
            colour = COLOURS.get(backend, "#333")
            pts = [(n, v) for n, v in pts if v[qi] is not None]
            coords = [(px + pw * (math.log10(n) - x_lo) / (x_hi - x_lo),
                       py + ph - ph * v[qi] / y_max) for n, v in pts]
            if len(coords) > 1:
                path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
                svg.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
            for (x, y), (n, v) in zip(coords, pts):
                svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}">'
                           f'<title>{backend}, {n}: {v[qi]} ms</title></circle>')
    lx = 10
    for backend in series:
        svg.append(f'<rect x="{lx + 560}" y="8" width="12" height="12" fill="{COLOURS.get(backend, "#333")}"/>')
        svg.append(f'<text x="{lx + 576}" y="18">{backend}</text>')
        lx += 90
    svg.append("</svg>")
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tables and plots from the JSON reports of scripts/compare.sh.

  plot.py table DIR          a Markdown table of DIR/<store>-<op>-<clients>.json
  plot.py point FILE STORE OP CLIENTS   one line on one report
  plot.py svg DIR FIGDIR [PREFIX]   FIGDIR/PREFIXthroughput.svg, FIGDIR/PREFIXlatency.svg

The store distkv is compared with is whichever other store has reports in
DIR (etcd or redis). Plain SVG written here (no plotting library needed):
throughput against clients (one line per store and op), and p50/p99 latency
per point (bars).
"""
import glob
import json
import os
import re
import sys

STORES = ["distkv", "etcd", "redis"]
OPS = ["put", "get", "txn"]
COLORS = {("distkv", "put"): "#1f77b4", ("distkv", "get"): "#6baed6",
          ("distkv", "txn"): "#2ca02c",
          ("etcd", "put"): "#d62728", ("etcd", "get"): "#fc9272",
          ("redis", "put"): "#d62728", ("redis", "get"): "#fc9272"}


def baseline(points):
    """The store distkv is compared with in these reports."""
    others = sorted({s for (s, _, _) in points if s != "distkv"})
    return others[0] if others else "etcd"


def mb_per_s(report):
    """Payload MB/s of a report whose values are large (else None)."""
    size = report.get("config", {}).get("value_size", 100)
    if size < 4096:
        return None
    return report["throughput_ops_per_s"] * size / 1e6


def load(directory):
    """{(store, op, clients): report}"""
    points = {}
    for path in glob.glob(os.path.join(directory, "*-*-*.json")):
        m = re.fullmatch(r"(\w+)-(\w+)-(\d+)\.json", os.path.basename(path))
        if not m:
            continue
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, json.JSONDecodeError):
            continue
        points[(m[1], m[2], int(m[3]))] = report
    return points


def table(directory):
    points = load(directory)
    base = baseline(points)
    clients = sorted({c for (_, _, c) in points})
    out = [f"| op | clients | {base} ops/s (p50 / p99) | distkv ops/s (p50 / p99) | distkv / {base} |",
           "|---|---|---|---|---|"]
    for op in OPS:
        for c in clients:
            cells = []
            for store in [base, "distkv"]:
                r = points.get((store, op, c))
                if r is None:
                    cells.append("-")
                    continue
                l = r["latency_ms"]
                failed = f", {r['failed']} failed" if r.get("failed") else ""
                mb = mb_per_s(r)
                rate = f", {mb:,.1f} MB/s" if mb is not None else ""
                cells.append(f"{r['throughput_ops_per_s']:,.0f}{rate} "
                             f"({l['p50']:.2f} / {l['p99']:.2f} ms{failed})")
            e, d = points.get((base, op, c)), points.get(("distkv", op, c))
            ratio = (f"{d['throughput_ops_per_s'] / e['throughput_ops_per_s']:.1f}x"
                     if e and d and e["throughput_ops_per_s"] > 0 else "-")
            if (e, d) != (None, None):
                out.append(f"| {op} | {c} | {cells[0]} | {cells[1]} | {ratio} |")
    setup = os.path.join(directory, "setup.txt")
    if os.path.exists(setup):
        with open(setup) as f:
            out += [""] + [f"{line.rstrip()}  " for line in f]
    print("\n".join(out))


def nice_max(v):
    """A round axis maximum at or above v."""
    if v <= 0:
        return 1
    exp = 10 ** (len(str(int(v))) - 1)
    for m in (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def svg_doc(width, height, body, title):
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'font-family="sans-serif" font-size="12">\n'
            f'<rect width="100%" height="100%" fill="white"/>\n'
            f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>\n'
            + "\n".join(body) + "\n</svg>\n")


def axes(body, x0, y0, w, h, ymax, ylabel, ticks=5):
    body.append(f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="black"/>')
    body.append(f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y0 - h}" stroke="black"/>')
    for i in range(ticks + 1):
        v = ymax * i / ticks
        y = y0 - h * i / ticks
        body.append(f'<line x1="{x0 - 4}" y1="{y}" x2="{x0 + w}" y2="{y}" stroke="#ddd"/>')
        label = f"{v:,.0f}" if ymax >= 10 else f"{v:.1f}"
        body.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{label}</text>')
    body.append(f'<text x="{x0 - 55}" y="{y0 - h / 2}" text-anchor="middle" '
                f'transform="rotate(-90 {x0 - 55} {y0 - h / 2})">{ylabel}</text>')


def legend(body, x, y, entries):
    for i, (label, color) in enumerate(entries):
        body.append(f'<rect x="{x}" y="{y + 18 * i - 9}" width="12" height="12" fill="{color}"/>')
        body.append(f'<text x="{x + 18}" y="{y + 18 * i + 1}">{label}</text>')


def footer(body, y, lines):
    for i, line in enumerate(lines):
        body.append(f'<text x="10" y="{y + 12 * i}" font-size="10" fill="#555">{line}</text>')


def throughput_svg(points, setup):
    clients = sorted({c for (_, _, c) in points})
    lines = [(s, o) for s in STORES for o in OPS
             if any((s, o, c) in points for c in clients)]
    ymax = nice_max(max([r["throughput_ops_per_s"] for r in points.values()] + [1]))
    x0, y0, w, h = 90, 330, 480, 280
    body = []
    axes(body, x0, y0, w, h, ymax, "ops/s")
    xs = {c: x0 + w * (i + 0.5) / len(clients) for i, c in enumerate(clients)}
    for c, x in xs.items():
        body.append(f'<text x="{x}" y="{y0 + 18}" text-anchor="middle">{c}</text>')
    body.append(f'<text x="{x0 + w / 2}" y="{y0 + 36}" text-anchor="middle">clients</text>')
    for s, o in lines:
        pts = [(xs[c], y0 - h * points[(s, o, c)]["throughput_ops_per_s"] / ymax)
               for c in clients if (s, o, c) in points]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
        body.append(f'<polyline points="{path}" fill="none" stroke="{COLORS[(s, o)]}" stroke-width="2"/>')
        for x, y in pts:
            body.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{COLORS[(s, o)]}"/>')
    legend(body, x0 + w + 20, 60, [(f"{s} {o}", COLORS[(s, o)]) for s, o in lines])
    footer(body, y0 + 58, setup)
    return svg_doc(700, 440, body, f"Throughput against closed-loop clients ({copies(points)}, fsync on)")


def copies(points):
    return "one copy" if baseline(points) == "redis" else "3 replicas"


def latency_svg(points, setup):
    clients = sorted({c for (_, _, c) in points})
    bars = [(s, o) for o in OPS for s in STORES
            if any((s, o, c) in points for c in clients)]
    ymax = nice_max(max([r["latency_ms"]["p99"] for r in points.values()] + [0.1]))
    x0, y0, w, h = 90, 330, 480, 280
    body = []
    axes(body, x0, y0, w, h, ymax, "latency (ms): bar p50, whisker p99")
    group = w / max(len(clients), 1)
    bw = group * 0.8 / max(len(bars), 1)
    for i, c in enumerate(clients):
        gx = x0 + group * i + group * 0.1
        body.append(f'<text x="{x0 + group * (i + 0.5)}" y="{y0 + 18}" text-anchor="middle">{c}</text>')
        for j, (s, o) in enumerate(bars):
            r = points.get((s, o, c))
            if r is None:
                continue
            p50, p99 = r["latency_ms"]["p50"], r["latency_ms"]["p99"]
            x = gx + j * bw
            top = y0 - h * p50 / ymax
            body.append(f'<rect x="{x:.1f}" y="{top:.1f}" width="{bw * 0.9:.1f}" '
                        f'height="{y0 - top:.1f}" fill="{COLORS[(s, o)]}"/>')
            cx, y99 = x + bw * 0.45, y0 - h * p99 / ymax
            body.append(f'<line x1="{cx:.1f}" y1="{top:.1f}" x2="{cx:.1f}" y2="{y99:.1f}" stroke="black"/>')
            body.append(f'<line x1="{cx - 3:.1f}" y1="{y99:.1f}" x2="{cx + 3:.1f}" y2="{y99:.1f}" stroke="black"/>')
    body.append(f'<text x="{x0 + w / 2}" y="{y0 + 36}" text-anchor="middle">clients</text>')
    legend(body, x0 + w + 20, 60, [(f"{s} {o}", COLORS[(s, o)]) for s, o in bars])
    footer(body, y0 + 58, setup)
    return svg_doc(700, 440, body, "Latency per point: p50 (bar) and p99 (whisker)")


def svg(directory, fig, prefix=""):
    points = load(directory)
    if not points:
        sys.exit(f"plot.py: no reports in {directory}")
    setup = []
    path = os.path.join(directory, "setup.txt")
    if os.path.exists(path):
        with open(path) as f:
            setup = [line.strip().replace("&", "&amp;").replace("<", "&lt;")
                     for line in f if line.strip()]
    os.makedirs(fig, exist_ok=True)
    with open(os.path.join(fig, f"{prefix}throughput.svg"), "w") as f:
        f.write(throughput_svg(points, setup))
    with open(os.path.join(fig, f"{prefix}latency.svg"), "w") as f:
        f.write(latency_svg(points, setup))


def point(path, store, op, clients):
    with open(path) as f:
        r = json.load(f)
    l = r["latency_ms"]
    mb = mb_per_s(r)
    rate = f" ({mb:,.1f} MB/s)" if mb is not None else ""
    print(f"compare.sh: {store:6} {op} {int(clients):3} clients: "
          f"{r['throughput_ops_per_s']:>9,.0f} ops/s{rate}  p50 {l['p50']:.2f} ms  "
          f"p99 {l['p99']:.2f} ms  failed {r['failed']}")


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "point":
        point(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(sys.argv[2])
    elif len(sys.argv) in (4, 5) and sys.argv[1] == "svg":
        svg(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

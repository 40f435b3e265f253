"""Turns target/bench/results.jsonl into the generated part of a Markdown file (between
`<!-- bench:begin -->` and `<!-- bench:end -->`; the rest of the file is kept): per workload, a
table of imserver against the peer (Sockudo), medians over runs, and next to the file two
hand-written SVG plots, bench-latency.svg and bench-memory.svg.

Usage: bench_report.py RESULTS.jsonl OUTPUT.md

Each results line is {"name", "server", "run", "report"} with imbench's JSON report, or
{"name", "server", "run", "error"} for a run that failed (listed, not counted)."""
import datetime
import json
import math
import os
import statistics
import sys
from collections import defaultdict

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
SERVERS = ("imserver", "peer")
LABELS = {"imserver": "imserver", "peer": "Sockudo"}
COLORS = {"imserver": ("#1f4e79", "#2f6fa8", "#9cc3e6"), "peer": ("#8a3b00", "#d9731a", "#f5c596")}
# Below this many deliveries a per-delivery CPU figure is mostly the 10 ms granularity of the
# CPU clock in /proc (10 deliveries in one tick read as 1000 µs each): shown as "–".
MIN_DELIVERIES_FOR_CPU = 10_000


def load(results_path):
    """Workload name -> server -> list of reports, failures, and the order workloads came in."""
    runs = defaultdict(lambda: defaultdict(list))
    failures = []
    order = []
    with open(results_path) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            if r["name"] not in order:
                order.append(r["name"])
            if r.get("report") is None:
                failures.append(r)
            else:
                runs[r["name"]][r["server"]].append(r["report"])
    return runs, failures, order


def med(reps, f):
    """Median of f over the runs where it is defined, or None."""
    values = []
    for r in reps:
        try:
            v = f(r)
        except (KeyError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            values.append(v)
    return statistics.median(values) if values else None


def per_delivery_ok(r):
    return r["deliveries_received"] >= MIN_DELIVERIES_FOR_CPU


# (label, function of one report, format, higher is better?)
METRICS = [
    ("deliveries/s", lambda r: r["deliveries_per_sec"], "{:,.0f}", True),
    ("loss (of expected)", lambda r: r["loss"] / max(r["deliveries_expected"], 1), "pct", False),
    ("p50 latency", lambda r: r["latency_us"]["p50"] / 1000, "{:.1f} ms", False),
    ("p99 latency", lambda r: r["latency_us"]["p99"] / 1000, "{:.1f} ms", False),
    ("max latency", lambda r: r["latency_us"]["max"] / 1000, "{:.1f} ms", False),
    ("node RSS per conn, idle", lambda r: r["node_rss_per_conn_bytes"] / 1024, "{:.1f} KiB", False),
    ("node RSS per conn, under load",
     lambda r: r["node_rss_load_kib"] / max(r["clients"], 1), "{:.1f} KiB", False),
    ("node CPU per delivery",
     lambda r: r["node_cpu_us_per_delivery"] if per_delivery_ok(r) else None, "{:.2f} µs", False),
    ("deliveries per node CPU-second",
     lambda r: r["deliveries_received"] / r["node_cpu_secs"] if per_delivery_ok(r) else None,
     "{:,.0f}", True),
    ("tool CPU per delivery",
     lambda r: r["tool_cpu_us_per_delivery"] if per_delivery_ok(r) else None, "{:.2f} µs", False),
    ("connects/s", lambda r: r["connects_per_sec"], "{:,.0f}", True),
]


def fmt(value, pattern):
    if value is None:
        return "–"
    if pattern == "pct":
        return "0" if value == 0 else f"{value * 100:.2f}%"
    return pattern.format(value)


def advantage(ours, peer, higher_better):
    """How many times better imserver is (>1: imserver better), or "–"."""
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return "–"
    ratio = ours / peer if higher_better else peer / ours
    return f"{ratio:.2f}×"


def workload_table(name, by_server):
    reps = {s: by_server.get(s, []) for s in SERVERS}
    lines = [f"### {name}", ""]
    context = []
    for s in SERVERS:
        if not reps[s]:
            context.append(f"{LABELS[s]}: no successful run")
            continue
        r0 = reps[s][0]
        sent = med(reps[s], lambda r: r["send_rate"])
        text = (f"{LABELS[s]}: {len(reps[s])} run(s), {int(med(reps[s], lambda r: r['clients'])):,} "
                f"connections, {r0['rate_target']:,} msg/s asked, {sent:,.0f} msg/s sent")
        if (r0.get("pusher_batch") or 1) > 1:
            text += f" (in batches of up to {r0['pusher_batch']} per request)"
        errors = sum(r.get("send_errors", 0) for r in reps[s])
        if errors:
            first = next((r.get("first_send_error") for r in reps[s] if r.get("first_send_error")), "")
            text += f", {errors:,} publish errors over the runs (first: `{str(first)[:120]}`)"
        connect_errors = sum(r.get("connect_errors", 0) for r in reps[s])
        if connect_errors:
            text += f", {connect_errors:,} connect errors over the runs"
        context.append(text)
    lines.append("; ".join(context) + ".")
    lines.append("")
    lines.append("| metric | imserver | Sockudo | imserver advantage (×, >1 = imserver better) |")
    lines.append("|---|---|---|---|")
    for label, f, pattern, higher_better in METRICS:
        ours, peer = med(reps["imserver"], f), med(reps["peer"], f)
        better = "higher is better" if higher_better else "lower is better"
        lines.append(f"| {label} ({better}) | {fmt(ours, pattern)} | {fmt(peer, pattern)} | "
                     f"{advantage(ours, peer, higher_better)} |")
    lines.append("")
    return lines


def generated(runs, failures, order):
    counts = [len(v) for w in runs.values() for v in w.values()]
    # bench.sh writes the report right after the set: today is the day of the run, which README's
    # headline figures quote (scripts/bench_headline.py).
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    lines = [
        f"Set run on {today} (UTC). "
        f"Medians of up to {max(counts, default=0)} runs per workload and server, run alternately "
        "(imserver, Sockudo, imserver, ...); every run is in `target/bench/results.jsonl`. "
        "\"imserver advantage\" is imserver's figure over Sockudo's where higher is better and "
        "Sockudo's over imserver's where lower is better, so above 1 always means imserver did "
        f"better. Per-delivery CPU is \"–\" below {MIN_DELIVERIES_FOR_CPU:,} deliveries, where it "
        "would mostly measure the 10 ms granularity of the CPU clock.",
        "",
    ]
    for name in order:
        if name in runs:
            lines += workload_table(name, runs[name])
        else:
            lines += [f"### {name}", "", "No successful run.", ""]
    if failures:
        lines.append("Failed runs (not counted):")
        lines.append("")
        for r in failures:
            error = " ".join(str(r.get("error", "")).split())[:200]
            lines.append(f"- {r['name']}, {LABELS.get(r['server'], r['server'])}, run {r['run']}: {error}")
        lines.append("")
    lines.append("![latency percentiles](bench-latency.svg)")
    lines.append("")
    lines.append("![memory per connection](bench-memory.svg)")
    return "\n".join(lines)


def main(results_path, doc_path):
    runs, failures, order = load(results_path)
    section = generated(runs, failures, order)
    doc = open(doc_path).read() if os.path.exists(doc_path) else ""
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + BEGIN + "\n" + section + "\n" + END + tail
    else:
        doc += ("\n" if doc else "") + BEGIN + "\n" + section + "\n" + END + "\n"
    with open(doc_path, "w") as f:
        f.write(doc)
    folder = os.path.dirname(os.path.abspath(doc_path))
    with open(os.path.join(folder, "bench-latency.svg"), "w") as f:
        f.write(latency_svg(runs, order))
    with open(os.path.join(folder, "bench-memory.svg"), "w") as f:
        f.write(memory_svg(runs, order))


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def legend(x, y, entries):
    """Colour swatches with labels in one row; returns the SVG elements."""
    out = []
    for color, label in entries:
        out.append(f'<rect x="{x}" y="{y - 10}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{x + 16}" y="{y}">{esc(label)}</text>')
        x += 24 + 7 * len(label)
    return out


def latency_svg(runs, order):
    """Per workload and server, nested bars on a log scale: max (light), p99, p50 (dark)."""
    rows = []
    for name in order:
        for s in SERVERS:
            reps = runs.get(name, {}).get(s, [])
            if reps:
                p = [med(reps, lambda r, q=q: r["latency_us"][q] / 1000) for q in ("p50", "p99", "max")]
                rows.append((name, s, p))
            else:
                rows.append((name, s, None))
    width, left, right, bar_h, gap = 860, 190, 70, 16, 10
    lo = 0.1
    hi = max([p[2] for _, _, p in rows if p] + [1.0])
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    lo_l, hi_l = decades[0], decades[-1]

    def x(ms):
        ms = max(ms, 10 ** lo_l)
        return left + (math.log10(ms) - lo_l) / (hi_l - lo_l) * (width - left - right)

    top = 60
    height = top + len(rows) * (bar_h + 4) + (len(order)) * gap + 40
    out = svg_open(width, height, "Delivery latency, medians of runs "
                   "(ms, log scale): p50 dark, p99 middle, max light")
    bottom = height - 30
    for d in decades:
        gx = x(10 ** d)
        out.append(f'<line x1="{gx:.1f}" y1="{top - 6}" x2="{gx:.1f}" y2="{bottom}" stroke="#ddd"/>')
        out.append(f'<text x="{gx:.1f}" y="{bottom + 14}" text-anchor="middle">{10 ** d:g}</text>')
    y = top
    previous = None
    for name, s, p in rows:
        if previous is not None and name != previous:
            y += gap
        label = f"{name} ({LABELS[s]})"
        out.append(f'<text x="10" y="{y + bar_h - 4}">{esc(label)}</text>')
        if p is None:
            out.append(f'<text x="{left}" y="{y + bar_h - 4}" fill="#a00">no successful run</text>')
        else:
            dark, mid, light = COLORS[s]
            for value, color in ((p[2], light), (p[1], mid), (p[0], dark)):
                out.append(f'<rect x="{left}" y="{y}" width="{x(value) - left:.1f}" height="{bar_h}" fill="{color}"/>')
            out.append(f'<text x="{x(p[2]) + 4:.1f}" y="{y + bar_h - 4}">'
                       f'{p[0]:.1f} / {p[1]:.1f} / {p[2]:.1f}</text>')
        y += bar_h + 4
        previous = name
    out.append("</svg>")
    return "\n".join(out) + "\n"


def svg_open(width, height, title):
    """The opening lines of a plot: the canvas, its title and the legend of the two servers."""
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="10" y="20" font-size="14">{esc(title)}</text>']
    return out + legend(10, 42, [(COLORS["imserver"][1], "imserver"), (COLORS["peer"][1], "Sockudo")])


def memory_svg(runs, order):
    """Per workload, node RSS per connection for both servers: idle (solid) and under load (light)."""
    rows = []
    for name in order:
        for s in SERVERS:
            reps = runs.get(name, {}).get(s, [])
            idle = med(reps, METRICS[5][1]) if reps else None
            load = med(reps, METRICS[6][1]) if reps else None
            rows.append((name, s, idle, load))
    width, left, right, bar_h, gap = 860, 190, 150, 12, 10
    hi = max([v for _, _, i, l in rows for v in (i, l) if v] + [1.0])
    scale = (width - left - right) / hi
    top = 60
    height = top + len(rows) * (2 * bar_h + 6) + len(order) * gap + 20
    out = svg_open(width, height, "Node RSS per connection, medians of runs (KiB): "
                   "idle (dark), under load (light)")
    y = top
    previous = None
    for name, s, idle, load in rows:
        if previous is not None and name != previous:
            y += gap
        out.append(f'<text x="10" y="{y + bar_h + 2}">{esc(f"{name} ({LABELS[s]})")}</text>')
        dark, mid, light = COLORS[s]
        for i, (value, color, what) in enumerate(((idle, mid, "idle"), (load, light, "load"))):
            by = y + i * (bar_h + 2)
            if value is None:
                out.append(f'<text x="{left}" y="{by + bar_h - 2}" fill="#a00">–</text>')
                continue
            out.append(f'<rect x="{left}" y="{by}" width="{value * scale:.1f}" height="{bar_h}" fill="{color}"/>')
            out.append(f'<text x="{left + value * scale + 4:.1f}" y="{by + bar_h - 2}">{value:.1f} {what}</text>')
        y += 2 * bar_h + 6
        previous = name
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])

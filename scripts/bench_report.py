"""Turns target/bench/results.jsonl into the generated table of docs/BENCHMARKS.md (medians
of the runs, each run listed) and an SVG plot of latency percentiles."""
import json
import statistics
import sys
from collections import defaultdict

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def main(results_path, doc_path):
    rows = defaultdict(list)
    for line in open(results_path):
        r = json.loads(line)
        rows[(r["name"], r["server"])].append(r["report"])

    def med(reps, f):
        return statistics.median(f(r) for r in reps)

    lines = [
        "| workload | server | conns | deliveries/s | loss | p50 ms | p99 ms | max ms | node RSS/conn idle | node CPU µs/delivery | tool CPU µs/delivery | connects/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, server), reps in rows.items():
        lines.append("| {} | {} | {:,} | {:,.0f} | {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} KiB | {:.2f} | {:.2f} | {:,.0f} |".format(
            name, server, int(med(reps, lambda r: r["clients"])),
            med(reps, lambda r: r["deliveries_per_sec"]),
            sum(r["loss"] for r in reps),
            med(reps, lambda r: r["latency_us"]["p50"]) / 1000,
            med(reps, lambda r: r["latency_us"]["p99"]) / 1000,
            med(reps, lambda r: r["latency_us"]["max"]) / 1000,
            med(reps, lambda r: r["node_rss_per_conn_bytes"] or 0) / 1024,
            med(reps, lambda r: r["node_cpu_us_per_delivery"] or 0),
            med(reps, lambda r: r["tool_cpu_us_per_delivery"]),
            med(reps, lambda r: r["connects_per_sec"]),
        ))
    lines.append("")
    lines.append(f"Medians of {max(len(v) for v in rows.values())} runs each; every run is in `target/bench/results.jsonl`.")
    lines.append("")
    lines.append("![latency percentiles](bench-latency.svg)")
    table = "\n".join(lines)

    doc = open(doc_path).read()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = head + BEGIN + "\n" + table + "\n" + END + tail
    else:
        doc += "\n" + BEGIN + "\n" + table + "\n" + END + "\n"
    open(doc_path, "w").write(doc)
    write_svg(rows, doc_path.rsplit("/", 1)[0] + "/bench-latency.svg")


def write_svg(rows, path):
    """Horizontal bars of p50 / p99 latency per workload and server (log-free, in ms)."""
    items = []
    for (name, server), reps in rows.items():
        p50 = statistics.median(r["latency_us"]["p50"] for r in reps) / 1000
        p99 = statistics.median(r["latency_us"]["p99"] for r in reps) / 1000
        items.append((f"{name} ({server})", p50, p99))
    width, bar_h, left = 760, 22, 230
    scale = (width - left - 80) / max(max(p99 for _, _, p99 in items), 1)
    h = 40 + len(items) * (bar_h * 2 + 10)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" font-family="sans-serif" font-size="12">',
           '<text x="10" y="20" font-size="14">Delivery latency, median of runs (ms): p50 light, p99 dark</text>']
    y = 35
    for label, p50, p99 in items:
        out.append(f'<text x="10" y="{y + bar_h}">{label}</text>')
        out.append(f'<rect x="{left}" y="{y}" width="{p50 * scale:.1f}" height="{bar_h - 4}" fill="#9cc3e6"/>')
        out.append(f'<text x="{left + p50 * scale + 4:.1f}" y="{y + bar_h - 8}">{p50:.1f}</text>')
        out.append(f'<rect x="{left}" y="{y + bar_h}" width="{p99 * scale:.1f}" height="{bar_h - 4}" fill="#2f6fa8"/>')
        out.append(f'<text x="{left + p99 * scale + 4:.1f}" y="{y + 2 * bar_h - 8}">{p99:.1f}</text>')
        y += bar_h * 2 + 10
    out.append("</svg>")
    open(path, "w").write("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

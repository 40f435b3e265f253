#!/usr/bin/env bash
# The node beside its floor (imfloor; docs/BENCHMARKS.md, "Floor"): for each workload, RUNS runs
# (default 3) of one imserver node and of imfloor, alternately (node run 1, floor run 1, node
# run 2, ...), so both see the same machine noise; then a markdown table of the medians on
# stdout (each run in brackets): node and floor CPU per delivery and their ratio, p50 and p99
# latency of each, and memory per idle connection. Raw lines, each with the load average at
# its end, in target/bench/floor.jsonl. About 3 minutes. IMSERVER, IMBENCH (and IMFLOOR, by
# default the imfloor beside IMBENCH) name the binaries; given both, nothing is built.
#
# The workloads, with bench.sh's arguments:
# - idle-10k: 10,000 connections, 10 messages a second for a second. Memory per connection is
#   the process's RSS after connecting minus before, over the connections.
# - private-50k: 10,000 clients, 50,000 private messages a second for 5 s.
# - channel-10k: one channel of 10,000 members, 20 messages a second for 10 s; the node side on
#   ONE node, where bench.sh's channel-10k has two: the floor is one process taking one feed,
#   and a node is what it stands for. On two nodes each node would read every message (the
#   per-message part counted twice over half the deliveries) and the two would share the cores
#   with each other, which says something about clusters, not about a delivery.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs="${RUNS:-3}"
out=target/bench
mkdir -p "$out"
use_release_binaries
export IMFLOOR="${IMFLOOR:-$(dirname "$IMBENCH")/imfloor}"

# name | imbench arguments (the same for the node and the floor)
set_=(
  "idle-10k|--workload private --clients 10000 --rate 10 --duration 1"
  "private-50k|--workload private --clients 10000 --rate 50000 --duration 5"
  "channel-10k|--workload channel --clients 10000 --rate 20 --duration 10"
)
: >"$out/floor.jsonl"
failed=0
started=$SECONDS
for entry in "${set_[@]}"; do
  IFS='|' read -r name args <<<"$entry"
  for i in $(seq 1 "$runs"); do
    for server in imserver floor; do
      echo "== $name $server run $i/$runs ($((SECONDS - started)) s)" >&2
      # shellcheck disable=SC2086
      if line=$(bench_line "$server" 1 180 "$out/stderr-floor.log" $args); then
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        echo "{\"name\":\"$name\",\"server\":\"$server\",\"run\":$i,\"load\":\"$load\",\"report\":$line}" >>"$out/floor.jsonl"
      else
        echo "   failed: $(tail -3 "$out/stderr-floor.log")" >&2
        failed=1
      fi
    done
  done
done
echo "== floor set done in $((SECONDS - started)) s" >&2

python3 - "$out/floor.jsonl" <<'PY'
import json, statistics, sys
runs = {}
loads = []
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["name"], {}).setdefault(r["server"], []).append(r["report"])
    loads.append(float(r["load"].split()[0]))
def med(name, server, f):
    vals = [v for v in (f(r) for r in runs.get(name, {}).get(server, [])) if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])
def cell(m, vals, fmt):
    return f"{fmt(m)} ({', '.join(fmt(v) for v in vals)})" if m is not None else "–"
def ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "–"
us = lambda v: f"{v:.2f} µs"
ms = lambda v: f"{v / 1000:.1f} ms"
B = lambda v: f"{v:,.0f} B"
n0 = lambda v: f"{v:,.0f}"
print("Medians of the runs (each run in brackets), imserver (one node) and imfloor alternately.")
if loads:
    print(f"Load average (1 min) at the end of the runs: {min(loads):.2f} to {max(loads):.2f}.")
print()
print("| workload | node CPU per delivery | floor CPU per delivery | node ÷ floor "
      "| node p50 | floor p50 | node p99 | floor p99 | deliveries (node / floor) | loss (node / floor) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for name in runs:
    if name.startswith("idle"):
        continue
    cpu = lambda r: r["node_cpu_us_per_delivery"]
    (nc, ncs), (fc, fcs) = med(name, "imserver", cpu), med(name, "floor", cpu)
    p = lambda q: (lambda r: r["latency_us"][q])
    row = [name, cell(nc, ncs, us), cell(fc, fcs, us), ratio(nc, fc)]
    for q in ("p50", "p99"):
        for s in ("imserver", "floor"):
            row.append(cell(*med(name, s, p(q)), ms))
    got = [med(name, s, lambda r: r["deliveries_received"])[0] for s in ("imserver", "floor")]
    lost = [med(name, s, lambda r: r["loss"])[0] for s in ("imserver", "floor")]
    row.append(" / ".join(n0(v) if v is not None else "–" for v in got))
    row.append(" / ".join(n0(v) if v is not None else "–" for v in lost))
    print("| " + " | ".join(row) + " |")
print()
print("| workload | node RSS per connection | floor RSS per connection | node ÷ floor "
      "| node RSS before, after connecting | floor RSS before, after connecting |")
print("|---|---|---|---|---|---|")
for name in runs:
    if not name.startswith("idle"):
        continue
    per = lambda r: r.get("node_rss_conn_bytes")
    (nm, nms), (fm, fms) = med(name, "imserver", per), med(name, "floor", per)
    both = []
    for s in ("imserver", "floor"):
        b = med(name, s, lambda r: sum(r["node_rss_before_kib"]) / 1024)[0]
        a = med(name, s, lambda r: r["node_rss_idle_kib"] / 1024)[0]
        both.append(f"{b:.1f}, {a:.1f} MiB" if b is not None and a is not None else "–")
    print(f"| {name} | {cell(nm, nms, B)} | {cell(fm, fms, B)} | {ratio(nm, fm)} | {both[0]} | {both[1]} |")
PY
exit $failed

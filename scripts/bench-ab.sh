#!/usr/bin/env bash
# Node CPU per delivery and p99 of two imserver builds, measured back to back: RUNS runs of each
# (default 3), alternated A, B, A, B, ... so that load from other work on the machine falls on
# both alike, for the private and the channel workload (those of docs/BENCHMARKS.md,
# "Restructured core against the build before"). Both builds are driven by the same load tool.
#   IMSERVER_A=bins/base/imserver IMSERVER_B=bins/new/imserver IMBENCH=bins/new/imbench \
#     scripts/bench-ab.sh
# WORKLOADS picks some of: private channel (default both). Each run's JSON line goes to
# target/bench/ab.jsonl with the load average before and after it; medians and the ratio B/A
# are printed as a Markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_ab_binaries
runs="${RUNS:-3}"
out=target/bench
mkdir -p "$out"
results="$out/ab.jsonl"
: >"$results"

# name | nodes | imbench arguments
declare -A set_=(
  [private]="1|--workload private --clients 10000 --rate 30000 --duration 5"
  [channel]="2|--workload channel --clients 10000 --rate 20 --duration 10"
)
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
started=$SECONDS
for name in ${WORKLOADS:-private channel}; do
  IFS='|' read -r nodes args <<<"${set_[$name]}"
  for i in $(seq 1 "$runs"); do
    for variant in A B; do
      bin=$IMSERVER_A
      [ "$variant" = B ] && bin=$IMSERVER_B
      echo "== $name $variant run $i/$runs ($((SECONDS - started)) s, load $(loadavg))" >&2
      load_before=$(loadavg)
      # shellcheck disable=SC2086
      if line=$(IMSERVER="$bin" IMBENCH="$IMBENCH" bench_line imserver "$nodes" 240 "$out/ab-stderr.log" $args); then
        python3 -c 'import json,sys
print(json.dumps({"name":sys.argv[1],"variant":sys.argv[2],"run":int(sys.argv[3]),"binary":sys.argv[4],
  "load_before":sys.argv[5],"load_after":sys.argv[6],"report":json.loads(sys.argv[7])}))' \
          "$name" "$variant" "$i" "$bin" "$load_before" "$(loadavg)" "$line" >>"$results"
      else
        echo "   failed: $(tail -3 "$out/ab-stderr.log")" >&2
      fi
    done
  done
done
echo "== done in $((SECONDS - started)) s; every run in $results" >&2
python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault(r["name"], {}).setdefault(r["variant"], []).append(r)
def fig(runs, f):
    vals = [f(r["report"]) for r in runs]
    return vals, statistics.median(vals)
print("| workload | figure | A runs | B runs | A median | B median | B/A |")
print("|---|---|---|---|---|---|---|")
for name, v in rows.items():
    a, b = v.get("A", []), v.get("B", [])
    if not a or not b:
        continue
    for label, f, unit in (
        ("node CPU per delivery", lambda r: r["node_cpu_us_per_delivery"], "µs"),
        ("p99", lambda r: r["latency_us"]["p99"] / 1000, "ms"),
    ):
        av, am = fig(a, f)
        bv, bm = fig(b, f)
        fmt = (lambda x: f"{x:.2f}") if unit == "µs" else (lambda x: f"{x:.1f}")
        print(f"| {name} | {label} ({unit}) | {' / '.join(map(fmt, av))} | {' / '.join(map(fmt, bv))} "
              f"| {fmt(am)} | {fmt(bm)} | {bm / am:.3f} |")
    loads = [r["load_before"].split()[0] + "→" + r["load_after"].split()[0] for r in a + b]
    print(f"| {name} | load average (1 min) before→after each run | {' / '.join(loads[:len(a)])} | {' / '.join(loads[len(a):])} | | | |")
    lost = sum(r["report"]["loss"] for r in a + b)
    print(f"| {name} | deliveries lost, all runs | | | | | {lost} |")
PY

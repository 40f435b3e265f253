#!/usr/bin/env bash
# Latency against rate: the channel workload (10,000 members on two nodes by default) at rising
# message rates, imserver and Sockudo alternately at each rate, RUNS runs each (default 1).
# Prints a Markdown table of p50/p99 per rate and, per server, the highest rate whose median
# p99 stayed under 50 ms. Raw JSON lines go to target/bench/sweep.jsonl. E.g.
#   scripts/bench-sweep.sh
#   RATES="10 20" RUNS=3 CLIENTS=10000 scripts/bench-sweep.sh
# IMSERVER and IMBENCH name other binaries (nothing is built then), as for bench-run.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rates=(${RATES:-2 5 10 15 20 25})
runs="${RUNS:-1}"
clients="${CLIENTS:-10000}"
nodes="${NODES:-2}"
out=target/bench
mkdir -p "$out"
use_release_binaries
ensure_sockudo >/dev/null
: >"$out/sweep.jsonl"
for rate in "${rates[@]}"; do
  for i in $(seq 1 "$runs"); do
    for server in imserver peer; do
      echo "== sweep $server rate $rate run $i/$runs" >&2
      if line=$(bench_line "$server" "$nodes" 180 "$out/stderr.log" --workload channel \
        --clients "$clients" --rate "$rate" --duration 10); then
        echo "{\"server\":\"$server\",\"rate\":$rate,\"run\":$i,\"report\":$line}" >>"$out/sweep.jsonl"
      else
        echo "   failed: $(tail -3 "$out/stderr.log")" >&2
      fi
    done
  done
done
python3 - "$out/sweep.jsonl" "$clients" "$nodes" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault((r["server"], r["rate"]), []).append(r["report"])
rates = sorted({rate for _, rate in runs})
names = {"imserver": "imserver", "peer": "Sockudo"}
def med(reports, f):
    return statistics.median([f(r) for r in reports]) if reports else None
print(f"Channel of {int(sys.argv[2]):,} members on {sys.argv[3]} nodes, 10 s per run; medians.\n")
print("| msg/s | imserver p50 | imserver p99 | imserver deliveries/s | Sockudo p50 | Sockudo p99 | Sockudo deliveries/s |")
print("|---|---|---|---|---|---|---|")
best = {}
for rate in rates:
    cells = []
    for server in ("imserver", "peer"):
        reports = runs.get((server, rate), [])
        if not reports:
            cells += ["–"] * 3
            continue
        p50 = med(reports, lambda r: r["latency_us"]["p50"]) / 1000
        p99 = med(reports, lambda r: r["latency_us"]["p99"]) / 1000
        dps = med(reports, lambda r: r["deliveries_per_sec"])
        # Holding a rate: p99 under 50 ms, nothing lost and the asked rate actually sent.
        held = p99 < 50 and all(r["loss"] == 0 for r in reports) and \
            med(reports, lambda r: r["send_rate"]) >= 0.98 * rate
        if held:
            best[server] = max(best.get(server, 0), rate)
        cells += [f"{p50:,.1f} ms", f"{p99:,.1f} ms", f"{dps:,.0f}"]
    print(f"| {rate} | " + " | ".join(cells) + " |")
print()
for server in ("imserver", "peer"):
    b = best.get(server)
    print(f"- {names[server]}: highest rate held with p99 under 50 ms: "
          + (f"{b} msg/s ({b * int(sys.argv[2]):,} deliveries/s)" if b else "none of those run"))
PY

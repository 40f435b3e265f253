#!/usr/bin/env bash
# The benchmark set: each workload RUNS times (default 3), back to back, then the medians go
# into docs/BENCHMARKS.md (between the generated markers) and the raw JSON lines into
# target/bench/results.jsonl. Takes about 10 minutes on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${RUNS:-3}"
out=target/bench
mkdir -p "$out"
: >"$out/results.jsonl"

# name | nodes | imbench arguments
set_=(
  "idle-10k|1|--workload private --clients 10000 --rate 10 --duration 1"
  "private-50k|1|--workload private --clients 10000 --rate 50000 --duration 5"
  "channel-2k|2|--workload channel --clients 2000 --rate 20 --duration 10"
  "channel-10k|2|--workload channel --clients 10000 --rate 20 --duration 10"
  "small-channels|2|--workload small-channels --clients 10000 --chan-size 10 --rate 5000 --duration 5"
)
for entry in "${set_[@]}"; do
  IFS='|' read -r name nodes args <<<"$entry"
  for i in $(seq 1 "$runs"); do
    echo "== $name run $i/$runs" >&2
    # shellcheck disable=SC2086
    line=$(NODES=$nodes scripts/bench-run.sh $args)
    echo "{\"name\":\"$name\",\"server\":\"imserver\",\"run\":$i,\"report\":$line}" >>"$out/results.jsonl"
  done
done
python3 scripts/bench_report.py "$out/results.jsonl" docs/BENCHMARKS.md

#!/usr/bin/env bash
# What a connect costs, for two imserver builds measured back to back: RUNS runs of each
# (default 5), alternated A, B, A, B, ... Each run starts a private redis-server and one node,
# and imbench opens CLIENTS connections (default 10,000; then a trickle of messages for 1 s).
# From just before imbench starts to when it says it is sending (so connecting only), the
# node's and Redis's CPU time are read from /proc/<pid>/stat: CPU per connect is steady on a
# busy machine where the connect rate is not. Prints one line per run and the medians.
#   IMSERVER_A=bins/base/imserver IMSERVER_B=bins/new/imserver IMBENCH=bins/new/imbench \
#     scripts/bench-connect.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_ab_binaries
runs="${RUNS:-5}"
clients="${CLIENTS:-10000}"
ensure_redis_server
tick=$(getconf CLK_TCK)
cpu() { awk -v t="$tick" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
run=$(mktemp -d)
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
: >"$run/lines"
for i in $(seq 1 "$runs"); do
  for variant in A B; do
    start_variant_node "$variant" "$run" "$clients"
    node0=$(cpu "$node_pid")
    redis0=$(cpu "$redis_pid")
    connect_idle_clients "$run" "$clients" 1
    node1=$(cpu "$node_pid")
    redis1=$(cpu "$redis_pid")
    wait "$bench"
    python3 - "$variant" "$i" "$clients" "$node0" "$node1" "$redis0" "$redis1" "$run/report" \
      "$(cut -d' ' -f1 /proc/loadavg)" <<'PY' | tee -a "$run/lines"
import json, sys
variant, i, clients, n0, n1, r0, r1, report, load = sys.argv[1:]
rate = json.load(open(report))["connects_per_sec"]
n = int(clients)
print(f"{variant} {i} node_us_per_connect {(float(n1) - float(n0)) / n * 1e6:.1f} "
      f"redis_us_per_connect {(float(r1) - float(r0)) / n * 1e6:.1f} connects_per_sec {rate:.0f} load {load}")
PY
    stop_all
  done
done
python3 - "$run/lines" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
for variant in "AB":
    mine = [r for r in rows if r[0] == variant]
    med = lambda k: statistics.median(float(r[r.index(k) + 1]) for r in mine)
    print(f"median {variant}: node {med('node_us_per_connect'):.1f} µs, Redis {med('redis_us_per_connect'):.1f} µs "
          f"per connect, {med('connects_per_sec'):.0f} connects/s")
PY

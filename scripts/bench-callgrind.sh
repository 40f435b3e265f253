#!/usr/bin/env bash
# Instructions per private delivery in the node, counted by valgrind's callgrind, for two
# imserver builds back to back: RUNS runs of each (default 2), alternated A, B, A, B, ... Each
# run starts a private redis-server and one node under callgrind, has imbench connect CLIENTS
# clients (default 1,000) and send RATE private messages a second (default 1,000) for SECONDS
# (default 8; SEND_SECONDS), zeroes the node's counts once imbench says it is sending (every client connected)
# and dumps them when imbench is done: user-space instructions over the deliveries. The count is
# of instructions, not time, so it repeats from run to run whatever else the machine is doing;
# the kernel's share of a delivery (the write, loopback) is not in it (docs/BENCHMARKS.md,
# "Floor").
#   IMSERVER_A=bins/base/imserver IMSERVER_B=target/release/imserver \
#     IMBENCH=target/release/imbench scripts/bench-callgrind.sh
# NODE_ARGS adds arguments to the node (both builds). Prints one line per run and the medians;
# the dumps stay in target/bench/callgrind/ for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_ab_binaries
command -v valgrind >/dev/null || { echo "bench-callgrind.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
runs="${RUNS:-2}"
clients="${CLIENTS:-1000}"
rate="${RATE:-1000}"
seconds="${SEND_SECONDS:-8}"
ensure_redis_server
out=target/bench/callgrind
mkdir -p "$out"
out=$(cd "$out" && pwd)
run=$(mktemp -d)
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
# start_variant_node runs $IMSERVER_A or $IMSERVER_B: point them at callgrind wrappers.
for variant in A B; do
  bin_var="IMSERVER_$variant"
  bin=$(realpath "${!bin_var}")
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --compress-strings=no --compress-pos=no --callgrind-out-file=%s/%s.%%p.out %s "$@" 2>/dev/null\n' \
    "$out" "$variant" "$bin" >"$run/cg-$variant"
  chmod +x "$run/cg-$variant"
done
IMSERVER_A=$run/cg-A
IMSERVER_B=$run/cg-B
: >"$run/lines"
for i in $(seq 1 "$runs"); do
  for variant in A B; do
    # shellcheck disable=SC2086
    start_variant_node "$variant" "$run" "$clients" ${NODE_ARGS:-}
    : >"$run/stderr"
    "$IMBENCH" --nodes "$node_id" --node-pid "$node_pid" --redis-url "$url" --workload private \
      --clients "$clients" --rate "$rate" --duration "$seconds" >"$run/report" 2>"$run/stderr" &
    bench=$!
    until grep -q '^imbench: sending' "$run/stderr" || ! kill -0 "$bench" 2>/dev/null; do
      sleep 0.02
    done
    callgrind_control --zero "$node_pid" >/dev/null 2>&1
    wait "$bench"
    rm -f "$out/$variant.$node_pid.out".*
    callgrind_control --dump "$node_pid" >/dev/null 2>&1
    dump=$(ls "$out/$variant.$node_pid.out".* | head -1)
    python3 - "$variant" "$i" "$dump" "$run/report" <<'PY' | tee -a "$run/lines"
import json, re, sys
variant, i, dump, report = sys.argv[1:]
r = json.load(open(report))
total = next(int(m.group(1)) for line in open(dump) if (m := re.match(r"(?:summary|totals): (\d+)", line)))
n = r["deliveries_received"]
print(f"{variant} {i} instructions_per_delivery {total / n:.0f} deliveries {n} of {r['deliveries_expected']} dump {dump}")
PY
    stop_all
  done
done
python3 - "$run/lines" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
med = {v: statistics.median(float(r[3]) for r in rows if r[0] == v) for v in "AB"}
print(f"median A {med['A']:.0f}, B {med['B']:.0f} instructions per delivery: B/A {med['B'] / med['A']:.3f}")
PY

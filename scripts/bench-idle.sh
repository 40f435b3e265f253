#!/usr/bin/env bash
# What an idle connection costs in memory, for two imserver builds measured back to back: RUNS
# runs of each (default 3), alternated A, B, A, B, ... Each run starts a private redis-server and
# one node, reads the node's memory, has imbench open CLIENTS connections (default 10,000; the
# idle-10k workload of scripts/bench.sh: private messages at 10/s), and reads it again one second
# after imbench says it is sending (all connected, none of the handshakes still running). Per
# connection, after minus before: the resident set (VmRSS), the allocator's live allocations and
# the allocator's resident bytes (from the node's /metrics); and imbench's own figure, the whole
# process over the connections ("node RSS per conn, idle" in the benchmark set).
#   IMSERVER_A=bins/base/imserver IMSERVER_B=bins/new/imserver IMBENCH=bins/new/imbench \
#     scripts/bench-idle.sh
# NODE_ARGS adds arguments to the node (both builds); SETTLE=n reads the second time n seconds
# after imbench says it is sending instead of 1 (past the allocator's 10 s decay time, what the
# connects left behind is given back). Prints one line per run and the medians.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
require_ab_binaries
runs="${RUNS:-3}"
settle="${SETTLE:-1}"
clients="${CLIENTS:-10000}"
ensure_redis_server
run=$(mktemp -d)
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
# "<VmRSS bytes> <allocated bytes> <allocator resident bytes>" of node $1 serving /metrics at $2.
sample() {
  local rss metrics
  rss=$(awk '$1 == "VmRSS:" { print $2 * 1024 }' "/proc/$1/status")
  metrics=$(curl -fsS "$2/metrics")
  echo "$rss $(awk '/^im_allocator_allocated_bytes/ { a = $2 } /^im_allocator_resident_bytes/ { r = $2 }
    END { print a, r }' <<<"$metrics")"
}
: >"$run/lines"
for i in $(seq 1 "$runs"); do
  for variant in A B; do
    # shellcheck disable=SC2086
    start_variant_node "$variant" "$run" "$clients" ${NODE_ARGS:-}
    http="http${node_id#ws}"
    before=$(sample "$node_pid" "$http")
    connect_idle_clients "$run" "$clients" "$((settle + 2))"
    sleep "$settle"
    after=$(sample "$node_pid" "$http")
    wait "$bench"
    python3 - "$variant" "$i" "$before" "$after" "$run/report" "$(cut -d' ' -f1 /proc/loadavg)" \
      <<'PY' | tee -a "$run/lines"
import json, sys
variant, i, before, after, report, load = sys.argv[1:]
r = json.load(open(report))
n = r["clients"]
b, a = [list(map(float, s.split())) for s in (before, after)]
per = [(y - x) / n for x, y in zip(b, a)]
print(f"{variant} {i} clients {n} rss_per_conn {per[0]:.0f} allocated_per_conn {per[1]:.0f} "
      f"allocator_resident_per_conn {per[2]:.0f} whole_process_per_conn {r['node_rss_per_conn_bytes']:.0f} "
      f"baseline_rss {b[0] / 1048576:.1f}MiB load {load}")
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
    print(f"median {variant}: per connection, RSS {med('rss_per_conn'):.0f} B, allocated "
          f"{med('allocated_per_conn'):.0f} B, allocator resident {med('allocator_resident_per_conn'):.0f} B, "
          f"whole process {med('whole_process_per_conn'):.0f} B")
PY

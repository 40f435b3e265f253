#!/usr/bin/env bash
# What a private send costs through the node's HTTP API against imclient called directly
# (docs/BENCHMARKS.md, "HTTP API against imclient"): one node with its API on, CLIENTS
# receivers connected (default 1,000), then MESSAGES private messages (default 100,000) with
# CONCURRENCY in flight (default 16), sent by `imbench --workload api-send` through imclient
# in one run and through `POST /api/v1/send` in the next, RUNS of each (default 3), alternated,
# as fast as the senders go or, with CALL_RATE, both ways at that many calls per second,
# each on a fresh redis-server and node. IMSERVER and IMBENCH name the binaries (else release
# builds of the work tree). Every run's JSON line goes to target/bench/api.jsonl with the load
# average before and after it; medians are printed as a Markdown table, with the target's
# ratio: the node's CPU per HTTP send less its CPU per imclient send (the delivery both make),
# over the caller's CPU per imclient send, at most 2.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_redis_server
use_release_binaries
runs="${RUNS:-3}"
out=target/bench
mkdir -p "$out"
results="$out/api.jsonl"
: >"$results"

# One run sending via $1; prints imbench's JSON line.
one_run() {
  local via=$1 api key
  run=$(mktemp -d) # not local: the cleanup at exit reads it
  cleanup() { stop_all; rm -rf "$run"; }
  on_exit cleanup
  start_redis_for single "$run"
  export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
  key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
  # No rate limit: the default (1,000 requests per second per key) would be what is measured.
  start_imserver "$IMSERVER" "$run/ready" "$run/node.log" --listen 127.0.0.1:0 \
    --max-connections 20000 --api-listen 127.0.0.1:0 --api-key "$key" --api-rate 0
  api=$(sed -nE 's/.*"api":"([^"]+)".*/\1/p' <<<"$node_ready")
  [ -n "$api" ] || { echo "the node's ready line has no API address: $node_ready" >&2; exit 1; }
  IM_API_KEY=$key timeout -k 10 180 "$IMBENCH" --nodes "$node_id" --node-pid "$node_pid" \
    --workload api-send --send-via "$via" --api-addr "$api" --clients "${CLIENTS:-1000}" \
    --messages "${MESSAGES:-100000}" --concurrency "${CONCURRENCY:-16}" \
    --call-rate "${CALL_RATE:-0}"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
started=$SECONDS
for i in $(seq 1 "$runs"); do
  for via in imclient http; do
    echo "== $via run $i/$runs ($((SECONDS - started)) s, load $(loadavg))" >&2
    load_before=$(loadavg)
    if line=$(one_run "$via" 2>"$out/api-stderr.log") &&
      python3 -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
      python3 -c 'import json,sys
print(json.dumps({"via":sys.argv[1],"run":int(sys.argv[2]),"load_before":sys.argv[3],
  "load_after":sys.argv[4],"report":json.loads(sys.argv[5])}))' \
        "$via" "$i" "$load_before" "$(loadavg)" "$line" >>"$results"
    else
      echo "   failed: $(tail -3 "$out/api-stderr.log")" >&2
    fi
  done
done
echo "== done in $((SECONDS - started)) s; every run in $results" >&2
python3 - "$results" <<'PY'
import json, statistics, sys
runs = {"imclient": [], "http": []}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["via"]].append(r)
if not runs["imclient"] or not runs["http"]:
    sys.exit("no runs of one of the two ways: see target/bench/api-stderr.log")
def med(via, f):
    vals = [f(r["report"]) for r in runs[via]]
    return vals, statistics.median(vals)
rows = [
    ("calls/s", lambda r: r["calls_per_sec"], "{:,.0f}"),
    ("call p50 (ms)", lambda r: r["call_latency_us"]["p50"] / 1000, "{:.2f}"),
    ("call p99 (ms)", lambda r: r["call_latency_us"]["p99"] / 1000, "{:.2f}"),
    ("caller CPU per call (µs)", lambda r: r["caller_cpu_us_per_call"], "{:.1f}"),
    ("node CPU per call (µs)", lambda r: r["node_cpu_us_per_call"], "{:.1f}"),
    ("delivery p99 (ms)", lambda r: r["delivery_latency_us"]["p99"] / 1000, "{:.2f}"),
    ("deliveries lost", lambda r: r["loss"], "{:.0f}"),
    ("send errors", lambda r: r["send_errors"], "{:.0f}"),
]
print(f"| figure | imclient ({len(runs['imclient'])} runs) | HTTP API ({len(runs['http'])} runs) | imclient median | HTTP median |")
print("|---|---|---|---|---|")
m = {}
for label, f, fmt in rows:
    iv, im_ = med("imclient", f)
    hv, hm = med("http", f)
    m[label] = (im_, hm)
    print(f"| {label} | {' / '.join(fmt.format(v) for v in iv)} | {' / '.join(fmt.format(v) for v in hv)} "
          f"| {fmt.format(im_)} | {fmt.format(hm)} |")
loads = lambda via: " / ".join(r["load_before"].split()[0] + "→" + r["load_after"].split()[0] for r in runs[via])
print(f"| load average (1 min) before→after | {loads('imclient')} | {loads('http')} | | |")
caller = m["caller CPU per call (µs)"][0]
node_i, node_h = m["node CPU per call (µs)"]
http_cost = node_h - node_i
ratio = http_cost / caller
print()
print(f"What an HTTP send costs the node beyond the delivery: {node_h:.1f} − {node_i:.1f} = "
      f"{http_cost:.1f} µs; what imclient costs the backend: {caller:.1f} µs per send; ratio "
      f"{ratio:.2f} (target at most 2: {'met' if ratio <= 2 else 'missed'}).")
PY

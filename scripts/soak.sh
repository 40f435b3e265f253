#!/usr/bin/env bash
# Soak test (not part of CI): CLIENTS clients connect and disconnect at random for DURATION
# seconds while messages flow (`imbench --workload churn`), against a private redis-server and
# NODES release imserver nodes with a short recovery window. Afterwards the nodes must be back
# where they started: connections, clients, session tasks, channel topics, presence entries,
# recovery windows and recovery bytes at 0 (waited for, polling /metrics, up to SETTLE_SECS),
# and RSS near its baseline. Prints a summary and PASS or FAIL (the rule is printed with it);
# exits non-zero on FAIL. Logs, /metrics samples and imbench's JSON go to target/soak/.
#
#   scripts/soak.sh                          # 10,000 clients, 10 minutes
#   DURATION=60 CLIENTS=2000 scripts/soak.sh # a quick one
#
# Settings (environment): DURATION (600 s), CLIENTS (10000), RATE (200 msg/s), NODES (1),
# RECOVERY_MS (5000: the nodes' --recovery-window-ms), SAMPLE_SECS (5: RSS and /metrics
# sampling period), SETTLE_SECS (RECOVERY_MS + 60 s: how long the counts get to return to 0),
# RSS_FACTOR (1.5) and RSS_SLACK_MIB (20): final RSS must be at most factor x baseline + slack,
# per node. NODE_ARGS adds node arguments, IMBENCH_ARGS imbench arguments (e.g.
# "--stay-secs 0.5,10 --away-secs 0.05,2 --clean-close-percent 50 --chans 8 --chan-percent 10").
# ROUNDS (1) runs the churn that many times against the same nodes, each run followed by the
# wait, and prints the RSS after each (growth from round to round is a leak; a plateau is memory
# the allocator keeps; the summary's allocator line tells live allocations from what the
# allocator holds). IMSERVER and IMBENCH name other binaries (then nothing is built).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

duration="${DURATION:-600}"
clients="${CLIENTS:-10000}"
rate="${RATE:-200}"
nodes_n="${NODES:-1}"
recovery_ms="${RECOVERY_MS:-5000}"
sample_secs="${SAMPLE_SECS:-5}"
settle_secs="${SETTLE_SECS:-$((recovery_ms / 1000 + 60))}"
rss_factor="${RSS_FACTOR:-1.5}"
rss_slack_mib="${RSS_SLACK_MIB:-20}"
rounds="${ROUNDS:-1}"
# The gauges that must return to 0.
gauges=(im_connections im_clients im_session_tasks im_chan_topics im_presence_entries
  im_recovery_windows im_recovery_bytes)

ensure_redis_server
if [ -z "${IMSERVER:-}" ] || [ -z "${IMBENCH:-}" ]; then
  cargo build --quiet --release -p imserver -p imbench
fi
out=target/soak
mkdir -p "$out"
rm -f "$out"/*.log "$out"/*.json "$out"/*.tsv
run=$(mktemp -d)
# Copies, so that rebuilding during a 10-minute soak does not change what runs.
cp "${IMSERVER:-target/release/imserver}" "$run/imserver"
cp "${IMBENCH:-target/release/imbench}" "$run/imbench"
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup

start_redis_for single "$run" "$out/redis.log"
export IM_TOKEN_SECRET="soak-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

nodes=()
npids=()
for k in $(seq 1 "$nodes_n"); do
  # shellcheck disable=SC2086
  start_imserver "$run/imserver" "$run/ready$k" "$out/node$k.log" --listen 127.0.0.1:0 \
    --max-connections 20000 --recovery-window-ms "$recovery_ms" ${NODE_ARGS:-}
  npids+=("$node_pid")
  nodes+=("$node_id")
done
join() { local IFS=,; echo "$*"; }

# The /metrics text of every node.
metrics_all() {
  local n
  for n in "${nodes[@]}"; do
    curl -sf --max-time 5 "http://${n#ws://}/metrics" || return 1
  done
}
# "name value" for each of the gauges, summed over the nodes, from metrics text on stdin.
gauge_values() {
  awk -v names="${gauges[*]}" '
    BEGIN { n = split(names, want, " "); for (i = 1; i <= n; i++) sum[want[i]] = 0 }
    /^#/ { next }
    { name = $1; sub(/\{.*/, "", name); if (name in sum) { sum[name] += $2; seen[name] = 1 } }
    END { for (i = 1; i <= n; i++) print want[i], (want[i] in seen) ? sum[want[i]] : "?" }'
}
# Summed RSS of the nodes, KiB.
rss_kib() {
  local p total=0 v
  for p in "${npids[@]}"; do
    v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || v=""
    [ -n "$v" ] || { echo "?"; return; }
    total=$((total + v))
  done
  echo "$total"
}
snapshot() { # name: writes $out/<name>.metrics (gauges) and echoes the RSS
  metrics_all | gauge_values >"$out/$1.metrics" || true
  rss_kib
}
value_of() { awk -v n="$2" '$1 == n { print $2 }' "$out/$1.metrics"; }
mib() { [ "$1" = "?" ] && echo "?" || awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

rss_base=$(snapshot baseline)
metrics_all >"$out/baseline.prom" 2>/dev/null || true
echo "== soak: $nodes_n node(s) $(join "${nodes[@]}"), $clients clients, ${duration} s, $rate msg/s," \
  "recovery window $recovery_ms ms; baseline RSS $(mib "$rss_base") MiB; logs in $out/" >&2

# RSS and gauges every SAMPLE_SECS, from here to the end.
echo "# seconds node_rss_kib ${gauges[*]}" >"$out/samples.tsv"
(
  start=$SECONDS
  while :; do
    line="$((SECONDS - start)) $(rss_kib)"
    line+=" $({ metrics_all 2>/dev/null || true; } | gauge_values | awk '{ printf "%s ", $2 }')"
    echo "$line" >>"$out/samples.tsv"
    sleep "$sample_secs"
  done
) &
sampler=$!
pids+=("$sampler")

# ROUNDS rounds of churn against the same nodes, each followed by the wait for the gauges: RSS
# that keeps growing from round to round is a leak, RSS that stays where the first round left
# it is memory the allocator keeps.
bench_ok=1
all_settled=1
round_lines=()
for r in $(seq 1 "$rounds"); do
  [ "$rounds" -gt 1 ] && echo "== round $r of $rounds" >&2
  # shellcheck disable=SC2086
  timeout -k 10 $((${duration%.*} + 180)) "$run/imbench" --nodes "$(join "${nodes[@]}")" \
    --node-pid "$(join "${npids[@]}")" --workload churn --clients "$clients" --rate "$rate" \
    --duration "$duration" ${IMBENCH_ARGS:-} 2>&1 >"$out/imbench$r.json" | tee "$out/imbench$r.log" >&2 ||
    bench_ok=0
  rss_end_of_run=$(snapshot end_of_run)

  # Wait until every gauge is 0 on every node, or the deadline.
  settle_start=$SECONDS
  settled=0
  while [ $((SECONDS - settle_start)) -le "$settle_secs" ]; do
    if metrics_all >"$run/m" 2>/dev/null && gauge_values <"$run/m" | awk '$2 != 0 { bad = 1 } END { exit bad }'; then
      settled=1
      break
    fi
    sleep 1
  done
  settle_took=$((SECONDS - settle_start))
  [ "$settled" = 1 ] || all_settled=0
  rss_settled=$(rss_kib)
  if [ "$settled" = 1 ]; then settle_text="gauges back to 0 after ${settle_took} s"; else
    settle_text="gauges NOT back to 0 within ${settle_secs} s"; fi
  round_lines+=("round $r: RSS at the end of the run $(mib "$rss_end_of_run") MiB, $settle_text, RSS then $(mib "$rss_settled") MiB")
done
# Final RSS: once the gauges are 0, give it up to 30 s to come under the limit, reading every
# second: the allocator returns freed pages gradually over its decay time (10 s).
rss_limit=$(awk -v b="$rss_base" -v f="$rss_factor" -v s="$rss_slack_mib" -v n="$nodes_n" \
  'BEGIN { printf "%d", b * f + s * 1024 * n }')
rss_final=$(snapshot final)
for _ in $(seq 1 30); do
  [ "$rss_final" != "?" ] && [ "$rss_final" -le "$rss_limit" ] && break
  sleep 1
  rss_final=$(snapshot final)
done
kill "$sampler" 2>/dev/null || true
wait "$sampler" 2>/dev/null || true
rss_peak=$(awk -v p="$rss_base" '$2 ~ /^[0-9]+$/ && $2 > p { p = $2 } END { print p }' "$out/samples.tsv" 2>/dev/null || echo "$rss_base")
[ "$rss_end_of_run" != "?" ] && [ "$rss_end_of_run" -gt "$rss_peak" ] && rss_peak=$rss_end_of_run
# Summary.
echo
echo "== soak summary: $nodes_n node(s), $clients clients, ${duration} s, $rate msg/s asked, recovery window $recovery_ms ms"
for r in $(seq 1 "$rounds"); do
if [ -s "$out/imbench$r.json" ]; then
  [ "$rounds" -gt 1 ] && echo "round $r:"
  jq -r '"imbench: \(.connects) connects (\(.connects_per_sec | floor)/s, peak \(.peak_online) online), \(.connect_errors) connect errors" + (if .first_connect_error then " (first: \(.first_connect_error))" else "" end),
    "  disconnects \(.disconnects): \(.clean_closes) clean (\(.clean_closes_unanswered) unanswered), \(.tcp_closes) TCP close without close frame, \(.tcp_resets) TCP reset, \(.server_closes) by the server \(.server_close_codes) (\(.server_eof) without close frame, \(.read_errors) read errors)",
    "  messages: \(.sent) sent (\(.sent_private) private, \(.sent_chan) channel; \(.send_rate | floor)/s), \(.send_errors) send errors, \(.deliveries_received) deliveries received, latency p50 \(.latency_us.p50) µs p99 \(.latency_us.p99) µs max \(.latency_us.max) µs",
    "  per-connection order: \(.duplicates) duplicates, \(.out_of_order) out of order, \(.gaps) gaps (\(.missing_in_gaps) seqs missing), \(.no_seq) without seq; \(.clients_unfinished) clients unfinished",
    "  node CPU \(.node_cpu_secs * 100 | round / 100) s, tool CPU \(.tool_cpu_secs * 100 | round / 100) s"' "$out/imbench$r.json"
else
  echo "imbench: no report (see $out/imbench$r.log)"
fi
done
echo "node RSS: baseline $(mib "$rss_base") MiB, peak $(mib "$rss_peak") MiB (sampled every ${sample_secs} s)," \
  "end of run $(mib "$rss_end_of_run") MiB, final $(mib "$rss_final") MiB"
printf '%s\n' "${round_lines[@]}"
printf '%-22s %10s %12s %10s\n' metric baseline end-of-run final
for g in "${gauges[@]}"; do
  printf '%-22s %10s %12s %10s\n' "$g" "$(value_of baseline "$g")" "$(value_of end_of_run "$g")" "$(value_of final "$g")"
done
# A few of the nodes' counters, summed, from the final /metrics (kept in $out/final.prom).
metrics_all >"$out/final.prom" 2>/dev/null || true
awk '/^#/ { next }
  { name = $1; sub(/\{node="[^"]*"\}$/, "", name); sum[name] += $2 }
  END { n = split("im_connections_opened_total im_handshakes_refused_total im_deliveries_total " \
          "im_slow_consumer_closes_total im_recovery_expired_total im_recovery_evicted_total " \
          "im_presence_errors_total im_redis_reconnects_total", want, " ")
        line = "node counters:"
        for (i = 1; i <= n; i++) if (want[i] in sum) line = line " " want[i] "=" sum[want[i]]
        print line }' "$out/final.prom"
allocator() { # file: live allocations and resident, in MiB
  awk '/^#/ { next }
    { name = $1; sub(/\{node="[^"]*"\}$/, "", name); sum[name] += $2 }
    END { printf "%.1f MiB in live allocations, %.1f MiB resident",
            sum["im_allocator_allocated_bytes"] / 1048576, sum["im_allocator_resident_bytes"] / 1048576 }' "$1"
}
echo "allocator: at the start $(allocator "$out/baseline.prom"); at the end $(allocator "$out/final.prom")"
echo "after the run: $settle_text"

fails=()
[ "$all_settled" = 1 ] || fails+=("gauges not back to 0 within ${settle_secs} s")
if [ "$rss_final" = "?" ] || [ "$rss_final" -gt "$rss_limit" ]; then
  fails+=("final RSS $(mib "$rss_final") MiB over $(mib "$rss_limit") MiB")
fi
[ "$bench_ok" = 1 ] || fails+=("imbench failed (see $out/imbench*.log)")
order=$(cat "$out"/imbench*.json 2>/dev/null | jq -s 'map(.duplicates + .out_of_order + .gaps + .no_seq) | add // 0')
[ "$order" = 0 ] || fails+=("$order envelopes out of sequence on their connection")
echo "rule: PASS when ${gauges[*]} are all 0 within ${settle_secs} s of each run's end," \
  "final RSS <= ${rss_factor} x baseline + ${rss_slack_mib} MiB per node ($(mib "$rss_limit") MiB)," \
  "imbench succeeded and every envelope followed its connection's seq by one"
if [ ${#fails[@]} -eq 0 ]; then
  echo "RESULT: PASS"
else
  echo "RESULT: FAIL: $(IFS=';'; echo "${fails[*]}")"
  exit 1
fi

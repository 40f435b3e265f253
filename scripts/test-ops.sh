#!/usr/bin/env bash
# Tests of the alert rules and the Grafana dashboard (deploy/prometheus, deploy/grafana):
# `promtool check rules` and the rules' unit tests (`promtool test rules`), then a real
# Prometheus scraping two real nodes under a little load, through which scripts/ops_check.py
# runs every panel's query and every alert's metric selectors: each must return series (no
# misspelt metric, no label that does not exist). Then no alert may be pending or firing; one
# node is killed and Redis stopped, and the alerts for them must become pending (the lost lease
# too, once it has run out). Prints `ops: N passed, M failed, K skipped`.
# Installs Debian's prometheus (promtool with it) and redis-server when missing.
# IM_TEST_IMSERVER and IM_TEST_IMBENCH name the binaries to run; by default
# $CARGO_TARGET_DIR/debug (target/debug), built when missing or older than their sources.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
  apt_install --no-install-recommends prometheus
fi

passed=0
failed=0
check "promtool check rules" promtool check rules deploy/prometheus/imserver-alerts.yml
# The unit tests name the rule file relative to their own folder.
check "promtool test rules" sh -c 'cd deploy/prometheus && promtool test rules imserver-alerts.test.yml'
check "promtool check config (the example)" promtool check config deploy/prometheus/prometheus.yml

bin=${CARGO_TARGET_DIR:-target}/debug
imserver=${IM_TEST_IMSERVER:-$bin/imserver}
imbench=${IM_TEST_IMBENCH:-$bin/imbench}
# Built when missing or stale, as scripts/test-typescript.sh does: never test a stale node.
stale() { [ ! -x "$1" ] || [ -n "$(find "${@:2}" imclient/src imclient/Cargo.toml Cargo.lock -newer "$1" -print -quit)" ]; }
if [ -z "${IM_TEST_IMSERVER:-}" ] && stale "$imserver" imserver/src imserver/Cargo.toml; then
  cargo build --quiet -p imserver --bin imserver
fi
if [ -z "${IM_TEST_IMBENCH:-}" ] && stale "$imbench" bench/src bench/Cargo.toml; then
  cargo build --quiet -p imbench
fi

run=$(mktemp -d)
cleanup() {
  stop_all 5
  rm -rf "$run"
}
on_exit cleanup

start_redis_for single "$run"
targets=()
nodes=()
node_pids=()
for k in 1 2; do
  start_imserver "$imserver" "$run/ready$k" "$run/node$k.log" --dev --listen 127.0.0.1:0
  nodes+=("$node_id")
  node_pids+=("$node_pid")
  targets+=("\"${node_id#ws://}\"")
done

prom_port=$(free_port)
# Scraped and evaluated every second, so that a few seconds of load give rates; the rules are
# the repository's, loaded as an operator would.
cat >"$run/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - $PWD/deploy/prometheus/imserver-alerts.yml
scrape_configs:
  - job_name: imserver
    static_configs:
      - targets: [$(IFS=,; echo "${targets[*]}")]
EOF
prometheus --config.file="$run/prometheus.yml" --storage.tsdb.path="$run/tsdb" \
  --web.listen-address="127.0.0.1:$prom_port" >"$run/prometheus.log" 2>&1 &
pids+=("$!")
prom="http://127.0.0.1:$prom_port"

# Polls the instant query $2 until it returns $1 series whose values are all 1, for up to
# 30 s; fails with the last answer.
wait_query() {
  local want=$1 expr=$2 answer=""
  for _ in $(seq 1 300); do
    answer=$(python3 - "$prom" "$expr" "$want" <<'PY' 2>/dev/null
import json, sys, urllib.parse, urllib.request
url, expr, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
with urllib.request.urlopen(url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=5) as a:
    result = json.load(a)["data"]["result"]
print(json.dumps(result))
sys.exit(0 if len(result) == want and all(float(s["value"][1]) == 1 for s in result) else 1)
PY
    ) && return 0
    sleep 0.1
  done
  echo "Prometheus did not answer $want series of 1 to $expr within 30 s: ${answer:-no answer}" >&2
  tail -5 "$run/prometheus.log" >&2
  return 1
}
wait_query 2 'up{job="imserver"}'

# A little load through both nodes: private messages between a few hundred clients.
"$imbench" --dev --redis-url "$IM_REDIS_URL" --nodes "$(IFS=,; echo "${nodes[*]}")" \
  --clients 300 --rate 300 --duration 3 --drain-secs 1 >"$run/imbench.json" 2>"$run/imbench.log" ||
  { echo "imbench failed: $(tail -3 "$run/imbench.log")" >&2; exit 1; }
# Until Prometheus has seen deliveries on both nodes.
wait_query 2 'im_deliveries_total > bool 0'

# The queries: ops_check.py's own summary line becomes this run's counts.
out=$(python3 scripts/ops_check.py "$prom" deploy/grafana/imserver-dashboard.json) || true
sed '$d' <<<"$out"
counts=$(tail -1 <<<"$out" | sed -nE 's/^ops: ([0-9]+) passed, ([0-9]+) failed, ([0-9]+) skipped$/\1 \2 \3/p')
[ -n "$counts" ] || { echo "$out" >&2; echo "ops_check.py ended without its summary" >&2; exit 1; }
read -r p f skipped <<<"$counts"
passed=$((passed + p))
failed=$((failed + f))

# The alerts against real failures: quiet while all is well, then pending (the condition holds,
# `for:` not yet over) once a node dies and once Redis goes away.
check "no alert pending or firing under load" wait_query 0 'ALERTS'
# Reaped here, so that the shell does not report it killed.
{ kill -KILL "${node_pids[1]}" && wait "${node_pids[1]}"; } 2>/dev/null || true
check "ImserverNodeDown for the killed node" \
  wait_query 1 "ALERTS{alertname=\"ImserverNodeDown\",instance=\"${nodes[1]#ws://}\"}"
kill -TERM "$redis_pid"
check "ImserverRedisDown for the node left, Redis stopped" \
  wait_query 1 "ALERTS{alertname=\"ImserverRedisDown\",node=\"${nodes[0]}\"}"
check "ImserverLeaseAtRisk for the node left, Redis stopped" \
  wait_query 1 "ALERTS{alertname=\"ImserverLeaseAtRisk\",node=\"${nodes[0]}\"}"
# Once its lease (10 s by default) has run out unrenewed, im_leased falls to 0.
check "ImserverLeaseLost for the node left, its lease run out" \
  wait_query 1 "ALERTS{alertname=\"ImserverLeaseLost\",node=\"${nodes[0]}\"}"

echo "ops: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# One benchmark run: a private redis-server, NODES imserver nodes (release build, default 1) and the
# imbench load tool on this machine. Arguments go to imbench (see `imbench --help`), e.g.
#   scripts/bench-run.sh --clients 10000 --rate 20000 --duration 5
#   NODES=2 scripts/bench-run.sh --workload channel --clients 10000 --rate 20 --duration 10
# IMSERVER and IMBENCH name other binaries to run (for A/B runs of two builds); NODE_ARGS adds
# arguments to every node (e.g. NODE_ARGS="--recovery-window-ms 0"). REDIS=cluster runs a private
# Redis Cluster instead (three masters with one replica each, IM_REDIS_URL=redis+cluster://<all
# six>): topics are then sharded (SPUBLISH/SSUBSCRIBE). Prints imbench's JSON line, with "redis"
# added: per redis-server its port, role, PUBLISH + SPUBLISH calls and CPU seconds (user +
# system) from when imbench started sending to its end (connecting and channel setup left out).
# PROCS=N runs imbench as N processes (`imbench --procs N`: each opens its share of the
# clients, and their reports are merged, latency histograms included, into the one line, with
# node RSS per node before and after connecting); by default one process per 15,000 clients, as
# one process may hold only about 20,000 open files here. E.g. four nodes, 60,000 connections:
#   NODES=4 scripts/bench-run.sh --workload broadcast --clients 60000 --rate 1 --duration 3
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
# Given both binaries, build nothing: a run must not depend on the state of the work tree.
if [ -z "${IMSERVER:-}" ] || [ -z "${IMBENCH:-}" ]; then
  cargo build --quiet --release -p imserver -p imbench
fi
run=$(mktemp -d)
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup

start_redis_for "${REDIS:-single}" "$run"
rports=("${redis_ports[@]}")
PROCS=$(imbench_procs "$@")
procs=()
[ "$PROCS" -gt 1 ] && procs=(--procs "$PROCS")
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

nodes=()
npids=()
for k in $(seq 1 "${NODES:-1}"); do
  # shellcheck disable=SC2086
  start_imserver "${IMSERVER:-target/release/imserver}" "$run/ready$k" "$run/node$k.log" \
    --listen 127.0.0.1:0 --max-connections 20000 ${NODE_ARGS:-}
  npids+=("$node_pid")
  nodes+=("$node_id")
done
join() { local IFS=,; echo "$*"; }
# Per redis-server: port, role, PUBLISH + SPUBLISH calls, CPU seconds (user + system).
redis_stats() {
  local p
  for p in "${rports[@]}"; do
    redis-cli -p "$p" INFO everything | tr -d '\r' | awk -v port="$p" -F'[:,=]' '
      $1 == "role" { role = $2 }
      $1 == "cmdstat_publish" || $1 == "cmdstat_spublish" { pub += $3 }
      $1 == "used_cpu_sys" || $1 == "used_cpu_user" { cpu += $2 }
      END { printf "%s %s %d %.3f\n", port, role, pub, cpu }'
  done
}
# imbench says on stderr when it starts sending: the Redis figures are taken from then on, so
# connecting and channel setup are left out.
: >"$run/stderr"
"${IMBENCH:-target/release/imbench}" --nodes "$(join "${nodes[@]}")" --node-pid "$(join "${npids[@]}")" \
  ${procs[@]+"${procs[@]}"} "$@" \
  >"$run/report" 2>"$run/stderr" &
bpid=$!
pids+=("$bpid")
before=""
while kill -0 "$bpid" 2>/dev/null; do
  if grep -q '^imbench: sending' "$run/stderr"; then
    before=$(redis_stats)
    break
  fi
  sleep 0.05
done
status=0
wait "$bpid" || status=$?
grep -v '^imbench: sending' "$run/stderr" >&2 || true
line=$(cat "$run/report")
if [ "$status" != 0 ] || [ -z "$before" ] || ! command -v jq >/dev/null 2>&1 ||
  ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$line"; then
  [ -n "$line" ] && echo "$line" # --help, a failed run, or no jq
  exit "$status"
fi
after=$(redis_stats)
redis=$(awk 'NR == FNR { pub[$1] = $3; cpu[$1] = $4; next }
  { printf "{\"port\":%s,\"role\":\"%s\",\"publish\":%d,\"cpu_secs\":%.2f}\n", $1, $2, $3 - pub[$1], $4 - cpu[$1] }' \
  <(echo "$before") <(echo "$after") | jq -sc .)
jq -c --argjson r "$redis" '. + {redis: $r}' <<<"$line"

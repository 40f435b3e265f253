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
# system), counted from its start, so connecting and channel setup are included.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
# Given both binaries, build nothing: a run must not depend on the state of the work tree.
if [ -z "${IMSERVER:-}" ] || [ -z "${IMBENCH:-}" ]; then
  cargo build --quiet --release -p imserver -p imbench
fi
run=$(mktemp -d)
pids=()
cleanup() { [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT INT TERM

case "${REDIS:-single}" in
single)
  rport=$(free_port)
  start_redis "$rport" "$run" "$run/redis.log"
  pids+=("$redis_pid")
  rports=("$rport")
  export IM_REDIS_URL="redis://127.0.0.1:$rport"
  ;;
cluster)
  start_redis_cluster "$run/cluster"
  read -ra rports <<<"$REDIS_CLUSTER_PORTS"
  read -ra rpids <<<"$REDIS_CLUSTER_PIDS"
  pids+=("${rpids[@]}")
  IM_REDIS_URL="redis+cluster://$(IFS=,; echo "${rports[*]/#/127.0.0.1:}")"
  export IM_REDIS_URL
  ;;
*)
  echo "REDIS is single or cluster, not ${REDIS}" >&2
  exit 2
  ;;
esac
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

nodes=()
npids=()
for k in $(seq 1 "${NODES:-1}"); do
  mkfifo "$run/ready$k"
  # shellcheck disable=SC2086
  RUST_LOG=warn "${IMSERVER:-target/release/imserver}" --listen 127.0.0.1:0 --max-connections 20000 \
    ${NODE_ARGS:-} >"$run/ready$k" 2>"$run/node$k.log" &
  npids+=($!)
  pids+=($!)
  read -r ready <"$run/ready$k"
  nodes+=("$(sed -E 's/.*"node":"([^"]+)".*/\1/' <<<"$ready")")
done
join() { local IFS=,; echo "$*"; }
line=$("${IMBENCH:-target/release/imbench}" --nodes "$(join "${nodes[@]}")" --node-pid "$(join "${npids[@]}")" "$@")
if ! command -v jq >/dev/null 2>&1 || ! jq -e 'type == "object"' >/dev/null 2>&1 <<<"$line"; then
  echo "$line" # --help, or no jq
  exit 0
fi
# What each redis-server did: the spread of the publishes over a cluster's shards, and its CPU.
redis=$(for p in "${rports[@]}"; do
  redis-cli -p "$p" INFO everything | tr -d '\r' | awk -v port="$p" -F'[:,=]' '
    $1 == "role" { role = $2 }
    $1 == "cmdstat_publish" || $1 == "cmdstat_spublish" { pub += $3 }
    $1 == "used_cpu_sys" || $1 == "used_cpu_user" { cpu += $2 }
    END { printf "{\"port\":%s,\"role\":\"%s\",\"publish\":%d,\"cpu_secs\":%.2f}\n", port, role, pub, cpu }'
done | jq -sc .)
jq -c --argjson r "$redis" '. + {redis: $r}' <<<"$line"

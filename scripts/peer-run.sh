#!/usr/bin/env bash
# One benchmark run against the peer server, Sockudo (a Pusher-protocol server), set up like
# bench-run.sh sets up imserver: a private redis-server, NODES sockudo nodes (default 1) on the
# Redis adapter, and imbench driving the same workload through the Pusher protocol. Arguments
# go to imbench (see `imbench --help`), e.g.
#   scripts/peer-run.sh --clients 10000 --rate 20000 --duration 5
#   NODES=2 scripts/peer-run.sh --workload channel --clients 10000 --rate 20 --duration 10
# Prints imbench's JSON line ("server":"peer"). PROCS as in bench-run.sh (one imbench process
# per 15,000 clients by default); IMBENCH names another imbench binary. Sockudo comes from $SOCKUDO, PATH or
# target/peer/bin (installed there when missing; see ensure_sockudo in lib.sh). PEER_CONFIG
# adds TOML to the nodes' config (see below).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
sockudo=$(readlink -f "$(ensure_sockudo)")
# The same package set as bench-run.sh: a different one unifies features differently and
# rebuilds imbench at every switch between the two scripts.
[ -n "${IMBENCH:-}" ] || cargo build --quiet --release -p imserver -p imbench
run=$(mktemp -d)
# Sockudo closes every socket on TERM; do not let a slow shutdown hold up the next run: what
# still runs after a second is killed. The subshells that started the nodes end with them.
cleanup() {
  stop_all 1
  wait 2>/dev/null
  rm -rf "$run"
}
on_exit cleanup

start_redis_for single "$run"
rport=${redis_ports[0]}

# A connection is a file descriptor: let sockudo use the hard limit (no root needed).
ulimit -n "$(ulimit -Hn)"

# How long a node takes to trust that it knows all its peers (node_timeout_ms, default 30 s;
# heartbeats every second instead of 10 let it be short). Until then even a lone node sends
# every event and cluster query through Redis; the run starts after it, in the steady state.
settle_ms=5000
# PEER_CONFIG: more TOML appended to each node's config, for experiments, e.g.
#   PEER_CONFIG=$'[websocket]\nwrite_buffer_size = 4096' scripts/peer-run.sh --clients 2000
extra_config="${PEER_CONFIG:-}"
addrs=()
npids=()
for k in $(seq 1 "${NODES:-1}"); do
  port=$(free_port)
  mkdir "$run/node$k"
  # Why each setting, against Sockudo's defaults:
  # - adapter redis (no fallback): nodes share events through our Redis, as imserver nodes do.
  #   With one node Sockudo skips the publish to Redis (it knows it has no peers), so only
  #   NODES>1 sends events through Redis.
  # - database.redis: the Redis that adapter (and anything else) connects to; the default is
  #   127.0.0.1:6379, which on a shared machine is someone else's.
  # - queue none: the queue only feeds webhooks; its default driver is Redis.
  # - idempotency off: imbench sends no idempotency keys, and with the Redis adapter Sockudo
  #   refuses to start with it on unless its cache is in Redis too.
  # - rate_limiter off: by default 100 API requests and 20 WebSocket connects per minute per
  #   IP, which a load test exceeds in its first second.
  # - max_connections 0 (node and app): no cap; the app default via env would be 100.
  # - metrics off: nothing scrapes them, and their default port 9601 may be taken.
  # - shutdown_grace_period 1: nothing to drain after a run.
  # The cwd is the node's own directory, so no config/config.toml lying around is picked up.
  cat >"$run/node$k/config.toml" <<EOF
host = "127.0.0.1"
port = $port
debug = false
max_connections = 0
shutdown_grace_period = 1

[adapter]
driver = "redis"
fallback_to_local = false

[adapter.cluster_health]
enabled = true
heartbeat_interval_ms = 1000
node_timeout_ms = $settle_ms
cleanup_interval_ms = 1000

[database.redis]
host = "127.0.0.1"
port = $rport

[queue]
driver = "none"

[idempotency]
enabled = false

[metrics]
enabled = false

[rate_limiter]
enabled = false

[[app_manager.array.apps]]
id = "bench"
key = "bench-key"
secret = "bench-secret"
enabled = true
max_connections = 0

$extra_config
EOF
  # A clean environment: Sockudo reads many variables (PORT, REDIS_URL, ...) that would
  # override the file. Started from a subshell that waits for it, so that killing it at the
  # end does not make bash print a "Killed" job notice.
  (
    cd "$run/node$k"
    env -i PATH="$PATH" RUST_LOG=warn LOG_COLORS_ENABLED=false "$sockudo" --config config.toml &
    echo $! >pid
    wait
  ) >"$run/node$k.log" 2>&1 &
  for _ in $(seq 1 100); do [ -s "$run/node$k/pid" ] && break; sleep 0.01; done
  npid=$(cat "$run/node$k/pid")
  npids+=("$npid")
  pids+=("$npid")
  if ! wait_port "$port" "$npid"; then
    echo "sockudo node $k did not start:" >&2
    tail -20 "$run/node$k.log" >&2
    exit 1
  fi
  addrs+=("127.0.0.1:$port")
done
sleep "$((settle_ms / 1000))"
join() { local IFS=,; echo "$*"; }
procs=()
PROCS=$(imbench_procs "$@")
[ "$PROCS" -gt 1 ] && procs=(--procs "$PROCS")
"${IMBENCH:-target/release/imbench}" --pusher-addr "$(join "${addrs[@]}")" --node-pid "$(join "${npids[@]}")" \
  ${procs[@]+"${procs[@]}"} "$@"

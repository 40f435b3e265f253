#!/usr/bin/env bash
# Starts the whole demo locally: a private redis-server on a free port (unless IM_REDIS_URL is
# set; REDIS=cluster starts a private Redis Cluster of three masters with a replica each
# instead), two imserver nodes and demo-web. Prints the URL to open; Ctrl-C stops everything.
# From another terminal, `scripts/dev-node.sh stop|start|restart PORT` stops or starts one node
# (its settings are kept in .run/).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
echo "building..." >&2
cargo build --quiet -p imserver -p demo-web
bin=target/debug
run=.run
mkdir -p "$run"

cleanup() {
  stop_all
  # Nodes restarted with dev-node.sh are not our children: their pid files name them.
  for f in "$run"/imserver-*.pid; do
    [ -f "$f" ] && { kill "$(cat "$f")" 2>/dev/null || true; }
    rm -f "$f"
  done
}
on_exit cleanup

# Prefer the usual ports; fall back to free ones when taken.
pick_port() { if port_free "$1"; then echo "$1"; else free_port; fi; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_http() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on port $1; see $run/*.log" >&2
  return 1
}

if [ -z "${IM_REDIS_URL:-}" ]; then
  redis=single
  if [ "${REDIS:-}" = cluster ]; then redis=cluster; fi
  : >"$run/redis.log"
  start_redis_for "$redis" "$run"
fi
export IM_TOKEN_SECRET="${IM_TOKEN_SECRET:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"

p1=$(pick_port 6001)
p2=$(pick_port 6002)
[ "$p2" = "$p1" ] && p2=$(free_port)
web=$(pick_port 5000)
if [ "$web" = "$p1" ] || [ "$web" = "$p2" ]; then web=$(free_port); fi
# The demo page comes from demo-web's port, another origin than the nodes': they admit it by
# name (a node admits only its own origin unless told).
export IM_ALLOWED_ORIGINS="http://127.0.0.1:$web,http://localhost:$web"
# Nodes and demo-web read the same list: nodes follow the live set (a node that comes back
# gets its clients back), demo-web sends each client to its live home node.
export IM_NODES="ws://127.0.0.1:$p1,ws://127.0.0.1:$p2"
nodes="$IM_NODES"
printf 'export IM_REDIS_URL=%q IM_TOKEN_SECRET=%q IM_NODES=%q IM_ALLOWED_ORIGINS=%q\n' \
  "$IM_REDIS_URL" "$IM_TOKEN_SECRET" "$IM_NODES" "$IM_ALLOWED_ORIGINS" >"$run/env"
for p in "$p1" "$p2"; do
  "$bin/imserver" --listen "127.0.0.1:$p" >"$run/imserver-$p.log" 2>&1 &
  pids+=($!)
  echo $! >"$run/imserver-$p.pid"
done
"$bin/demo-web" --listen "127.0.0.1:$web" >"$run/demo-web.log" 2>&1 &
pids+=($!)
for p in "$p1" "$p2" "$web"; do wait_http "$p"; done

cat <<EOT

  Redis:     $IM_REDIS_URL
  Nodes:     $nodes
  Demo:      http://127.0.0.1:$web   <- open this in two browser windows

  Logs in $run/. Ctrl-C stops everything.
  Stop one node:     scripts/dev-node.sh stop $p1      (its users move to the other node)
  Start it again:    scripts/dev-node.sh start $p1     (its users move back; a page that missed something reloads it)
EOT
wait

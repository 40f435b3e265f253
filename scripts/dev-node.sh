#!/usr/bin/env bash
# Stops, starts or restarts one node of the demo that scripts/dev.sh runs, with the settings
# dev.sh left in .run/env:
#   scripts/dev-node.sh stop 6001
#   scripts/dev-node.sh start 6001
#   scripts/dev-node.sh restart 6001
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
run=.run
usage() { echo "usage: $0 stop|start|restart PORT" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1 port=$2
[ -f "$run/env" ] || { echo "no $run/env: start the demo with scripts/dev.sh first" >&2; exit 1; }
# shellcheck disable=SC1091
. "$run/env"
pidfile="$run/imserver-$port.pid"

stop_node() {
  if [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null; then
    # SIGTERM: the node closes its sockets with 1001 and gives up its lease; wait for it.
    for _ in $(seq 1 100); do kill -0 "$(cat "$pidfile")" 2>/dev/null || break; sleep 0.1; done
    echo "node on port $port stopped" >&2
  else
    echo "no node running on port $port" >&2
  fi
  rm -f "$pidfile"
}

start_node() {
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    echo "a node already runs on port $port" >&2
    return 1
  fi
  case ",$IM_NODES," in
    *",ws://127.0.0.1:$port,"*) ;;
    *) echo "port $port is not one of the demo's nodes ($IM_NODES)" >&2; exit 1 ;;
  esac
  nohup target/debug/imserver --listen "127.0.0.1:$port" >>"$run/imserver-$port.log" 2>&1 &
  echo $! >"$pidfile"
  if wait_port "$port" "$!"; then
    echo "node on port $port started (log: $run/imserver-$port.log)" >&2
  else
    echo "node on port $port did not start: $(tail -3 "$run/imserver-$port.log")" >&2
    return 1
  fi
}

case "$action" in
  stop) stop_node ;;
  start) start_node ;;
  restart) stop_node; start_node ;;
  *) usage ;;
esac

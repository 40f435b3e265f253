#!/usr/bin/env bash
# Starts NODES imserver nodes (default 3) and demo-web behind Debian's nginx, the single public
# entry point: the page at http://127.0.0.1:<entry>/, node K at ws://127.0.0.1:<entry>/nK
# (the node addresses in the list point through nginx). A private redis-server on a free port
# unless IM_REDIS_URL is set. Installs nginx when missing. Ctrl-C stops everything.
#   NODES=4 scripts/cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
ensure_nginx
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
echo "building..." >&2
cargo build --quiet -p imserver -p demo-web
n="${NODES:-3}"
run=.run/cluster
rm -rf "$run"
mkdir -p "$run/tmp"

on_exit stop_all

[ -n "${IM_REDIS_URL:-}" ] || start_redis_for single "$run"
export IM_TOKEN_SECRET="${IM_TOKEN_SECRET:-$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')}"

if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then entry=$(free_port); else entry=8080; fi
ports=()
ids=()
for k in $(seq 1 "$n"); do
  ports+=("$(free_port)")
  ids+=("ws://127.0.0.1:$entry/n$k")
done
IM_NODES=$(IFS=,; echo "${ids[*]}")
export IM_NODES

locations=""
for k in $(seq 1 "$n"); do
  port=${ports[$((k - 1))]}
  target/debug/imserver --listen "127.0.0.1:$port" --node "${ids[$((k - 1))]}" \
    >"$run/imserver-$k.log" 2>&1 &
  pids+=($!)
  wait_port "$port" "$!"
  locations+=$(sed -e "s|{NAME}|n$k|g" -e "s|{NODE_PORT}|$port|g" scripts/nginx/node-location.template)
  locations+=$'\n'
done
web=$(free_port)
target/debug/demo-web --listen "127.0.0.1:$web" >"$run/demo-web.log" 2>&1 &
pids+=($!)
wait_port "$web" "$!"
locations+="        location / { proxy_pass http://127.0.0.1:$web; proxy_set_header Host \$host; }"

python3 - "$run" "$entry" "$locations" <<'PY'
import sys
run, entry, locations = sys.argv[1:]
t = open("scripts/nginx/cluster.conf.template").read()
import os
open(f"{run}/nginx.conf", "w").write(
    t.replace("{DIR}", os.path.abspath(run)).replace("{PORT}", entry).replace("{LOCATIONS}", locations))
PY
"$nginx_bin" -p "$PWD/$run" -c "$PWD/$run/nginx.conf" -g 'daemon off;' >"$run/nginx.log" 2>&1 &
pids+=($!)
wait_port "$entry" "$!"

cat <<EOT

  Entry point:  http://127.0.0.1:$entry/   <- open this (the demo), through nginx
  Nodes:        $IM_NODES
  Redis:        $IM_REDIS_URL
  Logs and the nginx configuration in $run/. Ctrl-C stops everything.
EOT
wait

#!/usr/bin/env bash
# Quick benchmark: a private redis-server, one imserver node (release build) and the imbench load
# tool on this machine. Arguments go to imbench (see `imbench --help`), e.g.
#   scripts/bench.sh --clients 10000 --rate 20000 --duration 5
# Prints imbench's JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
cargo build --quiet --release -p imserver -p imbench
run=$(mktemp -d)
pids=()
cleanup() { [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT INT TERM

rport=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$run" >"$run/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$rport") 2>/dev/null && break; sleep 0.05; done
export IM_REDIS_URL="redis://127.0.0.1:$rport"
export IM_TOKEN_SECRET="bench-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"

mkfifo "$run/ready"
RUST_LOG=warn target/release/imserver --listen 127.0.0.1:0 --max-connections 20000 >"$run/ready" 2>"$run/node.log" &
npid=$!
pids+=($npid)
read -r ready <"$run/ready"
node=$(sed -E 's/.*"node":"([^"]+)".*/\1/' <<<"$ready")
target/release/imbench --nodes "$node" --node-pid "$npid" "$@"

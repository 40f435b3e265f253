#!/usr/bin/env bash
# One benchmark run: a private redis-server, NODES imserver nodes (release build, default 1) and the
# imbench load tool on this machine. Arguments go to imbench (see `imbench --help`), e.g.
#   scripts/bench-run.sh --clients 10000 --rate 20000 --duration 5
#   NODES=2 scripts/bench-run.sh --workload channel --clients 10000 --rate 20 --duration 10
# IMSERVER and IMBENCH name other binaries to run (for A/B runs of two builds); NODE_ARGS adds
# arguments to every node (e.g. NODE_ARGS="--recovery-window-ms 0"). Prints imbench's JSON line.
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

rport=$(free_port)
start_redis "$rport" "$run" "$run/redis.log"
pids+=("$redis_pid")
export IM_REDIS_URL="redis://127.0.0.1:$rport"
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
"${IMBENCH:-target/release/imbench}" --nodes "$(join "${nodes[@]}")" --node-pid "$(join "${npids[@]}")" "$@"

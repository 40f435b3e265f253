#!/usr/bin/env bash
# One benchmark run against the floor (imfloor: the leanest server that writes imserver's frames;
# docs/BENCHMARKS.md, "Floor"), set up as bench-run.sh sets up one node but without Redis:
# imfloor on a free port, and imbench driving it through its feed (`--floor-addr`). Arguments go
# to imbench (see `imbench --help`), e.g.
#   scripts/floor-run.sh --workload private --clients 10000 --rate 50000 --duration 5
#   scripts/floor-run.sh --workload channel --clients 10000 --rate 20 --duration 10
# Prints imbench's JSON line ("server":"floor"; the node_* figures are the floor process's).
# IMBENCH names another imbench binary and IMFLOOR another imfloor (default: the one beside
# IMBENCH, the same build: they share the feed's format); given IMBENCH, nothing is built.
# FLOOR_ARGS adds imfloor arguments (e.g. --threads 1).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# The same package set as bench-run.sh, so switching between the two rebuilds nothing.
[ -n "${IMBENCH:-}" ] || cargo build --quiet --release -p imserver -p imbench
imbench=${IMBENCH:-target/release/imbench}
imfloor=${IMFLOOR:-$(dirname "$imbench")/imfloor}
run=$(mktemp -d)
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup

# imfloor's ready line has the node's shape: start_imserver starts it and reads the line.
# shellcheck disable=SC2086
start_imserver "$imfloor" "$run/ready" "$run/floor.log" --listen 127.0.0.1:0 ${FLOOR_ARGS:-}
addr=$(sed -E 's/.*"listen":"([^"]+)".*/\1/' <<<"$node_ready")
"$imbench" --floor-addr "$addr" --node-pid "$node_pid" "$@"

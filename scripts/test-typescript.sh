#!/usr/bin/env bash
# Tests of the TypeScript client package (clients/typescript, npm package imserver-client):
# installs its dev dependencies from the lock file, compiles it with tsc and checks its public
# types, builds the imserver binary when it is missing or stale, and runs its tests with node's
# test runner against a private redis-server and real nodes. IMSERVER_BIN (or the Rust harness's
# IM_TEST_IMSERVER) names an imserver binary to use instead of target/debug/imserver.
# Needs node 18+ and npm; installs Debian's redis-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
if [ -z "${IMSERVER_BIN:-${IM_TEST_IMSERVER:-}}" ]; then
  IMSERVER_BIN=$PWD/target/debug/imserver
  # Built when missing or older than the node's sources, as the Rust test harness does: never
  # test a stale node, and never rebuild a current one (a plain `cargo build -p imserver`
  # selects other dependency features than a workspace test run and would rebuild it).
  if [ ! -x "$IMSERVER_BIN" ] || [ -n "$(find imserver/src imserver/Cargo.toml imclient/src \
    imclient/Cargo.toml Cargo.lock -newer "$IMSERVER_BIN" -print -quit)" ]; then
    cargo build --quiet -p imserver --bin imserver
  fi
fi
export IMSERVER_BIN="${IMSERVER_BIN:-$IM_TEST_IMSERVER}"
cd clients/typescript
# The lock file's exact versions; node_modules is left alone when it matches already.
if ! npm ls --all >/dev/null 2>&1; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
# The public types: what a caller writes compiles, and the mistakes they exist to catch do not.
npm run --silent check
node --test --test-concurrency=1 test/*.test.mjs

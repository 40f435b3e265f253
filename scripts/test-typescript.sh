#!/usr/bin/env bash
# Tests of the TypeScript client package (clients/typescript, npm package imserver-client):
# installs its dev dependencies from the lock file, compiles it with tsc and checks its public
# types, builds the imserver binary when it is missing, and runs its tests with node's test
# runner against a private redis-server and real nodes. IMSERVER_BIN picks another imserver binary (default target/debug/imserver).
# Needs node 18+ and npm; installs Debian's redis-server when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
export IMSERVER_BIN="${IMSERVER_BIN:-$PWD/target/debug/imserver}"
if [ ! -x "$IMSERVER_BIN" ]; then
  cargo build --quiet -p imserver
fi
cd clients/typescript
# The lock file's exact versions; node_modules is left alone when it matches already.
if ! npm ls --all >/dev/null 2>&1; then
  npm ci --no-audit --no-fund
fi
npm run --silent build
# The public types: what a caller writes compiles, and the mistakes they exist to catch do not.
npm run --silent check
node --test --test-concurrency=1 test/*.test.mjs

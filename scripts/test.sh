#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, every test of the workspace (the messaging suites
# twice: on one redis-server and on a Redis Cluster), the browser tests
# of the demo, then each fuzz target for a few seconds (FUZZ_SECONDS, default 10; 0 skips).
# Installs what the tests need (Debian's redis-server, nginx, systemd and chromium, the
# standardwebhooks Python package, playwright-core from the npm lock file, cargo-fuzz) when it
# is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
ensure_nginx
ensure_systemd_analyze
ensure_python_package standardwebhooks

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace "$@"
# The messaging suites again, each test on a Redis Cluster of its own (three masters with a
# replica each) instead of one redis-server: delivery, channels, presence and events, recovery,
# the live node set, handover, the HTTP API and webhooks.
echo "== messaging suites on a Redis Cluster"
IM_TEST_REDIS=cluster cargo test -p imserver \
  --test delivery --test channels --test presence --test recovery \
  --test nodeset --test handover --test backpressure --test quickstart --test http_api \
  --test webhooks "$@"
echo "== browser tests"
scripts/browser-test.sh
if [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  echo "== fuzz smoke runs"
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
fi

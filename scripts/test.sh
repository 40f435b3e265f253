#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, every test of the workspace, then the browser
# tests of the demo. Installs what the tests need (Debian's redis-server and chromium,
# playwright-core from the npm lock file) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace "$@"
echo "== browser tests"
scripts/browser-test.sh

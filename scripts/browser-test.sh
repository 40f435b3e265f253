#!/usr/bin/env bash
# Browser tests: the demo page in headless Chromium (Debian's chromium, driven by playwright-core
# from the npm lock file) against redis-server, two imserver nodes and demo-web started by the
# test. Installs what is missing. Screenshots and logs go to target/browser-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
command -v chromium >/dev/null 2>&1 || apt_install chromium
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
dir=demo-web/tests/browser
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund)
fi
# Built when missing or older than their sources, never when current: a plain `cargo build -p`
# selects other dependency features than the workspace test build scripts/test.sh makes first,
# and would build both again.
for bin in imserver demo-web; do
  if [ ! -x "target/debug/$bin" ] || [ -n "$(find "$bin/src" "$bin/Cargo.toml" demo-web/static imclient/src \
    imclient/Cargo.toml Cargo.lock -newer "target/debug/$bin" -print -quit)" ]; then
    cargo build --quiet -p imserver -p demo-web
    break
  fi
done
export IM_BIN_DIR="$PWD/target/debug" IM_ARTIFACTS="$PWD/target/browser-artifacts" CHROMIUM="$(command -v chromium)"
rm -rf "$IM_ARTIFACTS"
cd "$dir"
node --test --test-concurrency=1
echo "screenshots: $IM_ARTIFACTS/*.png"

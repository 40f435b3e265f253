#!/usr/bin/env bash
# Runs the Python client's tests (clients/python) against a real Redis and real imserver nodes:
# a venv under target/, the package installed with its test extras, the debug imserver (built
# when missing; $IMSERVER_BIN to use another). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_redis_server
venv=target/python-venv
if [ ! -x "$venv/bin/python" ]; then
  # Debian's python3 makes venvs only with python3-venv installed.
  python3 -m venv "$venv" 2>/dev/null || { rm -rf "$venv" && apt_install python3-venv && python3 -m venv "$venv"; }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -e "./clients/python[test]"

export IMSERVER_BIN="${IMSERVER_BIN:-$PWD/target/debug/imserver}"
[ -x "$IMSERVER_BIN" ] || cargo build --quiet -p imserver

cd clients/python
# The package says it is typed (py.typed): hold it to that.
"../../$venv/bin/python" -m mypy --strict src/imserver_client
# -ra: the summary names every skipped test and why (the webhook tests need --webhook-url).
exec "../../$venv/bin/python" -m pytest -ra "$@"

#!/usr/bin/env bash
# Runs the whole test suite, in parts: `lint` (README's figures against BENCHMARKS, formatting,
# clippy), `rust` (every test of the workspace), `cluster` (the messaging suites again, on a
# Redis Cluster), `clients` (the Python and TypeScript client packages and their example
# backends), `ops` (alert rules and the dashboard against a real Prometheus), `browser` (the demo
# in Chromium) and `fuzz` (each fuzz target for FUZZ_SECONDS,
# default 10; 0 skips). Name parts to run only those (`scripts/test.sh rust cluster`); other
# arguments go to `cargo test` (a test name filter, `--no-fail-fast`). Prints each part's time.
# Installs what the tests need (Debian's redis-server, nginx, systemd and chromium,
# the standardwebhooks Python package, playwright-core from the npm lock file, cargo-fuzz, the
# clients' packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

all_parts=(lint rust cluster clients ops browser fuzz)
parts=()
cargo_args=()
for arg in "$@"; do
  case " ${all_parts[*]} " in
    *" $arg "*) parts+=("$arg") ;;
    *) cargo_args+=("$arg") ;;
  esac
done
[ ${#parts[@]} -eq 0 ] && parts=("${all_parts[@]}")
wants() { case " ${parts[*]} " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

ensure_redis_server
ensure_nginx
ensure_systemd_analyze
ensure_python_package standardwebhooks

times=()
part_started=0
begin() { echo "== $1"; part_started=$SECONDS; }
done_part() { times+=("$1 $((SECONDS - part_started)) s"); }
report() {
  local t
  echo "== time per part"
  for t in "${times[@]}"; do echo "   $t"; done
}
trap report EXIT

if wants lint; then
  begin "lint: README's headline figures against docs/BENCHMARKS.md, cargo fmt --check, clippy"
  python3 scripts/bench_headline.py --check
  cargo fmt --all -- --check
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  done_part lint
fi
if wants rust; then
  begin "rust: cargo test"
  cargo test --workspace ${cargo_args[@]+"${cargo_args[@]}"}
  done_part rust
fi
if wants cluster; then
  # The messaging suites again, each test on a Redis Cluster of its own (three masters with a
  # replica each) instead of one redis-server: delivery, channels, presence and events,
  # recovery, the live node set, handover, the HTTP API and webhooks; and imclient's own suites
  # that run on Redis: the quick-start example, event streams and groups, and its errors.
  begin "cluster: messaging suites on a Redis Cluster"
  IM_TEST_REDIS=cluster cargo test -p imserver \
    --test delivery --test channels --test presence --test recovery \
    --test nodeset --test handover --test backpressure --test http_api --test webhooks \
    ${cargo_args[@]+"${cargo_args[@]}"}
  IM_TEST_REDIS=cluster cargo test -p imclient --test quickstart --test events --test errors \
    ${cargo_args[@]+"${cargo_args[@]}"}
  done_part cluster
fi
if wants clients; then
  begin "clients: the Python and TypeScript packages and their example backends"
  scripts/test-python.sh
  scripts/test-typescript.sh
  done_part clients
fi
if wants ops; then
  begin "ops: alert rules (promtool), the dashboard's and alerts' queries on a real Prometheus"
  scripts/test-ops.sh
  done_part ops
fi
if wants browser; then
  begin "browser: the demo in Chromium"
  scripts/browser-test.sh
  done_part browser
fi
if wants fuzz && [ "${FUZZ_SECONDS:-10}" != 0 ]; then
  begin "fuzz: smoke runs"
  scripts/fuzz.sh "${FUZZ_SECONDS:-10}"
  done_part fuzz
fi

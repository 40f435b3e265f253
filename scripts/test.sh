#!/usr/bin/env bash
# Runs the whole test suite, in parts: `lint` (README's figures against BENCHMARKS, formatting,
# clippy), `rust` (every test of the workspace), `cluster` (the messaging suites again, on a
# Redis Cluster), `clients` (the Python and TypeScript client packages and their example
# backends), `ops` (alert rules and the dashboard against a real Prometheus), `image` (the
# container images: the node run from its image delivers a message), `browser` (the demo in
# Chromium) and `fuzz` (each fuzz target for FUZZ_SECONDS, default 10; 0 skips). Name parts to
# run only those (`scripts/test.sh rust cluster`); other arguments go to `cargo test` (a test
# name filter, `--no-fail-fast`). Prints each part's time.
#
# Built once: one `cargo test --workspace --no-run` makes the tests and the binaries every part
# runs (parts never build with `-p`, whose other dependency features would build it all again).
# The fuzz targets, built on nightly with instrumentation of their own, are built from the start
# in the background at the lowest priority (FUZZ_BUILD, default quick: scripts/fuzz.sh), in the
# time the test parts leave the cores idle; the fuzz part then runs the targets side by side.
# The cluster part runs side by side with the clients, ops and image parts, which wait mostly on
# sockets; its output comes when it ends. The image part packs the dev build (PROFILE=dev
# scripts/test-image.sh): a release build would take longer than all the rest.
#
# Installs what the tests need (Debian's redis-server, nginx, systemd, chromium, buildah and
# podman, the standardwebhooks Python package, playwright-core from the npm lock file,
# cargo-fuzz, the clients' packages) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

all_parts=(lint rust cluster clients ops image browser fuzz)
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

logs=$(mktemp -d)
times=()
part_started=0
begin() { echo "== $1"; part_started=$SECONDS; }
done_part() { times+=("$1 $((SECONDS - part_started)) s"); }
# Background work this script started, each in a process group of its own (setsid), so that
# stopping one stops what it started too.
background=()
finish() {
  local t g
  for g in ${background[@]+"${background[@]}"}; do kill -- "-$g" 2>/dev/null || true; done
  echo "== time per part"
  for t in "${times[@]}"; do echo "   $t"; done
  echo "   all $SECONDS s"
  rm -rf "$logs"
}
trap finish EXIT
# Runs the rest as a background process group, its output to $logs/$1.log and its exit status
# to $logs/$1.status; sets started_pid.
in_background() {
  local name=$1
  shift
  setsid bash -c '"$@" >"$0.log" 2>&1; echo $? >"$0.status"' "$logs/$name" "$@" &
  started_pid=$!
  background+=("$started_pid")
}
# Waits for background work $1 (pid $2): prints its output and fails when it failed.
await() {
  local name=$1 pid=$2
  local g left=()
  wait "$pid" 2>/dev/null || true
  for g in "${background[@]}"; do [ "$g" = "$pid" ] || left+=("$g"); done
  background=(${left[@]+"${left[@]}"})
  cat "$logs/$name.log"
  [ "$(cat "$logs/$name.status" 2>/dev/null)" = 0 ]
}

fuzz_seconds=${FUZZ_SECONDS:-10}
if wants fuzz && [ "$fuzz_seconds" != 0 ]; then
  export FUZZ_BUILD=${FUZZ_BUILD:-quick}
  fuzz_build_started=$SECONDS
  in_background fuzz-build nice -n 19 scripts/fuzz.sh build
  fuzz_build_pid=$started_pid
fi

for p in rust cluster clients ops image browser; do
  if wants "$p"; then
    begin "build: the workspace's tests and binaries, once for every part"
    cargo test --workspace --no-run --quiet
    done_part build
    break
  fi
done

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
  # --workspace with the suites named: the build the other parts use.
  echo "== cluster: messaging suites on a Redis Cluster (side by side with what follows; its output at its end)"
  cluster_started=$SECONDS
  in_background cluster env IM_TEST_REDIS=cluster cargo test --workspace \
    --test delivery --test channels --test presence --test recovery \
    --test nodeset --test handover --test backpressure --test http_api --test webhooks \
    --test quickstart --test events --test errors \
    ${cargo_args[@]+"${cargo_args[@]}"}
  cluster_pid=$started_pid
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
if wants image; then
  begin "image: the container images, the node run from its image"
  PROFILE=dev IMSERVER_BIN=target/debug/imserver DEMO_WEB_BIN=target/debug/demo-web \
    scripts/test-image.sh
  done_part image
fi
if wants cluster; then
  echo "== cluster: its output"
  await cluster "$cluster_pid"
  times+=("cluster $((SECONDS - cluster_started)) s (side by side with clients, ops, image)")
fi
if wants browser; then
  begin "browser: the demo in Chromium"
  scripts/browser-test.sh
  done_part browser
fi
if wants fuzz && [ "$fuzz_seconds" != 0 ]; then
  begin "fuzz: smoke runs"
  await fuzz-build "$fuzz_build_pid"
  times+=("fuzz build $((SECONDS - fuzz_build_started)) s from the start (in the background)")
  part_started=$SECONDS
  scripts/fuzz.sh "$fuzz_seconds"
  done_part "fuzz runs"
fi

#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/): what a client sends over its socket, the tokens it presents,
# and the node commands read from Redis. `scripts/fuzz.sh [SECONDS] [TARGET...]`: each target
# for SECONDS (default 300), all targets by default. Uses the nightly toolchain (installed on
# these machines) and installs cargo-fuzz when it is missing. New inputs go to a scratch
# corpus; the seeds in fuzz/corpus/ are only read. A crash leaves its input in fuzz/artifacts/
# and fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(inbound_frames token_check node_commands)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
cargo +nightly fuzz build -O >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log" >&2; exit 1; }
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== fuzz $t for ${seconds}s" >&2
  if ! cargo +nightly fuzz run -O "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/$t.log" 2>&1; then
    tail -40 "$scratch/$t.log" >&2
    echo "fuzz target $t failed: its input is in fuzz/artifacts/$t" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$scratch/$t.log" >&2 || true
done

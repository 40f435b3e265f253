#!/usr/bin/env bash
# Runs the fuzz targets (fuzz/): what a client sends over its socket, the tokens it presents,
# and the node commands read from Redis. `scripts/fuzz.sh [SECONDS] [TARGET...]`: each target
# for SECONDS (default 300), all targets by default, side by side (one process each; the
# machine's cores shared between them). `scripts/fuzz.sh build` only builds them (what
# scripts/test.sh starts early, in the background). Uses the nightly toolchain (installed on
# these machines) and installs cargo-fuzz when it is missing. New inputs go to a scratch
# corpus; the seeds in fuzz/corpus/ are only read. A crash leaves its input in fuzz/artifacts/
# and fails the run.
#
# FUZZ_BUILD picks how the targets are built: `opt` (default; optimised, with AddressSanitizer)
# or `quick` (unoptimised, without AddressSanitizer: builds in a fraction of the time and runs
# slower, enough for a short smoke run; the workspace forbids unsafe code, so the sanitizer finds little
# that a panic would not).
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=""
if [ "${1:-}" = build ]; then
  build_only=1
  shift
fi
seconds="${1:-300}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(inbound_frames token_check node_commands)
case "${FUZZ_BUILD:-opt}" in
opt) build_flags=(-O) ;;
quick) build_flags=(--dev --sanitizer none) ;;
*)
  echo "FUZZ_BUILD is opt or quick, not ${FUZZ_BUILD}" >&2
  exit 2
  ;;
esac

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzzing needs the nightly toolchain (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
scratch=$(mktemp -d)
run_pids=()
cleanup() {
  [ ${#run_pids[@]} -eq 0 ] || kill "${run_pids[@]}" 2>/dev/null || true
  rm -rf "$scratch"
}
trap cleanup EXIT
cd fuzz
started=$SECONDS
# The same flags for build and run, so that run finds the build fresh.
cargo +nightly fuzz build "${build_flags[@]}" >"$scratch/build.log" 2>&1 || { cat "$scratch/build.log" >&2; exit 1; }
echo "== fuzz targets built (${FUZZ_BUILD:-opt}) in $((SECONDS - started)) s" >&2
[ -z "$build_only" ] || exit 0

for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t"
  echo "== fuzz $t for ${seconds}s" >&2
  cargo +nightly fuzz run "${build_flags[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/$t.log" 2>&1 &
  run_pids+=("$!")
done
failed=0
for i in "${!targets[@]}"; do
  t=${targets[$i]}
  if wait "${run_pids[$i]}"; then
    grep -E '^stat::(number_of_executed_units|new_units_added|peak_rss_mb)' "$scratch/$t.log" |
      sed "s/^/$t /" >&2 || true
  else
    tail -40 "$scratch/$t.log" >&2
    echo "fuzz target $t failed: its input is in fuzz/artifacts/$t" >&2
    failed=1
  fi
done
run_pids=()
exit "$failed"

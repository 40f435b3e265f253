#!/usr/bin/env bash
# The benchmark set, imserver side by side with the peer (Sockudo): for each workload, RUNS
# runs (default 3) of each server, alternating (imserver run 1, Sockudo run 1, imserver run 2,
# ...) so both see the same machine noise. The raw JSON lines go to target/bench/results.jsonl,
# the medians into $BENCH_DOC (default docs/BENCHMARKS.md, between the generated markers) with
# bench-latency.svg and bench-memory.svg next to it, then the recovery workloads
# (scripts/bench-recovery.sh). About 14 minutes on a 2-core machine.
# A failed run (of either server) is recorded and the set goes on; the exit status is non-zero
# when an imserver run failed. PEER_ARGS adds imbench arguments to the peer's runs only, e.g.
# PEER_ARGS="--pusher-batch 10" to publish through its batch API.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs="${RUNS:-3}"
doc="${BENCH_DOC:-docs/BENCHMARKS.md}"
out=target/bench
mkdir -p "$out"
: >"$out/results.jsonl"

# Build and install up front, so neither lands inside the first timed run's timeout.
cargo build --quiet --release -p imserver -p imbench
ensure_sockudo >/dev/null

# name | nodes | imbench arguments (the same for both servers)
set_=(
  "idle-10k|1|--workload private --clients 10000 --rate 10 --duration 1"
  "private-50k|1|--workload private --clients 10000 --rate 50000 --duration 5"
  "channel-2k|2|--workload channel --clients 2000 --rate 20 --duration 10"
  "channel-10k|2|--workload channel --clients 10000 --rate 20 --duration 10"
  "small-channels|2|--workload small-channels --clients 10000 --chan-size 10 --rate 5000 --duration 5"
)
declare -A script=([imserver]=scripts/bench-run.sh [peer]=scripts/peer-run.sh)
ours_failed=0
started=$SECONDS
for entry in "${set_[@]}"; do
  IFS='|' read -r name nodes args <<<"$entry"
  for i in $(seq 1 "$runs"); do
    for server in imserver peer; do
      echo "== $name $server run $i/$runs ($((SECONDS - started)) s)" >&2
      # A hung run must not hold up the set: the script's trap stops its processes on TERM.
      # shellcheck disable=SC2086
      extra=""
      [ "$server" = peer ] && extra="${PEER_ARGS:-}"
      if line=$(NODES=$nodes timeout -k 10 180 "${script[$server]}" $args $extra 2>"$out/stderr.log") &&
        python3 -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null; then
        echo "{\"name\":\"$name\",\"server\":\"$server\",\"run\":$i,\"report\":$line}" >>"$out/results.jsonl"
      else
        echo "   failed: $(tail -3 "$out/stderr.log")" >&2
        [ "$server" = imserver ] && ours_failed=1
        python3 -c 'import json,sys; print(json.dumps({"name": sys.argv[1], "server": sys.argv[2],
          "run": int(sys.argv[3]), "report": None, "error": sys.argv[4]}))' \
          "$name" "$server" "$i" "$(tail -5 "$out/stderr.log")" >>"$out/results.jsonl"
      fi
    done
  done
done
echo "== set done in $((SECONDS - started)) s" >&2
python3 scripts/bench_report.py "$out/results.jsonl" "$doc"
# What recovery costs (imserver only: the peer has nothing like it), about 7 minutes more;
# its table goes to target/bench/recovery.md for docs/BENCHMARKS.md. RECOVERY=0 skips it.
if [ "${RECOVERY:-1}" != 0 ]; then
  RUNS="$runs" scripts/bench-recovery.sh >"$out/recovery.md" || ours_failed=1
  cat "$out/recovery.md"
fi
exit $ours_failed

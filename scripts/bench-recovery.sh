#!/usr/bin/env bash
# What recovery costs: node CPU per delivery on the 10,000-member channel workload with recovery
# on, off, and (with BASELINE=path/to/another/imserver) a build from before it; and node memory
# once 10,000 clients each have a full recovery buffer (512 envelopes), under the default node
# bound (256 MiB per node) and under one large enough for every buffer. RUNS runs of each
# variant (default 3), alternating, medians printed as a Markdown table. About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs="${RUNS:-3}"
out=target/bench
mkdir -p "$out"
results="$out/recovery.jsonl"
: >"$results"
cargo build --quiet --release -p imserver -p imbench
# Copies, so that editing and rebuilding during the set does not change what is measured.
bins="$out/recovery-bin"
mkdir -p "$bins"
cp target/release/imserver target/release/imbench "$bins/"

# name | variant | node arguments | imbench arguments. 540 channel messages fill every buffer.
channel="--workload channel --clients 10000 --rate 20 --duration 10"
full="--workload channel --clients 10000 --rate 20 --duration 27"
set_=(
  "channel-10k|recovery on||$channel"
  "channel-10k|recovery off|--recovery-window-ms 0|$channel"
  "full-buffers-10k|default bound (256 MiB per node)||$full"
  "full-buffers-10k|bound 2 GiB per node|--recovery-max-bytes 2147483648|$full"
  "full-buffers-10k|recovery off|--recovery-window-ms 0|$full"
)
if [ -n "${BASELINE:-}" ]; then
  set_+=("channel-10k|previous build|BASELINE|$channel")
fi
started=$SECONDS
for i in $(seq 1 "$runs"); do
  for entry in "${set_[@]}"; do
    IFS='|' read -r name variant node_args args <<<"$entry"
    echo "== $name / $variant run $i/$runs ($((SECONDS - started)) s)" >&2
    bin="$bins/imserver"
    if [ "$node_args" = BASELINE ]; then bin="$BASELINE"; node_args=""; fi
    # shellcheck disable=SC2086
    if line=$(IMSERVER="$bin" IMBENCH="$bins/imbench" NODE_ARGS="$node_args" NODES=2 timeout -k 10 240 \
      scripts/bench-run.sh $args 2>"$out/stderr.log"); then
      python3 -c 'import json,sys; print(json.dumps({"name":sys.argv[1],"variant":sys.argv[2],"report":json.loads(sys.argv[3])}))' \
        "$name" "$variant" "$line" >>"$results"
    else
      echo "   failed: $(tail -3 "$out/stderr.log")" >&2
    fi
  done
done
echo "== done in $((SECONDS - started)) s" >&2
python3 - "$results" <<'EOF'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["name"], r["variant"]), []).append(r["report"])
def med(reports, key, scale=1.0):
    vals = [r[key] * scale for r in reports if r.get(key) is not None]
    return statistics.median(vals) if vals else float("nan")
print("| workload | variant | runs | node CPU µs/delivery | p99 ms | node RSS idle MiB | node RSS after MiB | growth MiB |")
print("|---|---|---|---|---|---|---|---|")
for (name, variant), reports in rows.items():
    idle = med(reports, "node_rss_idle_kib", 1 / 1024)
    load = med(reports, "node_rss_load_kib", 1 / 1024)
    growth = statistics.median([(r["node_rss_load_kib"] - r["node_rss_idle_kib"]) / 1024 for r in reports])
    print(f"| {name} | {variant} | {len(reports)} | {med(reports, 'node_cpu_us_per_delivery'):.2f} | "
          f"{statistics.median([r['latency_us']['p99'] / 1000 for r in reports]):.1f} | {idle:.0f} | {load:.0f} | {growth:.0f} |")
EOF

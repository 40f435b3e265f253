#!/usr/bin/env bash
# The benchmark set, imserver side by side with the peer (Sockudo), about 16 minutes on a 2-core
# machine, in four parts:
# - the set: for each workload, RUNS runs (default 3) of each server, alternating (imserver run
#   1, Sockudo run 1, imserver run 2, ...) so both see the same machine noise. The raw JSON
#   lines go to target/bench/results.jsonl, the medians into $BENCH_DOC (default
#   docs/BENCHMARKS.md, between the generated markers) with bench-latency.svg and
#   bench-memory.svg next to it. About 6 minutes.
# - the scale set (SCALE=0 skips it, SCALE=only runs it alone): four nodes of each server and
#   60,000 connections, from four imbench processes of 15,000 (PROCS of bench-run.sh and
#   peer-run.sh): one broadcast to everyone, and one channel of all 60,000 at 5 msg/s. Raw
#   lines in target/bench/scale.jsonl, medians in target/bench/scale.md (for the "Scale"
#   section of docs/BENCHMARKS.md). SCALE_CLIENTS=2000 (and PROCS=2) makes it a quick check,
#   SCALE_PEER=0 leaves Sockudo out. About 4 minutes.
# - the latency sweep (SWEEP=0 skips it): scripts/bench-sweep.sh, p99 against rate for a
#   channel of 10,000 at SWEEP_RATES (default "5 10 20") msg/s, both servers; its table in
#   target/bench/sweep.md. About 3 minutes.
# - the floor (FLOOR=0 skips it): scripts/bench-floor.sh, one imserver node beside imfloor (the
#   leanest server writing the same frames) on idle, private and channel workloads, RUNS runs
#   each, alternated; its table in target/bench/floor.md. About 3 minutes.
# RECOVERY=1 adds the recovery workloads (scripts/bench-recovery.sh, imserver only, about 10
# minutes; table in target/bench/recovery.md).
# A failed run (of either server) is recorded and the set goes on; the exit status is non-zero
# when an imserver run failed. PEER_ARGS adds imbench arguments to the peer's runs of the set
# only, e.g. PEER_ARGS="--pusher-batch 10" to publish through its batch API. IMSERVER and
# IMBENCH are passed on to bench-run.sh for the scale set and the sweep (then nothing is built
# for them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
runs="${RUNS:-3}"
doc="${BENCH_DOC:-docs/BENCHMARKS.md}"
out=target/bench
mkdir -p "$out"
ours_failed=0
scale="${SCALE:-1}"
if [ "$scale" != only ]; then
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
      if line=$(bench_line "$server" "$nodes" 180 "$out/stderr.log" $args $extra); then
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
# README's headline figures follow the set they quote.
if [ "$doc" = docs/BENCHMARKS.md ]; then python3 scripts/bench_headline.py; fi
# What recovery costs (imserver only: the peer has nothing like it), on request.
if [ "${RECOVERY:-0}" != 0 ]; then
  RUNS="$runs" scripts/bench-recovery.sh >"$out/recovery.md" || ours_failed=1
  cat "$out/recovery.md"
fi
fi

# The scale set, imserver and Sockudo alternately: four nodes each. The broadcast run sends one
# broadcast: its max latency is the time until the last of the 60,000 had it; its connect rate
# and memory per connection (node RSS after connecting minus before) come without channel
# membership. Sockudo has no message to every connection: its run is one message on a channel
# all 60,000 joined, which is how a Pusher application reaches everyone. The channel run asks
# 300,000 deliveries/s, more than two cores give: it measures what they give (deliveries/s up
# to the last delivery) and waits up to 30 s for the backlog. SCALE_PEER=0 leaves Sockudo out.
if [ "$scale" != 0 ]; then
  use_release_binaries
  servers=(imserver)
  if [ "${SCALE_PEER:-1}" != 0 ]; then
    ensure_sockudo >/dev/null
    servers+=(peer)
  fi
  clients=${SCALE_CLIENTS:-60000}
  # name | nodes | imbench arguments for imserver | for Sockudo
  scale_set=(
    "scale-broadcast|4|--workload broadcast --clients $clients --rate 1 --duration 1|--workload channel --clients $clients --rate 1 --duration 1"
    "scale-channel|4|--workload channel --clients $clients --rate 5 --duration 10 --drain-secs 30|--workload channel --clients $clients --rate 5 --duration 10 --drain-secs 30"
  )
  : >"$out/scale.jsonl"
  started=$SECONDS
  for i in $(seq 1 "$runs"); do
    for entry in "${scale_set[@]}"; do
      IFS='|' read -r name nodes ours theirs <<<"$entry"
      for server in "${servers[@]}"; do
        echo "== $name $server run $i/$runs ($((SECONDS - started)) s)" >&2
        args=$ours
        [ "$server" = peer ] && args=$theirs
        # shellcheck disable=SC2086
        if line=$(bench_line "$server" "$nodes" 300 "$out/stderr.log" $args); then
          echo "{\"name\":\"$name\",\"server\":\"$server\",\"run\":$i,\"report\":$line}" >>"$out/scale.jsonl"
        else
          echo "   failed: $(tail -3 "$out/stderr.log")" >&2
          [ "$server" = imserver ] && ours_failed=1
        fi
      done
    done
  done
  echo "== scale set done in $((SECONDS - started)) s" >&2
  python3 - "$out/scale.jsonl" >"$out/scale.md" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs.setdefault(r["name"], {}).setdefault(r.get("server", "imserver"), []).append(r["report"])
def med(reports, f):
    vals = [v for v in (f(r) for r in reports) if v is not None]
    return (statistics.median(vals), vals) if vals else (None, [])
def row(label, by_server, f, fmt, lower_better=None):
    ours, ours_runs = med(by_server.get("imserver", []), f)
    theirs, theirs_runs = med(by_server.get("peer", []), f)
    if ours is None and theirs is None:
        return
    cell = lambda m, vs: f"{fmt(m)} ({', '.join(fmt(v) for v in vs)})" if m is not None else "–"
    ratio = "–"
    if lower_better is not None and ours and theirs:
        ratio = f"{(theirs / ours if lower_better else ours / theirs):.2f}×"
    print(f"| {label} | {cell(ours, ours_runs)} | {cell(theirs, theirs_runs)} | {ratio} |")
n0 = lambda v: f"{v:,.0f}"
ms = lambda v: f"{v / 1000:,.1f} ms"
us = lambda v: f"{v:.2f} µs"
B = lambda v: f"{v:,.0f} B"
for name, by_server in runs.items():
    counts = ", ".join(f"{s} {len(v)}" for s, v in by_server.items())
    print(f"\n### {name} (runs: {counts})\n")
    print("| figure | imserver median (runs) | Sockudo median (runs) | imserver advantage |")
    print("|---|---|---|---|")
    row("connections", by_server, lambda r: r["clients"], n0)
    row("connect errors", by_server, lambda r: r["connect_errors"], n0)
    row("connects/s (while connecting)", by_server, lambda r: r["connects_per_sec"], n0, False)
    row("node RSS per connection, after minus before connecting (all nodes)", by_server,
        lambda r: r.get("node_rss_conn_bytes"), B, True)
    for k in range(4):
        row(f"  node {k + 1}", by_server,
            lambda r: (r.get("node_rss_conn_bytes_per_node") or [None] * 4)[k], B)
    row("node RSS before connecting (all nodes)", by_server,
        lambda r: sum(r["node_rss_before_kib"]) / 1024, lambda v: f"{v:,.1f} MiB")
    row("node RSS after connecting (all nodes)", by_server,
        lambda r: sum(r["node_rss_connected_kib"]) / 1024, lambda v: f"{v:,.1f} MiB")
    row("messages sent", by_server, lambda r: r["sent"], n0)
    row("deliveries expected", by_server, lambda r: r["deliveries_expected"], n0)
    row("loss", by_server, lambda r: r["loss"], n0)
    row("deliveries/s, first send to last delivery", by_server,
        lambda r: r.get("deliveries_per_sec_to_last"), n0, False)
    row("p50 latency", by_server, lambda r: r["latency_us"]["p50"], ms, True)
    row("p99 latency", by_server, lambda r: r["latency_us"]["p99"], ms, True)
    row("max latency (time until the last client had it)", by_server,
        lambda r: r["latency_us"]["max"], ms, True)
    row("node CPU per delivery (all nodes)", by_server,
        lambda r: r["node_cpu_us_per_delivery"], us, True)
    row("tool CPU per delivery (all processes)", by_server,
        lambda r: r["tool_cpu_us_per_delivery"], us, True)
PY
  cat "$out/scale.md"
fi

if [ "${FLOOR:-1}" != 0 ] && [ "$scale" != only ]; then
  RUNS="$runs" scripts/bench-floor.sh >"$out/floor.md" || ours_failed=1
  cat "$out/floor.md"
fi

if [ "${SWEEP:-1}" != 0 ] && [ "$scale" != only ]; then
  RATES="${SWEEP_RATES:-5 10 20}" RUNS=1 scripts/bench-sweep.sh >"$out/sweep.md" || ours_failed=1
  cat "$out/sweep.md"
fi
exit $ours_failed

#!/usr/bin/env bash
# Chaos drills (not part of CI): break a running deployment under load and measure what the
# clients see. Each drill gets its own private redis-server, release imserver nodes on planned
# free ports (every node and imclient have the full list, so a node may be listed and down)
# and `imbench --workload drill`: CLIENTS clients that each hold one connection and come back
# as the browser client does (a fresh URL from imclient, `since=<epoch>:<seq>`, at once after
# 4003 (at most once a second), otherwise after its backoff: 300 ms doubling to 10 s, each wait
# drawn between half and all of it), while RATE messages per second go to random clients and
# (CHAN_PERCENT of them) to CHANS channels.
#
#   1. kill -9 one node of three: how long until every one of its clients has a welcome from a
#      live node, what that welcome said (recovered:false is how they learn they may have lost
#      messages), and whether the other nodes' clients were disturbed (disconnects; the longest
#      pause between deliveries to them).
#   2. three nodes to four (the fourth listed but down, then started): the share of clients
#      moved (closed with 4003); every moved client must resume at its new node with
#      recovered:true, and no client may see a seq gap or duplicate.
#   3. Redis killed (kill -9) and started again on the same port after REDIS_DOWN_SECS:
#      client disconnects, and how long after Redis is back deliveries resume. Redis runs with
#      an append-only file (fsync every second), as a production Redis would, so channel
#      memberships survive the restart (REDIS_PERSIST=0: without it, to see what is lost).
#   4. one Redis Cluster master stopped: the nodes run on a Redis Cluster of three masters with
#      one replica each (IM_REDIS_URL=redis+cluster://<all six>), and the master that serves
#      the slot of one node's topic is killed (kill -9); its replica takes over within about
#      2 s (node timeout 1000 ms). Client disconnects, when each node told its clients
#      `missed` (reason redis_outage), how long after the kill private and channel deliveries
#      resumed, the longest pause, and the sends that failed or were taken by no node. The
#      node is picked so that its topic's master is not the one that holds the app's keys (the
#      `{prefix}` hash tag: presence, leases, memberships); CLUSTER_KILL=data kills that master
#      instead, to see what losing the keys' shard for a moment does.
#   5. a rolling restart: each of three nodes in turn gets SIGTERM, is started again on the same
#      address once it has exited, and the next one follows RESTART_GAP seconds after it is
#      ready. A stopping node hands its clients to the nodes that win them and closes them with
#      4003; the node that starts takes its clients back the same way. Per node: how long it
#      took to stop and to start, how soon its clients were back on it; over the drill: the
#      longest pause in the deliveries to one node's clients, how long clients were away
#      (close to welcome), the resumes that recovered, and what was lost. Run it with the load
#      of a small deployment: DRILLS=5 CLIENTS=30 RATE=50.
#   6. a storm: kill -9 a node that holds STORM_LOAD clients (19,000: this machine allows
#      20,000 open files per process, and the node keeps 128 for itself) while the other two
#      hold STORM_OTHERS (2,000) between them; imbench runs as STORM_PROCS processes (the same
#      limit). Every client of the dead node comes back within a few seconds, about half to
#      each survivor. How long until the last is back (and p50/p99), the refusals meanwhile by
#      reason (the survivors' /metrics before and after, and what the clients saw) and whether
#      a second wave of them followed the first, the survivors' connects per second, their CPU
#      and peak RSS and Redis's CPU (sampled from /metrics and /proc every STORM_SAMPLE_MS).
#      On request: DRILLS=6 scripts/chaos.sh.
#
# How the timing works: imbench connects every client, prints `drill: ready` on stderr and
# sends for DURATION seconds; the script waits for that line, lets traffic flow for ACT_AFTER
# seconds, breaks something and appends `<name> <unix ms>` lines (kill, start, down, up) to a
# marks file as it acts. Everything runs on this machine, so the wall clock is the common time
# base. When imbench ends it reads the marks and prints one JSON line of figures relative to
# them (the first mark is the action; --drill-node names the node it hits); this script prints
# a summary and PASS or FAIL per drill, and exits non-zero when one fails. Logs and the JSON
# lines go to target/chaos/.
#
#   scripts/chaos.sh                    # drills 1-4, 3000 clients
#   DRILLS="1 3" CLIENTS=1000 scripts/chaos.sh
#   DRILLS=5 CLIENTS=30 RATE=50 scripts/chaos.sh
#   DRILLS=6 scripts/chaos.sh           # the storm: 21,000 clients, about a minute
#
# Settings (environment): DRILLS ("1 2 3 4"; 5 and 6 on request), CLIENTS (3000), RATE (300 msg/s), CHANS (8),
# CHAN_PERCENT (2), LEASE_MS (1500: the nodes' --lease-ms, how soon a dead node leaves the live
# set), DURATION (15 s of sending per drill), ACT_AFTER (3 s of traffic before the action),
# REDIS_DOWN_SECS (2), REDIS_PERSIST (1: Redis with an append-only file), CLUSTER_KILL (topic:
# drill 4 kills the master of a node's topic; data: the master of the app's keys),
# CLUSTER_FULL_COVERAGE (no: the masters that did not fail keep serving during a failover, as
# docs/OPERATIONS.md recommends; yes, Redis's default: the whole cluster answers CLUSTERDOWN
# from the moment a master is marked failed until its replica has taken over), IM_KEY_PREFIX
# (im), RESTART_GAP (2 s between one node being ready again and the next one's SIGTERM),
# ROLL_DURATION (30 s of sending for drill 5), STORM_LOAD (19000), STORM_OTHERS (2000),
# STORM_PROCS (3), STORM_DURATION (40 s of sending for drill 6), STORM_LIMIT_MS (every client
# of the killed node back within this, 15000), STORM_SAMPLE_MS (250). IMSERVER and IMBENCH
# name other binaries (then nothing is built).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

drills="${DRILLS:-1 2 3 4}"
clients="${CLIENTS:-3000}"
rate="${RATE:-300}"
chans="${CHANS:-8}"
chan_percent="${CHAN_PERCENT:-2}"
lease_ms="${LEASE_MS:-1500}"
duration="${DURATION:-15}"
act_after="${ACT_AFTER:-3}"
redis_down="${REDIS_DOWN_SECS:-2}"
if [ "${REDIS_PERSIST:-1}" = 1 ]; then aof=yes; else aof=no; fi
cluster_kill="${CLUSTER_KILL:-topic}"
full_coverage="${CLUSTER_FULL_COVERAGE:-no}"
prefix="${IM_KEY_PREFIX:-im}"
restart_gap="${RESTART_GAP:-2}"
roll_duration="${ROLL_DURATION:-30}"
storm_load="${STORM_LOAD:-19000}"
storm_others="${STORM_OTHERS:-2000}"
storm_procs="${STORM_PROCS:-3}"
storm_duration="${STORM_DURATION:-40}"
storm_limit="${STORM_LIMIT_MS:-15000}"
storm_sample="${STORM_SAMPLE_MS:-250}"

ensure_redis_server
command -v jq >/dev/null 2>&1 || apt_install jq
if [ -z "${IMSERVER:-}" ] || [ -z "${IMBENCH:-}" ]; then
  cargo build --quiet --release -p imserver -p imbench
fi
out=target/chaos
mkdir -p "$out"
rm -rf "$out"/drill*
run=$(mktemp -d)
cp "${IMSERVER:-target/release/imserver}" "$run/imserver"
cp "${IMBENCH:-target/release/imbench}" "$run/imbench"
cleanup() { stop_all; rm -rf "$run"; }
on_exit cleanup
export IM_TOKEN_SECRET="chaos-secret-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
now_ms() { date +%s%3N; }
join() { local IFS=,; echo "$*"; }

# Starts redis-server on port $1 (data in $run/redis-$d, appended to its log); sets rpid.
drill_redis() {
  start_redis "$1" "$run/redis-$d" "$out/drill$d-redis.log" --appendonly "$aof" --appendfsync everysec
  rpid=$redis_pid
  pids+=("$rpid")
}
# Starts node $1 (0-based) of the list on its planned port and waits for its ready line.
start_node() {
  local k=$1
  start_imserver "$run/imserver" "$run/ready-$d-$k" "$out/drill$d-node$k.log" \
    --listen "127.0.0.1:${ports[$k]}" --nodes "$(join "${ids[@]}")" --lease-ms "$lease_ms" \
    --max-connections 20000
  npids[$k]=$node_pid
  [ "$node_id" = "${ids[$k]}" ] || { echo "node $k is $node_id, not ${ids[$k]}" >&2; exit 1; }
}
# Sets up drill $d: Redis, a list of $1 nodes of which the first $2 run.
setup() {
  rport=$(free_port)
  drill_redis "$rport"
  export IM_REDIS_URL="redis://127.0.0.1:$rport"
  setup_nodes "$@"
}
# Sets up drill $d on a private Redis Cluster (three masters, one replica each; its files and
# logs in $out/drill$d-cluster): a list of $1 nodes of which the first $2 run. Sets cports to
# the cluster's ports, masters first.
setup_cluster() {
  start_redis_cluster "$out/drill$d-cluster"
  read -ra cports <<<"$REDIS_CLUSTER_PORTS"
  local cpids p seeds=()
  read -ra cpids <<<"$REDIS_CLUSTER_PIDS"
  pids+=("${cpids[@]}")
  for p in "${cports[@]}"; do seeds+=("127.0.0.1:$p"); done
  IM_REDIS_URL="redis+cluster://$(join "${seeds[@]}")"
  export IM_REDIS_URL
  for p in "${cports[@]}"; do
    redis-cli -p "$p" CONFIG SET cluster-require-full-coverage "$full_coverage" >/dev/null
  done
  setup_nodes "$@"
}
# The cluster slot of key or topic $1, and the port of the live master that serves slot $1
# (asking a node still up: kill_cluster_master_of_slot drops the killed one from the list).
slot_of() { redis-cli -p "${REDIS_CLUSTER_PORTS%% *}" CLUSTER KEYSLOT "$1" | tr -d '\r'; }
master_of_slot() { cluster_view "${REDIS_CLUSTER_PORTS%% *}" | cluster_view_owner "$1"; }
setup_nodes() {
  ports=()
  ids=()
  npids=()
  for _ in $(seq 1 "$1"); do
    ports+=("$(free_port)")
    ids+=("ws://127.0.0.1:${ports[-1]}")
  done
  for k in $(seq 0 $(($2 - 1))); do start_node "$k"; done
  marks="$out/drill$d.marks"
  : >"$marks"
}
mark() { echo "$1 $(now_ms)" >>"$marks"; }
# Starts imbench (extra arguments: drill flags) and waits until its clients are connected.
start_bench() {
  "$run/imbench" --nodes "$(join "${ids[@]}")" --workload drill --clients "$clients" \
    --rate "$rate" --duration "$duration" --chans "$chans" --chan-percent "$chan_percent" \
    --drill-marks "$marks" "$@" >"$out/drill$d.json" 2>"$out/drill$d.log" &
  bpid=$!
  pids+=("$bpid")
  for _ in $(seq 1 1200); do
    grep -q '^drill: ready' "$out/drill$d.log" 2>/dev/null && break
    kill -0 "$bpid" 2>/dev/null || { echo "imbench ended early: $(tail -3 "$out/drill$d.log")" >&2; exit 1; }
    sleep 0.1
  done
  grep '^drill: ready' "$out/drill$d.log" >&2 || { echo "imbench not ready after 120 s" >&2; exit 1; }
  sleep "$act_after"
}
finish_bench() {
  [ -z "$bpid" ] || wait "$bpid" || { echo "imbench failed: $(tail -3 "$out/drill$d.log")" >&2; exit 1; }
  [ -s "$out/drill$d.json" ] || { echo "imbench printed no report" >&2; exit 1; }
  # The running nodes' counters at the end, for the drop line and a closer look.
  local k
  for k in "${!npids[@]}"; do
    if kill -0 "${npids[$k]}" 2>/dev/null; then
      curl -s -m 5 "http://127.0.0.1:${ports[$k]}/metrics" >"$out/drill$d-node$k.metrics" || true
    fi
  done
  stop_all
}
# The nodes' drops (im_drops_total by reason) and Redis reconnects, summed over the nodes, and
# how often a node found its lease had lapsed (its log): other nodes and imclient then counted
# it dead for a moment.
drop_line() {
  cat "$out/drill$d"-node*.metrics 2>/dev/null | awk -v lapsed="$(cat "$out/drill$d"-node*.log 2>/dev/null | grep -c 'lease had lapsed')" '
    /^im_drops_total\{/ { match($0, /reason="[^"]*"/); r = substr($0, RSTART + 8, RLENGTH - 9); d[r] += $NF }
    /^im_redis_reconnects_total[ {]/ { rc += $NF }
    END { printf "  nodes at the end: drops"; for (r in d) printf " %s %d", r, d[r]
          printf "; Redis reconnects %d; leases found lapsed %d\n", rc, lapsed }'
}
# Drill 6: every STORM_SAMPLE_MS, a line per surviving node and for Redis: `<unix ms> <name>
# <connections opened> <handshakes refused> <CPU ticks> <RSS KiB> <peak RSS KiB>` (Redis has
# no counters: 0 0), until killed; scripts/storm_summary.py reads them.
storm_sampler() {
  local k pid name counters
  while :; do
    for k in 0 1 redis; do
      if [ "$k" = redis ]; then
        pid=$rpid name=redis counters="0 0"
      else
        pid=${npids[$k]} name=node$k
        counters=$(curl -s -m 1 "http://127.0.0.1:${ports[$k]}/metrics" | awk '
          /^im_connections_opened_total[ {]/ { o = $NF } /^im_handshakes_refused_total\{/ { r += $NF }
          END { print o + 0, r + 0 }')
      fi
      [ -r "/proc/$pid/stat" ] || continue
      echo "$(now_ms) $name $counters $(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat")" \
        "$(awk '/^VmRSS:/ { r = $2 } /^VmHWM:/ { h = $2 } END { print r + 0, h + 0 }' "/proc/$pid/status")"
    done
    sleep "$(awk -v ms="$storm_sample" 'BEGIN { print ms / 1000 }')"
  done
}
results=()
verdict() { # drill title, failures... (and the warnings in $warns)
  local title=$1
  shift
  if [ $# -eq 0 ]; then results+=("drill $d ($title): PASS"); else
    results+=("drill $d ($title): FAIL: $(IFS=';'; echo "$*")"); fi
  [ ${#warns[@]} -gt 0 ] && results[-1]+=" (WARNING: $(IFS=';'; echo "${warns[*]}"))"
  echo "${results[-1]}"
}
# Sets warns: what is wrong but outside a drill's rule. A private message that a node took
# (the sender was told so) and no client received is lost (drills 2-4; in drill 1 the killed
# node takes some before it dies, and its clients are told): a warning when its receiver was
# told `missed` after it was sent, a failure (added to fails) when not, since then nobody
# learnt of the loss.
lost_warning() {
  warns=()
  jq -e '.private_lost.count == 0' "$1" >/dev/null ||
    warns+=("$(jq -r '.private_lost.count' "$1") private messages taken by a node and never delivered (their receivers told missed after: $(jq -r '.private_lost.count - .private_lost.unannounced' "$1"))")
  jq -e '(.private_lost.unannounced // 0) == 0' "$1" >/dev/null ||
    fails+=("$(jq -r '.private_lost.unannounced' "$1") private messages lost without their receiver being told missed")
}
base_checks() { # sets fails: what every drill needs to mean anything; warns is emptied
  fails=()
  warns=()
  jq -e '.placed == .clients and .clients_unfinished == 0' "$1" >/dev/null ||
    fails+=("not every client connected before the action, or finished")
}
common_lines() { # what every drill reports
  jq -r '"  clients \(.clients) (\(.placed) connected in \(.connect_ms) ms: \(.start_nodes | to_entries | map("\(.value)") | join("/")) per node), \(.sent_private + .sent_chan) messages sent (\(.send_errors) send errors, \(.sends_not_taken) taken by no node), \(.deliveries) deliveries",
    "  max pause between deliveries before the action: \(.max_gap_before_action_ms) ms",
    "  seq over all clients: \(.seq.gaps) gaps (\(.seq.missing) missing), \(.seq.duplicates) duplicates, \(.seq.epoch_mismatch) epoch mismatches" + (if .seq.samples != [] then " e.g. \(.seq.samples[0:3])" else "" end),
    "  disconnects \(.disconnects.total) (\(.disconnects.clients) clients) by close code \(.disconnects.codes); failed attempts \(.attempts_failed.total) \(.attempts_failed.kinds)",
    "  private messages: \(.private_taken) taken by the receiver'"'"'s node, \(.deliveries_private) delivered; taken and never delivered: \(.private_lost.count), of which receivers never told missed after: \(.private_lost.unannounced // 0)" + (if .private_lost.count > 0 then " \(.private_lost.by_node), sent \(.private_lost.sent_first_ms) to \(.private_lost.sent_last_ms) ms after the \(.marks | keys_unsorted | .[0]) mark" else "" end)' "$1"
  drop_line
}

echo "== chaos drills: $clients clients, $rate msg/s ($chan_percent% to $chans channels), lease $lease_ms ms," \
  "$duration s of traffic per drill, action after $act_after s; logs in $out/" >&2
for d in $drills; do
  case $d in
  1)
    echo "== drill 1: kill -9 one node of three under load"
    setup 3 3
    start_bench --drill-node "${ids[2]}"
    mark kill
    kill -9 "${npids[2]}"
    wait "${npids[2]}" 2>/dev/null || true # reaped here, so the shell does not report it
    finish_bench
    j="$out/drill1.json"
    common_lines "$j"
    jq -r '.action | "  killed \(.node): \(.victims) of its clients back on live nodes \(.victims_back_on) after p50 \(.back_ms_p50) ms, p90 \(.back_ms_p90) ms, all \(.back_ms_max) ms (\(.victims_back) of \(.victims) back)",
      "  their welcome: recovered:false \(.victims_recovered_false) \(.victims_reasons), recovered:true \(.victims_recovered_true)",
      "  other nodes: \(.others) clients, \(.others_disconnected) disconnected \(.others_close_codes), longest pause between deliveries to them \(.others_max_gap_ms) ms after the kill (\(.others_max_gap_before_ms) ms before)"' "$j"
    limit=$((lease_ms + 5000))
    base_checks "$j"
    jq -e --argjson l "$limit" '.action | .victims > 0 and .victims_back == .victims and .back_ms_max <= $l' "$j" >/dev/null ||
      fails+=("not every client of the killed node back within lease + 5 s ($limit ms)")
    jq -e '.action.others_disconnected == 0' "$j" >/dev/null || fails+=("clients of the other nodes were disconnected")
    echo "  rule: every client of the killed node on a live node within $limit ms (lease + 5 s), none of the other nodes' clients disconnected"
    verdict "kill -9 one node of three" "${fails[@]}"
    ;;
  2)
    echo "== drill 2: three nodes to four under load"
    setup 4 3
    start_bench
    mark start
    start_node 3
    finish_bench
    j="$out/drill2.json"
    common_lines "$j"
    jq -r '.action | "  fourth node started \(.at_ms) ms after ready: \(.moved) clients moved (\(.moved_fraction * 1000 | round / 10) %) to \(.moved_to), \(.clients_disconnected) clients disconnected in all",
      "  moved clients resumed: recovered:true \(.moved_recovered_true), recovered:false \(.moved_recovered_false) \(.moved_reasons), without recovered \(.moved_without_recovered), not back \(.moved_not_back)",
      "  all welcomes after the start: recovered:true \(.welcomes_after.recovered_true), recovered:false \(.welcomes_after.recovered_false) \(.welcomes_after.reasons)",
      "  longest pause between deliveries (all clients) after the start: \(.all_max_gap_ms) ms"' "$j"
    base_checks "$j"
    lost_warning "$j"
    jq -e '.seq.gaps == 0 and .seq.duplicates == 0 and .seq.epoch_mismatch == 0' "$j" >/dev/null ||
      fails+=("seq gaps or duplicates")
    jq -e '.action | .moved > 0 and .moved_recovered_true == .moved' "$j" >/dev/null ||
      fails+=("not every moved client resumed with recovered:true")
    jq -e '.action.welcomes_after.recovered_false == 0' "$j" >/dev/null || fails+=("welcomes with recovered:false")
    jq -e '.action | .moved_fraction >= 0.15 and .moved_fraction <= 0.35' "$j" >/dev/null ||
      fails+=("moved fraction outside 15-35 %")
    echo "  rule: no seq gap or duplicate, every moved client back with recovered:true, no recovered:false, 15-35 % moved"
    verdict "three nodes to four" "${fails[@]}"
    ;;
  3)
    echo "== drill 3: Redis killed and restarted under load"
    setup 3 3
    start_bench
    mark down
    kill -9 "$rpid"
    wait "$rpid" 2>/dev/null || true
    sleep "$redis_down"
    drill_redis "$rport"
    mark up
    finish_bench
    j="$out/drill3.json"
    common_lines "$j"
    jq -r 'def ms: if . == null then "never" else "\(.) ms" end;
      "  Redis down at \(.resume.down_at_ms) ms, back at \(.resume.up_at_ms) ms after ready; after it was back: first delivery \(.resume.first_delivery_ms | ms), first private \(.resume.first_private_ms | ms), first channel \(.resume.first_channel_ms | ms), first send a node took \(.first_send_taken_after_up_ms | ms), last send no node took \(.last_send_not_taken_after_up_ms | ms)",
      "  longest pause between deliveries from the kill on: \(.resume.max_gap_ms) ms; welcomes recovered:false \(.welcomes.recovered_false)",
      "  `missed` after the kill: \(.outage.missed_clients) of \(.placed) clients (\(.missed.reasons)), first \(.outage.missed_first_ms | ms), last \(.outage.missed_last_ms | ms) after it"' "$j"
    base_checks "$j"
    lost_warning "$j"
    jq -e '.disconnects.total == 0' "$j" >/dev/null || fails+=("client disconnects")
    jq -e '.resume | .first_private_ms != null and .first_channel_ms != null and .first_private_ms <= 5000 and .first_channel_ms <= 5000' "$j" >/dev/null ||
      fails+=("private and channel deliveries not both back within 5 s of Redis")
    echo "  rule: no client disconnected, private and channel deliveries both resumed within 5 s of Redis being back"
    verdict "Redis restart" "${fails[@]}"
    ;;
  4)
    echo "== drill 4: one Redis Cluster master stopped under load"
    setup_cluster 3 3
    # The app's keys share one slot (the prefix is their hash tag); each topic has its own. The
    # target is the first node whose topic's master does not hold the keys (CLUSTER_KILL=data:
    # does); if none fits, the last node (CLUSTER_KILL=data: the keys' master is killed anyway).
    data_slot=$(slot_of "{$prefix}:nodes")
    data_master=$(master_of_slot "$data_slot")
    target="" topic_slots=() topic_masters=()
    for k in 0 1 2; do
      topic_slots+=("$(slot_of "$prefix:node:${ids[$k]}")")
      topic_masters+=("$(master_of_slot "${topic_slots[$k]}")")
    done
    for k in 0 1 2; do
      if { [ "$cluster_kill" = data ] && [ "${topic_masters[$k]}" = "$data_master" ]; } ||
        { [ "$cluster_kill" != data ] && [ "${topic_masters[$k]}" != "$data_master" ]; }; then
        target=$k
        break
      fi
    done
    [ -n "$target" ] || target=2
    if [ "$cluster_kill" = data ]; then
      victim_slot=$data_slot victim_master=$data_master
    else
      victim_slot=${topic_slots[$target]} victim_master=${topic_masters[$target]}
    fi
    echo "  masters ${cports[*]:0:3} (cluster-require-full-coverage $full_coverage); app keys {$prefix}:* in slot $data_slot on $data_master; node topics (slot on master):" \
      "$(for k in 0 1 2; do printf '%s %s on %s; ' "${ids[$k]##*:}" "${topic_slots[$k]}" "${topic_masters[$k]}"; done)"
    echo "  killing master $victim_master (slot $victim_slot), the shard of node ${ids[$target]}'s topic" \
      "$([ "$victim_master" = "$data_master" ] && echo "and of the app's keys" || echo "(not of the app's keys)")"
    start_bench
    mark down
    kill_cluster_master_of_slot "$victim_slot" || { echo "the cluster did not fail over" >&2; exit 1; }
    mark up
    # Where each node's topic is subscribed a few seconds after the takeover (SHARDNUMSUB on
    # every live redis-server): the master of its slot should count one subscriber.
    sleep 4
    subs=$(for k in 0 1 2; do
      t="$prefix:node:${ids[$k]}"
      echo -n "    ${ids[$k]}'s topic: master $(master_of_slot "$(slot_of "$t")"); subscribers"
      for p in $REDIS_CLUSTER_PORTS; do
        echo -n " $p:$(redis-cli -p "$p" PUBSUB SHARDNUMSUB "$t" | tail -1 | tr -d '\r')"
      done
      echo
    done)
    finish_bench
    for f in "$out/drill$d-cluster"/node*/redis.log; do
      [ -f "$f" ] && cp "$f" "$out/drill$d-redis-$(basename "$(dirname "$f")").log"
    done
    j="$out/drill4.json"
    common_lines "$j"
    echo "  4 s after the takeover:"
    echo "$subs"
    # The figures that say what the failover cost the clients: a client is moved when a node
    # counted another one dead for a moment (its lease lapsed) and closed it with 4003.
    jq -r '"  per failover: clients moved (closed 4003) \(.disconnects.codes["4003"] // 0), told missed \(.outage.missed_clients), longest pause in deliveries to one node'"'"'s clients \(.outage.max_gap_ms) ms"' "$j"
    jq -r --arg m "$victim_master" \
      'def ms: if . == null then "never" else "\(.) ms" end;
      "  killed master \($m) \(.resume.down_at_ms) ms after ready; its replica had taken over \(.resume.up_at_ms - .resume.down_at_ms) ms later (the other masters agreeing)",
      "  `missed` after the kill: \(.outage.missed_clients) of \(.placed) clients, first \(.outage.missed_first_ms | ms), last \(.outage.missed_last_ms | ms) after the kill (\(.missed.reasons)); \(.outage.missed_before_down) before it",
      "  after the kill, worst node: private deliveries resumed \(.outage.private_resumed_ms | ms), channel \(.outage.channel_resumed_ms | ms); longest pause between deliveries to one node'"'"'s clients \(.outage.max_gap_ms) ms (all clients together \(.resume.max_gap_ms) ms)",
      (.outage.nodes[] | "    \(.node): \(.clients) clients, \(.missed_clients) told missed (at \(.missed_first_ms | ms)); private pause \(.private_max_gap_ms) ms ending \(.private_resumed_ms | ms) after the kill, channel pause \(.channel_max_gap_ms) ms ending \(.channel_resumed_ms | ms)"),
      "  sends failed \(.send_errors) (last \(.last_send_error_after_down_ms | ms) after the kill\(if .first_send_error then ": " + (.first_send_error | .[0:80]) else "" end)), published but taken by no node \(.sends_not_taken) (last \(.last_send_not_taken_after_down_ms | ms) after the kill); channel sends by nodes that took them \(.chan_sends_taken_by_nodes)"' "$j"
    base_checks "$j"
    lost_warning "$j"
    jq -e '.disconnects.total == 0' "$j" >/dev/null || fails+=("client disconnects")
    jq -e '.outage | .private_resumed_ms != null and .channel_resumed_ms != null and .private_resumed_ms <= 10000 and .channel_resumed_ms <= 10000' "$j" >/dev/null ||
      fails+=("private and channel deliveries not both resumed within 10 s of the kill")
    if [ "$victim_master" = "${topic_masters[$target]}" ]; then
      jq -e --arg n "${ids[$target]}" '[.outage.nodes[] | select(.node == $n)][0] | .missed_clients == .clients' "$j" >/dev/null ||
        fails+=("not every client of the node whose topic's master was killed got missed")
    fi
    jq -e '.outage.missed_before_down == 0' "$j" >/dev/null || fails+=("missed before the kill")
    echo "  rule: no client disconnected, private and channel deliveries both resumed within 10 s of the kill, every client of the node whose topic's shard was lost told missed (a private message taken by a node and never delivered is a warning)"
    verdict "Redis Cluster master stopped" "${fails[@]}"
    ;;
  5)
    echo "== drill 5: rolling restart of three nodes under load"
    setup 3 3
    all_duration=$duration
    duration=$roll_duration
    start_bench
    duration=$all_duration
    for k in 0 1 2; do
      mark "stop$k"
      kill -TERM "${npids[$k]}"
      wait "${npids[$k]}" 2>/dev/null || true
      mark "stopped$k"
      rm -f "$run/ready-$d-$k"
      start_node "$k"
      mark "started$k"
      [ "$k" = 2 ] || sleep "$restart_gap"
    done
    finish_bench
    j="$out/drill5.json"
    common_lines "$j"
    jq -r '(.restarts[] | "  node \(.node): stopped \(.stop_ms) ms after SIGTERM, started again and ready \(.start_ms) ms after that; \(.clients_back) of its \(.clients) clients back on it, the last \(.back_ms_max) ms after the old process exited"),
      (.action | "  after the first SIGTERM: clients away (close to welcome) \(.reconnects) times, p50 \(.reconnect_ms_p50) ms, p90 \(.reconnect_ms_p90) ms, max \(.reconnect_ms_max) ms",
        "  resumes: recovered:true \(.welcomes_after.recovered_true), recovered:false \(.welcomes_after.recovered_false) \(.welcomes_after.reasons)",
        "  longest pause between deliveries to one node'"'"'s clients: \(.group_max_gap_ms) ms (\(.group_max_gap_before_ms) ms before the first SIGTERM); all clients together \(.all_max_gap_ms) ms")' "$j"
    base_checks "$j"
    lost_warning "$j"
    jq -e '.private_lost.count == 0' "$j" >/dev/null || fails+=("private messages lost")
    jq -e '.seq.gaps == 0 and .seq.duplicates == 0 and .seq.epoch_mismatch == 0' "$j" >/dev/null ||
      fails+=("seq gaps or duplicates")
    jq -e '.action.welcomes_after.recovered_false == 0 and .action.welcomes_after.recovered_true > 0' "$j" >/dev/null ||
      fails+=("resumes with recovered:false")
    jq -e '(.disconnects.codes | keys) == ["4003"]' "$j" >/dev/null || fails+=("closes other than 4003")
    jq -e '.action.reconnect_ms_max < 1000' "$j" >/dev/null || fails+=("a client away for a second or more")
    jq -e 'all(.restarts[]; .clients_back == .clients)' "$j" >/dev/null || fails+=("a node's clients not all back on it")
    echo "  rule: nothing lost, no seq gap or duplicate, every resume recovered:true, every close 4003, no client away for a second, every node's clients back on it"
    verdict "rolling restart of three nodes" "${fails[@]}"
    ;;
  6)
    echo "== drill 6: a storm: kill -9 a node holding $storm_load clients ($storm_others on the other two)"
    setup 3 3
    all_clients=$clients all_duration=$duration
    clients=$((storm_load + storm_others)) duration=$storm_duration
    start_bench --drill-node "${ids[2]}" --drill-load "$storm_load" --procs "$storm_procs"
    clients=$all_clients duration=$all_duration
    for k in 0 1; do curl -s -m 5 "http://127.0.0.1:${ports[$k]}/metrics" >"$out/drill$d-node$k.before.metrics" || true; done
    storm_sampler >"$out/drill$d.samples" 2>/dev/null &
    spid=$!
    pids+=("$spid")
    echo "  load before the kill: $(uptime | sed 's/.*load average/load average/')"
    mark kill
    kill -9 "${npids[2]}"
    wait "${npids[2]}" 2>/dev/null || true
    unset 'npids[2]'
    # The storm is over once every client is back; imbench says so only at its end, so the
    # sampler runs until then, and the survivors are checked alive before they are stopped.
    wait "$bpid" || { echo "imbench failed: $(tail -3 "$out/drill$d.log")" >&2; exit 1; }
    bpid=""
    kill "$spid" 2>/dev/null || true
    wait "$spid" 2>/dev/null || true
    crashed=()
    for k in 0 1; do kill -0 "${npids[$k]}" 2>/dev/null || crashed+=("node $k"); done
    echo "  load after: $(uptime | sed 's/.*load average/load average/')"
    finish_bench
    j="$out/drill6.json"
    common_lines "$j"
    kill_ms=$(awk '$1 == "kill" { print $2 }' "$marks")
    end_ms=$((kill_ms + $(jq '.action.back_ms_max // 0' "$j") + 1000))
    python3 scripts/storm_summary.py "$out/drill$d.samples" "$kill_ms" "$end_ms" "$out" "drill$d" "$out/drill$d-server.json"
    jq -r '.action | "  killed \(.node): \(.victims) of its clients back on live nodes \(.victims_back_on) after p50 \(.back_ms_p50) ms, p90 \(.back_ms_p90) ms, p99 \(.back_ms_p99) ms, all \(.back_ms_max) ms (\(.victims_back) of \(.victims) back)",
      "  their welcomes per second at the survivors: peak \(.storm.welcomes_per_sec_peak) (over a sliding second), mean \(.storm.welcomes_per_sec_mean | floor) from the first (\(.storm.back_ms_first) ms) to the last",
      "  failed attempts after the kill (what the clients saw): \(.storm.failed_attempts); refusals by a node \(.storm.refusals) in waves \(.storm.refusal_waves | map("\(.count) at \(.from_ms)-\(.to_ms) ms \(.kinds)") | join(", "))",
      "  other nodes: \(.others) clients, \(.others_disconnected) disconnected \(.others_close_codes), longest pause between deliveries to them \(.others_max_gap_ms) ms after the kill (\(.others_max_gap_before_ms) ms before; the worst of the imbench processes)"' "$j"
    jq -r '"  private messages lost to clients not on the killed node: \(.private_lost.to_others)"' "$j"
    base_checks "$j"
    jq -e --argjson l "$storm_limit" '.action | .victims > 0 and .victims_back == .victims and .back_ms_max <= $l' "$j" >/dev/null ||
      fails+=("not every client of the killed node back within $storm_limit ms")
    jq -e '.private_lost.to_others == 0' "$j" >/dev/null || fails+=("private messages to clients not on the killed node lost")
    jq -e '.action.others_disconnected == 0' "$j" >/dev/null || fails+=("clients of the other nodes were disconnected")
    jq -e '(.action.storm.refusal_waves | length) <= 1' "$j" >/dev/null || fails+=("a second wave of refusals (clients)")
    jq -e '(.refusal_waves | length) <= 1' "$out/drill$d-server.json" >/dev/null || fails+=("a second wave of refusals (the survivors' counters)")
    [ ${#crashed[@]} -eq 0 ] || fails+=("survivor crashed: ${crashed[*]}")
    echo "  rule: every client of the killed node back within $storm_limit ms, nothing lost to the other nodes' clients (none disconnected), at most one wave of refusals (clients' and survivors' view), no survivor crash"
    verdict "a storm of $storm_load reconnects" "${fails[@]}"
    ;;
  *)
    echo "unknown drill $d" >&2
    exit 2
    ;;
  esac
done
echo
echo "== chaos summary"
printf '%s\n' "${results[@]}"
! printf '%s\n' "${results[@]}" | grep -q ': FAIL'

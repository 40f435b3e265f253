# Shared shell functions of the scripts. Sourced, not run.

# Installs a Debian package when the command it provides is missing.
apt_install() {
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian package(s): $*" >&2
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >&2
}

ensure_redis_server() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  # redis-cli forms the test clusters (redis-cli --cluster create).
  command -v redis-cli >/dev/null 2>&1 || apt_install redis-tools
}

# Prints a free TCP port on 127.0.0.1 (see free_ports).
free_port() { free_ports 1; }

# Prints the path of the sockudo binary, the peer server the benchmarks compare against:
# $SOCKUDO, else sockudo on PATH, else target/peer/bin/sockudo, else it is installed there
# (a long compile; needs protoc, which comes from Debian's protobuf-compiler). Run from the
# repository root.
ensure_sockudo() {
  if [ -n "${SOCKUDO:-}" ]; then
    echo "$SOCKUDO"
  elif command -v sockudo >/dev/null 2>&1; then
    command -v sockudo
  elif [ -x target/peer/bin/sockudo ]; then
    echo target/peer/bin/sockudo
  else
    command -v protoc >/dev/null 2>&1 || apt_install protobuf-compiler
    echo "installing sockudo into target/peer (a long compile, once)" >&2
    # Only the local and Redis adapters: the benchmarks need nothing else, and the default
    # features pull in OpenTelemetry and more build time.
    cargo install --root target/peer sockudo --no-default-features --features local,redis >&2
    echo target/peer/bin/sockudo
  fi
}

# Builds the release imserver and imbench and exports IMSERVER and IMBENCH for the run scripts,
# unless both are given already (then nothing is built).
use_release_binaries() {
  if [ -z "${IMSERVER:-}" ] || [ -z "${IMBENCH:-}" ]; then
    cargo build --quiet --release -p imserver -p imbench
    export IMSERVER="${IMSERVER:-target/release/imserver}" IMBENCH="${IMBENCH:-target/release/imbench}"
  fi
}

# One benchmark run: `bench_line SERVER NODES SECONDS STDERR_FILE IMBENCH_ARGS...` runs
# scripts/bench-run.sh (SERVER imserver) or scripts/peer-run.sh (peer) on NODES nodes, or
# scripts/floor-run.sh (floor: one imfloor, NODES ignored), killed after SECONDS, its stderr to
# STDERR_FILE; prints its JSON line, or fails when there is none.
bench_line() {
  local server=$1 nodes=$2 secs=$3 err=$4 line
  shift 4
  local script=scripts/bench-run.sh
  [ "$server" = peer ] && script=scripts/peer-run.sh
  [ "$server" = floor ] && script=scripts/floor-run.sh
  line=$(NODES=$nodes timeout -k 10 "$secs" "$script" "$@" 2>"$err") &&
    python3 -c 'import json,sys; json.loads(sys.argv[1])' "$line" 2>/dev/null &&
    echo "$line"
}

# How many imbench processes a run with these imbench arguments takes: $PROCS if set, else one
# per 15,000 clients, as one process may hold only about 20,000 open files here.
imbench_procs() {
  if [ -n "${PROCS:-}" ]; then
    echo "$PROCS"
    return
  fi
  local clients=1000 prev="" a # 1000: imbench's default
  for a in "$@"; do
    case "$a" in --clients=*) clients=${a#--clients=} ;; esac
    [ "$prev" = --clients ] && clients=$a
    prev=$a
  done
  echo $(((clients + 14999) / 15000))
}

# Waits until something listens on 127.0.0.1:$1 (up to 30 s); fails early when pid $2 exits.
wait_port() {
  for _ in $(seq 1 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# Starts a private redis-server on port $1, its files in directory $2 and its output appended to
# $3 (more redis-server arguments may follow, e.g. --appendonly yes), and waits until it
# listens; exits the script if it does not start. Sets redis_pid.
start_redis() {
  local port=$1 dir=$2 log=$3
  shift 3
  mkdir -p "$dir"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" "$@" >>"$log" 2>&1 &
  redis_pid=$!
  wait_port "$port" "$redis_pid" || { echo "redis-server did not start: $(tail -3 "$log")" >&2; exit 1; }
}

# The processes a script started and stops when it ends: start_redis_for, start_imserver and
# the script itself add to it; stop_all stops them.
pids=()

# Stops every process in pids with TERM and waits for them; with $1, SIGKILLs those still
# running after $1 seconds (for servers whose shutdown must not hold up the next run). Empties
# pids.
stop_all() {
  local grace=${1:-} p alive
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    if [ -n "$grace" ]; then
      for _ in $(seq 1 "$((grace * 20))"); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive -eq 0 ] && break
        sleep 0.05
      done
      kill -9 "${pids[@]}" 2>/dev/null || true
    fi
    wait "${pids[@]}" 2>/dev/null || true
  fi
  pids=()
}

# Runs the function $1 (default stop_all) once when the script ends, however it ends: at its
# end, on an error, on Ctrl-C (status 130) or on TERM (status 143; bench.sh's timeout sends it
# to a hung run).
on_exit() {
  on_exit_cleanup=${1:-stop_all}
  trap 'trap - EXIT; "$on_exit_cleanup"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# Starts this script's Redis: with $1 single, a private redis-server on a free port (its files
# in directory $2, its output appended to $3, default $2/redis.log); with $1 cluster, a private Redis
# Cluster of three masters with a replica each (start_redis_cluster, in $2/cluster). Adds its
# pids to pids, sets redis_ports (masters first) and exports IM_REDIS_URL; exits the script if
# it does not start.
start_redis_for() {
  local mode=$1 dir=$2 log=${3:-$2/redis.log} rpids
  case "$mode" in
  single)
    redis_ports=("$(free_port)")
    start_redis "${redis_ports[0]}" "$dir" "$log"
    pids+=("$redis_pid")
    export IM_REDIS_URL="redis://127.0.0.1:${redis_ports[0]}"
    ;;
  cluster)
    start_redis_cluster "$dir/cluster"
    read -ra redis_ports <<<"$REDIS_CLUSTER_PORTS"
    read -ra rpids <<<"$REDIS_CLUSTER_PIDS"
    pids+=("${rpids[@]}")
    IM_REDIS_URL="redis+cluster://$(IFS=,; echo "${redis_ports[*]/#/127.0.0.1:}")"
    export IM_REDIS_URL
    ;;
  *)
    echo "REDIS is single or cluster, not $mode" >&2
    exit 2
    ;;
  esac
}

# Starts an imserver node (or imfloor, whose ready line has the node's shape):
# `start_imserver BIN FIFO LOG ARGS...` runs BIN with ARGS (and
# RUST_LOG=warn), its stdout through the fifo FIFO (made here) so that its ready line is read
# as soon as the node serves, its stderr appended to LOG. Waits up to 30 s for that line; adds
# the node to pids and sets node_pid, node_id (the address it announces, from the line) and
# node_ready (the whole line, e.g. for its "api" address). Exits the script if the node does
# not start.
start_imserver() {
  local bin=$1 fifo=$2 log=$3 ready
  shift 3
  mkfifo "$fifo"
  RUST_LOG=warn "$bin" "$@" >"$fifo" 2>>"$log" &
  node_pid=$!
  pids+=("$node_pid")
  read -r -t 30 ready <"$fifo" || { echo "imserver did not start: $(tail -3 "$log")" >&2; exit 1; }
  node_id=$(sed -E 's/.*"node":"([^"]+)".*/\1/' <<<"$ready")
  # shellcheck disable=SC2034 # for the caller
  node_ready=$ready
}

# For the A/B scripts: stops with a message unless IMSERVER_A, IMSERVER_B (the two builds) and
# IMBENCH (the load tool both are driven by) are set.
require_ab_binaries() {
  : "${IMSERVER_A:?the first imserver binary (e.g. the build before)}"
  : "${IMSERVER_B:?the second imserver binary (e.g. the build after)}"
  : "${IMBENCH:?the imbench binary both builds are driven by}"
}

# For the A/B scripts (bench-connect.sh, bench-idle.sh): `start_variant_node VARIANT DIR
# CLIENTS ARGS...` starts a private redis-server and one node of $IMSERVER_A (VARIANT A) or
# $IMSERVER_B (B) in the run directory DIR, capped at CLIENTS + 1,000 connections, with ARGS;
# sets url (the Redis URL) beside start_imserver's node_pid and node_id.
start_variant_node() {
  local variant=$1 dir=$2 clients=$3 bin=$IMSERVER_A
  shift 3
  [ "$variant" = B ] && bin=$IMSERVER_B
  rm -f "$dir/ready"
  start_redis_for single "$dir"
  url="redis://127.0.0.1:${redis_ports[0]}"
  start_imserver "$bin" "$dir/ready" "$dir/node.log" --listen 127.0.0.1:0 \
    --max-connections "$((clients + 1000))" --redis-url "$url" "$@"
}

# `connect_idle_clients DIR CLIENTS SECONDS`: $IMBENCH opens CLIENTS connections to that node
# (private messages at 10/s for SECONDS once all are open; its report in DIR/report) and this
# returns once it says it is sending, that is once every client is connected; sets bench (its
# pid, to wait for).
connect_idle_clients() {
  local dir=$1 clients=$2 seconds=$3
  # Emptied first: the wait below must not find the last run's line.
  : >"$dir/stderr"
  "$IMBENCH" --nodes "$node_id" --node-pid "$node_pid" --redis-url "$url" --workload private \
    --clients "$clients" --rate 10 --duration "$seconds" >"$dir/report" 2>"$dir/stderr" &
  bench=$!
  until grep -q '^imbench: sending' "$dir/stderr" || ! kill -0 "$bench" 2>/dev/null; do
    sleep 0.02
  done
}

# Prints $1 free TCP ports on 127.0.0.1, space-separated: held open together while they are
# picked, so they differ, and one python3 start instead of $1. They come from below the kernel's
# ephemeral range: a port from inside it can become the local port of an outgoing connection (a
# node's Redis connection, a client's socket) before the server it was picked for binds it.
free_ports() {
  python3 -c 'import random, socket, sys
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except (OSError, ValueError, IndexError):
    low = 32768
socks = []
while len(socks) < int(sys.argv[1]):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", random.randrange(10000, low) if low > 11000 else 0))
        socks.append(s)
    except OSError:
        s.close()
print(" ".join(str(s.getsockname()[1]) for s in socks))' "$1"
}

# The cluster as the node on port $1 sees it: a sorted line per node (id, address, flags,
# master id, link state, slots), without what differs between nodes (myself, ping times,
# epochs), so that two nodes agree when their views are equal.
cluster_view() {
  redis-cli -p "$1" CLUSTER NODES 2>/dev/null |
    awk 'NF >= 8 { sub(/myself,/, "", $3); v = $1 " " $2 " " $3 " " $4 " " $8
                   for (i = 9; i <= NF; i++) v = v " " $i; print v }' | sort
}

# Prints the port of the live master that serves slot $1 in the cluster_view on stdin.
cluster_view_owner() {
  awk -v slot="$1" '$3 ~ /master/ && $3 !~ /fail/ {
    for (i = 6; i <= NF; i++) {
      if ($i ~ /^\[/) continue  # a slot being migrated, not served
      n = split($i, r, "-"); hi = n == 2 ? r[2] : r[1]
      if (slot >= r[1] + 0 && slot <= hi + 0) {
        split($2, a, "@"); sub(/.*:/, "", a[1]); print a[1]; exit
      }
    }
  }'
}

# Succeeds when every node on the ports given says cluster_state:ok with all 16384 slots
# served, and all of them see the same cluster; sets cluster_seen to that view.
cluster_agrees() {
  local port info view
  cluster_seen=""
  for port in "$@"; do
    info=$(redis-cli -p "$port" CLUSTER INFO 2>/dev/null | tr -d '\r')
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx 'cluster_slots_ok:16384' <<<"$info" || return 1
    view=$(cluster_view "$port")
    [ -n "$cluster_seen" ] && [ "$view" != "$cluster_seen" ] && return 1
    cluster_seen=$view
  done
  [ -n "$cluster_seen" ]
}

# Starts a private Redis Cluster with its files in directory $1: six cluster-enabled
# redis-servers on free ports (bus ports too: port + 10000 may be taken or past 65535), made
# three masters with one replica each, a node counting as failed after 1000 ms. Waits (up to
# 20 s) until all nodes agree on a healthy cluster and every replica has synced (a replica that
# never did refuses to fail over; a master would hold the first sync back 5 s for more
# replicas without --repl-diskless-sync-delay 0); exits the script if it does not form. Exports
# REDIS_CLUSTER_PORTS (masters first) and REDIS_CLUSTER_PIDS (in the same order): like
# start_redis's redis_pid, the caller's cleanup stops them.
start_redis_cluster() {
  local dir=$1 i port bus free pids=() addrs=() ok=""
  read -ra free <<<"$(free_ports 12)"
  for i in 1 2 3 4 5 6; do
    port=${free[2 * i - 2]} bus=${free[2 * i - 1]}
    mkdir -p "$dir/node$i"
    redis-server --port "$port" --cluster-port "$bus" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 1000 --bind 127.0.0.1 --save "" \
      --appendonly no --repl-diskless-sync-delay 0 --dir "$dir/node$i" \
      >>"$dir/node$i/redis.log" 2>&1 &
    pids+=("$!")
    addrs+=("127.0.0.1:$port")
    wait_port "$port" "$!" || {
      echo "redis-server did not start: $(tail -3 "$dir/node$i/redis.log")" >&2
      kill "${pids[@]}" 2>/dev/null
      exit 1
    }
  done
  # It loops until the nodes have met: bounded, so that a cluster that never forms fails.
  if timeout 20 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/create.log" 2>&1; then
    for _ in $(seq 1 400); do
      if cluster_agrees "${addrs[@]##*:}" && [ "$(wc -l <<<"$cluster_seen")" -eq 6 ] &&
        ! grep -qE 'fail|handshake|noaddr|disconnected' <<<"$cluster_seen" &&
        [ "$(for port in "${addrs[@]##*:}"; do redis-cli -p "$port" INFO replication; done |
          tr -d '\r' | grep -cx 'master_link_status:up')" -eq 3 ]; then
        ok=1
        break
      fi
      sleep 0.05
    done
  fi
  if [ -z "$ok" ]; then
    echo "the Redis Cluster did not form: $(tail -3 "$dir/create.log")" >&2
    kill "${pids[@]}" 2>/dev/null
    exit 1
  fi
  # Masters in the order of their slots, then replicas; pids follow their ports.
  local order
  order=$(awk '{ split($2, a, "@"); sub(/.*:/, "", a[1])
                 print ($3 ~ /master/ ? 0 : 1), $6 + 0, a[1] }' <<<"$cluster_seen" |
    sort -n -k1,1 -k2,2 | awk '{ print $3 }')
  REDIS_CLUSTER_PORTS="" REDIS_CLUSTER_PIDS=""
  for port in $order; do
    for i in "${!addrs[@]}"; do
      if [ "${addrs[$i]##*:}" = "$port" ]; then
        REDIS_CLUSTER_PORTS="${REDIS_CLUSTER_PORTS:+$REDIS_CLUSTER_PORTS }$port"
        REDIS_CLUSTER_PIDS="${REDIS_CLUSTER_PIDS:+$REDIS_CLUSTER_PIDS }${pids[$i]}"
      fi
    done
  done
  export REDIS_CLUSTER_PORTS REDIS_CLUSTER_PIDS
}

# SIGKILLs the master of the cluster of start_redis_cluster that serves slot $1, waits (up to
# 20 s) until its replica has taken over and the other nodes agree on a healthy cluster again,
# and prints the seconds that took (to stderr). Drops the killed node from REDIS_CLUSTER_PORTS
# and REDIS_CLUSTER_PIDS and sets killed_port.
kill_cluster_master_of_slot() {
  local slot=$1 ports pids i victim="" victim_pid="" left=() left_pids=() view started secs
  read -ra ports <<<"$REDIS_CLUSTER_PORTS"
  read -ra pids <<<"$REDIS_CLUSTER_PIDS"
  view=$(cluster_view "${ports[0]}")
  victim=$(cluster_view_owner "$slot" <<<"$view")
  [ -n "$victim" ] || { echo "no live master serves slot $slot" >&2; return 1; }
  # Its replicas name its id as their master: without one the slot would stay unserved.
  if ! awk -v m="$(awk -v p=":$victim@" 'index($2, p) { print $1 }' <<<"$view")" \
    '$4 == m && $3 !~ /fail/ { found = 1 } END { exit !found }' <<<"$view"; then
    echo "master $victim of slot $slot has no replica left to take over" >&2
    return 1
  fi
  for i in "${!ports[@]}"; do
    if [ "${ports[$i]}" = "$victim" ]; then
      victim_pid=${pids[$i]}
    else
      left+=("${ports[$i]}")
      left_pids+=("${pids[$i]}")
    fi
  done
  started=$(date +%s.%N)
  kill -KILL "$victim_pid"
  wait "$victim_pid" 2>/dev/null || true
  # Until the others have marked it failed the killed master still looks healthy to them
  # (cluster_state:ok): only a new owner of the slot shows the failover is over.
  for _ in $(seq 1 400); do
    if cluster_agrees "${left[@]}" &&
      awk -v p=":$victim@" 'index($2, p) && $3 ~ /(^|,)fail(,|$)/ { found = 1 }
                            END { exit !found }' <<<"$cluster_seen" &&
      [ -n "$(cluster_view_owner "$slot" <<<"$cluster_seen")" ]; then
      secs=$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
      echo "killed master $victim of slot $slot: cluster ok again after $secs s" >&2
      REDIS_CLUSTER_PORTS=${left[*]}
      REDIS_CLUSTER_PIDS=${left_pids[*]}
      # shellcheck disable=SC2034 # for the caller
      killed_port=$victim
      return 0
    fi
    sleep 0.05
  done
  echo "no replica took over slot $slot from $victim within 20 s" >&2
  return 1
}

# Installs systemd-analyze (Debian's systemd package) when it is missing: the test of the example
# unit runs it offline, so systemd need not be the init system.
ensure_systemd_analyze() {
  command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
}

# Installs a PyPI package for the tests when python3 cannot import it (the module is named as
# the package, dashes as underscores): e.g. the Standard Webhooks reference library that the
# webhook receiver of imserver's tests verifies every delivery with.
ensure_python_package() {
  local module=${1//-/_}
  python3 -c "import $module" >/dev/null 2>&1 && return
  echo "installing Python package: $1" >&2
  python3 -m pip install --quiet "$1" >&2 ||
    python3 -m pip install --quiet --break-system-packages "$1" >&2
}

# Installs Debian's nginx when it is missing (the proxy test and scripts/cluster.sh use it).
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx
}

# `check WHAT COMMAND...`: runs a command as one check of a test script, printing `ok` or
# `FAIL` with WHAT and the command's output only when it fails; counts into the caller's
# `passed` and `failed`.
check() {
  local what=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok    $what"
    passed=$((passed + 1))
  else
    echo "$out"
    echo "FAIL  $what"
    failed=$((failed + 1))
  fi
}

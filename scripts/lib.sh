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
}

# Prints a free TCP port on 127.0.0.1.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

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

# Installs systemd-analyze (Debian's systemd package) when it is missing: the test of the example
# unit runs it offline, so systemd need not be the init system.
ensure_systemd_analyze() {
  command -v systemd-analyze >/dev/null 2>&1 || apt_install systemd
}

# Installs Debian's nginx when it is missing (the proxy test and scripts/cluster.sh use it).
ensure_nginx() {
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || apt_install nginx
}

#!/usr/bin/env bash
# Tests the container images of scripts/image.sh: builds them, then runs the node from its image
# against a real redis-server on a free port, the way the image's own configuration says
# (entrypoint, environment, user): with `podman run` where podman can run containers, else (no
# cgroups or rlimits for it, as on these machines) straight from the image's root filesystem,
# mounted with `podman image mount` and entered with chroot in new mount, UTS and IPC
# namespaces; the output says which. Through the node's HTTP API a client gets a connect URL,
# opens its WebSocket and must receive the message sent to it. Checks the image's healthcheck
# (passes on a serving node, fails on a stopped one), that the node runs as the image's non-root
# user, that SIGTERM (the image's stop signal) stops it cleanly, that demo-web's image serves its
# page, and that deploy/compose.yml parses (podman-compose config). Prints the images' sizes and
# `image: N passed, M failed`.
# PROFILE (release by default) is the cargo profile the images' binaries are built with; the
# size bound holds for release only (a dev binary carries its debug info).
# Installs Debian's buildah, podman and redis-server, and the websockets and podman-compose
# Python packages, when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_redis_server
ensure_python_package websockets
command -v buildah >/dev/null 2>&1 && command -v podman >/dev/null 2>&1 ||
  apt_install --no-install-recommends buildah podman
# Debian's podman-compose (1.0) has no `config`; PyPI's has.
ensure_python_package podman-compose

# An image larger than this has picked up more than the binary and what it loads.
max_image_bytes=$((48 * 1024 * 1024))
image=localhost/imserver:test
web_image=localhost/imserver-demo-web:test

passed=0
failed=0

run=$(mktemp -d)
mounted=()
containers=()
cleanup() {
  stop_all 5
  [ ${#containers[@]} -eq 0 ] || podman rm -f "${containers[@]}" >/dev/null 2>&1 || true
  [ ${#mounted[@]} -eq 0 ] || podman image unmount "${mounted[@]}" >/dev/null 2>&1 || true
  # This test's own images: left behind, every run would add a few hundred MB of layers.
  podman rmi -f "$image" "$web_image" >/dev/null 2>&1 || true
  rm -rf "$run"
}
on_exit cleanup

echo "== building the images"
TAG=test scripts/image.sh imserver demo-web | tee "$run/sizes"
size=$(podman image inspect --format '{{.Size}}' "$image")
echo "image size: imserver $((size / 1024 / 1024)) MiB ($size bytes)," \
  "demo-web $(($(podman image inspect --format '{{.Size}}' "$web_image") / 1024 / 1024)) MiB"
if [ "${PROFILE:-release}" = release ]; then
  check "the imserver image is under $((max_image_bytes / 1024 / 1024)) MiB" test "$size" -le "$max_image_bytes"
fi

config() { podman image inspect --format "$2" "$1"; }
user=$(config "$image" '{{.Config.User}}')
check "the image runs as a non-root user ($user)" sh -c "[ -n '$user' ] && [ '${user%%:*}' != 0 ] && [ '${user%%:*}' != root ]"
check "the image stops with SIGTERM" test "$(config "$image" '{{.Config.StopSignal}}')" = SIGTERM
check "the image exposes 6001/tcp" sh -c "podman image inspect --format '{{json .Config.ExposedPorts}}' $image | grep -q '6001/tcp'"
# The healthcheck as the image declares it: ["CMD", program, args...] (no shell in the image
# for CMD-SHELL).
read -ra health <<<"$(config "$image" '{{range .Config.Healthcheck.Test}}{{.}} {{end}}')"
check "the image declares a healthcheck run without a shell (${health[*]:-none})" \
  test "${health[0]:-}" = CMD -a ${#health[@]} -gt 1
health=("${health[@]:1}")

start_redis_for single "$run"
read -r ws_port api_port web_port <<<"$(free_ports 3)"
api_key=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
secret=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
# Every setting as an IM_* variable, as a container platform gives them. Host networking: the
# test's Redis listens on the host's loopback.
node_env=(
  "IM_REDIS_URL=$IM_REDIS_URL" "IM_LISTEN=127.0.0.1:$ws_port" "IM_TOKEN_SECRET=$secret"
  "IM_API_LISTEN=127.0.0.1:$api_port" "IM_API_KEYS=$api_key" "IM_SHUTDOWN_TIMEOUT_MS=3000"
  # Under half the shutdown timeout, as the node requires.
  "IM_SHUTDOWN_GRACE_MS=1000"
)

# Mounts image $1's root filesystem once (`podman image mount`); root_of[$1] is where.
declare -A root_of=()
mount_rootfs() {
  [ -n "${root_of[$1]:-}" ] && return
  root_of[$1]=$(podman image mount "$1")
  mounted+=("$1")
}
# Runs program $2... from image $1's root filesystem (mounted already) as the image's user, with
# the image's environment and then extra_env's. It takes the shell's place (exec), so that a
# background run's $! is the program's own pid: call it in a subshell or with &.
extra_env=()
run_in_rootfs() {
  local img=$1 env_args=() e
  shift
  while IFS= read -r e; do [ -n "$e" ] && env_args+=("$e"); done \
    < <(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$img")
  exec env -i "${env_args[@]}" "${extra_env[@]}" /usr/bin/unshare --mount --uts --ipc \
    /usr/sbin/chroot --userspec="$(config "$img" '{{.Config.User}}')" "${root_of[$img]}" "$@"
}

# Podman first; where it cannot run a container at all, the root filesystem.
mode=podman
if ! podman run --rm --network host --entrypoint /usr/local/bin/imserver "$image" --version \
  >"$run/podman-probe.log" 2>&1; then
  mode=rootfs
  echo "podman cannot run containers here ($(tail -1 "$run/podman-probe.log")):" \
    "running the image's root filesystem with chroot instead"
else
  echo "running the image with podman run"
fi

read -ra entrypoint <<<"$(config "$image" '{{range .Config.Entrypoint}}{{.}} {{end}}')"
if [ "$mode" = podman ]; then
  podman_env=()
  for e in "${node_env[@]}"; do podman_env+=(-e "$e"); done
  ctr=$(podman run -d --network host --name "imserver-test-$$" "${podman_env[@]}" "$image")
  containers+=("$ctr")
  node_pid=$(podman inspect --format '{{.State.Pid}}' "$ctr")
  healthcheck() { podman healthcheck run "$ctr"; }
  stop_node() { podman stop -t 10 "$ctr" >/dev/null && test "$(podman inspect --format '{{.State.ExitCode}}' "$ctr")" = 0; }
else
  mount_rootfs "$image"
  mount_rootfs "$web_image"
  extra_env=("${node_env[@]}")
  run_in_rootfs "$image" "${entrypoint[@]}" >"$run/node.out" 2>"$run/node.log" &
  node_pid=$!
  pids+=("$node_pid")
  healthcheck() {
    extra_env=("${node_env[@]}")
    (run_in_rootfs "$image" "${health[@]}")
  }
  # Waits for the node here, in the script's own shell (its child), not in check's subshell.
  stop_node() {
    kill -TERM "$node_pid"
    local status=0 p left=()
    wait "$node_pid" || status=$?
    for p in "${pids[@]}"; do [ "$p" = "$node_pid" ] || left+=("$p"); done
    pids=("${left[@]}")
    echo "$status" >"$run/node.status"
  }
fi

# Until the node serves (a lease taken), up to 30 s.
served=""
for _ in $(seq 1 300); do
  if curl -sf "http://127.0.0.1:$ws_port/healthz" >"$run/healthz" 2>/dev/null; then
    served=1
    break
  fi
  kill -0 "$node_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$served" ]; then
  echo "the node from the image did not serve within 30 s:" >&2
  if [ "$mode" = podman ]; then
    podman logs "${containers[0]}" >&2 || true
  else
    tail -n 5 "$run/node.log" "$run/node.out" >&2 || true
  fi
  exit 1
fi
echo "node from the image serves: $(cat "$run/healthz")"

check "the healthcheck passes on a serving node" healthcheck
check "the node runs as uid ${user%%:*}" sh -c "grep -E '^Uid:' /proc/$node_pid/status | awk '{ exit !(\$2 == ${user%%:*} && \$3 == ${user%%:*} && \$4 == ${user%%:*}) }'"

deliver() {
  python3 - "http://127.0.0.1:$api_port" "$api_key" <<'PY'
import asyncio, json, sys, urllib.request
import websockets

api, key = sys.argv[1], sys.argv[2]

def call(method, body):
    req = urllib.request.Request(f"{api}/api/v1/{method}", data=json.dumps(body).encode(),
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as answer:
        return json.load(answer)

async def main():
    url = call("connect_url", {"client": "alice"})["url"]
    async with websockets.connect(url, open_timeout=5) as ws:
        async def frame():
            return json.loads(await asyncio.wait_for(ws.recv(), 5))
        first = await frame()
        assert first.get("event") == "welcome" or "welcome" in json.dumps(first), first
        sent = call("send", {"sender": "system", "receivers": ["alice"],
                             "payload": {"text": "hello from the image"}})
        assert all(n["taken"] for n in sent["nodes"]), sent
        while True:
            f = await frame()
            if f.get("payload") == {"text": "hello from the image"}:
                print("delivered:", json.dumps(f))
                return

asyncio.run(main())
PY
}
check "a client connected through the API receives the message sent to it" deliver

# demo-web from its image, as a backend for this node: it must serve its page.
web_env=("IM_REDIS_URL=$IM_REDIS_URL" "IM_NODES=ws://127.0.0.1:$ws_port" "IM_TOKEN_SECRET=$secret"
  "IM_WEB_LISTEN=127.0.0.1:$web_port")
read -ra web_entrypoint <<<"$(config "$web_image" '{{range .Config.Entrypoint}}{{.}} {{end}}')"
if [ "$mode" = podman ]; then
  web_args=()
  for e in "${web_env[@]}"; do web_args+=(-e "$e"); done
  containers+=("$(podman run -d --network host "${web_args[@]}" "$web_image")")
else
  extra_env=("${web_env[@]}")
  run_in_rootfs "$web_image" "${web_entrypoint[@]}" >"$run/web.log" 2>&1 &
  pids+=("$!")
fi
page() {
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$web_port/" | grep -qi '<html' && return 0
    sleep 0.1
  done
  tail -5 "$run/web.log" 2>/dev/null
  return 1
}
check "demo-web from its image serves its page" page

if [ "$mode" = podman ]; then
  check "SIGTERM stops the node with status 0" stop_node
else
  stop_node
  stopped() { [ "$(cat "$run/node.status")" = 0 ] || { echo "exit status $(cat "$run/node.status"): $(tail -3 "$run/node.log")"; return 1; }; }
  check "SIGTERM stops the node with status 0" stopped
fi
unhealthy() { ! healthcheck; }
check "the healthcheck fails once the node is stopped" unhealthy

compose() {
  IM_TOKEN_SECRET=$secret python3 -m podman_compose -f deploy/compose.yml config >"$run/compose.out" 2>&1 ||
    { cat "$run/compose.out"; return 1; }
  local s
  for s in redis node1 node2 demo-web; do
    grep -qE "^  $s:" "$run/compose.out" || { echo "no service $s in: $(cat "$run/compose.out")"; return 1; }
  done
}
check "deploy/compose.yml parses (podman-compose config) with redis, two nodes and demo-web" compose
compose_needs_secret() {
  ! env -u IM_TOKEN_SECRET python3 -m podman_compose -f deploy/compose.yml config >"$run/compose.out" 2>&1 &&
    grep -q 'IM_TOKEN_SECRET' "$run/compose.out"
}
check "deploy/compose.yml refuses to start without IM_TOKEN_SECRET" compose_needs_secret

echo "image: $passed passed, $failed failed"
[ "$failed" -eq 0 ]

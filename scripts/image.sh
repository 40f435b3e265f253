#!/usr/bin/env bash
# Builds OCI images (Docker format, for its HEALTHCHECK) of imserver and demo-web with buildah:
# `scripts/image.sh [imserver] [demo-web]` (both by default) makes localhost/imserver:$TAG and
# localhost/imserver-demo-web:$TAG (TAG defaults to latest) and prints each one's size.
# From scratch, with no base image to pull: the release binary, the shared libraries `ldd` says
# it loads (libc, libm, libgcc_s, the loader), the CA bundle (for rediss:// and https webhooks),
# and /etc/passwd and /etc/group naming the one user it runs as, uid 10001. Nothing else: no
# shell, so the healthcheck is the binary itself (`imserver healthcheck`).
# IMSERVER_BIN and DEMO_WEB_BIN take binaries built already; by default they are built with
# cargo's PROFILE (release by default; scripts/test.sh's image part uses dev, the build its other
# parts made already).
# Installs Debian's buildah and podman when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

tag=${TAG:-latest}
profile=${PROFILE:-release}
# Where cargo puts a profile's binaries: dev's go to debug.
profile_dir=${CARGO_TARGET_DIR:-target}/$([ "$profile" = dev ] && echo debug || echo "$profile")
what=("$@")
[ ${#what[@]} -gt 0 ] || what=(imserver demo-web)
for w in "${what[@]}"; do
  case "$w" in imserver | demo-web) ;; *)
    echo "image.sh builds imserver and demo-web, not $w" >&2
    exit 2
    ;;
  esac
done
command -v buildah >/dev/null 2>&1 && command -v podman >/dev/null 2>&1 ||
  apt_install --no-install-recommends buildah podman

# The uid and gid the images run as: not 0, and not one a host is likely to give a person.
uid=10001

# Working containers of a build under way, removed if the script stops before committing them.
building=()
trap '[ ${#building[@]} -eq 0 ] || buildah rm "${building[@]}" >/dev/null 2>&1 || true' EXIT

# Copies $2 (a dynamically linked binary) to $1/usr/local/bin with every shared library it
# loads, each at the path the loader looks for it.
copy_binary() {
  local root=$1 bin=$2 lib
  install -D -m 0755 "$bin" "$root/usr/local/bin/$(basename "$bin")"
  # ldd prints `name => /path (addr)` for libraries and `/path (addr)` for the loader.
  for lib in $(ldd "$bin" | grep -oE '/[^ ]+'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
}

# Builds image $1 from binary $2; the rest are `buildah config` arguments.
build_image() {
  local name=$1 bin=$2 ctr root
  shift 2
  # Docker's format: OCI's has no HEALTHCHECK.
  ctr=$(BUILDAH_FORMAT=docker buildah from scratch)
  building+=("$ctr")
  root=$(buildah mount "$ctr")
  copy_binary "$root" "$bin"
  mkdir -p "$root/etc/ssl/certs"
  [ -f /etc/ssl/certs/ca-certificates.crt ] || apt_install ca-certificates
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  echo "imserver:x:$uid:$uid:imserver:/nonexistent:/sbin/nologin" >"$root/etc/passwd"
  echo "imserver:x:$uid:" >"$root/etc/group"
  buildah umount "$ctr" >/dev/null
  BUILDAH_FORMAT=docker buildah config --user "$uid:$uid" --stop-signal SIGTERM \
    --label org.opencontainers.image.revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$@" "$ctr"
  buildah commit --quiet --rm --format docker "$ctr" "localhost/$name:$tag" >/dev/null
  building=()
  echo "localhost/$name:$tag $(podman image inspect --format '{{.Size}}' "localhost/$name:$tag") bytes"
}

for w in "${what[@]}"; do
  case "$w" in
  imserver)
    bin=${IMSERVER_BIN:-}
    if [ -z "$bin" ]; then
      cargo build --quiet --profile "$profile" -p imserver --bin imserver
      bin=$profile_dir/imserver
    fi
    # Inside a container the node must listen on every address, not loopback only. 6001 for
    # the sockets; 7001 is where the examples put the HTTP API (IM_API_LISTEN, off unless set).
    # --shutdown-timeout's default (10 s) fits inside a 30 s stop grace period.
    build_image imserver "$bin" \
      --entrypoint '["/usr/local/bin/imserver"]' --cmd '[]' \
      --env IM_LISTEN=0.0.0.0:6001 --env IM_LOG_FORMAT=json \
      --port 6001/tcp --port 7001/tcp \
      --healthcheck 'CMD /usr/local/bin/imserver healthcheck' \
      --healthcheck-interval 10s --healthcheck-timeout 3s --healthcheck-retries 3 \
      --healthcheck-start-period 10s
    ;;
  demo-web)
    bin=${DEMO_WEB_BIN:-}
    if [ -z "$bin" ]; then
      cargo build --quiet --profile "$profile" -p demo-web
      bin=$profile_dir/demo-web
    fi
    build_image imserver-demo-web "$bin" \
      --entrypoint '["/usr/local/bin/demo-web"]' --cmd '[]' \
      --env IM_WEB_LISTEN=0.0.0.0:5000 --port 5000/tcp
    ;;
  esac
done

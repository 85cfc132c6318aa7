#!/usr/bin/env bash
# Builds the Portcullis container image (portcullis:dev) without any container registry:
#   1. the base image portcullis-base:bookworm, made once with debootstrap when it is missing
#      (Debian bookworm minbase plus the few tools the lab uses), imported with `docker import`;
#   2. the binaries, with `cargo build --workspace --bins` (debug profile), unless --bin-dir
#      names a directory that already holds them;
#   3. the runtime image: the stripped binaries and the entrypoint scripts on top of the base;
#   4. the lab's PostgreSQL image (portcullis-postgres:dev) from docker/postgres/: Debian's
#      postgresql package installed with apt on top of the base (the Debian mirror is the only
#      source), rebuilt only when docker/postgres/ changed.
# Usage: scripts/docker-build.sh [--bin-dir DIR] [--release] [--postgres-only]
# Environment: PORTCULLIS_IMAGE (default portcullis:dev), PORTCULLIS_BASE_IMAGE (default
# portcullis-base:bookworm), PORTCULLIS_POSTGRES_IMAGE (default portcullis-postgres:dev),
# DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${PORTCULLIS_IMAGE:-portcullis:dev}
BASE=${PORTCULLIS_BASE_IMAGE:-portcullis-base:bookworm}
PG_IMAGE=${PORTCULLIS_POSTGRES_IMAGE:-portcullis-postgres:dev}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the lab needs beside the binaries: CA roots, useradd, ps, ip/nc for network checks,
# curl for the health checks, an OpenSSH client for `ssh -J`, tini as PID 1 (reaps sessions).
PACKAGES=ca-certificates,passwd,procps,iproute2,netcat-openbsd,curl,openssh-client,tini
BINARIES=(portcullis-auth portcullis-proxy portcullis-node portcullis-tunnel-agent tsh tctl)
BIN_DIR=""
PROFILE=debug
POSTGRES_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) BIN_DIR=$2; shift 2 ;;
    --bin-dir=*) BIN_DIR=${1#*=}; shift ;;
    --release) PROFILE=release; shift ;;
    --postgres-only) POSTGRES_ONLY=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "docker-build: $*" >&2; }
# debootstrap and package installs need root.
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
# Scratch directories, removed however the script ends.
scratch=()
cleanup() { for d in "${scratch[@]}"; do $SUDO rm -rf "$d" "$d.log"; done; }
trap cleanup EXIT
docker info >/dev/null 2>&1 || { echo "docker-build: no Docker engine is reachable (docker info failed)" >&2; exit 1; }

make_base() {
  if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    $SUDO apt-get install -y debootstrap >/dev/null 2>&1 || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y debootstrap >/dev/null; }
  fi
  local dir
  dir=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-base.XXXXXX")
  scratch+=("$dir")
  log "making $BASE with debootstrap (bookworm minbase; about a minute)"
  if ! $SUDO debootstrap --variant=minbase --include="$PACKAGES" bookworm "$dir" "$MIRROR" >"$dir.log" 2>&1; then
    tail -n 20 "$dir.log" >&2; echo "docker-build: debootstrap failed" >&2; exit 1
  fi
  # Package caches and lists are not needed at run time; they double the image size.
  $SUDO sh -c "rm -rf '$dir'/var/cache/apt/archives/*.deb '$dir'/var/lib/apt/lists/* '$dir'/var/log/*.log"
  $SUDO tar -C "$dir" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$BASE" >/dev/null
}

if docker image inspect "$BASE" >/dev/null 2>&1; then
  log "base image $BASE is present"
else
  make_base
fi
# BuildKit when the buildx plugin is there, else the classic builder (Debian's docker.io has none).
if docker buildx version >/dev/null 2>&1; then BUILDKIT=1; else BUILDKIT=0; fi

# The PostgreSQL image, labelled with a digest of its sources (and of the base it sits on):
# apt runs again only when one of them changed.
make_postgres() {
  local digest have ctx
  digest=$( (docker image inspect -f '{{.Id}}' "$BASE"; cat docker/postgres/Dockerfile docker/postgres/entrypoint.sh) | sha256sum | cut -c1-32)
  have=$(docker image inspect -f '{{index .Config.Labels "portcullis.sources"}}' "$PG_IMAGE" 2>/dev/null || true)
  if [ "$have" = "$digest" ]; then
    log "$PG_IMAGE is up to date"
    return
  fi
  ctx=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-postgres.XXXXXX")
  scratch+=("$ctx")
  cp docker/postgres/Dockerfile "$ctx/"
  install -m 0755 docker/postgres/entrypoint.sh "$ctx/"
  log "building $PG_IMAGE (apt-get install postgresql from the Debian mirror; about a minute)"
  local old
  old=$(docker image inspect -f '{{.Id}}' "$PG_IMAGE" 2>/dev/null || true)
  # Host networking: the build reaches the Debian mirror the way the host does.
  if ! DOCKER_BUILDKIT=$BUILDKIT docker build --quiet --network=host --build-arg "BASE_IMAGE=$BASE" \
      --label "portcullis.sources=$digest" -t "$PG_IMAGE" "$ctx" >"$ctx.log" 2>&1; then
    tail -n 30 "$ctx.log" >&2; echo "docker-build: docker build of $PG_IMAGE failed" >&2; exit 1
  fi
  local new
  new=$(docker image inspect -f '{{.Id}}' "$PG_IMAGE")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
  log "built $PG_IMAGE ($(docker image inspect -f '{{.Size}}' "$PG_IMAGE" | awk '{printf "%d MB", $1/1000000}'))"
}
make_postgres
[ "$POSTGRES_ONLY" = 0 ] || exit 0

if [ -z "$BIN_DIR" ]; then
  log "building the binaries (cargo build --workspace --bins, $PROFILE)"
  if [ "$PROFILE" = release ]; then cargo build --workspace --bins --release; else cargo build --workspace --bins; fi
  BIN_DIR=$PWD/target/$PROFILE
fi
for b in "${BINARIES[@]}"; do
  [ -x "$BIN_DIR/$b" ] || { echo "docker-build: $BIN_DIR/$b is missing (run cargo build --workspace --bins)" >&2; exit 1; }
done

# A small build context of its own: the workspace's target directory is gigabytes.
CTX=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-docker.XXXXXX")
scratch+=("$CTX")
mkdir -p "$CTX/bin"
for b in "${BINARIES[@]}"; do
  strip --strip-debug -o "$CTX/bin/$b" "$BIN_DIR/$b"
done
cp docker/Dockerfile "$CTX/"
install -m 0755 docker/entrypoint.sh docker/bootstrap.sh docker/tctl-remote.sh "$CTX/"
log "building $IMAGE"
old=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
if ! DOCKER_BUILDKIT=$BUILDKIT docker build --quiet --build-arg "BASE_IMAGE=$BASE" -t "$IMAGE" "$CTX" >"$CTX.log" 2>&1; then
  cat "$CTX.log" >&2; echo "docker-build: docker build failed" >&2; exit 1
fi
# The image this one replaces would linger untagged; it stays when a container still uses it.
new=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$old" ] && [ "$old" != "$new" ]; then docker image rm "$old" >/dev/null 2>&1 || true; fi
log "built $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1000000}'))"

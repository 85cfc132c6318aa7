#!/usr/bin/env bash
# Builds everything offline (base image with debootstrap when missing, the binaries, the
# portcullis:dev image and the lab's portcullis-postgres:dev) and starts the two-cluster lab of
# docker-compose.yml (the root cluster: two auth replicas on PostgreSQL); waits for its
# bootstrap to establish trust and prints what to run next. The lab keeps running; stop it
# with `docker compose down -v` (or `docker-compose down -v`).
# Usage: scripts/docker-lab.sh [--no-build] [docker-build.sh flags, e.g. --bin-dir DIR]
# Environment: COMPOSE_PROJECT_NAME (default: the directory name), LAB_PASSWORD.
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) args+=("$a") ;;
  esac
done

# The Compose v2 plugin (`docker compose`) or the standalone v1 tool (`docker-compose`).
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "docker-lab: neither 'docker compose' nor 'docker-compose' is installed" >&2
  exit 1
fi

[ "$build" = 0 ] || bash scripts/docker-build.sh "${args[@]}"
"${compose[@]}" up -d
echo "docker-lab: waiting for the bootstrap service to establish trust..." >&2
cid=$("${compose[@]}" ps -a -q bootstrap)
code=$(docker wait "$cid")
"${compose[@]}" logs --no-color bootstrap | sed -e '/^Attaching to/d' -e 's/^[^|]*| \{0,1\}//'
if [ "$code" != 0 ]; then
  echo "docker-lab: bootstrap failed (exit $code); see: ${compose[*]} logs" >&2
  exit 1
fi
if [ "${compose[*]}" = docker-compose ]; then
  echo "(You have the standalone tool: type docker-compose where the text says docker compose.)"
fi

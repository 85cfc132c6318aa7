#!/usr/bin/env bash
# Installs what the build and the tests need beyond the Rust toolchain: OpenSSH's client
# and ssh-keygen (the e2e tests check interoperability with them), and PostgreSQL's server
# (the storage backend's tests start their own).
set -euo pipefail

need=()
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v ssh-keygen >/dev/null 2>&1 || need+=(openssh-client)
command -v useradd >/dev/null 2>&1 || need+=(passwd)
# The PostgreSQL storage backend's tests start throwaway servers (scripts/pg.sh).
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || need+=(postgresql)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: please install ${need[*]} (needs root)" >&2
    exit 1
  fi
fi

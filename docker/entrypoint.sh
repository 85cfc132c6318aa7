#!/usr/bin/env bash
# Entrypoint of the portcullis image: prepares what a service needs, then execs the command.
# Everything is driven by environment variables (all optional):
#   PORTCULLIS_CREATE_LOGINS=a,b      Unix users to create first (nodes: the logins sessions use)
#   PORTCULLIS_JOIN_TOKEN_FILE=PATH   the cluster's join token; made (random) when missing and
#                                     its directory is writable (an auth service in the compose
#                                     lab), read otherwise (a Kubernetes Secret). Exported to
#                                     the template as ${JOIN_TOKEN}.
#   PORTCULLIS_BIND_HOST=NAME         a DNS name of this container on one network only; its
#                                     address is exported as ${BIND_IP}, so a service on two
#                                     networks can listen on just one of them
#   PORTCULLIS_CONFIG_TEMPLATE=PATH   a YAML config with ${VAR} placeholders, rendered from the
#                                     environment into PORTCULLIS_CONFIG (default
#                                     /run/portcullis/portcullis.yaml); an unset variable is an error
set -euo pipefail

die() { echo "portcullis-entrypoint: $*" >&2; exit 1; }

if [ -n "${PORTCULLIS_CREATE_LOGINS:-}" ]; then
  IFS=',' read -r -a logins <<<"$PORTCULLIS_CREATE_LOGINS"
  for login in "${logins[@]}"; do
    [ -n "$login" ] || continue
    id "$login" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$login"
  done
fi

if [ -n "${PORTCULLIS_JOIN_TOKEN_FILE:-}" ]; then
  f=$PORTCULLIS_JOIN_TOKEN_FILE
  if [ ! -s "$f" ]; then
    dir=$(dirname "$f")
    mkdir -p "$dir" 2>/dev/null || true
    [ -w "$dir" ] || die "join token file $f is missing and $dir is not writable"
    # 32 random bytes, hex: a lab token made once per volume, never printed.
    # 0600: the lab's services run as root, so only they read it.
    (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$f.tmp" && mv "$f.tmp" "$f")
  fi
  # A token an older lab made 0644; a mounted Secret is read-only and left alone.
  if [ -w "$f" ]; then chmod 600 "$f"; fi
  JOIN_TOKEN=$(tr -d ' \r\n' <"$f")
  [ -n "$JOIN_TOKEN" ] || die "join token file $f is empty"
  export JOIN_TOKEN
fi

if [ -n "${PORTCULLIS_BIND_HOST:-}" ]; then
  BIND_IP=""
  # Docker's DNS may answer a moment after the container starts.
  for _ in $(seq 1 50); do
    BIND_IP=$(getent ahostsv4 "$PORTCULLIS_BIND_HOST" 2>/dev/null | awk 'NR == 1 { print $1 }') || true
    [ -n "$BIND_IP" ] && break
    sleep 0.2
  done
  [ -n "$BIND_IP" ] || die "cannot resolve $PORTCULLIS_BIND_HOST to an IPv4 address of this container"
  ip -o -4 addr show | grep -qF " $BIND_IP/" || die "$PORTCULLIS_BIND_HOST is $BIND_IP, which is not an address of this container"
  export BIND_IP
fi

if [ -n "${PORTCULLIS_CONFIG_TEMPLATE:-}" ]; then
  out=${PORTCULLIS_CONFIG:-/run/portcullis/portcullis.yaml}
  mkdir -p "$(dirname "$out")"
  (umask 077; perl -pe 's/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/defined $ENV{$1} ? $ENV{$1} : die("the config template uses \${$1}, which is not set\n")/ge' \
    "$PORTCULLIS_CONFIG_TEMPLATE" >"$out.tmp") || die "cannot render $PORTCULLIS_CONFIG_TEMPLATE"
  mv "$out.tmp" "$out"
fi

[ $# -gt 0 ] || die "no command given"
exec "$@"

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
#   PORTCULLIS_KEK_FILE=PATH          the CA key-encryption key every auth replica of a cluster
#                                     shares (auth_service.ca_key_encryption_key_file): 64 random
#                                     hex digits made once, mode 0600, when missing and its
#                                     directory is writable (the compose lab's shared volume)
#   PORTCULLIS_KEK_SOURCE=PATH        a read-only copy of that key (a Kubernetes Secret, which
#                                     the kubelet makes group-readable): copied to
#                                     PORTCULLIS_KEK_FILE with mode 0600 at each start, since
#                                     auth refuses a key file that others can read
#   PORTCULLIS_TEMPLATE_SECRETS=NAME=PATH[,NAME=PATH...]
#                                     secrets (e.g. a database password) read from files into
#                                     ${NAME} for the config template only: never exported to
#                                     the service's environment, never on a command line
#   PORTCULLIS_CONFIG_TEMPLATE=PATH   a YAML config with ${VAR} placeholders, rendered from the
#                                     environment into PORTCULLIS_CONFIG (default
#                                     /run/portcullis/portcullis.yaml, mode 0600); an unset
#                                     variable is an error
set -euo pipefail

die() { echo "portcullis-entrypoint: $*" >&2; exit 1; }

# Writes 32 random bytes as hex to file $1 unless it exists. Several containers may race
# (two auth replicas starting on one shared volume): each writes its own temporary file and
# hard-links it into place, which fails for all but the first, so all of them end up reading
# the same content. 0600: the lab's services run as root, so only they read it.
make_random_file() {
  local f=$1 dir tmp
  [ -s "$f" ] && return 0
  dir=$(dirname "$f")
  mkdir -p "$dir" 2>/dev/null || true
  [ -w "$dir" ] || die "$f is missing and $dir is not writable"
  tmp="$f.tmp.$$"
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$tmp")
  ln "$tmp" "$f" 2>/dev/null || true
  rm -f "$tmp"
  [ -s "$f" ] || die "cannot create $f"
}

if [ -n "${PORTCULLIS_CREATE_LOGINS:-}" ]; then
  IFS=',' read -r -a logins <<<"$PORTCULLIS_CREATE_LOGINS"
  for login in "${logins[@]}"; do
    [ -n "$login" ] || continue
    id "$login" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$login"
  done
fi

if [ -n "${PORTCULLIS_JOIN_TOKEN_FILE:-}" ]; then
  f=$PORTCULLIS_JOIN_TOKEN_FILE
  # A lab token made once per volume, never printed.
  [ -s "$f" ] || make_random_file "$f"
  # A token an older lab made 0644; a mounted Secret is read-only and left alone.
  if [ -w "$f" ]; then chmod 600 "$f"; fi
  JOIN_TOKEN=$(tr -d ' \r\n' <"$f")
  [ -n "$JOIN_TOKEN" ] || die "join token file $f is empty"
  export JOIN_TOKEN
fi

if [ -n "${PORTCULLIS_KEK_FILE:-}" ]; then
  k=$PORTCULLIS_KEK_FILE
  if [ -n "${PORTCULLIS_KEK_SOURCE:-}" ]; then
    [ -s "$PORTCULLIS_KEK_SOURCE" ] || die "key-encryption key source $PORTCULLIS_KEK_SOURCE is missing or empty"
    mkdir -p "$(dirname "$k")"
    (umask 077; cat "$PORTCULLIS_KEK_SOURCE" >"$k.tmp" && mv "$k.tmp" "$k")
  else
    make_random_file "$k"
  fi
  [ ! -w "$k" ] || chmod 600 "$k"
fi

# NAME=PATH pairs: read here, handed to the renderer below alone.
secret_env=()
if [ -n "${PORTCULLIS_TEMPLATE_SECRETS:-}" ]; then
  IFS=',' read -r -a pairs <<<"$PORTCULLIS_TEMPLATE_SECRETS"
  for pair in "${pairs[@]}"; do
    [ -n "$pair" ] || continue
    name=${pair%%=*} path=${pair#*=}
    [[ $pair == *=* && $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "PORTCULLIS_TEMPLATE_SECRETS: '$name' is not NAME=PATH"
    # The file may be written a moment after this container starts (a database container
    # making its password on a shared volume).
    for _ in $(seq 1 50); do [ -s "$path" ] && break; sleep 0.2; done
    [ -s "$path" ] || die "secret file $path (for \${$name}) is missing or empty"
    secret_env+=("$name=$(tr -d '\r\n' <"$path")")
  done
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
  # The secrets are exported inside this subshell only (export is a builtin: no argv).
  (for kv in "${secret_env[@]}"; do export "${kv?}"; done; umask 077; perl -pe 's/\$\{([A-Za-z_][A-Za-z0-9_]*)\}/defined $ENV{$1} ? $ENV{$1} : die("the config template uses \${$1}, which is not set\n")/ge' \
    "$PORTCULLIS_CONFIG_TEMPLATE" >"$out.tmp") || die "cannot render $PORTCULLIS_CONFIG_TEMPLATE"
  mv "$out.tmp" "$out"
fi
unset secret_env

[ $# -gt 0 ] || die "no command given"
exec "$@"

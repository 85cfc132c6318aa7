#!/usr/bin/env bash
# The compose lab's one-shot bootstrap (portcullis-lab-bootstrap): establishes trust between
# the root and leaf clusters the way the trusted-clusters guide does (scripts/lab.sh does the
# same on loopback), waits until a root user can reach the leaf nodes, and prints what to run
# next. Safe to run again: finished steps are skipped.
# It runs with the auth services' admin identities (their data volumes, mounted read-only).
# ROOT_AUTH may list several auth replicas, comma-separated: tctl uses whichever answers.
set -euo pipefail

ROOT_CLUSTER=${ROOT_CLUSTER:?}
LEAF_CLUSTER=${LEAF_CLUSTER:?}
ROOT_AUTH=${ROOT_AUTH:?} ROOT_IDENTITY=${ROOT_IDENTITY:?}
LEAF_AUTH=${LEAF_AUTH:?} LEAF_IDENTITY=${LEAF_IDENTITY:?}
ROOT_PROXY=${ROOT_PROXY:?}
ROOT_NODES=${ROOT_NODES:-}
LEAF_NODES=${LEAF_NODES:-}
LAB_USER=${LAB_USER:-alice}
LAB_LOGIN=${LAB_LOGIN:-visitor}
LAB_PASSWORD=${LAB_PASSWORD:-portcullis-lab}
WAIT_SECONDS=${WAIT_SECONDS:-180}

say() { echo "bootstrap: $*"; }
fail() { echo "bootstrap: $*" >&2; exit 1; }
root_tctl() { tctl --auth-server="$ROOT_AUTH" -i "$ROOT_IDENTITY" "$@"; }
leaf_tctl() { tctl --auth-server="$LEAF_AUTH" -i "$LEAF_IDENTITY" "$@"; }

# Retries `what` (a command) once a second until it succeeds or WAIT_SECONDS pass.
wait_until() {
  local what=$1; shift
  local deadline=$((SECONDS + WAIT_SECONDS)) out=""
  until out=$("$@" 2>&1); do
    [ $SECONDS -lt $deadline ] || fail "gave up waiting for $what: $out"
    sleep 1
  done
}

say "waiting for the auth services"
wait_until "the root auth service at $ROOT_AUTH" root_tctl status
wait_until "the leaf auth service at $LEAF_AUTH" leaf_tctl status

# Step 1 (leaf): the role root users are mapped to.
say "leaf: role visitor (login $LAB_LOGIN, every node)"
leaf_tctl create -f - >/dev/null <<YAML
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins: [$LAB_LOGIN]
    node_labels:
      '*': '*'
YAML

# Step 2 (root): the lab user, with the login the leaf role allows.
if root_tctl get "user/$LAB_USER" >/dev/null 2>&1; then
  say "root: user $LAB_USER exists"
else
  say "root: user $LAB_USER (role access, login $LAB_LOGIN)"
  root_tctl users add "$LAB_USER" --roles=access --logins="$LAB_LOGIN" >/dev/null
fi
echo "$LAB_PASSWORD" | root_tctl users set-password "$LAB_USER" >/dev/null

# Steps 3 and 4: an invite token on the root, the trusted_cluster resource on the leaf. The
# leaf auth service validates it against the root proxies (through the uplink network).
if leaf_tctl get "tc/$ROOT_CLUSTER" >/dev/null 2>&1; then
  say "leaf: trusted_cluster $ROOT_CLUSTER exists"
else
  invite=$(root_tctl tokens add --type=trusted_cluster --ttl=5m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  [ -n "$invite" ] || fail "tctl tokens add printed no token"
  say "leaf: trusted_cluster $ROOT_CLUSTER (tunnel $ROOT_PROXY:3024, role access -> visitor)"
  leaf_tctl create - <<YAML
kind: trusted_cluster
version: v2
metadata:
  name: $ROOT_CLUSTER
spec:
  enabled: true
  token: $invite
  tunnel_addr: $ROOT_PROXY:3024
  web_proxy_addr: $ROOT_PROXY:3080
  role_map:
    - remote: access
      local: [visitor]
YAML
fi

say "waiting for the leaf's reverse tunnel"
# Online, with a heartbeat from after this script started (not one left from an earlier run).
started=$(date +%s)
rc_online() {
  local json hb
  json=$(root_tctl get "rc/$LEAF_CLUSTER" --format=json) || return 1
  grep -q '"connection": *"online"' <<<"$json" || return 1
  hb=$(sed -n 's/.*"last_heartbeat": *"\([^"]*\)".*/\1/p' <<<"$json" | head -n 1)
  [ -n "$hb" ] && [ "$(date -d "$hb" +%s)" -ge "$started" ]
}
wait_until "remote cluster $LEAF_CLUSTER to come online" rc_online
IFS=',' read -r -a nodes <<<"$LEAF_NODES"
for n in "${nodes[@]}"; do
  [ -n "$n" ] || continue
  say "waiting for leaf node $n"
  wait_until "leaf node $n to register" sh -c "tctl --auth-server='$LEAF_AUTH' -i '$LEAF_IDENTITY' nodes ls | grep -qw '$n'"
done

IFS=',' read -r -a root_nodes <<<"$ROOT_NODES"
for n in "${root_nodes[@]}"; do
  [ -n "$n" ] || continue
  say "waiting for root node $n"
  wait_until "root node $n to register" sh -c "tctl --auth-server='$ROOT_AUTH' -i '$ROOT_IDENTITY' nodes ls | grep -qw '$n'"
done

first=${nodes[0]:-leaf-node-1}
# The proof: the lab user logs in at the root and runs a command on a leaf node.
say "checking a session: $LAB_USER -> $LAB_LOGIN@$first in $LEAF_CLUSTER"
export TSH_HOME
TSH_HOME=$(mktemp -d)
session() {
  echo "$LAB_PASSWORD" | tsh login --insecure --proxy="$ROOT_PROXY:3080" --user="$LAB_USER" >/dev/null &&
    tsh ssh --cluster="$LEAF_CLUSTER" "$LAB_LOGIN@$first" true &&
    { [ -z "${root_nodes[0]:-}" ] || tsh ssh "$LAB_LOGIN@${root_nodes[0]}" true; }
}
wait_until "a session on $first" session
rm -rf "$TSH_HOME"
cat <<TXT

================================================================================
Portcullis two-cluster lab is ready.
  root cluster  $ROOT_CLUSTER   two proxies behind the name $ROOT_PROXY,
                auth replicas ${ROOT_AUTH//,/ } on PostgreSQL
  leaf cluster  $LEAF_CLUSTER   no inbound connections: its agent dials the root
  user          $LAB_USER / $LAB_PASSWORD (root cluster); role access maps to visitor on the leaf
  root nodes    ${ROOT_NODES//,/ }
  leaf nodes    ${LEAF_NODES//,/ }

Next (with the standalone tool, write docker-compose instead of docker compose):
  docker compose exec client tsh login --insecure   # password: $LAB_PASSWORD (self-signed proxies)
  docker compose exec client tsh clusters
  docker compose exec client tsh ls --cluster=$LEAF_CLUSTER
  docker compose exec client tsh ssh --cluster=$LEAF_CLUSTER $LAB_LOGIN@$first hostname
  docker compose exec client tsh ssh --cluster=$LEAF_CLUSTER $LAB_LOGIN@$first
$(for n in "${root_nodes[@]}"; do echo "  docker compose exec client tsh ssh $LAB_LOGIN@$n hostname"; done)
  docker compose exec client tctl get rc
  docker compose exec leaf-auth tctl get tc
  docker compose stop root-proxy-1                  # sessions keep working through root-proxy-2
  docker compose kill root-auth-a                   # and through root-auth-b; start it again after
  docker compose down -v                            # remove the lab and its volumes
================================================================================
TXT

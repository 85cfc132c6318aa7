#!/usr/bin/env bash
# Starts a two-cluster Portcullis lab on loopback and establishes trust the way the newest
# trusted-clusters guide does, then prints the tsh commands to try. Ctrl-C stops everything.
#   root cluster: auth + proxy          (root.lab.portcullis.local)
#   leaf cluster: auth + proxy + tunnel agent + one node  (leaf.lab.portcullis.local)
# Environment: LAB_DIR (default ./lab, wiped at start), LAB_BASE_PORT (default 4000),
# LAB_BIN (a directory with prebuilt binaries, e.g. target/release: skips the debug build),
# LAB_STORAGE: sled (default: each auth on its embedded store) or postgresql: a throwaway
# PostgreSQL server (scripts/pg.sh: Debian's postgresql package, under /tmp, removed on exit) and
# TWO root auth replicas sharing it and one CA key-encryption key; the root proxy lists both,
# so either replica may be killed (kill the pid in $LAB_DIR/root-auth*.pid) without a failed
# session. The leaf stays on sled.
# Join and invite tokens never appear in argv: they go to 0600 files under $LAB_DIR/secrets,
# which configs and flags name by path.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR=${LAB_DIR:-$PWD/lab}
BASE=${LAB_BASE_PORT:-4000}
ROOT=root.lab.portcullis.local
LEAF=leaf.lab.portcullis.local
R_AUTH=$((BASE + 25)) R_WEB=$((BASE + 80)) R_SSH=$((BASE + 23)) R_TUN=$((BASE + 24))
L_AUTH=$((BASE + 125)) L_WEB=$((BASE + 180)) L_SSH=$((BASE + 123)) L_TUN=$((BASE + 124)) L_NODE=$((BASE + 122))
R_AUTH_B=$((BASE + 26)) PG_PORT=$((BASE + 54))
PASSWORD=${LAB_PASSWORD:-portcullis-lab}
STORAGE=${LAB_STORAGE:-sled}
case "$STORAGE" in
  sled|postgresql) ;;
  *) echo "lab: LAB_STORAGE must be sled or postgresql, not '$STORAGE'" >&2; exit 2 ;;
esac
if [ "$STORAGE" = postgresql ]; then
  PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$PG_BIN" ] && [ -x "$PG_BIN/initdb" ] || {
    echo "lab: LAB_STORAGE=postgresql needs PostgreSQL's server binaries in /usr/lib/postgresql/*/bin (apt-get install postgresql)" >&2
    exit 1
  }
fi
if [ "$(id -u)" = 0 ]; then
  id visitor >/dev/null 2>&1 || useradd --create-home --shell /bin/bash visitor
  VISITOR=visitor
else
  VISITOR=$(id -un)   # a non-root node runs sessions as its own user
fi

if [ -n "${LAB_BIN:-}" ]; then
  BIN=$(cd "$LAB_BIN" && pwd)
else
  echo "building (the first time takes several minutes)..."
  cargo build --workspace --bins --quiet
  BIN=$PWD/target/debug
fi
rm -rf "$LAB_DIR"
# Everything the lab writes (configs, token files, state) is private to this user.
umask 077
mkdir -p "$LAB_DIR/secrets"
# Token files are named by absolute path (a relative one would be read as the token itself).
LAB_DIR=$(cd "$LAB_DIR" && pwd)
pids=()
PG_DIR=""
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$PG_DIR" ]; then
    bash scripts/pg.sh stop "$PG_DIR" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
trap cleanup EXIT INT TERM
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open; see $LAB_DIR/*.log" >&2; exit 1; }
start() { local name=$1; shift; "$@" >"$LAB_DIR/$name.log" 2>&1 & pids+=($!); echo $! >"$LAB_DIR/$name.pid"; }

# A throwaway PostgreSQL on 127.0.0.1:$PG_PORT (scripts/pg.sh): its own directory under /tmp
# (the postgres user cannot enter the private $LAB_DIR), role and database portcullis with a
# random password. The connection string holds that password: it stays in the 0600 file
# $PG_DIR/conn_string, which the auth configs name (auth reads it from there).
start_postgres() {
  (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null && { echo "lab: port $PG_PORT (PostgreSQL) is in use; set LAB_BASE_PORT" >&2; exit 1; }
  PG_DIR=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-lab-pg.XXXXXX")
  # pg.sh prints the connection string too: not to the terminal.
  bash scripts/pg.sh start "$PG_DIR" "$PG_PORT" >/dev/null
}

# The extra config lines of a root auth replica on PostgreSQL (empty on sled).
AUTH_STORAGE="" AUTH_KEK=""
auth() { # name cluster port [flags]
  local name=$1 cluster=$2 port=$3; shift 3
  cat > "$LAB_DIR/$name-auth.yaml" <<YAML
version: v3
teleport:
  nodename: $name-auth
  data_dir: $LAB_DIR/$name/auth
$AUTH_STORAGE
auth_service:
  cluster_name: $cluster
  listen_addr: 127.0.0.1:$port
  tunnel_offline_after: 10s
$AUTH_KEK
YAML
  start "$name-auth" "$BIN/portcullis-auth" start -c "$LAB_DIR/$name-auth.yaml" "$@"
  wait_port "$port"
  for _ in $(seq 1 100); do [ -f "$LAB_DIR/$name/auth/admin-identity.json" ] && break; sleep 0.1; done
}
tctl() { local name=$1; shift; "$BIN/tctl" -c "$LAB_DIR/$name-auth.yaml" "$@"; }
token() { tctl "$1" tokens add --type="$2" --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p'; }
# A fresh join token in a 0600 file; prints the file's path. cluster type file-name
token_file() { local f="$LAB_DIR/secrets/$3.token"; token "$1" "$2" > "$f"; [ -s "$f" ] || { echo "no $2 token from $1" >&2; exit 1; }; echo "$f"; }
# The cluster CA pin, so joins check the auth service they reach instead of trusting it on
# first use.
pin() { tctl "$1" status | sed -n 's/^CA pin *//p'; }
proxy() { # name authports(comma-separated) web ssh tunnel
  cat > "$LAB_DIR/$1-proxy.yaml" <<YAML
version: v3
teleport:
  nodename: $1-proxy
  data_dir: $LAB_DIR/$1/proxy
  auth_servers: [127.0.0.1:${2//,/, 127.0.0.1:}]
  auth_token: $(token_file "$1" proxy "$1-proxy")
  ca_pin: $(pin "$1")
proxy_service:
  web_listen_addr: 127.0.0.1:$3
  listen_addr: 127.0.0.1:$4
  tunnel_listen_addr: 127.0.0.1:$5
YAML
  start "$1-proxy" "$BIN/portcullis-proxy" start -c "$LAB_DIR/$1-proxy.yaml"
  wait_port "$3"
}

ROOT_AUTH_PORTS=$R_AUTH
if [ "$STORAGE" = postgresql ]; then
  start_postgres
  # One key-encryption key for both replicas: the CA keys in the database are sealed with it.
  od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$LAB_DIR/secrets/root-ca-kek"
  AUTH_STORAGE="  storage:
    type: postgresql
    conn_string: $PG_DIR/conn_string"
  AUTH_KEK="  ca_key_encryption_key_file: $LAB_DIR/secrets/root-ca-kek"
  auth root "$ROOT" "$R_AUTH"
  # The second replica starts once the first has made the cluster's CAs in the database.
  auth root-b "$ROOT" "$R_AUTH_B"
  AUTH_STORAGE="" AUTH_KEK=""
  ROOT_AUTH_PORTS=$R_AUTH,$R_AUTH_B
else
  auth root "$ROOT" "$R_AUTH"
fi
proxy root "$ROOT_AUTH_PORTS" "$R_WEB" "$R_SSH" "$R_TUN"
# The leaf accepts the root proxy's self-signed HTTPS certificate (--insecure), as in the guide.
auth leaf "$LEAF" "$L_AUTH" --insecure
proxy leaf "$L_AUTH" "$L_WEB" "$L_SSH" "$L_TUN"
cat > "$LAB_DIR/leaf-node.yaml" <<YAML
version: v3
teleport:
  nodename: leaf-node
  data_dir: $LAB_DIR/leaf/node
  auth_server: 127.0.0.1:$L_AUTH
  auth_token: $(token_file leaf node leaf-node)
  ca_pin: $(pin leaf)
ssh_service:
  listen_addr: 127.0.0.1:$L_NODE
  labels: {env: lab}
YAML
# The node's sessions inherit its umask: give them the usual 022, not the lab's 077 (the
# node keeps its own data_dir 0700 and its files 0600 regardless).
start leaf-node bash -c 'umask 022; exec "$@"' leaf-node "$BIN/portcullis-node" start -c "$LAB_DIR/leaf-node.yaml"
start leaf-agent "$BIN/portcullis-tunnel-agent" start --token="$(token_file leaf proxy leaf-agent)" \
  --auth-server=127.0.0.1:$L_AUTH --data-dir="$LAB_DIR/leaf/agent" --nodename=leaf-agent --ca-pin="$(pin leaf)"
wait_port "$L_NODE"

# Step 1: the visitor role on the leaf.
cat > "$LAB_DIR/visitor.yaml" <<YAML
kind: role
version: v5
metadata:
  name: visitor
spec:
  allow:
    logins: [$VISITOR]
    node_labels:
      '*': '*'
YAML
tctl leaf create "$LAB_DIR/visitor.yaml" >/dev/null
# Step 2: the root user, with the visitor login.
tctl root users add alice --roles=access,editor --logins="$VISITOR,$(id -un)" >/dev/null
echo "$PASSWORD" | tctl root users set-password alice >/dev/null
# Step 3: an invite token on the root.
INVITE=$(tctl root tokens add --type=trusted_cluster --ttl=5m | sed -n 's/^The cluster invite token: //p')
# Step 4: the trusted_cluster resource on the leaf.
cat > "$LAB_DIR/trusted_cluster.yaml" <<YAML
kind: trusted_cluster
version: v2
metadata:
  name: $ROOT
spec:
  enabled: true
  token: $INVITE
  tunnel_addr: 127.0.0.1:$R_TUN
  web_proxy_addr: 127.0.0.1:$R_WEB
  role_map:
    - remote: "access"
      local: ["visitor"]
YAML
tctl leaf create "$LAB_DIR/trusted_cluster.yaml"
# The agent picks up the new trust on its next poll: announce the lab once the leaf's tunnel
# is up, so the commands below work at once.
for _ in $(seq 1 300); do
  tctl root get rc 2>/dev/null | grep -q 'connection: online' && break
  sleep 0.2
done
tctl root get rc 2>/dev/null | grep -q 'connection: online' \
  || echo "warning: the leaf's tunnel is not up after 60 s; see $LAB_DIR/leaf-agent.log" >&2

HA_TEXT=""
if [ "$STORAGE" = postgresql ]; then
  HA_TEXT="                auth replicas 127.0.0.1:$R_AUTH and 127.0.0.1:$R_AUTH_B on PostgreSQL 127.0.0.1:$PG_PORT
                (kill one: kill \$(cat $LAB_DIR/root-auth.pid); sessions go on through the other;
                tctl -c $LAB_DIR/root-b-auth.yaml reaches the second one)
"
fi
cat <<TXT

Portcullis two-cluster lab is up (state and logs in $LAB_DIR).
  root cluster  $ROOT   proxy https://127.0.0.1:$R_WEB (self-signed: --insecure)
$HA_TEXT  leaf cluster  $LEAF   no inbound port used: its agent dials the root's tunnel port $R_TUN
  user          alice / $PASSWORD (root cluster), maps to role "visitor" on the leaf

Try, in another terminal:
  export TSH_HOME=$LAB_DIR/tsh PATH=$BIN:\$PATH
  echo $PASSWORD | tsh login --proxy=127.0.0.1:$R_WEB --user=alice --insecure
  tsh clusters
  tsh ls --cluster=$LEAF
  tsh ssh --cluster=$LEAF $VISITOR@leaf-node pwd
  tsh ssh --cluster=$LEAF $VISITOR@leaf-node
  tctl -c $LAB_DIR/root-auth.yaml get rc
  tctl -c $LAB_DIR/leaf-auth.yaml get tc

Press Ctrl-C to stop.
TXT
wait

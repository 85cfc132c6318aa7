#!/usr/bin/env bash
# Starts a local Portcullis cluster on loopback (auth, proxy, one node), creates a user,
# and prints the tsh commands to try. Ctrl-C stops everything.
#   LAB_DIR   where state and logs go (default ./lab, wiped at start)
#   LAB_BASE_PORT first of the ports used (default 4020)
set -euo pipefail
cd "$(dirname "$0")/.."
LAB_DIR=${LAB_DIR:-$PWD/lab}
BASE=${LAB_BASE_PORT:-4020}
AUTH=$((BASE + 5)) WEB=$((BASE + 10)) SSHP=$((BASE + 3)) TUN=$((BASE + 4)) NODE=$((BASE + 2))
LOGIN=${LAB_LOGIN:-$(id -un)}
PASSWORD=${LAB_PASSWORD:-portcullis-lab}

echo "building (first time: several minutes)..."
cargo build --workspace --bins --quiet
BIN=$PWD/target/debug
rm -rf "$LAB_DIR"; mkdir -p "$LAB_DIR"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open; see $LAB_DIR/*.log" >&2; exit 1; }

cat > "$LAB_DIR/auth.yaml" <<YAML
version: v3
teleport:
  nodename: lab-auth
  data_dir: $LAB_DIR/auth
auth_service:
  cluster_name: lab.portcullis.local
  listen_addr: 127.0.0.1:$AUTH
YAML
"$BIN/portcullis-auth" start -c "$LAB_DIR/auth.yaml" >"$LAB_DIR/auth.log" 2>&1 & pids+=($!)
wait_port "$AUTH"
for _ in $(seq 1 100); do [ -f "$LAB_DIR/auth/admin-identity.json" ] && break; sleep 0.1; done
TCTL=("$BIN/tctl" -c "$LAB_DIR/auth.yaml")

token() { "${TCTL[@]}" tokens add --type="$1" --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p'; }

cat > "$LAB_DIR/proxy.yaml" <<YAML
version: v3
teleport:
  nodename: lab-proxy
  data_dir: $LAB_DIR/proxy
  auth_server: 127.0.0.1:$AUTH
  auth_token: $(token proxy)
proxy_service:
  web_listen_addr: 127.0.0.1:$WEB
  listen_addr: 127.0.0.1:$SSHP
  tunnel_listen_addr: 127.0.0.1:$TUN
YAML
"$BIN/portcullis-proxy" start -c "$LAB_DIR/proxy.yaml" >"$LAB_DIR/proxy.log" 2>&1 & pids+=($!)

cat > "$LAB_DIR/node.yaml" <<YAML
version: v3
teleport:
  nodename: node-1
  data_dir: $LAB_DIR/node
  auth_server: 127.0.0.1:$AUTH
  auth_token: $(token node)
ssh_service:
  listen_addr: 127.0.0.1:$NODE
  labels: {env: lab}
YAML
"$BIN/portcullis-node" start -c "$LAB_DIR/node.yaml" >"$LAB_DIR/node.log" 2>&1 & pids+=($!)
wait_port "$WEB"; wait_port "$NODE"

"${TCTL[@]}" users add alice --roles=access,editor --logins="$LOGIN" >/dev/null
echo "$PASSWORD" | "${TCTL[@]}" users set-password alice >/dev/null

cat <<TXT

Portcullis lab is up (state and logs in $LAB_DIR).
  cluster  lab.portcullis.local
  proxy    https://127.0.0.1:$WEB (self-signed: use --insecure)
  user     alice / $PASSWORD, may log in as "$LOGIN"

Try, in another terminal:
  export TSH_HOME=$LAB_DIR/tsh
  echo $PASSWORD | $BIN/tsh login --proxy=127.0.0.1:$WEB --user=alice --insecure
  $BIN/tsh ls
  $BIN/tsh ssh $LOGIN@node-1 uname -a
  $BIN/tsh ssh $LOGIN@node-1
  $BIN/tctl -c $LAB_DIR/auth.yaml get roles

Press Ctrl-C to stop.
TXT
wait

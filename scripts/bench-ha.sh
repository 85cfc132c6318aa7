#!/usr/bin/env bash
# Control-plane HA benchmark (issue 12), side by side in one run on loopback:
#   sled     one auth on the embedded sled store (the default)
#   pg1      one auth on PostgreSQL
#   pg2      two auth replicas on the same PostgreSQL (the proxy is given both)
# For each: `tsh login` rate and p50/p99 latency (BENCH_LOGINS (200) logins, BENCH_CONCURRENCY (4)
# at a time, each a whole `tsh` process: key generation, ping, password check, signing), the auth
# processes' VmRSS after the run and their peak (VmHWM); and the backend benchmark's writes/s
# (storage-bench, BENCH_STORAGE_BIN overrides; BENCH_NO_STORAGE=1 skips) on sled and on the same
# PostgreSQL.
# A throwaway PostgreSQL (Debian's package, /usr/lib/postgresql/*/bin) is initialised in a
# temporary directory and run as user postgres when this runs as root. Release binaries unless
# BENCH_PROFILE=debug; builds them when missing. Writes the ha-bench section of
# docs/benchmarks.md unless BENCH_NO_DOC=1. Everything it starts is stopped on exit.
#   bash scripts/bench-ha.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PROFILE=${BENCH_PROFILE:-release}
BIN=$REPO/target/$PROFILE
LOGINS=${BENCH_LOGINS:-200}
CONC=${BENCH_CONCURRENCY:-4}
DOC=$REPO/docs/benchmarks.md
PASSWORD=bench-ha-password
log() { echo "[bench-ha $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}
[ -x "$PG_BIN/postgres" ] && [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/psql" ] \
  || die "PostgreSQL server binaries not found (install Debian's postgresql package or set PG_BIN)"

missing=0
for b in portcullis-auth portcullis-proxy tsh tctl; do [ -x "$BIN/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  log "building the $PROFILE binaries..."
  if [ "$PROFILE" = release ]; then
    cargo build --release -p portcullis-auth -p portcullis-proxy -p tsh -p tctl >&2
  else
    cargo build -p portcullis-auth -p portcullis-proxy -p tsh -p tctl >&2
  fi
fi
STORAGE_BIN=${BENCH_STORAGE_BIN:-$BIN/storage-bench}

DIR=$(mktemp -d)
chmod 755 "$DIR"
pids=()
PG_PID=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  # Fast shutdown: PostgreSQL disconnects its clients and stops cleanly.
  [ -n "$PG_PID" ] && kill -INT "$PG_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] && log "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "port $1 did not open; see $DIR/*.log"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
rand_hex() { od -An -N16 -tx1 /dev/urandom | tr -d ' \n'; }

# ---- PostgreSQL ------------------------------------------------------------------------
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
PG_PORT=$(free_port)
PG_SUPER=$(rand_hex)
PG_PASS=$(rand_hex)
mkdir -p "$DIR/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg"
( umask 077; printf '%s\n' "$PG_SUPER" > "$DIR/pg/pwfile" )
[ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg/pwfile"
as_pg "$PG_BIN/initdb" -D "$DIR/pg/data" -U postgres --auth=scram-sha-256 -E UTF8 --pwfile="$DIR/pg/pwfile" >"$DIR/initdb.log" 2>&1 \
  || die "initdb failed: $(tail -5 "$DIR/initdb.log")"
rm -f "$DIR/pg/pwfile"
# runuser stays the parent of postgres; signal postgres itself (its pid is in postmaster.pid).
as_pg "$PG_BIN/postgres" -D "$DIR/pg/data" -p "$PG_PORT" -c listen_addresses=127.0.0.1 \
  -c unix_socket_directories="$DIR/pg" -c max_connections=200 >"$DIR/postgres.log" 2>&1 &
pids+=($!)
psql_super() { PGPASSWORD=$PG_SUPER PGCONNECT_TIMEOUT=3 "$PG_BIN/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }
for _ in $(seq 1 150); do psql_super -d postgres -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
psql_super -d postgres -c 'SELECT 1' >/dev/null 2>&1 || die "PostgreSQL did not start: $(tail -5 "$DIR/postgres.log")"
PG_PID=$(head -1 "$DIR/pg/data/postmaster.pid")
PG_VERSION=$("$PG_BIN/postgres" --version | awk '{print $3}')
new_db() {  # a fresh database per scenario, so each starts empty
  psql_super -d postgres <<SQL >/dev/null
DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'portcullis') THEN CREATE ROLE portcullis LOGIN PASSWORD '$PG_PASS'; END IF; END \$\$;
CREATE DATABASE $1 OWNER portcullis;
SQL
}
conn_string() { echo "postgresql://portcullis:$PG_PASS@127.0.0.1:$PG_PORT/$1?sslmode=disable"; }

# ---- one cluster per scenario ----------------------------------------------------------
# start_cluster NAME REPLICAS [DB]: auth replica(s) (sled without DB) and a proxy with every
# auth address; sets AUTH_PIDS and WEB.
start_cluster() {
  local name=$1 n=$2 db=${3:-} d=$DIR/$1 storage="" addrs=() i port
  mkdir -p "$d"; chmod 700 "$d"
  if [ -n "$db" ]; then
    new_db "$db"
    storage="  storage:
    type: postgresql
    conn_string: \"$(conn_string "$db")\""
  fi
  AUTH_PIDS=()
  for i in $(seq 0 $((n - 1))); do
    port=$(free_port)
    addrs+=("127.0.0.1:$port")
    cat > "$d/auth-$i.yaml" <<YAML
version: v3
teleport:
  nodename: $name-auth-$i
  data_dir: $d/auth-$i
  log: {severity: WARN}
$storage
auth_service:
  cluster_name: $name.bench.local
  listen_addr: 127.0.0.1:$port
  ca_key_encryption_key_file: $d/ca-kek
YAML
    chmod 600 "$d/auth-$i.yaml"
    "$BIN/portcullis-auth" start -c "$d/auth-$i.yaml" >"$d/auth-$i.log" 2>&1 & pids+=($!); AUTH_PIDS+=($!)
    wait_port "$port"
    for _ in $(seq 1 100); do [ -f "$d/auth-$i/admin-identity.json" ] && break; sleep 0.1; done
  done
  TCTL="$BIN/tctl -c $d/auth-0.yaml"
  local token
  token=$($TCTL tokens add --type=proxy --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  (umask 077; printf '%s\n' "$token" > "$d/proxy-token")
  WEB=$(free_port)
  local list
  list=$(IFS=,; echo "${addrs[*]}")
  cat > "$d/proxy.yaml" <<YAML
version: v3
teleport:
  nodename: $name-proxy
  data_dir: $d/proxy
  auth_servers: [$list]
  auth_token: $d/proxy-token
  log: {severity: WARN}
proxy_service:
  web_listen_addr: 127.0.0.1:$WEB
  listen_addr: 127.0.0.1:$(free_port)
  tunnel_listen_addr: 127.0.0.1:$(free_port)
  rate_limit: {burst: 0}
YAML
  "$BIN/portcullis-proxy" start -c "$d/proxy.yaml" >"$d/proxy.log" 2>&1 & pids+=($!); PROXY_PID=$!
  wait_port "$WEB"
  $TCTL users add alice --roles=access --logins=alice >/dev/null
  printf '%s\n' "$PASSWORD" | $TCTL users set-password alice >/dev/null
}

stop_cluster() {
  kill "${AUTH_PIDS[@]}" "$PROXY_PID" 2>/dev/null || true
  for p in "${AUTH_PIDS[@]}" "$PROXY_PID"; do
    for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
}

# One worker: LOGINS/CONC logins in a row, "ms ok|fail" per line.
login_worker() {
  local home=$1 count=$2 t0 t1 st
  mkdir -p "$home"
  for _ in $(seq 1 "$count"); do
    t0=$(date +%s%N)
    if printf '%s\n' "$PASSWORD" | TSH_HOME=$home "$BIN/tsh" login --insecure --proxy=127.0.0.1:$WEB --user=alice >/dev/null 2>>"$home.err"; then st=ok; else st=fail; fi
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000000 )) $st"
  done
}
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {if (NR == 0) {print "n/a"; exit} i = int((NR * p + 99) / 100); if (i < 1) i = 1; print a[i]}'; }

# measure NAME: sets R_<NAME>_* (rate, p50, p99, failures, rss, hwm).
declare -A R
measure() {
  local name=$1 per=$(( LOGINS / CONC )) w t0 t1 out=$DIR/$1/latencies
  # Warm up: the first login pays for caches and connections.
  login_worker "$DIR/$name/warm" 2 >/dev/null
  : > "$out"
  t0=$(date +%s%N)
  for w in $(seq 1 "$CONC"); do login_worker "$DIR/$name/tsh-$w" "$per" >> "$out" & done
  wait_workers
  t1=$(date +%s%N)
  local total fails
  total=$(wc -l < "$out"); fails=$(grep -c fail "$out" || true)
  R[$name.rate]=$(awk -v n="$total" -v ns=$((t1 - t0)) 'BEGIN {printf "%.1f", n / (ns / 1e9)}')
  R[$name.p50]=$(awk '{print $1}' "$out" | pct 50)
  R[$name.p99]=$(awk '{print $1}' "$out" | pct 99)
  R[$name.fails]="$fails of $total"
  local rss="" hwm="" p
  for p in "${AUTH_PIDS[@]}"; do
    rss="${rss:+$rss + }$(mib "$(rss_kib "$p")")"; hwm="${hwm:+$hwm + }$(mib "$(hwm_kib "$p")")"
  done
  R[$name.rss]=$rss; R[$name.hwm]=$hwm
  log "$name: ${R[$name.rate]} logins/s, p50 ${R[$name.p50]} ms, p99 ${R[$name.p99]} ms, failed ${R[$name.fails]}, auth RSS $rss MiB (peak $hwm)"
}
# Waits for the login workers only (not the long-running services in pids).
wait_workers() { local j; for j in $(jobs -p); do case " ${pids[*]} " in *" $j "*) ;; *) wait "$j" || true ;; esac; done; }

# The backend benchmark (bench/src/bin/storage_bench.rs) on sled and on this PostgreSQL, once:
# puts/s with one writer and with 8, and compare-and-swap/s with 8.
storage_bench() {
  R[sled.writes]="n/a"; R[pg1.writes]="n/a"; R[pg2.writes]="n/a"
  [ -n "${BENCH_NO_STORAGE:-}" ] && return 0
  if [ ! -x "$STORAGE_BIN" ]; then
    log "building storage-bench..."
    if [ "$PROFILE" = release ]; then cargo build --release -p portcullis-bench --bin storage-bench >&2 || true
    else cargo build -p portcullis-bench --bin storage-bench >&2 || true; fi
  fi
  [ -x "$STORAGE_BIN" ] || { log "no storage benchmark at $STORAGE_BIN: writes/s not measured"; return 0; }
  new_db benchstorage
  # The connection string goes through the environment, not argv.
  PORTCULLIS_BENCH_PG=$(conn_string benchstorage) "$STORAGE_BIN" --json > "$DIR/storage.json" 2>"$DIR/storage.err" \
    || { log "storage-bench failed: $(tail -3 "$DIR/storage.err")"; return 0; }
  local b
  for b in sled postgresql; do
    local v
    v=$(python3 - "$DIR/storage.json" "$b" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
def f(op, multi):
    for r in rows:
        if r["backend"] == sys.argv[2] and r["op"] == op and (r["writers"] > 1) == multi:
            return "%.0f" % r["writes_per_sec"]
    return "n/a"
print("%s / %s / %s" % (f("put", False), f("put", True), f("cas", True)))
PY
)
    if [ "$b" = sled ]; then R[sled.writes]=$v; else R[pg1.writes]=$v; R[pg2.writes]="$v (same database)"; fi
  done
  log "storage writes/s (put 1 writer / put 8 / cas 8): sled ${R[sled.writes]}, PostgreSQL ${R[pg1.writes]}"
}

log "sled, one auth"
start_cluster sled 1; measure sled; stop_cluster
log "PostgreSQL $PG_VERSION, one auth"
start_cluster pg1 1 bench_pg1; measure pg1; stop_cluster
log "PostgreSQL $PG_VERSION, two auth replicas"
start_cluster pg2 2 bench_pg2; measure pg2; stop_cluster
storage_bench

CORES=$(nproc)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
row() { echo "| $2 | ${R[sled.$1]} | ${R[pg1.$1]} | ${R[pg2.$1]} |"; }  # row KEY LABEL
SECTION=$(cat <<MD
<!-- ha-bench:start -->
## Control plane on sled and PostgreSQL (\`scripts/bench-ha.sh\`)

Recorded $(date -u '+%Y-%m-%d %H:%M UTC') on $CORES cores, commit $COMMIT$DIRTY, $PROFILE binaries,
PostgreSQL $PG_VERSION on loopback (default settings, fsync on), by \`bash scripts/bench-ha.sh\`.
Each column is a fresh cluster (auth replica(s) and one proxy given every auth address; the
proxy's per-address rate limit off). $LOGINS \`tsh login\` runs, $CONC at a time; a login is the
whole \`tsh\` process (key generation, ping, argon2 password check, signing).

| | sled, one auth | PostgreSQL, one auth | PostgreSQL, two auths |
| --- | ---: | ---: | ---: |
$(row rate "logins/s")
$(row p50 "login latency p50 (ms)")
$(row p99 "login latency p99 (ms)")
$(row fails "failed logins")
$(row rss "auth VmRSS after the run (MiB, per replica)")
$(row hwm "auth peak VmHWM (MiB, per replica)")
$(row writes "storage writes/s: put 1 writer / put 8 writers / CAS 8 writers (storage-bench)")
<!-- ha-bench:end -->
MD
)
echo "$SECTION"
if [ -z "${BENCH_NO_DOC:-}" ]; then
  if grep -q '<!-- ha-bench:start -->' "$DOC"; then
    python3 - "$DOC" "$SECTION" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"<!-- ha-bench:start -->.*?<!-- ha-bench:end -->", lambda _: section, text, flags=re.S)
open(path, "w").write(text)
PY
  else
    printf '\n%s\n' "$SECTION" >> "$DOC"
  fi
  log "updated $DOC"
fi

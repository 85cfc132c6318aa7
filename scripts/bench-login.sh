#!/usr/bin/env bash
# Password-login abuse benchmark (issue 11 item 2): one cluster (auth + proxy) on loopback.
#   memory   auth VmRSS before and after BENCH_FLOOD (300) wrong passwords sent BENCH_PARALLEL
#            (32) at a time to POST /webapi/login, and its peak (VmHWM)
#   latency  `tsh login` of a real user, BENCH_LOGINS (10) times in a row, without and then
#            with a flood of wrong passwords running (32 at a time)
# The flood goes through the proxy like a real attacker's, with two limits set aside so it
# reaches argon2 at all: the proxy's per-address rate limit (proxy_service.rate_limit
# burst: 0) and the per-user lockout (every guess names a different, unknown user, which costs
# the same argon2 run as a real one: the dummy hash). Hashing stays bounded by
# auth_service.password_hashing (defaults). Uses the debug binaries unless
# BENCH_PROFILE=release; builds them when missing. BENCH_AUTH_EXTRA adds lines to auth_service
# (e.g. "  lockout: {max_failures: 0}"). Writes the login-bench section of
# docs/benchmarks.md unless BENCH_NO_DOC=1. Everything it starts is stopped on exit.
#   bash scripts/bench-login.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PROFILE=${BENCH_PROFILE:-debug}
BIN=$REPO/target/$PROFILE
FLOOD=${BENCH_FLOOD:-300}
PAR=${BENCH_PARALLEL:-32}
LOGINS=${BENCH_LOGINS:-10}
DOC=$REPO/docs/benchmarks.md
PASSWORD=bench-login-password
log() { echo "[bench-login $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }
command -v curl >/dev/null || die "curl is needed"

missing=0
for b in portcullis-auth portcullis-proxy tsh tctl; do [ -x "$BIN/$b" ] || missing=1; done
if [ "$missing" = 1 ]; then
  log "building the $PROFILE binaries..."
  if [ "$PROFILE" = release ]; then cargo build --release --workspace --bins >&2; else cargo build --workspace --bins >&2; fi
fi

DIR=$(mktemp -d)
pids=()
flood_pid=
cleanup() {
  [ -n "$flood_pid" ] && kill "$flood_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${BENCH_KEEP:-}" ] && log "kept $DIR" || rm -rf "$DIR"
}
trap cleanup EXIT INT TERM
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "port $1 did not open; see $DIR/*.log"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }

AUTH_PORT=$(free_port); WEB=$(free_port); SSH=$(free_port); TUN=$(free_port)
mkdir -p "$DIR/auth" "$DIR/proxy" "$DIR/tsh"
chmod 700 "$DIR"/*
cat > "$DIR/auth.yaml" <<YAML
version: v3
teleport:
  nodename: bench-auth
  data_dir: $DIR/auth
  log: {severity: WARN}
auth_service:
  cluster_name: bench-login.local
  listen_addr: 127.0.0.1:$AUTH_PORT
${BENCH_AUTH_EXTRA:-}
YAML
"$BIN/portcullis-auth" start -c "$DIR/auth.yaml" >"$DIR/auth.log" 2>&1 & pids+=($!)
AUTH_PID=$!
wait_port "$AUTH_PORT"
for _ in $(seq 1 100); do [ -f "$DIR/auth/admin-identity.json" ] && break; sleep 0.1; done
tctl() { "$BIN/tctl" -c "$DIR/auth.yaml" "$@"; }
TOKEN=$(tctl tokens add --type=proxy --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
printf '%s\n' "$TOKEN" > "$DIR/proxy-token"; chmod 600 "$DIR/proxy-token"
cat > "$DIR/proxy.yaml" <<YAML
version: v3
teleport:
  nodename: bench-proxy
  data_dir: $DIR/proxy
  auth_server: 127.0.0.1:$AUTH_PORT
  auth_token: $DIR/proxy-token
  log: {severity: WARN}
proxy_service:
  web_listen_addr: 127.0.0.1:$WEB
  listen_addr: 127.0.0.1:$SSH
  tunnel_listen_addr: 127.0.0.1:$TUN
  rate_limit: {burst: 0}
YAML
"$BIN/portcullis-proxy" start -c "$DIR/proxy.yaml" >"$DIR/proxy.log" 2>&1 & pids+=($!)
wait_port "$WEB"
# A second proxy with the shipped limits, for what one attacking address meets.
WEB2=$(free_port); SSH2=$(free_port); TUN2=$(free_port)
mkdir -p "$DIR/proxy2"; chmod 700 "$DIR/proxy2"
tctl tokens add --type=proxy --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' > "$DIR/proxy2-token"
chmod 600 "$DIR/proxy2-token"
sed -e "s|$DIR/proxy-token|$DIR/proxy2-token|; s|data_dir: $DIR/proxy\$|data_dir: $DIR/proxy2|; s|:$WEB\$|:$WEB2|; s|:$SSH\$|:$SSH2|; s|:$TUN\$|:$TUN2|; /rate_limit/d; s|bench-proxy|bench-proxy2|" \
  "$DIR/proxy.yaml" > "$DIR/proxy2.yaml"
"$BIN/portcullis-proxy" start -c "$DIR/proxy2.yaml" >"$DIR/proxy2.log" 2>&1 & pids+=($!)
wait_port "$WEB2"
tctl users add alice --roles=access --logins=alice >/dev/null
printf '%s\n' "$PASSWORD" | tctl users set-password alice >/dev/null

tsh_login() { printf '%s\n' "$PASSWORD" | TSH_HOME=$DIR/tsh "$BIN/tsh" login --insecure --proxy=127.0.0.1:$WEB --user=alice >/dev/null 2>"$DIR/tsh.err"; }
# Wall-clock milliseconds of LOGINS logins in a row, one a line; failures counted in $DIR/fails.
time_logins() {
  : > "$DIR/fails"
  for _ in $(seq 1 "$LOGINS"); do
    local t0 t1
    t0=$(date +%s%N)
    tsh_login || echo x >> "$DIR/fails"
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
  done
}
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
max() { sort -n | tail -1; }
# N wrong passwords, PAR at a time, each for another unknown user (or all for $USER_NAME);
# prints the HTTP codes. WEB_PORT picks the proxy.
flood() {
  local name="flood-{}-$2"
  [ -n "${USER_NAME:-}" ] && name=$USER_NAME
  seq "$1" | xargs -P "$PAR" -I{} curl -sk -o /dev/null -w '%{http_code}\n' -X POST \
    -H 'Content-Type: application/json' \
    -d '{"user":"'"$name"'","password":"wrong-guess","ssh_pub_key":"","tls_pub_key":""}' \
    "https://127.0.0.1:${WEB_PORT:-$WEB}/webapi/login"
}
codes() { sort | uniq -c | awk '{printf "%s%s × %s", sep, $1, $2; sep=", "}'; }

tsh_login || die "the first login failed: $(cat "$DIR/tsh.err")"
flood 4 warm >/dev/null
sleep 1
RSS0=$(rss_kib "$AUTH_PID")
log "auth VmRSS before the flood: $(mib "$RSS0") MiB"
T0=$(date +%s%N)
CODES=$(flood "$FLOOD" one | codes)
T1=$(date +%s%N)
sleep 1
RSS1=$(rss_kib "$AUTH_PID"); HWM=$(hwm_kib "$AUTH_PID")
FLOOD_S=$(awk -v ns=$((T1 - T0)) 'BEGIN {printf "%.1f", ns / 1e9}')
log "after $FLOOD wrong passwords ($PAR at a time, ${FLOOD_S}s, answers $CODES): VmRSS $(mib "$RSS1") MiB, peak $(mib "$HWM") MiB"

QUIET=$(time_logins); QUIET_FAILS=$(wc -l < "$DIR/fails")
( i=0; while :; do i=$((i + 1)); flood "$((PAR * 4))" "bg$i" >/dev/null; done ) & flood_pid=$!
sleep 2
LOADED=$(time_logins); LOADED_FAILS=$(wc -l < "$DIR/fails")
kill "$flood_pid" 2>/dev/null || true; wait "$flood_pid" 2>/dev/null || true; flood_pid=
RSS2=$(rss_kib "$AUTH_PID"); HWM2=$(hwm_kib "$AUTH_PID")
log "tsh login median without flood $(echo "$QUIET" | median) ms, with flood $(echo "$LOADED" | median) ms ($LOADED_FAILS failed)"
# The shipped limits against one address: the same flood through the second proxy, then one
# user's name guessed over and over (the lockout), both measured on the auth's memory.
sleep 1
RSS3=$(rss_kib "$AUTH_PID")
LIMITED=$(WEB_PORT=$WEB2 flood "$FLOOD" lim | codes)
sleep 5
ONE_USER=$(WEB_PORT=$WEB2 USER_NAME=alice flood 20 x | codes)
RSS4=$(rss_kib "$AUTH_PID")
tsh_login && LOCKED="no (logged in)" || LOCKED=$(sed -n 's/^ERROR: //p' "$DIR/tsh.err" | head -1)
log "shipped limits: $LIMITED; 20 guesses at alice: $ONE_USER; then: $LOCKED"

CORES=$(nproc)
COMMIT=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$REPO" status --porcelain 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
SECTION=$(cat <<MD
<!-- login-bench:start -->
## Password-login flood (\`scripts/bench-login.sh\`)

Recorded $(date -u '+%Y-%m-%d %H:%M UTC') on $CORES cores, commit $COMMIT$DIRTY, $PROFILE binaries, by
\`bash scripts/bench-login.sh\`. One cluster (auth + proxy) on loopback; the flood is
\`curl\` against \`POST /webapi/login\` through the proxy, $PAR requests at a time, each a wrong
password for another (unknown) user name. To let every guess reach argon2, the proxy's
per-address rate limit is off (\`proxy_service.rate_limit: {burst: 0}\`) and distinct names keep
the per-user lockout from tripping; an unknown user costs the same argon2 run as a real one
(the dummy hash). Password hashing is bounded by the defaults of
\`auth_service.password_hashing\` (max_concurrent = cores, at most 4; max_queued 64).

| | figure |
| --- | ---: |
| auth VmRSS before the flood (MiB) | $(mib "$RSS0") |
| auth VmRSS after $FLOOD wrong passwords, $PAR at a time (MiB) | $(mib "$RSS1") |
| growth (MiB; aim < 150) | $(mib $((RSS1 - RSS0))) |
| auth peak VmHWM during the flood (MiB) | $(mib "$HWM") |
| flood duration (s) / answers (count × HTTP status) | $FLOOD_S / $CODES |
| \`tsh login\` of a real user, median / max of $LOGINS, no flood (ms) | $(echo "$QUIET" | median) / $(echo "$QUIET" | max) |
| \`tsh login\` of a real user, median / max of $LOGINS, flood of $PAR at a time running (ms) | $(echo "$LOADED" | median) / $(echo "$LOADED" | max) |
| real-user logins refused during the flood | $LOADED_FAILS of $LOGINS |
| auth VmRSS / peak after the second flood (MiB) | $(mib "$RSS2") / $(mib "$HWM2") |

With the shipped limits (a second proxy with the default \`proxy_service.rate_limit\`, burst 20
then 5/s per address, and the default lockout, 5 failures in 30m):

| | figure |
| --- | ---: |
| the same $FLOOD wrong passwords, $PAR at a time, from one address (count × HTTP status) | $LIMITED |
| then 20 wrong passwords for the real user \`alice\`, 5 s later (count × HTTP status) | $ONE_USER |
| \`tsh login\` of \`alice\` with the right password afterwards | $LOCKED |
| auth VmRSS before / after these (MiB) | $(mib "$RSS3") / $(mib "$RSS4") |

For comparison, the security review measured main before this change: 300 guesses at 32 in
parallel grew the root auth from 90 MB to 3.8 GB (argon2 on tokio's unbounded blocking pool).
\`tsh login\` times are wall-clock times of the whole \`tsh\` process (key generation, ping,
login). Under the flood a real login waits behind the queued guesses (at most
\`max_concurrent + max_queued\` hashes, the rest refused at once with 429); in production the
per-address rate limit (20 at once, then 5/s) and the lockout stop such a flood long before.
<!-- login-bench:end -->
MD
)
echo "$SECTION"
if [ -z "${BENCH_NO_DOC:-}" ]; then
  if grep -q '<!-- login-bench:start -->' "$DOC"; then
    python3 - "$DOC" "$SECTION" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r"<!-- login-bench:start -->.*?<!-- login-bench:end -->", lambda _: section, text, flags=re.S)
open(path, "w").write(text)
PY
  else
    printf '\n%s\n' "$SECTION" >> "$DOC"
  fi
  log "updated $DOC"
fi

#!/usr/bin/env bash
# Portcullis against OpenSSH on this machine (issue 7), in one run:
#   latency     `tsh ssh --cluster=leaf visitor@leaf-node true` (and a root-cluster node) vs
#               `ssh -J bastion target true`: median and p99 (hyperfine)
#   throughput  BENCH_BYTES (default 1G) up and down through tsh, `ssh -J`, and plain `ssh target`,
#               BENCH_XFER_ROUNDS (default 3) interleaved rounds, median reported
#   concurrency BENCH_CONCURRENCY (default 200) sessions at once: `tsh ssh ... echo x` started
#               together (p50/p99, errors), then as many open `tsh ssh ... cat` sessions echoing a
#               line all at once (concurrent-echo, bench crate; the same with `ssh -J` for
#               comparison): round trip p50/p99, errors, proxy RSS per open session
#   tunnels     proxy RSS per idle tunnel: tunnel-scale with BENCH_TUNNEL_LEAVES (default 100)
#               simulated leaves, no restarts (BENCH_NO_TUNNELS=1 skips it)
#   memory      root proxy VmRSS idle and with BENCH_OPEN_SESSIONS (default 50) open sessions
#   tracing     median leaf latency with every lab process and tsh exporting OTLP to a sink
# It installs OpenSSH and hyperfine from Debian when missing, builds the release binaries if
# target/release lacks them, starts scripts/lab.sh (two clusters on loopback) plus one root-cluster
# node and two throwaway sshd on free loopback ports in a temporary directory, prints a table and
# refreshes the ssh-bench section of docs/benchmarks.md. Everything it starts is stopped on exit.
#   bash scripts/bench-ssh.sh
#   BENCH_BYTES=256M BENCH_RUNS=30 BENCH_NO_DOC=1 bash scripts/bench-ssh.sh    # quick shake-out
# Other knobs: BENCH_TRACE_RUNS (50), BENCH_NO_TRACE=1 (skip the tracing phase), BENCH_KEEP=1
# (keep the temporary directory), BENCH_REBUILD=1 (always run the release build),
# BENCH_NO_DOC=1 (print only).
#   bash scripts/bench-ssh.sh --only echo    # only the fan-in echo: BENCH_CONCURRENCY (200) open
#                                            # sessions through Portcullis, then through ssh -J,
#                                            # round trip p50/p99 side by side; prints, no doc
set -euo pipefail
ONLY=
case "${1:-}" in
  --only) ONLY=${2:-}; [ "$ONLY" = echo ] || { echo "bench-ssh: --only takes 'echo'" >&2; exit 2; } ;;
  "") ;;
  *) echo "bench-ssh: unknown argument '$1' (knobs are environment variables; see the header)" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
REPO=$PWD
BYTES_SPEC=${BENCH_BYTES:-1G}
RUNS=${BENCH_RUNS:-100}
XFER_ROUNDS=${BENCH_XFER_ROUNDS:-3}
CONC=${BENCH_CONCURRENCY:-200}
OPEN=${BENCH_OPEN_SESSIONS:-50}
TRACE_RUNS=${BENCH_TRACE_RUNS:-50}
DOC=$REPO/docs/benchmarks.md
REL=$REPO/${CARGO_TARGET_DIR:-target}/release
LEAF=leaf.lab.portcullis.local
PASSWORD=portcullis-lab
log() { echo "[bench-ssh $(date +%T)] $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools --------------------------------------------------------------------------------
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
command -v hyperfine >/dev/null || need+=(hyperfine)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} from Debian..."
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}" >&2
fi
NBYTES=$(numfmt --from=iec "$BYTES_SPEC") || die "BENCH_BYTES=$BYTES_SPEC is not a size (e.g. 1G, 256M)"

# --- binaries -----------------------------------------------------------------------------
missing=0
for b in portcullis-auth portcullis-proxy portcullis-node portcullis-tunnel-agent tsh tctl; do
  [ -x "$REL/$b" ] || missing=1
done
if [ "$missing" = 1 ] || [ -n "${BENCH_REBUILD:-}" ]; then
  log "building the release binaries (the first time takes ~15 minutes on 2 cores)..."
  cargo build --release --workspace --bins >&2
fi
for b in otlp-sink concurrent-echo tunnel-scale; do
  if [ ! -x "$REL/$b" ] || [ -n "${BENCH_REBUILD:-}" ]; then
    cargo build --release -p portcullis-bench --bins >&2
    break
  fi
done
TSH=$REL/tsh

# --- process bookkeeping --------------------------------------------------------------------
WORK=$(mktemp -d /tmp/bench-ssh.XXXXXX)
PGIDS=()   # process groups we started with setsid (lab, node, sshd, sink)
PIDS=()    # plain background jobs (tsh sessions)
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null; done
  sleep 1
  for g in "${PGIDS[@]}"; do kill -KILL -- "-$g" 2>/dev/null; done
  if [ -n "${BENCH_KEEP:-}" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Background groups: `setsid cmd &` from a non-interactive shell execs in place, so $! is the
# new process group id and one kill stops the command and all its children.
bg_group() { local out=$1; shift; setsid "$@" >"$out" 2>&1 & PGIDS+=($!); echo $! > "$WORK/last.pid"; }
stop_group() { kill -TERM -- "-$1" 2>/dev/null || true; for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done; kill -KILL -- "-$1" 2>/dev/null || true; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { local p; while :; do p=$((10000 + RANDOM % 22000)); port_open "$p" || { echo "$p"; return; }; done; }
wait_port() { for _ in $(seq 1 300); do port_open "$1" && return 0; sleep 0.1; done; die "port $1 did not open ($2)"; }
lab_base() { # a free base port: lab ports base+22..25, 80, 122..125, 180, below the ephemeral range
  local b o ok
  while :; do
    b=$((10000 + (RANDOM % 110) * 200)); ok=1
    for o in 22 23 24 25 80 122 123 124 125 180; do port_open $((b + o)) && ok=0; done
    [ "$ok" = 1 ] && { echo "$b"; return; }
  done
}
rss_kb() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

# --- the Portcullis lab -----------------------------------------------------------------------
# start_lab NAME: lab.sh with the release binaries, plus a root-cluster node, then tsh login.
# A port taken between the check and the bind makes lab.sh exit: try again on other ports.
start_lab() {
  local try
  for try in 1 2 3; do
    start_lab_once "$1" && return 0
    log "the lab did not start (attempt $try); retrying on other ports"
    tail -3 "$WORK/$1"/lab/*.log >&2 || true
    stop_group "$LAB_PGID"
  done
  die "the lab did not start; see $WORK/$1"
}
start_lab_once() {
  local dir=$WORK/$1 base tok
  rm -rf "$dir"; mkdir -p "$dir"; base=$(lab_base)
  log "starting the two-cluster lab '$1' (ports from $base)${OTEL_EXPORTER_OTLP_ENDPOINT:+ with OTLP export to $OTEL_EXPORTER_OTLP_ENDPOINT}..."
  LAB_DIR=$dir/lab LAB_BASE_PORT=$base LAB_BIN=$REL bg_group "$dir/lab.out" bash scripts/lab.sh
  LAB_PGID=$(cat "$WORK/last.pid")
  for _ in $(seq 1 1800); do
    grep -q "lab is up" "$dir/lab.out" && break
    kill -0 "$LAB_PGID" 2>/dev/null || { cat "$dir/lab.out" >&2; return 1; }
    sleep 0.1
  done
  grep -q "lab is up" "$dir/lab.out" || { log "the lab did not come up in 180 s"; return 1; }
  # The lab has no root-cluster node: add one, joined to the root auth.
  tok=$("$REL/tctl" -c "$dir/lab/root-auth.yaml" tokens add --type=node --ttl=10m --format=json | sed -n 's/.*"token": *"\([^"]*\)".*/\1/p')
  ROOT_NODE_PORT=$((base + 22))
  cat > "$dir/root-node.yaml" <<YAML
version: v3
teleport:
  nodename: root-node
  data_dir: $dir/root-node
  auth_server: 127.0.0.1:$((base + 25))
  auth_token: $tok
ssh_service:
  listen_addr: 127.0.0.1:$ROOT_NODE_PORT
  labels: {env: lab}
YAML
  bg_group "$dir/root-node.log" "$REL/portcullis-node" start -c "$dir/root-node.yaml"
  NODE_PGID=$(cat "$WORK/last.pid")
  wait_port "$ROOT_NODE_PORT" "root node; see $dir/root-node.log"
  export TSH_HOME=$dir/tsh
  echo "$PASSWORD" | "$TSH" login --proxy=127.0.0.1:$((base + 80)) --user=alice --insecure >"$dir/login.log" 2>&1 \
    || { cat "$dir/login.log" >&2; die "tsh login failed"; }
  TSH_LEAF=(timeout 120 "$TSH" ssh --cluster=$LEAF visitor@leaf-node)
  TSH_ROOT=(timeout 120 "$TSH" ssh visitor@root-node)
  local ok=0
  for _ in $(seq 1 60); do "${TSH_LEAF[@]}" true </dev/null >/dev/null 2>&1 && { ok=1; break; }; sleep 1; done
  [ "$ok" = 1 ] || { "${TSH_LEAF[@]}" true </dev/null; die "the leaf node is not reachable through the tunnel"; }
  ROOT_NODE_OK=0
  for _ in $(seq 1 20); do "${TSH_ROOT[@]}" true </dev/null >/dev/null 2>&1 && { ROOT_NODE_OK=1; break; }; sleep 1; done
  [ "$ROOT_NODE_OK" = 1 ] || log "the root-cluster node is not reachable: its row is skipped"
  PROXY_PID=$(pgrep -f -- "$dir/lab/root-proxy.yaml" | head -n1)
  [ -n "$PROXY_PID" ] || die "cannot find the root proxy's pid"
}
stop_lab() { stop_group "$NODE_PGID"; stop_group "$LAB_PGID"; }

# --- OpenSSH bastion and target ------------------------------------------------------------------
start_sshd() {
  local s=$WORK/ssh h port
  mkdir -p "$s" /run/sshd
  # Log in as a fresh user like the lab's "visitor" (same skeleton files): root's shell startup
  # files here are heavier and would skew OpenSSH's latency. Its password field is "*", not
  # useradd's locked "!", because sshd without PAM refuses key logins to locked accounts.
  if [ "$(id -u)" = 0 ]; then
    id sshbench >/dev/null 2>&1 || useradd --create-home --shell /bin/bash --password '*' sshbench
    SSH_USER=sshbench
  else
    SSH_USER=$(id -un)
  fi
  ssh-keygen -q -t ed25519 -N '' -C bench-client -f "$s/client_key"
  # sshd reads AuthorizedKeysFile as the login user: let it through the directories.
  chmod 755 "$WORK" "$s"; chmod 644 "$s/client_key.pub"
  cat > "$s/ssh_config" <<CFG
Host *
  HostName 127.0.0.1
  User $SSH_USER
  IdentityFile $s/client_key
  IdentitiesOnly yes
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  BatchMode yes
  LogLevel ERROR
CFG
  for h in bastion target; do
    port=$(free_port)
    ssh-keygen -q -t ed25519 -N '' -f "$s/${h}_host_key"
    cat > "$s/${h}_sshd_config" <<CFG
ListenAddress 127.0.0.1:$port
HostKey $s/${h}_host_key
PidFile $s/$h.pid
AuthorizedKeysFile $s/client_key.pub
UsePAM no
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
MaxStartups 1000
MaxSessions 1000
LogLevel ERROR
CFG
    # Host blocks must precede "Host *" values, so prepend them.
    printf 'Host %s\n  Port %s\n' "$h" "$port" | cat - "$s/ssh_config" > "$s/ssh_config.new" && mv "$s/ssh_config.new" "$s/ssh_config"
    /usr/sbin/sshd -t -f "$s/${h}_sshd_config" || die "sshd rejects $s/${h}_sshd_config"
    bg_group "$s/$h.log" /usr/sbin/sshd -f "$s/${h}_sshd_config" -D -e
    wait_port "$port" "sshd $h; see $s/$h.log"
  done
  # OpenSSH 9.x's default key exchange (sntrup761x25519) costs ~0.3 s of CPU per handshake
  # here; a second config with curve25519 shows how much of OpenSSH's latency that is.
  printf 'KexAlgorithms curve25519-sha256\n' | cat - "$s/ssh_config" > "$s/ssh_config_c25519"
  SSH_JC=(timeout 120 ssh -F "$s/ssh_config_c25519" -J bastion target)
  SSH_J=(timeout 120 ssh -F "$s/ssh_config" -J bastion target)
  SSH_T=(timeout 120 ssh -F "$s/ssh_config" target)
  "${SSH_J[@]}" true </dev/null || die "ssh -J bastion target does not work; see $s/*.log"
}

# --- measurements ----------------------------------------------------------------------------------
declare -A R   # results by key
latency() { # key command...   -> R[key.med] R[key.p99] in ms
  local key=$1; shift
  log "latency: $key ($RUNS runs)..."
  if hyperfine -N --runs "$RUNS" --warmup 3 --export-json "$WORK/lat-$key.json" "$*" >"$WORK/lat-$key.log" 2>&1; then
    R[$key.med]=$(jq '.results[0].median * 1000 | . * 10 | round / 10' "$WORK/lat-$key.json")
    R[$key.p99]=$(jq '.results[0].times | sort | .[((length * 0.99) | ceil) - 1] * 1000 | . * 10 | round / 10' "$WORK/lat-$key.json")
  else
    log "latency $key failed; see below"; tail -5 "$WORK/lat-$key.log" >&2
    R[$key.med]=fail; R[$key.p99]=fail
  fi
}
xfer() { # key up|down command...   -> appends MiB/s to R[key.all] (connection setup included)
  local key=$1 dir=$2 t0 t1 got rc; shift 2
  log "throughput: $key ($BYTES_SPEC, round $ROUND of $XFER_ROUNDS)..."
  t0=$(date +%s%N)
  set +e
  if [ "$dir" = up ]; then
    got=$(head -c "$NBYTES" /dev/zero | "$@" 'wc -c' 2>"$WORK/xfer-$key.err"); rc=$?
  else
    got=$("$@" "head -c $NBYTES /dev/zero" 2>"$WORK/xfer-$key.err" </dev/null | wc -c); rc=$?
  fi
  set -e
  t1=$(date +%s%N)
  got=$(echo "$got" | tr -d ' \n')
  if [ "$rc" = 0 ] && [ "$got" = "$NBYTES" ]; then
    R[$key.all]="${R[$key.all]:-} $(awk -v b="$NBYTES" -v ns=$((t1 - t0)) 'BEGIN{printf "%.1f", b / 1048576 / (ns / 1e9)}')"
  else
    log "$key failed (rc $rc, $got of $NBYTES bytes): $(head -c 300 "$WORK/xfer-$key.err")"
    R[$key.fail]=1
  fi
}
# xfer_summary key: R[key] = median MiB/s of the rounds (or "fail"), R[key.s] = seconds at that rate.
xfer_summary() {
  local key=$1
  if [ -n "${R[$key.fail]:-}" ] || [ -z "${R[$key.all]:-}" ]; then R[$key]=fail; R[$key.s]=-; return; fi
  R[$key]=$(echo "${R[$key.all]}" | tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END{ if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f", (a[NR / 2] + a[NR / 2 + 1]) / 2 }')
  R[$key.s]=$(awk -v b="$NBYTES" -v r="${R[$key]}" 'BEGIN{printf "%.1f", b / 1048576 / r}')
}
concurrency() { # CONC simultaneous `tsh ssh leaf echo x`
  local d=$WORK/conc i pids=()
  mkdir -p "$d"
  log "concurrency: $CONC simultaneous sessions..."
  for i in $(seq 1 "$CONC"); do
    (
      set +e
      s=$(date +%s%N)
      out=$("${TSH_LEAF[@]}" echo x </dev/null 2>"$d/$i.err")
      rc=$?
      e=$(date +%s%N)
      [ "$out" = x ] || [ "$rc" != 0 ] || rc=99
      echo "$rc $(((e - s) / 1000000))" > "$d/$i.res"
    ) &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  R[conc.err]=$(cat "$d"/*.res | awk '$1 != 0' | wc -l)
  R[conc.p50]=$(awk '{print $2}' "$d"/*.res | sort -n | awk '{a[NR]=$1} END{print a[int((NR + 1) / 2)]}')
  R[conc.p99]=$(awk '{print $2}' "$d"/*.res | sort -n | awk '{a[NR]=$1} END{i=int(NR * 0.99 + 0.999); print a[i]}')
  R[conc.max]=$(awk '{print $2}' "$d"/*.res | sort -n | tail -n1)
  if [ "${R[conc.err]}" != 0 ]; then
    R[conc.errsample]=$(cat "$d"/*.err | sort | uniq -c | sort -rn | head -3 | tr '\n' ';' | cut -c1-300)
  fi
}
echo_rtt() { # key pid-to-watch command... : CONC open sessions echoing at once -> R[key.*]
  local key=$1 watch=$2 out=$WORK/echo-$1; shift 2
  log "echo round trips: $CONC open sessions ($key)..."
  "$REL/concurrent-echo" --sessions "$CONC" --rounds 10 --hold-secs 4 -- "$@" >"$out.json" 2>"$out.log" &
  local pid=$!
  for _ in $(seq 1 1800); do grep -q 'sessions opened' "$out.log" && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if [ -n "$watch" ] && grep -q 'sessions opened' "$out.log"; then
    sleep 3   # the rounds take well under a second; read while every session is still open
    R[$key.rss]=$(rss_kb "$watch")
  fi
  if wait "$pid" && [ -s "$out.json" ]; then
    for f in opened errors setup_p50_ms setup_p99_ms rtt_p50_ms rtt_p99_ms rtt_max_ms; do
      R[$key.$f]=$(jq -r ".$f | if type == \"number\" then (. * 10 | round / 10) else . end" "$out.json")
    done
    R[$key.errsample]=$(jq -r '.error_samples | map("\(.[0]) × \(.[1])") | join("; ")' "$out.json" | cut -c1-300)
  else
    log "concurrent-echo ($key) failed; see below"; tail -5 "$out.log" >&2
    R[$key.errors]=fail
  fi
}
tunnels() { # proxy RSS per idle tunnel, from tunnel-scale with BENCH_TUNNEL_LEAVES leaves
  local leaves=${BENCH_TUNNEL_LEAVES:-100}
  log "tunnels: tunnel-scale with $leaves simulated leaves (about two minutes)..."
  if "$REL/tunnel-scale" --bin-dir "$REL" --leaves "$leaves" --no-restart --no-doc \
      --latency-runs 5 --cpu-secs 5 --soak-secs 0 >"$WORK/tunnel-scale.md" 2>"$WORK/tunnel-scale.log"; then
    R[tun.per]=$(sed -n 's/^| proxy memory per idle tunnel[^|]*| *| *\([0-9.]* KiB\).*/\1/p' "$WORK/tunnel-scale.md")
    R[tun.leaves]=$leaves
  else
    log "tunnel-scale failed; see below"; tail -5 "$WORK/tunnel-scale.log" >&2
  fi
}
memory() { # proxy RSS idle vs OPEN open sessions
  local d=$WORK/mem i n pids=()
  mkdir -p "$d"
  sleep 5
  R[mem.idle]=$(rss_kb "$PROXY_PID")
  log "memory: proxy idle ${R[mem.idle]} kB; opening $OPEN sessions..."
  for i in $(seq 1 "$OPEN"); do
    "${TSH_LEAF[@]}" 'echo up; sleep 100' </dev/null >"$d/$i.out" 2>&1 &
    pids+=($!); PIDS+=($!)
  done
  for _ in $(seq 1 600); do
    n=$(cat "$d"/*.out 2>/dev/null | grep -c '^up$' || true)
    [ "$n" -ge "$OPEN" ] && break
    sleep 0.1
  done
  sleep 3
  R[mem.open_n]=$n
  R[mem.open]=$(rss_kb "$PROXY_PID")
  R[mem.per]=$(awk -v a="${R[mem.idle]}" -v b="${R[mem.open]}" -v n="$n" 'BEGIN{ if (n > 0) printf "%.0f", (b - a) / n; else print "-" }')
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  sleep 3
  R[mem.after]=$(rss_kb "$PROXY_PID")
}

# --- run ------------------------------------------------------------------------------------
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
start_sshd
start_lab plain
if [ "$ONLY" = echo ]; then
  # Fan-in only (issue 13): the same concurrent-echo through Portcullis and through ssh -J, in
  # one run, the lab stopped before the OpenSSH half so each side has the machine to itself.
  echo_rtt echo_tsh "$PROXY_PID" "$TSH" ssh --cluster=$LEAF visitor@leaf-node cat
  stop_lab
  echo_rtt echo_sshj "" ssh -F "$WORK/ssh/ssh_config_c25519" -J bastion target cat
  set +u
  ok=$(awk -v a="${R[echo_tsh.rtt_p50_ms]}" -v b="${R[echo_sshj.rtt_p50_ms]}" -v c="${R[echo_tsh.rtt_p99_ms]}" -v d="${R[echo_sshj.rtt_p99_ms]}" \
    'BEGIN{print (a + 0 > 0 && b + 0 > 0 && a + 0 <= b + 0 && c + 0 <= d + 0) ? "met" : "not met"}')
  cat <<TXT

Echo round trips, $CONC sessions open at once, 10 rounds (ms; $(date -u +"%Y-%m-%d %H:%M UTC"), load $LOAD_START -> $(cut -d' ' -f1-3 /proc/loadavg))
| path | p50 | p99 | max | opened | errors |
| --- | ---: | ---: | ---: | ---: | ---: |
| tsh ssh --cluster=leaf ... cat (root proxy + tunnel) | ${R[echo_tsh.rtt_p50_ms]} | ${R[echo_tsh.rtt_p99_ms]} | ${R[echo_tsh.rtt_max_ms]} | ${R[echo_tsh.opened]} | ${R[echo_tsh.errors]} |
| ssh -J bastion target cat (curve25519) | ${R[echo_sshj.rtt_p50_ms]} | ${R[echo_sshj.rtt_p99_ms]} | ${R[echo_sshj.rtt_max_ms]} | ${R[echo_sshj.opened]} | ${R[echo_sshj.errors]} |
Portcullis p50 and p99 no worse than ssh -J: $ok
${R[echo_tsh.errsample]:+tsh errors: ${R[echo_tsh.errsample]}}
${R[echo_sshj.errsample]:+ssh -J errors: ${R[echo_sshj.errsample]}}
TXT
  exit 0
fi
latency tsh_leaf "${TSH_LEAF[*]} true"
[ "$ROOT_NODE_OK" = 1 ] && latency tsh_root "${TSH_ROOT[*]} true"
latency ssh_j "${SSH_J[*]} true"
latency ssh_t "${SSH_T[*]} true"
latency ssh_jc "${SSH_JC[*]} true"
# Rounds interleave the paths, so a burst of other work on the machine hits all of them.
for ROUND in $(seq 1 "$XFER_ROUNDS"); do
  xfer up_tsh up "${TSH_LEAF[@]}"
  xfer up_sshj up "${SSH_J[@]}"
  xfer up_ssh up "${SSH_T[@]}"
  xfer down_tsh down "${TSH_LEAF[@]}"
  xfer down_sshj down "${SSH_J[@]}"
  xfer down_ssh down "${SSH_T[@]}"
  [ "$ROOT_NODE_OK" = 1 ] && { xfer up_tshroot up "${TSH_ROOT[@]}"; xfer down_tshroot down "${TSH_ROOT[@]}"; }
done
for k in up_tsh up_sshj up_ssh down_tsh down_sshj down_ssh up_tshroot down_tshroot; do xfer_summary "$k"; done
memory
concurrency
echo_rtt echo_tsh "$PROXY_PID" "$TSH" ssh --cluster=$LEAF visitor@leaf-node cat
R[echo_tsh.per]=$(awk -v a="${R[mem.idle]}" -v b="${R[echo_tsh.rss]:-}" -v n="${R[echo_tsh.opened]:-0}" 'BEGIN{ if (b != "" && n > 0) printf "%.0f", (b - a) / n; else print "-" }')
stop_lab
# OpenSSH through the same number of open sessions (curve25519 key exchange, to keep 2 × $CONC
# handshakes from taking minutes).
echo_rtt echo_sshj "" ssh -F "$WORK/ssh/ssh_config_c25519" -J bastion target cat
[ -z "${BENCH_NO_TUNNELS:-}" ] && tunnels

if [ -z "${BENCH_NO_TRACE:-}" ]; then
bg_group "$WORK/sink.log" "$REL/otlp-sink"
SINK_PGID=$(cat "$WORK/last.pid")
for _ in $(seq 1 50); do grep -q '^listening on' "$WORK/sink.log" && break; sleep 0.1; done
SINK_ADDR=$(sed -n 's/^listening on //p' "$WORK/sink.log")
[ -n "$SINK_ADDR" ] || die "the OTLP sink did not start; see $WORK/sink.log"
export OTEL_EXPORTER_OTLP_ENDPOINT=http://$SINK_ADDR
start_lab traced
RUNS_SAVED=$RUNS; RUNS=$TRACE_RUNS
latency traced_leaf "${TSH_LEAF[*]} true"
RUNS=$RUNS_SAVED
stop_lab
unset OTEL_EXPORTER_OTLP_ENDPOINT
stop_group "$SINK_PGID"
R[spans]=$(sed -n 's/^received \([0-9]*\) spans.*/\1/p' "$WORK/sink.log")
fi
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

set +u   # absent results (skipped phases) print as empty
# --- report -------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
ms() { echo "${R[$1]:-skipped}"; }
LAT_RATIO=$(ratio "${R[tsh_leaf.med]}" "${R[ssh_j.med]}")
UP_RATIO=$(ratio "${R[up_tsh]}" "${R[up_sshj]}")
DOWN_RATIO=$(ratio "${R[down_tsh]}" "${R[down_sshj]}")
met() { [ "$1" = 1 ] && echo "**met**" || echo "**not met**"; }
lat_ok=$(awk -v r="$LAT_RATIO" 'BEGIN{print (r != "-" && r <= 1.2) ? 1 : 0}')
thr_ok=$(awk -v u="$UP_RATIO" -v d="$DOWN_RATIO" 'BEGIN{print (u != "-" && d != "-" && u >= 1 && d >= 1) ? 1 : 0}')
conc_ok=$([ "${R[conc.err]}" = 0 ] && [ "${R[echo_tsh.errors]}" = 0 ] && echo 1 || echo 0)
TRACE_RATIO=$(ratio "${R[traced_leaf.med]}" "${R[tsh_leaf.med]}")
if [ "$ROOT_NODE_OK" = 1 ]; then
  ROOT_ROW="| \`tsh ssh visitor@root-node true\` (root cluster, via root proxy) | $(ms tsh_root.med) | $(ms tsh_root.p99) | $(ratio "${R[tsh_root.med]}" "${R[ssh_j.med]}") |"
  ROOT_XFER="| \`tsh ssh visitor@root-node\` (root cluster) | $(ms up_tshroot) | $(ms down_tshroot) | $(ratio "${R[up_tshroot]}" "${R[up_sshj]}") / $(ratio "${R[down_tshroot]}" "${R[down_sshj]}") |"
else
  ROOT_ROW="| root-cluster node | skipped: not reachable in this run | | |"; ROOT_XFER=$ROOT_ROW
fi
SSH_VERSION=$(ssh -V 2>&1)
PC_VERSION=$("$TSH" version 2>/dev/null | head -n1)
GIT_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
# Only code counts: the benchmarks write docs/ and README.md themselves.
git diff --quiet HEAD -- . ':!docs' ':!README.md' 2>/dev/null || GIT_REV="$GIT_REV (with uncommitted changes)"
CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
MEM=$(awk '/^MemTotal/{printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)

cat > "$WORK/section.md" <<MD
## OpenSSH comparison (\`scripts/bench-ssh.sh\`)

Recorded $(date -u +"%Y-%m-%d %H:%M UTC") by \`bash scripts/bench-ssh.sh\` (BENCH_BYTES=$BYTES_SPEC,
$RUNS latency runs, $CONC concurrent sessions, $OPEN open sessions, $TRACE_RUNS traced runs).

- Machine: $(nproc) cores ($CPU), $MEM, Linux $(uname -r); load average $LOAD_START at the
  start, $LOAD_END at the end (other work on the machine shows up in these figures).
- Versions: $SSH_VERSION; $PC_VERSION, release build, commit $GIT_REV.
- Portcullis: \`scripts/lab.sh\` on loopback with the release binaries (root auth + proxy; leaf
  auth + proxy + tunnel agent + node) plus one root-cluster node the script adds. \`tsh ssh
  --cluster=$LEAF visitor@leaf-node\` goes tsh → root proxy → reverse tunnel → leaf node.
- OpenSSH: two \`sshd -D\` (bastion, target) on loopback with throwaway ed25519 host and user keys,
  default ciphers (\`UsePAM no\`), logging in as \`$SSH_USER\` (a fresh user, like tsh's \`visitor\`); \`ssh -F cfg -J bastion
  target\` and plain \`ssh -F cfg target\`.
- Latency: \`hyperfine -N --warmup 3 --runs $RUNS '<cmd> true'\`. Throughput: \`head -c $BYTES_SPEC
  /dev/zero | <cmd> 'wc -c'\` (up) and \`<cmd> 'head -c $NBYTES /dev/zero' | wc -c\` (down), wall time
  including connection setup, byte count checked. Concurrency: $CONC \`tsh ssh ... echo x\` started
  at once, each timed with \`date +%s%N\`. Memory: root proxy VmRSS after 5 s idle, then with $OPEN
  \`tsh ssh ... 'echo up; sleep 100'\` open. Tracing: a fresh lab with
  \`OTEL_EXPORTER_OTLP_ENDPOINT\` set for every process and tsh, exporting to \`otlp-sink\` (bench crate).

### Connection latency (ms)

| command | median | p99 | median / \`ssh -J\` |
| --- | ---: | ---: | ---: |
| \`tsh ssh --cluster=leaf visitor@leaf-node true\` (root proxy + tunnel) | $(ms tsh_leaf.med) | $(ms tsh_leaf.p99) | $LAT_RATIO |
$ROOT_ROW
| \`ssh -J bastion target true\` | $(ms ssh_j.med) | $(ms ssh_j.p99) | 1.00 |
| \`ssh -J bastion target true\` with \`KexAlgorithms curve25519-sha256\` | $(ms ssh_jc.med) | $(ms ssh_jc.p99) | $(ratio "${R[ssh_jc.med]}" "${R[ssh_j.med]}") |
| \`ssh target true\` (no jump) | $(ms ssh_t.med) | $(ms ssh_t.p99) | $(ratio "${R[ssh_t.med]}" "${R[ssh_j.med]}") |

### Bulk throughput, $BYTES_SPEC (MiB/s)

| path | upload | download | / \`ssh -J\` (up / down) |
| --- | ---: | ---: | ---: |
| \`tsh ssh --cluster=leaf visitor@leaf-node\` | $(ms up_tsh) | $(ms down_tsh) | $UP_RATIO / $DOWN_RATIO |
$ROOT_XFER
| \`ssh -J bastion target\` | $(ms up_sshj) | $(ms down_sshj) | 1.00 / 1.00 |
| \`ssh target\` (reference ceiling) | $(ms up_ssh) | $(ms down_ssh) | $(ratio "${R[up_ssh]}" "${R[up_sshj]}") / $(ratio "${R[down_ssh]}" "${R[down_sshj]}") |

Median of $XFER_ROUNDS interleaved rounds. Seconds per transfer at the median (up/down): tsh $(ms up_tsh.s)/$(ms down_tsh.s), ssh -J $(ms up_sshj.s)/$(ms down_sshj.s), ssh $(ms up_ssh.s)/$(ms down_ssh.s).
Every round (MiB/s): tsh up${R[up_tsh.all]}, down${R[down_tsh.all]}; ssh -J up${R[up_sshj.all]}, down${R[down_sshj.all]}; ssh up${R[up_ssh.all]}, down${R[down_ssh.all]}${R[up_tshroot.all]:+; tsh root-cluster node up${R[up_tshroot.all]}, down${R[down_tshroot.all]}}.

### Concurrency and memory

| measure | value |
| --- | ---: |
| $CONC \`tsh ssh --cluster=leaf ... echo x\` started at once: whole command p50 / p99 / max (ms) | ${R[conc.p50]} / ${R[conc.p99]} / ${R[conc.max]} |
| errors among them | ${R[conc.err]} |
| $CONC open \`tsh ssh --cluster=leaf ... cat\` sessions (one proxy, one tunnel), all echoing a line at once, 10 rounds: round trip p50 / p99 / max (ms) | ${R[echo_tsh.rtt_p50_ms]} / ${R[echo_tsh.rtt_p99_ms]} / ${R[echo_tsh.rtt_max_ms]} |
| same: sessions opened, errors; opening p50 / p99 (ms) | ${R[echo_tsh.opened]}, ${R[echo_tsh.errors]}; ${R[echo_tsh.setup_p50_ms]} / ${R[echo_tsh.setup_p99_ms]} |
| same through \`ssh -J bastion target cat\` (curve25519): round trip p50 / p99 / max (ms) | ${R[echo_sshj.rtt_p50_ms]} / ${R[echo_sshj.rtt_p99_ms]} / ${R[echo_sshj.rtt_max_ms]} |
| same: sessions opened, errors; opening p50 / p99 (ms) | ${R[echo_sshj.opened]}, ${R[echo_sshj.errors]}; ${R[echo_sshj.setup_p50_ms]} / ${R[echo_sshj.setup_p99_ms]} |
| root proxy VmRSS with the ${R[echo_tsh.opened]} echo sessions open (kB); per open session (kB) | ${R[echo_tsh.rss]}; ${R[echo_tsh.per]} |
| root proxy memory per idle tunnel (tunnel-scale, ${R[tun.leaves]:-?} simulated leaves) | ${R[tun.per]:-skipped} |
| root proxy VmRSS, idle with one leaf tunnel (kB) | ${R[mem.idle]} |
| root proxy VmRSS with ${R[mem.open_n]} open leaf sessions (kB) | ${R[mem.open]} |
| per open session (kB) | ${R[mem.per]} |
| root proxy VmRSS after those sessions closed (kB) | ${R[mem.after]} |

Per idle tunnel: \`tunnel-scale --leaves ${R[tun.leaves]:-N} --no-restart\` ((RSS with N leaves − RSS with 1) / (N − 1)); the
tunnel-scale section has the 500-leaf run.
${R[conc.errsample]:+Most frequent errors (starts): \`${R[conc.errsample]}\`}
${R[echo_tsh.errsample]:+Most frequent errors (tsh echo): \`${R[echo_tsh.errsample]}\`}
${R[echo_sshj.errsample]:+Most frequent errors (ssh -J echo): \`${R[echo_sshj.errsample]}\`}

### Tracing overhead

| \`tsh ssh --cluster=leaf visitor@leaf-node true\` | median (ms) | p99 (ms) |
| --- | ---: | ---: |
| tracing off | $(ms tsh_leaf.med) | $(ms tsh_leaf.p99) |
| every process exporting OTLP ($TRACE_RUNS runs) | $(ms traced_leaf.med) | $(ms traced_leaf.p99) |

On / off: $TRACE_RATIO; the sink received ${R[spans]:-?} spans.

### Targets

- Throughput through root proxy and tunnel ≥ \`ssh -J\` (up $UP_RATIO, down $DOWN_RATIO): $(met "$thr_ok").
- Connection latency ≤ 1.2 × \`ssh -J\` ($LAT_RATIO): $(met "$lat_ok").
- No errors at $CONC concurrent sessions (${R[conc.err]} errors starting, ${R[echo_tsh.errors]} while echoing): $(met "$conc_ok").
MD

echo
cat "$WORK/section.md"
if [ -z "${BENCH_NO_DOC:-}" ]; then
  [ -f "$DOC" ] || printf '# Benchmarks\n\n' > "$DOC"
  if grep -q '<!-- ssh-bench:start -->' "$DOC"; then
    awk -v f="$WORK/section.md" '
      /<!-- ssh-bench:start -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
      /<!-- ssh-bench:end -->/ { skip = 0 }
      !skip { print }' "$DOC" > "$WORK/doc.new"
    cat "$WORK/doc.new" > "$DOC"
  else
    { printf '\n<!-- ssh-bench:start -->\n'; cat "$WORK/section.md"; printf '<!-- ssh-bench:end -->\n'; } >> "$DOC"
  fi
  log "refreshed the ssh-bench section of $DOC"
  README=$REPO/README.md
  if grep -q '<!-- bench-headline:start -->' "$README"; then
    cat > "$WORK/headline.md" <<MD
Recorded $(date -u +"%Y-%m-%d") on $(nproc) cores, commit $GIT_REV (ratios to \`ssh -J\`, higher is better for throughput,
lower for latency):

| | Portcullis | \`ssh -J\` | ratio | target | |
| --- | ---: | ---: | ---: | --- | --- |
| upload 1 GiB (MiB/s) | $(ms up_tsh) | $(ms up_sshj) | $UP_RATIO | ≥ 1 | $(met "$(awk -v u="$UP_RATIO" 'BEGIN{print (u != "-" && u >= 1) ? 1 : 0}')") |
| download 1 GiB (MiB/s) | $(ms down_tsh) | $(ms down_sshj) | $DOWN_RATIO | ≥ 1 | $(met "$(awk -v d="$DOWN_RATIO" 'BEGIN{print (d != "-" && d >= 1) ? 1 : 0}')") |
| connection latency, median (ms) | $(ms tsh_leaf.med) | $(ms ssh_j.med) | $LAT_RATIO | ≤ 1.2 | $(met "$lat_ok") |
| errors among $CONC concurrent sessions (starting / echoing) | ${R[conc.err]} / ${R[echo_tsh.errors]} | | | 0 | $(met "$conc_ok") |
| echo round trip with $CONC sessions open, p50 / p99 (ms) | ${R[echo_tsh.rtt_p50_ms]} / ${R[echo_tsh.rtt_p99_ms]} | ${R[echo_sshj.rtt_p50_ms]} / ${R[echo_sshj.rtt_p99_ms]} | | | |
MD
    awk -v f="$WORK/headline.md" '
      /<!-- bench-headline:start -->/ { print; while ((getline l < f) > 0) print l; skip = 1; next }
      /<!-- bench-headline:end -->/ { skip = 0 }
      !skip { print }' "$README" > "$WORK/readme.new"
    cat "$WORK/readme.new" > "$README"
    log "refreshed the headline ratios in $README"
  fi
fi

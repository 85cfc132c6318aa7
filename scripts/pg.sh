#!/usr/bin/env bash
# Starts or stops a throwaway PostgreSQL server for tests and labs.
#   scripts/pg.sh start DIR [PORT]   initdb into DIR/data (once), start on 127.0.0.1:PORT
#                                    (a free one if not given), user `portcullis` with a
#                                    random password, database `portcullis`; prints the
#                                    connection string and writes it to DIR/conn_string (0600).
#   scripts/pg.sh stop DIR           stop the server started in DIR (DIR is kept).
#   scripts/pg.sh status DIR         exit 0 when it is running.
# initdb and postgres refuse to run as root: as root every server command runs as the
# `postgres` user (Debian's package makes it) through runuser, and DIR is handed to it.
set -euo pipefail

usage() { echo "usage: $0 start DIR [PORT] | stop DIR | status DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
data="$dir/data"

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$bin" ] || [ ! -x "$bin/postgres" ]; then
  echo "pg.sh: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres); run scripts/setup.sh" >&2
  exit 1
fi

as_pg() {
  if [ "$(id -u)" = 0 ]; then
    # From /tmp: the caller's directory may be closed to the postgres user.
    (cd /tmp && runuser -u postgres -- "$@")
  else
    (cd /tmp && "$@")
  fi
}

# A port nothing answers on (a refused connect), picked at random.
free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "pg.sh: no free port found" >&2
  exit 1
}

case "$cmd" in
  start)
    if [ ! -f "$data/PG_VERSION" ]; then
      port=${3:-$(free_port)}
      password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
      if [ "$(id -u)" = 0 ]; then
        chown postgres:postgres "$dir"
        # Every parent of DIR must be searchable by postgres (a mktemp -d parent is 0700).
        runuser -u postgres -- test -x "$dir" \
          || { echo "pg.sh: the postgres user cannot reach $dir (a parent directory is closed to it: chmod o+x the parents, or use a new dir directly under /tmp)" >&2; exit 1; }
      fi
      chmod 700 "$dir"
      umask 077
      printf '%s' "$password" >"$dir/pwfile"
      if [ "$(id -u)" = 0 ]; then chown postgres "$dir/pwfile"; fi
      as_pg "$bin/initdb" -D "$data" -U portcullis --pwfile="$dir/pwfile" -A scram-sha-256 \
        -E UTF8 --locale=C -N >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
      rm -f "$dir/pwfile"
      cat >>"$data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
EOF
      echo "postgresql://portcullis:${password}@127.0.0.1:${port}/portcullis?sslmode=disable" >"$dir/conn_string"
      if [ "$(id -u)" = 0 ]; then chown postgres "$dir/conn_string"; fi
      chmod 600 "$dir/conn_string"
      fresh=1
    else
      port=$(sed -n 's/^port = \([0-9]*\)$/\1/p' "$data/postgresql.conf" | tail -n1)
      fresh=0
    fi
    as_pg "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start >/dev/null \
      || { tail -n 20 "$dir/postgres.log" >&2; exit 1; }
    if [ "$fresh" = 1 ]; then
      # The password travels in the environment, never in argv.
      PGPASSWORD=$(sed -n 's|^postgresql://portcullis:\([^@]*\)@.*|\1|p' "$dir/conn_string") \
        as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U portcullis portcullis
    fi
    cat "$dir/conn_string"
    ;;
  stop)
    [ -f "$data/postmaster.pid" ] || { echo "pg.sh: no server running in $dir" >&2; exit 0; }
    as_pg "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    ;;
  status)
    as_pg "$bin/pg_ctl" -D "$data" status >/dev/null
    ;;
  *) usage ;;
esac

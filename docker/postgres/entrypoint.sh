#!/usr/bin/env bash
# Entrypoint of portcullis-postgres:dev: on first start (no PGDATA/PG_VERSION) runs initdb as
# the postgres user and creates the role and database the auth service uses, with the password
# from a file; then runs the server as postgres, listening on every address, port 5432.
# Environment (all optional):
#   PGDATA                   the data directory (default /var/lib/postgresql/data, a volume)
#   POSTGRES_DB              database to create (default portcullis)
#   POSTGRES_USER            its owner, a login role (default portcullis)
#   POSTGRES_PASSWORD_FILE   the role's password (default /run/secrets/postgres-password).
#                            Made (64 random hex digits, mode 0600) when missing and its
#                            directory is writable (the compose lab's shared volume), read
#                            otherwise (a Kubernetes Secret). Never printed, never in argv.
#   POSTGRES_SOCKET_DIR      where the Unix socket goes (default /var/run/postgresql)
# Clients connect with scram-sha-256 over TCP; the password is applied when the database is
# first made (to change it later: ALTER ROLE inside the container, then update the file).
set -euo pipefail

die() { echo "portcullis-postgres: $*" >&2; exit 1; }
log() { echo "portcullis-postgres: $*" >&2; }

BIN=/usr/local/lib/postgresql-bin
PGDATA=${PGDATA:-/var/lib/postgresql/data}
DB=${POSTGRES_DB:-portcullis}
USER_NAME=${POSTGRES_USER:-portcullis}
PW_FILE=${POSTGRES_PASSWORD_FILE:-/run/secrets/postgres-password}
SOCKET_DIR=${POSTGRES_SOCKET_DIR:-/var/run/postgresql}
# Names go into SQL as identifiers: keep them to what needs no quoting.
[[ $DB =~ ^[a-z_][a-z0-9_]*$ ]] || die "POSTGRES_DB '$DB' must be lower-case letters, digits and _"
[[ $USER_NAME =~ ^[a-z_][a-z0-9_]*$ ]] || die "POSTGRES_USER '$USER_NAME' must be lower-case letters, digits and _"

# Runs a command as the postgres user: setpriv execs directly (no extra process in between,
# so signals from tini reach the server itself). As non-root (a pod that runs as postgres)
# the command runs as is.
as_postgres() {
  if [ "$(id -u)" = 0 ]; then
    setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
  else
    "$@"
  fi
}

if [ ! -s "$PW_FILE" ]; then
  dir=$(dirname "$PW_FILE")
  mkdir -p "$dir" 2>/dev/null || true
  [ -w "$dir" ] || die "password file $PW_FILE is missing and $dir is not writable"
  # Hex: safe inside a connection URL without escaping.
  (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$PW_FILE.tmp" && mv "$PW_FILE.tmp" "$PW_FILE")
  log "made a random password in $PW_FILE"
fi
PASSWORD=$(tr -d '\r\n' <"$PW_FILE")
[ -n "$PASSWORD" ] || die "password file $PW_FILE is empty"

mkdir -p "$SOCKET_DIR" "$PGDATA"
if [ "$(id -u)" = 0 ]; then
  chown postgres:postgres "$SOCKET_DIR" "$PGDATA"
fi
chmod 700 "$PGDATA"

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  log "initializing $PGDATA (database $DB, owner $USER_NAME)"
  # Local connections as the postgres OS user only (peer); everything over TCP needs a password.
  as_postgres "$BIN/initdb" -D "$PGDATA" -U postgres --auth-local=peer --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  cat >>"$PGDATA/postgresql.conf" <<CONF

# portcullis-postgres
listen_addresses = '*'
port = 5432
unix_socket_directories = '$SOCKET_DIR'
password_encryption = scram-sha-256
CONF
  cat >>"$PGDATA/pg_hba.conf" <<CONF
# portcullis-postgres: every network, password (scram-sha-256) only.
host all all 0.0.0.0/0 scram-sha-256
host all all ::/0 scram-sha-256
CONF
  # A private server on the socket alone while the role and database are made.
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -o "-c listen_addresses=''" -w -s start >/dev/null
  # The password goes in on stdin (SQL literal, quotes doubled), never in argv.
  quoted=${PASSWORD//\'/\'\'}
  as_postgres "$BIN/psql" -h "$SOCKET_DIR" -U postgres -d postgres -v ON_ERROR_STOP=1 -q -f - >/dev/null <<SQL
CREATE ROLE $USER_NAME LOGIN PASSWORD '$quoted';
CREATE DATABASE $DB OWNER $USER_NAME;
SQL
  as_postgres "$BIN/pg_ctl" -D "$PGDATA" -m fast -w -s stop
  log "initialized"
fi
unset PASSWORD quoted

if [ $# -gt 0 ]; then exec "$@"; fi
if [ "$(id -u)" = 0 ]; then
  exec setpriv --reuid=postgres --regid=postgres --init-groups -- "$BIN/postgres" -D "$PGDATA"
fi
exec "$BIN/postgres" -D "$PGDATA"

#!/bin/sh
# Entry point of the Debian PostgreSQL image (deploy/docker/Dockerfile.debian): on an empty $PGDATA,
# creates the cluster with superuser $POSTGRES_USER (password $POSTGRES_PASSWORD, required) and
# database $POSTGRES_DB, as the official postgres image does; then runs the server in the
# foreground on $POSTGRES_LISTEN_ADDRESSES (default: all of the container's) and $PGPORT (5432).
set -eu
bin="$(ls -d /usr/lib/postgresql/*/bin | tail -1)"
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-entrypoint: set POSTGRES_PASSWORD" >&2
        exit 1
    fi
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    "$bin/initdb" --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
        --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    "$bin/pg_ctl" --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
    if [ "$database" != "postgres" ]; then
        "$bin/createdb" --username="$user" "$database"
    fi
    "$bin/pg_ctl" --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
fi
exec "$bin/postgres" -D "$PGDATA" -c "listen_addresses=${POSTGRES_LISTEN_ADDRESSES:-*}" \
    -p "${PGPORT:-5432}"

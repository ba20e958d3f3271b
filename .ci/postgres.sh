#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on the loopback address for the store's tests.
# Usage: . .ci/postgres.sh <work dir>   (exports MLIPAL_TEST_POSTGRES; stop with pg_stop)
# Installs Debian's postgresql package if no server binary is present. The
# server runs as an unprivileged user (PostgreSQL refuses to run as root).
# Runs under the caller's shell options (.ci/run: set -euo pipefail).
pg_work="$1"
pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/postgres" ]; then
    echo "installing Debian's postgresql package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    pg_bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
fi
pg_user="$(id -un)"
if [ "$(id -u)" -eq 0 ]; then
    pg_user=mlipal-pg
    id "$pg_user" >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin "$pg_user"
fi
pg_data="$pg_work/pgdata"
mkdir -p "$pg_data"
chown "$pg_user" "$pg_work" "$pg_data"
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u "$pg_user" -- "$@"; else "$@"; fi; }
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
as_pg "$pg_bin/initdb" -D "$pg_data" -A trust -U postgres >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$pg_data" -l "$pg_work/postgres.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $pg_port -k $pg_work -c fsync=off" start >/dev/null
export MLIPAL_TEST_POSTGRES="postgresql://postgres@127.0.0.1:$pg_port/postgres"
pg_stop() { as_pg "$pg_bin/pg_ctl" -D "$pg_data" -m immediate stop >/dev/null || true; }
echo "PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port"

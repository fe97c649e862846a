#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests: `scripts/postgres.sh start DIR PORT` initialises
# a cluster in DIR, starts it on 127.0.0.1:PORT (trust authentication, loopback only) and prints
# its URL; `scripts/postgres.sh stop DIR` stops it. Runs the server as the `postgres` user when
# called as root (PostgreSQL refuses to run as root).
set -euo pipefail
cmd=$1 dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)
[ -n "$bin" ] || bin=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
[ -x "$bin/initdb" ] || { echo "scripts/postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
as_pg() {
    # From / : the postgres user may not enter the caller's working directory.
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
case $cmd in
start)
    port=$3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
    echo "postgres://postgres@127.0.0.1:$port/postgres"
    ;;
stop)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true
    ;;
esac

#!/usr/bin/env bash
# A/B of one query on one database: serves each build in turn (one server at a time), warms it
# for 2 s, then times the query with 16 clients for 10 s, three rounds, so that order and
# warm-up count for both. Each line adds the server process's CPU time per request (and, on a
# local PostgreSQL, the postgres processes'), steadier than req/s on a machine whose other
# tenants take CPU and disk from one run to the next.
#
#   TB_DB=postgres://.../tb1m bash bench/ab.sh "Observation?code=...&_include=Observation:subject" \
#       /path/to/before/trialbridge target/release/trialbridge
#
# Builds whose schemas differ serve a database each: TB_DBS="before.db after.db" (one per build,
# in the builds' order) instead of TB_DB.
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
write_patients "$work/patients.ndjson"
q=$1
shift
ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
pg_ticks() {
    local t=0
    for p in $(pgrep -u postgres postgres || true); do t=$((t + $(ticks "$p"))); done
    echo $t
}
read -r -a dbs <<< "${TB_DBS:-}"
for round in 1 2 3; do
    i=0
    for build in "$@"; do
        db=${dbs[$i]:-$TB_DB}
        i=$((i + 1))
        tb_server=$build start_trialbridge "$db"
        $tb bench --label warm --base http://127.0.0.1:8190/fhir --data "$work/patients.ndjson" \
            --scenario query --path "$q" --concurrency 16 --seconds 2 --requests 1000000 >/dev/null
        s0=$(ticks $tb_pid)
        p0=$(pg_ticks)
        out=$($tb bench --label "$build round $round" --base http://127.0.0.1:8190/fhir --data "$work/patients.ndjson" \
            --scenario query --path "$q" --concurrency 16 --seconds 10 --requests 1000000)
        s1=$(ticks $tb_pid)
        p1=$(pg_ticks)
        echo "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); n=max(r['requests'],1); \
r['server_cpu_ms_per_request']=round(($s1-$s0)*10/n,4); r['postgres_cpu_ms_per_request']=round(($p1-$p0)*10/n,4); print(json.dumps(r))"
        kill $tb_pid
        wait $tb_pid 2>/dev/null || true
    done
done

#!/usr/bin/env bash
# CPU per request of one query, A/B: serves each build in turn on the database TB_DB, runs the
# query with 16 clients for 10 s, three rounds, and prints the server process's CPU time per
# request (and, on a local PostgreSQL, the postgres processes' CPU per request). Less noisy
# than req/s on a machine whose other tenants take CPU and disk from one run to the next.
#
#   TB_DB=postgres://.../tb100k bash bench/cpu_ab.sh "Observation/_history?_count=50" \
#       /path/to/before/trialbridge target/release/trialbridge
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
for round in 1 2 3; do
    for build in "$@"; do
        tb_server=$build start_trialbridge "$TB_DB"
        $tb bench --label warm --base http://127.0.0.1:8190/fhir --data "$work/patients.ndjson" \
            --scenario query --path "$q" --concurrency 16 --seconds 2 --requests 1000000 >/dev/null
        s0=$(ticks $tb_pid)
        p0=$(pg_ticks)
        out=$($tb bench --label "$build round $round" --base http://127.0.0.1:8190/fhir --data "$work/patients.ndjson" \
            --scenario query --path "$q" --concurrency 16 --seconds 10 --requests 1000000)
        s1=$(ticks $tb_pid)
        p1=$(pg_ticks)
        echo "$out" | python3 -c "import json,sys; r=json.load(sys.stdin); n=r['requests']; \
r['server_cpu_ms_per_request']=round(($s1-$s0)*10/n,4); r['postgres_cpu_ms_per_request']=round(($p1-$p0)*10/n,4); print(json.dumps(r))"
        kill $tb_pid
        wait $tb_pid 2>/dev/null || true
    done
done

#!/usr/bin/env bash
# Where the CPU of concurrent PUTs goes on PostgreSQL: 8,000 PUTs with 16 clients against a
# fresh database on the PostgreSQL server at PG_URL (its processes run as user postgres on
# this machine), then the CPU time of the postgres processes and of the trialbridge server
# over the run (clock ticks, 100 per second; the postgres processes alive when it starts).
#
#   PG_URL=postgres://postgres@127.0.0.1:55500 bash bench/put_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
writable_data "$work/obs.ndjson"
psql "$PG_URL/postgres" -qc "drop database if exists tb_put_cpu" -c "create database tb_put_cpu"
start_trialbridge "$PG_URL/tb_put_cpu"
$tb bench --label warm --base http://127.0.0.1:8190/fhir --data "$work/obs.ndjson" --scenario put --concurrency 16 --requests 2000 --seconds 60 --id-prefix w- > /dev/null
cpu() { # total utime+stime ticks of the postgres processes and of the server
  local pg=0; for p in $(pgrep -u postgres postgres); do s=$(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null || echo 0); pg=$((pg+s)); done
  local tbc=$(awk '{print $14+$15}' /proc/$tb_pid/stat); echo "$pg $tbc"
}
read pg0 tb0 < <(cpu)
t0=$(date +%s.%N)
$tb bench --label put16 --base http://127.0.0.1:8190/fhir --data "$work/obs.ndjson" --scenario put --concurrency 16 --requests 8000 --seconds 60 --id-prefix m-
t1=$(date +%s.%N)
read pg1 tb1 < <(cpu)
echo "wall $(echo "$t1 - $t0" | bc) s; postgres cpu $(( (pg1-pg0) )) ticks; trialbridge cpu $(( (tb1-tb0) )) ticks (100/s)"
kill $tb_pid

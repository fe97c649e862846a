#!/usr/bin/env bash
# Runs the foundation benchmark workloads against trialbridge and, when HFS_BIN is set, the
# peer server helios-hfs, one after the other in the same run with the same client
# (`trialbridge bench`) and the same data. Prints one JSON line per step; BENCHMARKS.md shows
# how to turn them into the table.
#
#   cargo build --release
#   HFS_BIN=/path/to/hfs HFS_DATA=/path/to/dir/with/search-parameters-r4.json bash bench/compare.sh
# HFS_BACKEND=postgres runs helios-hfs on PostgreSQL (a build with --features R4,postgres).
# TB_BACKENDS="sqlite postgres" runs trialbridge once per backend (PostgreSQL: a throwaway
# server on loopback, see bench/lib.sh), labelled trialbridge-sqlite / trialbridge-postgres.
# TB_BUILDS="before=/path/to/old/trialbridge after=target/release/trialbridge" serves each of
# those builds in turn (on SQLite, or on TB_BUILDS_BACKEND=postgres), labelled by name, with the
# same client: a before/after.
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
data=$work/observations.ndjson
writable_data "$data"

suite() { # label base pid
    local label=$1 base=$2 pid=$3
    echo "{\"label\":\"$label\",\"rss_MiB_idle\":$(( $(ps -o rss= -p "$pid") / 1024 ))}"
    $tb bench --label "$label" --base "$base" --data "$data" --scenario put --concurrency 1 --requests 2000 --seconds 60
    $tb bench --label "$label" --base "$base" --data "$data" --scenario put --concurrency 16 --requests 5000 --seconds 60 --id-prefix c16-
    $tb bench --label "$label" --base "$base" --data "$data" --scenario post --concurrency 1 --requests 2000 --seconds 60
    $tb bench --label "$label" --base "$base" --data "$data" --scenario post --concurrency 16 --requests 5000 --seconds 60
    echo "{\"label\":\"$label\",\"wrk\":\"$(wrk -t2 -c16 -d20s -s bench/get.lua --latency "$base" | grep '^WRK')\"}"
    $tb bench --label "$label" --base "$base" --data "$data" --scenario txn --concurrency 1 --requests 20 --seconds 60 --txn-size 100
    echo "{\"label\":\"$label\",\"rss_MiB_after\":$(( $(ps -o rss= -p "$pid" || echo 0) / 1024 ))}"
}


[ -n "${TB_BUILDS:-}" ] && [ -z "${TB_BACKENDS:-}" ] && TB_BACKENDS=none
for backend in ${TB_BACKENDS:-sqlite}; do
    [ "$backend" = none ] && continue
    label=trialbridge
    [ -z "${TB_BACKENDS:-}" ] || label=trialbridge-$backend
    tb_database "$backend" "tb_$backend" > "$work/db"
    start_trialbridge "$(cat "$work/db")"
    suite "$label" http://127.0.0.1:8190/fhir $tb_pid
    kill $tb_pid; wait $tb_pid 2>/dev/null || true
done

for build in ${TB_BUILDS:-}; do
    tb_server=${build#*=}
    tb_database "${TB_BUILDS_BACKEND:-sqlite}" "tb_${build%%=*}" > "$work/db"
    start_trialbridge "$(cat "$work/db")"
    suite "trialbridge-${build%%=*}" http://127.0.0.1:8190/fhir $tb_pid
    kill $tb_pid; wait $tb_pid 2>/dev/null || true
    rm -rf "$work/tbdata"
done
unset tb_server

if [ -n "${HFS_BIN:-}" ]; then
    start_hfs
    suite "$hfs_label" http://127.0.0.1:8191 "$hfs_pid"
    kill "$hfs_pid"
fi

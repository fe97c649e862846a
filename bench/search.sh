#!/usr/bin/env bash
# Search benchmark: loads N generated Observations (and their 1,000 Patients) into trialbridge and,
# when HFS_BIN is set, into helios-hfs, through the same HTTP client (100-entry transactions),
# then times the same eight queries on both with 16 clients for 10 s each. One JSON line per step;
# a query a server answers with errors prints its line with the error count and the run goes on.
#
#   cargo build --release
#   N=100000 HFS_BIN=... HFS_DATA=... bash bench/search.sh
# Larger N for trialbridge alone (`N=1000000 bash bench/search.sh`): load 1,000,000 with
# `trialbridge load` first and pass TB_DB=path to reuse that database.
# TB_BACKENDS="sqlite postgres" loads and queries trialbridge once per backend.
# HFS_BACKEND=postgres runs helios-hfs on PostgreSQL (a build with --features R4,postgres).
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
N=${N:-100000}
. bench/lib.sh
scratch_dir
[ -n "${TB_DB:-}" ] && [ -z "${HFS_BIN:-}" ] || python3 bench/gen_observations.py "$N" "$work/obs.ndjson"
write_patients "$work/patients.ndjson"

queries=(
  "Observation?code=http://loinc.org|8867-4"
  "Observation?subject=Patient/p00123&_count=50"
  "Observation?date=ge2021-01-01&date=lt2021-02-01"
  "Observation?code-value-quantity=http://loinc.org|8867-4\$gt50"
  "Observation?code=http://loinc.org|8867-4&_include=Observation:subject"
  "Observation?_sort=-date&_count=50"
  "Patient?_id=p00123&_revinclude=Observation:subject"
  "Observation/_history?_count=50"
)

load_and_query() { # label base
    local label=$1 base=$2 t0 t1
    if [ -z "${TB_DB:-}" ] || [ "${label#trialbridge}" = "$label" ]; then
        t0=$(date +%s.%N)
        $tb bench --label "$label" --base "$base" --data "$work/obs.ndjson" --scenario txn --txn-size 100 --requests $((N / 100)) --seconds 3600 --id-prefix ""
        $tb bench --label "$label" --base "$base" --data "$work/patients.ndjson" --scenario put --concurrency 16 --requests 1000 --seconds 600 --as-type Patient
        t1=$(date +%s.%N)
        echo "{\"label\":\"$label\",\"loaded\":$N,\"load_seconds\":$(echo "$t1 - $t0" | bc)}"
    fi
    for q in "${queries[@]}"; do
        $tb bench --label "$label" --base "$base" --data "$work/patients.ndjson" --scenario query --path "$q" --concurrency "${CONC:-16}" --seconds 10 --requests 1000000 || true
    done
}


for backend in ${TB_BACKENDS:-sqlite}; do
    label=trialbridge
    [ -z "${TB_BACKENDS:-}" ] || label=trialbridge-$backend
    if [ -n "${TB_DB:-}" ]; then db=$TB_DB; else tb_database "$backend" "tb_$backend" > "$work/db"; db=$(cat "$work/db"); fi
    start_trialbridge "$db"
    load_and_query "$label" http://127.0.0.1:8190/fhir
    kill $tb_pid; wait $tb_pid 2>/dev/null || true
done

if [ -n "${HFS_BIN:-}" ]; then
    start_hfs
    load_and_query "$hfs_label" http://127.0.0.1:8191
fi

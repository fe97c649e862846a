#!/usr/bin/env bash
# A/B of one query on one database: serves each build in turn (one server at a time) and times
# the query with 16 clients for 10 s, three rounds, so that order and warm-up count for both.
#
#   TB_DB=postgres://.../tb1m bash bench/ab.sh "Observation?code=...&_include=Observation:subject" \
#       /path/to/before/trialbridge target/release/trialbridge
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
write_patients "$work/patients.ndjson"
q=$1
shift
for round in 1 2 3; do
    for build in "$@"; do
        tb_server=$build start_trialbridge "$TB_DB"
        $tb bench --label "$build round $round" --base http://127.0.0.1:8190/fhir --data "$work/patients.ndjson" \
            --scenario query --path "$q" --concurrency 16 --seconds 10 --requests 1000000
        kill $tb_pid
        wait $tb_pid 2>/dev/null || true
    done
done

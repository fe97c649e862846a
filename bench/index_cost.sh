#!/usr/bin/env bash
# What search indexing costs on writes: the same 5,000 PUTs (16 in flight) of the benchmark
# Observations, once as Observations (about 25 index rows each) and once relabelled as Basic
# (the same bytes; Basic's search parameters find almost nothing to index), each on a fresh
# database. One JSON line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
for as in Observation Basic; do
    TRIALBRIDGE_DATABASE_URL="sqlite://$work/$as.db" TRIALBRIDGE_LOAD_STUDY=false $tb serve --listen 127.0.0.1:8192 >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:8192/fhir/metadata >/dev/null && break; sleep 0.1; done
    $tb bench --label "as $as" --base http://127.0.0.1:8192/fhir --data bench/data/observations-1000.ndjson --scenario put --concurrency 16 --requests 5000 --seconds 60 --as-type "$as"
    kill $pid; wait $pid 2>/dev/null || true
done

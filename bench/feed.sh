#!/usr/bin/env bash
# Catch-up rate of the gRPC change feed: N Observations loaded (one version each), then
# `trialbridge feed` reads the feed from sequence 0 to the end, without and with the resources'
# JSON, and `trialbridge sync` writes all of it into a throwaway PostgreSQL (scripts/postgres.sh).
# Prints one JSON line per run.
#
#   cargo build --release && N=100000 bash bench/feed.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=${TB:-target/release/trialbridge}
N=${N:-100000}
work=$(mktemp -d)
pgdir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; bash scripts/postgres.sh stop "$pgdir" 2>/dev/null; rm -rf "$work" "$pgdir"' EXIT
. bench/lib.sh
python3 bench/gen_observations.py "$N" "$work/obs.ndjson"
$tb load "$work/obs.ndjson" --database-url "sqlite://$work/tb.db" >/dev/null
port_free 18680
TRIALBRIDGE_DATABASE_URL="sqlite://$work/tb.db" TRIALBRIDGE_LISTEN=127.0.0.1:18680 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:18682 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:0 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:0 $tb serve >/dev/null 2>&1 &
wait_up http://127.0.0.1:18680/fhir
TRIALBRIDGE_TOKEN=$($tb token --role warehouse --database-url "sqlite://$work/tb.db")
export TRIALBRIDGE_TOKEN
for mode in changes resources; do
    flag=""; [ "$mode" = resources ] && flag=--resources
    summary=$($tb feed --from http://127.0.0.1:18682 $flag 2>&1 >/dev/null)
    echo "{\"label\":\"gRPC feed catch-up ($mode)\",\"summary\":$summary}"
done
pg=$(bash scripts/postgres.sh start "$pgdir" 55490)
echo "{\"label\":\"warehouse-sync catch-up into PostgreSQL\",\"summary\":$($tb sync --from http://127.0.0.1:18682 --postgres "$pg")}"

#!/usr/bin/env bash
# HL7 v2 in one run: parse time per message of trialbridge's parser beside npm hl7v2 1.8.0 and
# python-hl7 (bench/hl7-peers), then the site gateway's MLLP throughput and ACK latency with
# `trialbridge hl7 send` (16 connections, then 1, as fast as ACKs come back), for a patient who
# is not enrolled (receive, dedup, durable commit, ACK) and for an enrolled one (plus mapping,
# pseudonymisation and the outbox row; the forwarder runs meanwhile), then for the enrolled one
# at fixed offered rates (open loop); last the shape of a hospital deployment: the gateway as a
# process of its own (`trialbridge gateway`) on one core, the trial store in another process on
# the other core, at 2,000 msg/s offered. One JSON line per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
# TB: the trialbridge binary to measure (default: this tree's release build). CLIENT: the binary
# whose `hl7 send` drives it (default: TB; give this tree's to measure an earlier gateway with
# today's client). MLLP_ONLY=1 skips the parser comparison.
N=${N:-20000}
MSG=crates/hl7v2/tests/fixtures/fhir-converter/messages/ORU-R01-01.hl7
tb=${TB:-target/release/trialbridge}
[ -n "${TB:-}" ] || cargo build --release --locked -q -p trialbridge
client=${CLIENT:-$tb}
if [ -z "${MLLP_ONLY:-}" ]; then
    (cd bench/hl7-peers && npm ci --no-audit --no-fund --silent)
    venv=target/bench-venv
    [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import hl7' 2>/dev/null || { python3 -m venv "$venv"; "$venv/bin/pip" install --quiet --disable-pip-version-check hl7==0.4.5; }
    $tb hl7 parse --repeat "$N" "$MSG"
    node bench/hl7-peers/parse.mjs $((N / 10)) "$MSG"
    "$venv/bin/python" bench/hl7-peers/parse.py $((N / 20)) "$MSG"
fi

. bench/lib.sh
scratch_dir
port_free 18480; port_free 18481
TRIALBRIDGE_DATABASE_URL="sqlite://$work/store.db" TRIALBRIDGE_LISTEN=127.0.0.1:18480 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:18482 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:18481 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 \
    $tb serve >/dev/null 2>&1 &
serve_pid=$!
wait_up http://127.0.0.1:18480/fhir
write_oru "$work/oru.hl7"
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --requests 20000 --label "not enrolled, 16 connections"
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 1 --requests 3000 --label "not enrolled, 1 connection"
# The gateway's API takes a site token of its site (the local profile's key beside the database).
site_token=$(TRIALBRIDGE_DATA_DIR=$work $tb token --role site --site mesemcart-site-01 --database-url "sqlite://$work/store.db")
enrol_oru_patient "$site_token"
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --requests 20000 --label "enrolled, 16 connections"
# How long the outbox takes to reach the store after that burst (forwarding runs meanwhile).
start=$(date +%s.%N)
while [ "$(curl -sf http://127.0.0.1:18481/status | python3 -c 'import json,sys; print(json.load(sys.stdin).get("messages_outbox", 0))')" != 0 ]; do sleep 0.2; done
python3 -c "import sys; s=float(sys.argv[1]); import time; print('{\"label\": \"outbox drained after the enrolled burst\", \"seconds_after_burst\": %.1f}' % (time.time()-s))" "$start"
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 1 --requests 3000 --label "enrolled, 1 connection"
# The target's reading: ACK latency at a given offered load (an open loop: each message has its
# scheduled time and its latency counts from there), 16 connections, 2,000 and 1,000 msg/s.
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 2000 --requests 20000 --label "enrolled, 16 connections, offered 2,000/s"
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 1000 --requests 10000 --label "enrolled, 16 connections, offered 1,000/s"

# The deployed shape: the store (its own process and database) on core 1 with the client, the
# gateway alone on core 0, forwarding to the store over HTTP with a site token.
kill "$serve_pid"; wait "$serve_pid" 2>/dev/null || true
mkdir -p "$work/deployed" "$work/gateway"
TRIALBRIDGE_DATA_DIR="$work/deployed" TRIALBRIDGE_DATABASE_URL="sqlite://$work/deployed/store.db" TRIALBRIDGE_LISTEN=127.0.0.1:18480 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:18492 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:18491 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 \
    taskset -c 1 $tb serve >/dev/null 2>&1 &
wait_up http://127.0.0.1:18480/fhir
site_token=$(TRIALBRIDGE_DATA_DIR="$work/deployed" $tb token --role site --site mesemcart-site-01 --database-url "sqlite://$work/deployed/store.db")
TRIALBRIDGE_DATA_DIR="$work/deployed" TRIALBRIDGE_GATEWAY_DATABASE="$work/gateway/site-gateway.db" \
    TRIALBRIDGE_STORE_URL=http://127.0.0.1:18480/fhir TRIALBRIDGE_STORE_TOKEN="$site_token" \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:18482 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:18481 \
    taskset -c 0 $tb gateway >/dev/null 2>&1 &
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18481/status >/dev/null && break; sleep 0.2; done
enrol_oru_patient "$site_token"
taskset -c 1 $client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 2000 --requests 20000 --label "deployed shape: gateway alone on one core, enrolled, 16 connections, offered 2,000/s"

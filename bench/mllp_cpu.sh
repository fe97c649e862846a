#!/usr/bin/env bash
# The gateway's CPU per enrolled message: `trialbridge serve` with the gateway's forwarding
# pointed at a closed port (so the store does no work and the outbox only fills), 20,000
# enrolled ORU^R01 offered at 2,000/s over 16 connections, then the CPU time the server
# process spent over the run (clock ticks, 100 per second) divided by the messages.
#
#   TB=/path/to/trialbridge CLIENT=target/release/trialbridge bash bench/mllp_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=${TB:-target/release/trialbridge}
[ -n "${TB:-}" ] || cargo build --release --locked -q -p trialbridge
client=${CLIENT:-$tb}
. bench/lib.sh
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
port_free 18480; port_free 18481
TRIALBRIDGE_DATA_DIR="$work" TRIALBRIDGE_DATABASE_URL="sqlite://$work/store.db" TRIALBRIDGE_LISTEN=127.0.0.1:18480 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:18482 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:18481 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 \
    TRIALBRIDGE_STORE_URL=http://127.0.0.1:9/fhir $tb serve >/dev/null 2>&1 &
server=$!
wait_up http://127.0.0.1:18480/fhir
printf 'MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|X|P|2.5.1\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\rOBR|1|||SCREEN|||20260302093000+0100\rOBX|1|NM|BMI^Body mass index^L||27.4|kg/m2^^UCUM|18.5-25|H|||F|||20260302093000+0100\rOBX|2|NM|29463-7^Body weight^LN||68|kg^^UCUM|||||F|||20260302093000+0100\r' > "$work/oru.hl7"
site_token=$(TRIALBRIDGE_DATA_DIR=$work $tb token --role site --site mesemcart-site-01 --database-url "sqlite://$work/store.db")
curl -sf -X POST http://127.0.0.1:18481/enrolments -H "Authorization: Bearer $site_token" -H 'content-type: application/json' \
    -d '{"mrn":"4711","authority":"KH-NORD","subjectId":"MC-01-001","gender":"female","birthYear":1988}' >/dev/null
ticks() { awk '{print $14+$15}' "/proc/$server/stat"; }
before=$(ticks)
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 2000 --requests 20000 --label "enrolled, 16 connections, offered 2,000/s, forwarding off"
after=$(ticks)
python3 -c "import sys; t=int(sys.argv[2])-int(sys.argv[1]); print('{\"label\": \"server CPU per enrolled message\", \"cpu_seconds\": %.2f, \"ms_per_message\": %.3f}' % (t/100, t*10/20000))" "$before" "$after"

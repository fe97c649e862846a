#!/usr/bin/env bash
# The gateway's CPU per enrolled message: `trialbridge serve` with the gateway's forwarding
# pointed at a closed port (so the store does no work and the outbox only fills), 20,000
# enrolled ORU^R01 (REQUESTS) offered at 2,000/s over 16 connections, after WARMUP messages
# (default none), then the CPU time the server process spent over the run (clock ticks, 100
# per second) divided by the messages.
#
#   TB=/path/to/trialbridge CLIENT=target/release/trialbridge bash bench/mllp_cpu.sh
#   WARMUP=2000 REQUESTS=30000 TB=... CLIENT=... bash bench/mllp_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=${TB:-target/release/trialbridge}
[ -n "${TB:-}" ] || cargo build --release --locked -q -p trialbridge
client=${CLIENT:-$tb}
. bench/lib.sh
scratch_dir
port_free 18480; port_free 18481
TRIALBRIDGE_DATA_DIR="$work" TRIALBRIDGE_DATABASE_URL="sqlite://$work/store.db" TRIALBRIDGE_LISTEN=127.0.0.1:18480 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:18482 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:18481 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 \
    TRIALBRIDGE_STORE_URL=http://127.0.0.1:9/fhir $tb serve >/dev/null 2>&1 &
server=$!
wait_up http://127.0.0.1:18480/fhir
write_oru "$work/oru.hl7"
site_token=$(TRIALBRIDGE_DATA_DIR=$work $tb token --role site --site mesemcart-site-01 --database-url "sqlite://$work/store.db")
enrol_oru_patient "$site_token"
requests=${REQUESTS:-20000}
if [ "${WARMUP:-0}" -gt 0 ]; then
    $client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 2000 --requests "$WARMUP" --label warm-up >/dev/null
fi
ticks() { awk '{print $14+$15}' "/proc/$server/stat"; }
before=$(ticks)
$client hl7 send --to 127.0.0.1:18482 --file "$work/oru.hl7" --concurrency 16 --rate 2000 --requests "$requests" --label "enrolled, 16 connections, offered 2,000/s, forwarding off"
after=$(ticks)
python3 -c "import sys; t=int(sys.argv[2])-int(sys.argv[1]); print('{\"label\": \"server CPU per enrolled message\", \"cpu_seconds\": %.2f, \"ms_per_message\": %.3f}' % (t/100, t*10/int(sys.argv[3])))" "$before" "$after" "$requests"

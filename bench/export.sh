#!/usr/bin/env bash
# $export throughput and memory: N Observations (bench/gen_observations.py, loaded with
# `trialbridge load`, or an existing database in TB_DB), then `trialbridge export` of
# everything against `trialbridge serve`; prints resources/s and the server's peak RSS. With
# HFS_BIN and HFS_DATA set, the same Observations go into helios-hfs (PUT, 16 in flight) and
# the same client exports from it, in the same run.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
cargo build --release --locked -q -p trialbridge
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
db=${TB_DB:-$work/tb.db}
if [ -z "${TB_DB:-}" ]; then
    python3 bench/gen_observations.py "$N" "$work/obs.ndjson"
    $tb load "$work/obs.ndjson" --database-url "sqlite://$db" >/dev/null
fi
port_free 18580
TRIALBRIDGE_DATABASE_URL="sqlite://$db" TRIALBRIDGE_LISTEN=127.0.0.1:18580 \
    TRIALBRIDGE_MLLP_LISTEN=127.0.0.1:0 TRIALBRIDGE_GATEWAY_LISTEN=127.0.0.1:0 TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 $tb serve >/dev/null 2>&1 &
pid=$!
wait_up http://127.0.0.1:18580/fhir
TRIALBRIDGE_TOKEN=$($tb token --role warehouse --database-url "sqlite://$db")
export TRIALBRIDGE_TOKEN
start=$(date +%s.%N)
$tb export --from http://127.0.0.1:18580/fhir --to "$work/out" >/dev/null
end=$(date +%s.%N)
n=$(cat "$work"/out/*.ndjson | wc -l)
report() { # label start end n pid
python3 - "$1" "$2" "$3" "$4" "$(grep VmHWM /proc/$5/status | awk '{print $2}')" <<'PY'
import json, sys
label, s, e, n, hwm = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(json.dumps({"label": label, "scenario": "$export everything, downloaded", "resources": n, "seconds": round(e - s, 2),
                  "resources_per_s": round(n / (e - s)), "server_peak_rss_MiB": round(hwm / 1024)}))
PY
}
report trialbridge "$start" "$end" "$n" "$pid"
if [ -n "${HFS_BIN:-}" ] && [ -z "${TB_DB:-}" ]; then
    kill $pid; wait $pid 2>/dev/null || true
    start_hfs
    $tb bench --label helios-hfs --base http://127.0.0.1:8191 --data "$work/obs.ndjson" --scenario put \
        --concurrency 16 --requests "$N" --seconds 3600 >/dev/null
    start=$(date +%s.%N)
    $tb export --from http://127.0.0.1:8191 --to "$work/out-hfs" >/dev/null
    end=$(date +%s.%N)
    n=$(cat "$work"/out-hfs/*.ndjson | wc -l)
    report helios-hfs "$start" "$end" "$n" "$hfs_pid"
fi

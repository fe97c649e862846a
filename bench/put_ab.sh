#!/usr/bin/env bash
# A/B of durable PUTs on embedded SQLite: each build in turn (one server at a time) on a fresh
# database, 2,000 warm-up PUTs, then 30,000 PUTs with 16 clients and 6,000 with one (new
# resources), then the 30,000 again with 16 clients and `status` entered-in-error (each an update of a resource
# written by the first), ROUNDS rounds (default 3), so that order and the machine's drift count for both; then
# the server's peak RSS.
#
#   ROUNDS=3 bash bench/put_ab.sh /path/to/before/trialbridge target/release/trialbridge
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
. bench/lib.sh
scratch_dir
writable_data "$work/obs.ndjson"
for round in $(seq "${ROUNDS:-3}"); do
    for build in "$@"; do
        rm -rf "$work/tbdata" "$work"/store.db*
        tb_server=$build start_trialbridge "$work/store.db"
        $tb bench --label warm --base http://127.0.0.1:8190/fhir --data "$work/obs.ndjson" --scenario put \
            --concurrency 16 --requests 2000 --seconds 60 --id-prefix w- >/dev/null
        for c in 16 1; do
            $tb bench --label "put$c $build round $round" --base http://127.0.0.1:8190/fhir --data "$work/obs.ndjson" \
                --scenario put --concurrency $c --requests $((c == 16 ? 30000 : 6000)) --seconds 60 --id-prefix "m$c-"
        done
        $tb bench --label "update16 $build round $round" --base http://127.0.0.1:8190/fhir --data "$work/obs.ndjson" \
            --scenario put --concurrency 16 --requests 30000 --seconds 60 --id-prefix m16- --status entered-in-error
        echo "{\"label\":\"peak RSS $build round $round\",\"vm_hwm_kb\":$(awk '/VmHWM/ {print $2}' /proc/$tb_pid/status)}"
        kill $tb_pid
        wait $tb_pid 2>/dev/null || true
    done
done

#!/usr/bin/env bash
# Bulk load: `trialbridge load` of 1,000 Patients and N generated Observations into a fresh
# database per backend; prints the load's own report (rate per tenth of the input, growth per
# resource) and `trialbridge space` (bytes per table and index). TB_BEFORE=path/to/trialbridge
# loads the same files with that build first, for a before/after in one run.
#
#   cargo build --release
#   N=100000 BACKENDS="sqlite postgres" TB_BEFORE=/tmp/before/trialbridge bash bench/load.sh
#   N=1000000 BACKENDS=sqlite bash bench/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
N=${N:-100000}
. bench/lib.sh
scratch_dir
python3 bench/gen_observations.py "$N" "$work/obs.ndjson"
write_patients "$work/patients.ndjson"
n=0
for build in ${TB_BEFORE:+before} after; do
    bin=$tb
    [ "$build" = before ] && bin=$TB_BEFORE
    for backend in ${BACKENDS:-sqlite}; do
        n=$((n + 1))
        tb_database "$backend" "tb_load_$n" > "$work/db"
        db=$(cat "$work/db")
        case $db in postgres://*) ;; *) db="sqlite://$db" ;; esac
        echo "== $build, $backend"
        $bin load "$work/patients.ndjson" --site mesemcart-site-01 --database-url "$db" >/dev/null
        t0=$(date +%s.%N)
        $bin load "$work/obs.ndjson" --site mesemcart-site-01 --database-url "$db"
        t1=$(date +%s.%N)
        echo "wall clock $(echo "$t1 - $t0" | bc) s for $N Observations"
        $tb space --database-url "$db"
    done
done

# Shared by the benchmark scripts (sourced): starting and stopping the servers under test.
# Expects $tb (the trialbridge binary) and, from `scratch_dir`, $work.

# scratch_dir: a scratch folder in $work, removed at exit together with the servers the script
# started (its jobs) and a throwaway PostgreSQL (`stop_postgres`).
scratch_dir() {
    work=$(mktemp -d)
    trap 'kill $(jobs -p) 2>/dev/null || true; stop_postgres; rm -rf "$work"' EXIT
}

# Refuses to start a server on a port another process already answers on.
port_free() { ! curl -s -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null || { echo "port $1 is in use: stop the server there first" >&2; exit 1; }; }

wait_up() { for _ in $(seq 1 300); do curl -sf "$1/metadata" >/dev/null && return 0; sleep 0.2; done; echo "server at $1 did not start" >&2; exit 1; }

# start_trialbridge DB: serves on 127.0.0.1:8190; DB is an SQLite file or a postgres:// URL
# (see tb_database). Sets tb_pid and exports TRIALBRIDGE_TOKEN (a `system` token of the local
# profile's key in the data directory), which `trialbridge bench`, `trialbridge export` and
# bench/get.lua send; servers without security ignore it.
start_trialbridge() {
    port_free 8190
    local url=$1
    case $url in postgres://*) ;; *) url="sqlite://$1" ;; esac
    mkdir -p "$work/tbdata"
    # $tb_server: the build under test (default $tb; the client is always $tb).
    TRIALBRIDGE_DATA_DIR="$work/tbdata" TRIALBRIDGE_DATABASE_URL="$url" TRIALBRIDGE_LOAD_STUDY=false TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 ${tb_server:-$tb} serve --listen 127.0.0.1:8190 >/dev/null 2>"$work/tb.log" &
    tb_pid=$!
    wait_up http://127.0.0.1:8190/fhir
    TRIALBRIDGE_TOKEN=$(TRIALBRIDGE_DATA_DIR="$work/tbdata" $tb token --role system --database-url "$url")
    export TRIALBRIDGE_TOKEN
}

# write_patients OUT: the 1,000 Patients (p00000..p00999) the generated Observations refer to,
# as NDJSON.
write_patients() {
    python3 - "$1" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(1000):
        g = "female" if i % 2 else "male"
        f.write(json.dumps({"resourceType": "Patient", "id": f"p{i:05d}", "gender": g,
                            "name": [{"family": f"Proband{i:05d}"}], "birthDate": f"{1966 + i % 40}"}) + "\n")
PY
}

# tb_database BACKEND NAME: the database for a trialbridge run: an SQLite file in $work, or,
# for BACKEND postgres, a fresh database NAME on a throwaway PostgreSQL server (started once
# per script on 127.0.0.1:55433, stopped by stop_postgres). Prints it; run it in the script's
# own shell (not in `$(...)`) the first time, so that pg_url and pg_dir stay set.
tb_database() {
    case $1 in
    sqlite) echo "$work/$2.db" ;;
    postgres)
        if [ -z "${pg_url:-}" ]; then
            # Its own folder: the server runs as the postgres user, who may not enter $work.
            pg_dir=$(mktemp -d)
            pg_url=$(bash scripts/postgres.sh start "$pg_dir" 55433)
        fi
        psql -q "$pg_url" -c "CREATE DATABASE $2" >/dev/null
        echo "${pg_url%/*}/$2"
        ;;
    *) echo "unknown backend $1 (sqlite or postgres)" >&2; exit 1 ;;
    esac
}

stop_postgres() { [ -z "${pg_url:-}" ] || { bash scripts/postgres.sh stop "$pg_dir"; rm -rf "$pg_dir"; }; }

# start_hfs: helios-hfs ($HFS_BIN, search parameters from $HFS_DATA) on a fresh database on
# 127.0.0.1:8191; sets hfs_pid and hfs_label. `exec`, so that the job is the server and the
# trap stops it. HFS_BACKEND=postgres: a build with `--features R4,postgres` on a fresh database
# of the throwaway PostgreSQL (see tb_database), labelled helios-hfs-postgres.
start_hfs() {
    port_free 8191
    mkdir -p "$work/hfs/data"
    cp "${HFS_DATA:?HFS_DATA must hold search-parameters-r4.json}/search-parameters-r4.json" "$work/hfs/data/"
    local backend=${HFS_BACKEND:-sqlite} db=./hfs.db
    hfs_label=helios-hfs
    if [ "$backend" = postgres ]; then
        tb_database postgres hfs > "$work/hfsdb"
        db=$(cat "$work/hfsdb")
        hfs_label=helios-hfs-postgres
    fi
    (cd "$work/hfs" && HFS_STORAGE_BACKEND=$backend HFS_LOG_LEVEL=warn HFS_BASE_URL=http://127.0.0.1:8191 exec "$HFS_BIN" --port 8191 --data-dir ./data --database-url "$db" >hfs.log 2>&1) &
    hfs_pid=$!
    wait_up http://127.0.0.1:8191
}

# writable_data OUT: the benchmark Observations as every server must store them: the four
# copies of Observation-clinical-gender, whose performer is an Encounter (invalid in R4, and
# refused by trialbridge), point at Practitioner/example instead.
writable_data() {
    sed 's#"performer":\[{"reference":"Encounter/example"}\]#"performer":[{"reference":"Practitioner/example"}]#' \
        bench/data/observations-1000.ndjson > "$1"
}

# write_oru OUT: the ORU^R01 the MLLP benchmarks send: patient MRN 4711 of authority KH-NORD,
# two results (BMI with a local code, body weight with LOINC).
write_oru() {
    printf 'MSH|^~\\&|LAB|KH-NORD|TB|SPONSOR|20260302100000+0100||ORU^R01^ORU_R01|X|P|2.5.1\rPID|1||4711^^^KH-NORD^MR||Muster^Erika||19880412|F\rOBR|1|||SCREEN|||20260302093000+0100\rOBX|1|NM|BMI^Body mass index^L||27.4|kg/m2^^UCUM|18.5-25|H|||F|||20260302093000+0100\rOBX|2|NM|29463-7^Body weight^LN||68|kg^^UCUM|||||F|||20260302093000+0100\r' > "$1"
}

# enrol_oru_patient TOKEN: enrols that patient as subject MC-01-001 at the gateway whose API is
# on 127.0.0.1:18481 (TOKEN: a site token of mesemcart-site-01).
enrol_oru_patient() {
    curl -sf -X POST http://127.0.0.1:18481/enrolments -H "Authorization: Bearer $1" -H 'content-type: application/json' \
        -d '{"mrn":"4711","authority":"KH-NORD","subjectId":"MC-01-001","gender":"female","birthYear":1988}' >/dev/null
}

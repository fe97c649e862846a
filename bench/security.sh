#!/usr/bin/env bash
# The cost of security: the same workloads against trialbridge builds named in SERVERS
# (`label=binary` pairs; by default the binary built before authentication and the audit trail,
# BEFORE_BIN, against this tree's release binary), every one called with a `site` token: token
# check, scope and role check, site filter and namespace, and an AuditEvent per request. Same
# client (`trialbridge bench`), same data, same run; each server three times (ROUNDS), alternating, and
# the best run of each is reported.
#
#   git worktree add /tmp/before f7d9150 && (cd /tmp/before && cargo build --release)
#   cargo build --release
#   BEFORE_BIN=/tmp/before/target/release/trialbridge bash bench/security.sh
#   SERVERS="without-security=/tmp/before/... before=/tmp/old/... with-security=target/release/trialbridge" bash bench/security.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tb=target/release/trialbridge
servers=${SERVERS:-"without-security=${BEFORE_BIN:?BEFORE_BIN or SERVERS must name the builds} with-security=$tb"}
. bench/lib.sh
scratch_dir
data=$work/observations.ndjson
writable_data "$work/plain.ndjson"
# A site writes in its namespace: the ids it chooses and the subjects it references begin with
# mc-01- (references to definitional types such as Practitioner may name missing ones).
sed -E 's#"id":"perf-#"id":"mc-01-perf-#; s#"reference":"(Patient|Specimen|Encounter|Observation|Device|DiagnosticReport|MedicationStatement|Procedure|Condition|ServiceRequest|QuestionnaireResponse|ImagingStudy|DocumentReference|MolecularSequence|RiskAssessment|FamilyMemberHistory|Media|Immunization|Medication|MedicationRequest|MedicationAdministration|CarePlan|Goal|AllergyIntolerance|ClinicalImpression|Substance|BodyStructure|NutritionOrder|DeviceMetric)/#"reference":"\1/mc-01-#g' \
    "$work/plain.ndjson" > "$data"

# run LABEL BIN ROUND: a fresh database, creates (1 and 16 clients), then reads by id.
run() {
    local label=$1 bin=$2 round=$3 dir=$work/$1-$3 token
    mkdir -p "$dir"
    port_free 8190
    TRIALBRIDGE_DATABASE_URL="sqlite://$dir/tb.db" TRIALBRIDGE_LOAD_STUDY=false TRIALBRIDGE_GRPC_LISTEN=127.0.0.1:0 "$bin" serve --listen 127.0.0.1:8190 \
        --mllp-listen 127.0.0.1:0 --gateway-listen 127.0.0.1:0 >/dev/null 2>"$dir/log" &
    local pid=$!
    wait_up http://127.0.0.1:8190/fhir
    # Both servers get the same request bytes: the one without security ignores the token.
    token=$("$tb" token --role site --site mesemcart-site-01 --database-url "sqlite://$dir/tb.db")
    local b="$tb bench --label $label --base http://127.0.0.1:8190/fhir --data $data"
    TRIALBRIDGE_TOKEN=$token $b --scenario post --concurrency 1 --requests 2000 --seconds 60
    TRIALBRIDGE_TOKEN=$token $b --scenario post --concurrency 16 --requests 5000 --seconds 60
    TRIALBRIDGE_TOKEN=$token $b --scenario put --concurrency 16 --requests 1000 --seconds 60 --id-prefix mc-01-g- >/dev/null
    TRIALBRIDGE_TOKEN=$token $b --scenario get --concurrency 1 --requests 10000 --seconds 60 --id-prefix mc-01-g-
    TRIALBRIDGE_TOKEN=$token $b --scenario get --concurrency 16 --requests 40000 --seconds 60 --id-prefix mc-01-g-
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

for round in $(seq 1 "${ROUNDS:-3}"); do
    for server in $servers; do
        run "${server%%=*}" "${server#*=}" "$round"
    done
done

#!/usr/bin/env bash
# Validation speed beside the peers, in one run: trialbridge's validator (`trialbridge validate
# --repeat`) and npm `fhir` 4.12.0 and `@medplum/core` 4.5.2 (bench/validate-peers), each
# single-threaded over bench/data/observations-1000.ndjson, best of RUNS, definitions loaded
# beforehand. Prints one JSON line per validator; "invalid" must be 4 (the copies of
# Observation-clinical-gender, whose performer is an Encounter). trialbridge's validator
# evaluates the core invariants it does not write out with the FHIRPath engine. Last, the
# engine alone: every core invariant over the same file, and its planned walk with none.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-20}
DATA=bench/data/observations-1000.ndjson
cargo build --release --locked -q -p trialbridge
(cd bench/validate-peers && npm ci --no-audit --no-fund --silent)
./target/release/trialbridge validate --repeat "$RUNS" "$DATA" | tail -1 || true
node bench/validate-peers/validate.cjs "$DATA" "$RUNS"
cargo run --release --locked -q -p trialbridge-fhirpath --example invariant_walk

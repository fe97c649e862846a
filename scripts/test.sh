#!/usr/bin/env bash
# The test command of the README: sets up the third-party tools the integration tests drive
# (fhirpy, python-hl7 with its mllp_send, Helm's template engine, kubernetes-validate and
# schemathesis in a venv under target/; fhir-kit-client from npm), starts a throwaway
# PostgreSQL, then runs every test of the workspace, and the store test suite again on
# PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if ! "$venv/bin/python" -c 'import fhirpy, hl7, helm_python, kubernetes_validate, yaml, schemathesis, fhirclient, openapi_spec_validator' 2>/dev/null || [ ! -x "$venv/bin/mllp_send" ]; then
    echo "scripts/test.sh: installing the Python test clients into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r integration-tests/python/requirements.txt
fi
export TRIALBRIDGE_TEST_PYTHON="$PWD/$venv/bin/python"
export TRIALBRIDGE_TEST_MLLP_SEND="$PWD/$venv/bin/mllp_send"

# fhir-kit-client, playwright-core and axe-core from npm, pinned by
# integration-tests/node/package-lock.json.
if [ ! -d integration-tests/node/node_modules/fhir-kit-client ] || [ ! -d integration-tests/node/node_modules/playwright-core ] || [ ! -d integration-tests/node/node_modules/axe-core ]; then
    echo "scripts/test.sh: installing the Node test clients" >&2
    (cd integration-tests/node && npm ci --no-audit --no-fund --silent)
fi

# A real PostgreSQL for the warehouse tests: the one named by TRIALBRIDGE_TEST_POSTGRES_URL,
# or a throwaway server started here (installed with apt when missing and running as root).
if [ -z "${TRIALBRIDGE_TEST_POSTGRES_URL:-}" ]; then
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "scripts/test.sh: installing PostgreSQL" >&2
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null)
    fi
    pgdir=$(mktemp -d)
    TRIALBRIDGE_TEST_POSTGRES_URL=$(bash scripts/postgres.sh start "$pgdir" 55432)
    export TRIALBRIDGE_TEST_POSTGRES_URL
fi

# Unit and integration tests (no doc-tests: the crates have none). The summary line at the end
# adds up every test binary's result.
log=$(mktemp)
cleanup() {
    rm -f "$log"
    if [ -n "${pgdir:-}" ]; then bash scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"; fi
}
trap cleanup EXIT
status=0
cargo test --workspace --all-targets --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

# The store test suite again on PostgreSQL: every test that starts a store (in-process or as
# the binary) gets a database of its own on the test server instead of an SQLite file.
store_suite=(rest_api search security protocol validation change_feed export crash official_examples openapi third_party_clients archive monitor_workspace)
echo "scripts/test.sh: the store test suite on PostgreSQL (${store_suite[*]})" >&2
TRIALBRIDGE_TEST_STORE_POSTGRES="$TRIALBRIDGE_TEST_POSTGRES_URL" \
    cargo test -p integration-tests --locked $(printf -- '--test %s ' "${store_suite[@]}") 2>&1 | tee -a "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

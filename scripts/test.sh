#!/usr/bin/env bash
# The test command of the README: sets up the third-party clients the integration tests drive
# (fhirpy in a venv under target/), then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/test-venv
if ! "$venv/bin/python" -c 'import fhirpy' 2>/dev/null; then
    echo "scripts/test.sh: installing the Python test clients into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r integration-tests/python/requirements.txt
fi
export TRIALBRIDGE_TEST_PYTHON="$PWD/$venv/bin/python"

cargo test --workspace --locked

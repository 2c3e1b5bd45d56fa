#!/usr/bin/env bash
# The test command: sets itself up (.venv, install) on a fresh machine, then runs pytest.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k phantom
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export MPLBACKEND=Agg
exec python -m pytest "$@"

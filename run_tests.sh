#!/usr/bin/env bash
# The test command: sets itself up (.venv, install) on a fresh machine, checks lint and format
# with ruff (configured in pyproject.toml), then runs pytest.
# Extra arguments go to pytest, e.g. ./run_tests.sh -k phantom
# (pytest alone, without the ruff checks: source .venv/bin/activate && python -m pytest -k phantom)
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export MPLBACKEND=Agg
# Both checks run, so that one failure does not hide the other; either one stops the tests.
lint=0
python -m ruff check . || lint=1
python -m ruff format --check . || lint=1
if [ "$lint" -ne 0 ]; then
  echo "run_tests.sh: ruff found the problems above; fix with: ruff format . && ruff check --fix ." >&2
  exit 1
fi
exec python -m pytest "$@"

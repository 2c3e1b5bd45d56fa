#!/usr/bin/env bash
# The main job: set up (.venv, install), make the data, run notebooks 01-06 headless.
#   ./run_all.sh                     laptop profile on the synthetic phantom
#   ./run_all.sh --profile smoke     seconds, for tests
#   ./run_all.sh --source /path/ACDC/training --profile laptop
#   ./run_all.sh --force             redo stages that are up to date
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec python -m mmldm.pipeline "$@"

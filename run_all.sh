#!/usr/bin/env bash
# The main job: set up (.venv, install), make the data, run notebooks 01-06 headless.
#   ./run_all.sh                     laptop profile on the synthetic phantom
#   ./run_all.sh --profile smoke     seconds, for tests
#   ./run_all.sh --source /path/ACDC/training --profile laptop
#   ./run_all.sh --force             redo stages that are up to date
#   ./run_all.sh --name acdc_testing --source /path/ACDC/testing   name the run folder
#   ./run_all.sh --publish           also copy the run's report into the tracked report/
# Everything a run writes goes to runs/<kind>_<profile>/ (e.g. runs/phantom_laptop/, runs/acdc_laptop/)
# and data/: both git-ignored; the tracked report/ changes only with --publish (--publish-to DIR).
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
exec python -m mmldm.notebook_runner "$@"

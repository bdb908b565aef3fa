#!/usr/bin/env bash
# The README's test command: make a virtual environment, install torch (CPU-capable build), the project with its
# test extras, then run the whole pytest suite. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -c "import torch, torchvision, mvboost_core; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The README's main-job command: make a virtual environment, install torch and the project, then turn the
# example photo into 3D Gaussians (.ply, .splat, turntable) in outputs/example/.
# On first use `mvboost generate` asks before downloading the official weights (Era3D ~ 6 GB, LGM ~ 0.8 GB, the
# pose step's LPIPS VGG16 ~ 0.55 GB); without a terminal it stops with one line naming the commands to run.
# Extra arguments are passed to `mvboost generate` (e.g. --device cuda, --yes to download without asking).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
export MVBOOST_LAUNCHER="bash scripts/main.sh"  # so its messages say how to re-run this script (e.g. with --yes)
exec .venv/bin/mvboost generate workflows/mvboost_example.png -o outputs/example "$@"

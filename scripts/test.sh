#!/usr/bin/env bash
# The README's test command: make a virtual environment, install torch (CPU-capable build), the project with its
# test extras and the real third-party things the tests run against (Debian's chromium for the browser tests),
# then run the whole pytest suite. Exits non-zero on any failure. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)

# --- system pieces (Debian packages): a real browser for the ComfyUI-frontend and web-viewer tests
if ! command -v chromium >/dev/null 2>&1 && [ -z "${MVBOOST_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "scripts/test.sh: the browser tests need Debian's chromium: sudo apt-get install chromium" >&2
    exit 1
  fi
fi

# --- npm: third-party Gaussian-splat readers and web viewers the format tests use (tests/js/package-lock.json)
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  else
    echo "scripts/test.sh: the format tests need Node.js and npm: sudo apt-get install nodejs npm" >&2
    exit 1
  fi
fi
npm ci --prefix tests/js --no-audit --no-fund

# --- Python: torch first (pinned build), then the project with its test extras
[ -x .venv/bin/python ] || "$PY" -m venv .venv
"${PIP[@]}" torch==2.14.1 torchvision==0.29.1
"${PIP[@]}" -e '.[test]'

# --- the real ComfyUI the acceptance tests run (vendored v0.3.64 in ../shared/comfyui, read-only): its requirements
# without torch/torchvision/torchaudio (ours stay pinned via a constraint file), plus `requests`, which its
# app/frontend_management.py imports but requirements.txt omits. The newest frontend on PyPI goes into its own
# folder under .venv (started with --front-end-root by tests/test_comfy_frontend.py).
COMFYUI=${MVBOOST_COMFYUI:-../shared/comfyui}
if [ -f "$COMFYUI/requirements.txt" ]; then
  REQ=$(mktemp) PIN=$(mktemp)
  grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~].*)?$' "$COMFYUI/requirements.txt" > "$REQ"
  printf 'torch==2.14.1\ntorchvision==0.29.1\n' > "$PIN"
  "${PIP[@]}" -c "$PIN" -r "$REQ" requests
  rm -f "$REQ" "$PIN"
fi
# comfy-cli (the Comfy Registry's `comfy node validate`) in its own folder, so its dependencies never touch ours
[ -x .venv/comfy-cli/bin/comfy ] || "${PIP[@]}" --target .venv/comfy-cli comfy-cli
FRONTEND_NEW=1.58.1
[ -f ".venv/frontend-$FRONTEND_NEW/comfyui_frontend_package/static/index.html" ] ||
  "${PIP[@]}" --no-deps --target ".venv/frontend-$FRONTEND_NEW" "comfyui-frontend-package==$FRONTEND_NEW"
.venv/bin/python -c "import torch, torchvision, mvboost_core; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
exec .venv/bin/python -m pytest "$@"

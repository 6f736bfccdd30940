#!/usr/bin/env bash
# Creates the project's virtual environment with everything the suite needs, from nothing.
# Where the invoking Python already has torch (an NPU host: CANN + torch + torch_npu come
# pre-installed), the venv inherits that torch via --system-site-packages and nothing that
# could replace torch is installed. Elsewhere the pinned CPU wheel torch==2.13.0 is installed
# (never an unpinned torch: that pulls a multi-GB CUDA build; never torch_npu: without CANN it
# breaks `import torch`).
set -euo pipefail
PY=${1:-python3}
VENV=${2:-.venv}
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "bootstrap: python '$PY' not found (set PY=/path/to/python3)" >&2; exit 2
fi
if TORCH_DEVICE_BACKEND_AUTOLOAD=0 "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "bootstrap: using the torch that $PY already has ($(TORCH_DEVICE_BACKEND_AUTOLOAD=0 "$PY" -c 'import torch;print(torch.__version__)'))"
  "$PY" -m venv --system-site-packages "$VENV"
  HOST_TORCH=1
else
  "$PY" -m venv "$VENV"
  HOST_TORCH=0
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
if [ "$HOST_TORCH" = 0 ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.lock
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
touch "$VENV/.stamp"
echo "bootstrap: ready in $VENV"

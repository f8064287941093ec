#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent, ~2 minutes the
# first time, a second when nothing changed). torch is installed first, pinned to the CPU
# build 2.13.0, so that no dependency pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${RELAXGNN_EXTRAS:-train,md,dev}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 10), "relaxgnn needs Python >= 3.10"'
    echo "[setup] creating .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
stamp=".venv/.relaxgnn-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $EXTRAS"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "[setup] installing $TORCH_SPEC"
    .venv/bin/pip install -q "$TORCH_SPEC"
fi
echo "[setup] installing relaxgnn[$EXTRAS] (editable)"
.venv/bin/pip install -q -e ".[$EXTRAS]"
echo "$want" > "$stamp"

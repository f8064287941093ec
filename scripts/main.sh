#!/usr/bin/env bash
# Set up .venv (see setup.sh), then run the main job. Until the training engine lands this is
# the equivariance report of every model on a real molecule (`relaxgnn demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/relaxgnn demo "$@"

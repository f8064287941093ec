#!/usr/bin/env bash
# Set up .venv (see setup.sh), then run the main job: a small but real relaxed-vs-plain
# comparison on the charged N-body task. Generates the standard N-body set under
# datasets/nbody on first use (~20 s), trains plain and relaxed SEGNN (the paper's architecture:
# 4 layers, 64 hidden features, lmax 1) for 15 epochs on 1,000 trajectories with 2 seeds per
# arm, tests the projected models on 500 test trajectories, and prints the table and the path
# of the validation-curve plot (runs/main/nbody_segnn_val.png). Extra arguments go to benchmarks/nbody_relaxation.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
.venv/bin/python benchmarks/nbody_relaxation.py --model segnn --seeds 2 --epochs 15 \
    --train-samples 1000 --eval-samples 500 --val-every 1 --out runs/main "$@"

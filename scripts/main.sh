#!/usr/bin/env bash
# Set up .venv (see setup.sh), then run the main job: plain vs scheduled (CR) vs learned (ACE)
# relaxation of SEGNN on the charged N-body task where relaxation is most likely to matter, with
# few training samples. Generates the standard N-body set under datasets/nbody on first use
# (~20 s), trains the three arms (the paper's SEGNN: 4 layers, 64 hidden features, lmax 1) for
# 300 optimizer steps on 300 trajectories with 3 seeds each, two one-thread runs side by side,
# tests the projected models on the 2,000 test trajectories, and prints a table with the paired
# difference of each arm to plain and a verdict (benchmarks/relaxation_study.py --grid main).
# Extra arguments go to benchmarks/relaxation_study.py (e.g. --steps 750).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python benchmarks/relaxation_study.py --grid main --steps 300 --seeds 3 \
    --jobs 2 --threads 1 --out runs/main "$@"

"""Time to generate the standard charged N-body set (EGNN's "nbody_small": 10,000 + 2,000 +
2,000 trajectories of 5 particles, 5,000 steps, a frame every 100) with the vectorised
simulator, against a plain Python loop that integrates one trajectory at a time with numpy.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/nbody_generation.py [--threads 1]
        [--loop-trajectories 20] [--num 14000]

The vectorised arm runs :func:`relaxgnn.data.nbody.generate_charged` end to end (simulation,
float32 conversion and the atomic ``.npz`` writes) into a temporary directory, with
``--threads`` torch intra-op threads (``generate_charged``'s default, 1). The loop arm
follows the reference semantics of the EGNN authors' ``ChargedParticlesSim.sample_trajectory``
(full force matrix, clip, kick, then drift/record/kick) on ``--loop-trajectories`` trajectories
and is extrapolated to the full count. Targets: ≤ 2 minutes and ≥ 30× faster than the loop.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from datetime import date

import numpy as np
import torch
from machine import cpu_name

from relaxgnn.data.nbody import CHARGED_DEFAULTS, charged_initial_conditions, generate_charged


def loop_trajectory(loc0: np.ndarray, vel0: np.ndarray, charges: np.ndarray, n_steps: int,
                    sample_freq: int, dt: float, clip: float) -> tuple[np.ndarray, np.ndarray]:
    """One trajectory, ``(N, 3)`` state, as the reference loop integrates it."""
    x, v = loc0.copy(), vel0.copy()
    qq = np.outer(charges, charges)
    np.fill_diagonal(qq, 0.0)

    def force(x: np.ndarray) -> np.ndarray:
        diff = x[:, None, :] - x[None, :, :]
        r2 = (diff**2).sum(-1)
        np.fill_diagonal(r2, 1.0)
        return np.clip(((qq / r2**1.5)[:, :, None] * diff).sum(1), -clip, clip)

    loc, vel = [], []
    v += dt * force(x)
    for i in range(1, n_steps):
        x += dt * v
        if i % sample_freq == 0:
            loc.append(x.copy())
            vel.append(v.copy())
        v += dt * force(x)
    return np.stack(loc), np.stack(vel)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads while generating")
    parser.add_argument("--loop-trajectories", type=int, default=20)
    parser.add_argument("--num", type=int, default=14_000, help="total trajectories")
    args = parser.parse_args()
    p = dict(CHARGED_DEFAULTS)
    total = args.num
    p["num_train"], p["num_val"], p["num_test"] = (
        total - 2 * (total // 7), total // 7, total // 7)

    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        generate_charged(root, **p, progress=False, threads=args.threads)
        vectorised = time.perf_counter() - start

    n = args.loop_trajectories
    loc0, vel0, charges = (t.numpy() for t in charged_initial_conditions(n, seed=0))
    start = time.perf_counter()
    for b in range(n):
        loop_trajectory(loc0[b], vel0[b], charges[b], p["n_steps"], p["sample_freq"], p["dt"],
                        p["clip"])
    per_trajectory = (time.perf_counter() - start) / n
    loop = per_trajectory * total

    print(f"charged N-body generation — {total} trajectories × {p['n_steps']} steps, "
          f"{p['n_particles']} particles, frame every {p['sample_freq']}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch thread(s) while "
          f"generating, torch {torch.__version__}, numpy {np.__version__}, {date.today()}")
    print(f"vectorised (generate_charged, end to end): {vectorised:8.1f} s (target <= 120 s)")
    print(f"one by one (numpy loop, {n} trajectories):  {per_trajectory * 1e3:8.1f} ms each, "
          f"{loop:8.0f} s extrapolated ({loop / 3600:.2f} h)")
    print(f"speed-up: {loop / vectorised:.0f}× (target >= 30×)")


if __name__ == "__main__":
    main()

"""How a SEGNN training step scales with the number of particles and the batch size: the
paper's N-body SEGNN (4 layers, 32x0e+32x1o) on fully connected charged systems of 5 particles
and on SEGNN's gravity setting (100 bodies, 6-nearest-neighbour graphs), eager and compiled.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_scaling.py

Prints the median step time per batch and per graph; the numbers measured on this project's
machine are in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import torch
from machine import cpu_name
from torch_geometric.data import Batch, Data

from relaxgnn.data import FullyConnected, KNNGraph
from relaxgnn.models import SEGNN

CASES = [  # (label, particles, graphs per batch, graph)
    ("charged, 5 particles", 5, 50, "full"),
    ("charged, 5 particles", 5, 100, "full"),
    ("charged, 5 particles", 5, 200, "full"),
    ("gravity, 100 bodies", 100, 5, "knn6"),
    ("gravity, 100 bodies", 100, 10, "knn6"),
    ("gravity, 100 bodies", 100, 20, "knn6"),
]


def batch_of(particles: int, graphs: int, graph: str) -> Batch:
    gen = torch.Generator().manual_seed(0)
    build = FullyConnected() if graph == "full" else KNNGraph(6)
    data = [build(Data(pos=torch.randn(particles, 3, generator=gen),
                       vel=torch.randn(particles, 3, generator=gen),
                       charges=torch.randint(0, 2, (particles, 1), generator=gen) * 2.0 - 1))
            for _ in range(graphs)]
    return Batch.from_data_list(data)


def step_time(model, batch: Batch, repeats: int) -> float:
    target = torch.randn(batch.num_nodes, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4, fused=True)

    def step() -> None:
        loss = (model(batch) - target).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"SEGNN training-step scaling — {cpu_name()}, {args.threads} threads, torch "
          f"{torch.__version__}, {date.today()}, median of {args.repeats}")
    print(f"{'system':<22}{'graphs':>7}{'nodes':>7}{'edges':>8}{'eager ms':>10}"
          f"{'compiled ms':>13}{'compiled ms/graph':>19}")
    for label, particles, graphs, graph in CASES:
        batch = batch_of(particles, graphs, graph)
        torch.manual_seed(0)
        model = SEGNN({"vel": "1x1o"}, hidden_features=64, lmax=1, num_layers=4,
                      velocity_field="vel", pair_fields=["charges"],
                      position_input="centred")
        eager = step_time(model, batch, args.repeats)
        torch._dynamo.reset()
        compiled = step_time(torch.compile(model, dynamic=False), batch, args.repeats)
        print(f"{label:<22}{graphs:>7}{batch.num_nodes:>7}{batch.num_edges:>8}{eager:>10.1f}"
              f"{compiled:>13.1f}{compiled / graphs:>19.2f}", flush=True)


if __name__ == "__main__":
    main()

"""Graph-level readout."""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor
from torch_geometric.utils import scatter

Pool = Literal["sum", "mean", "max"]


def check_pooling(reduce: str) -> str:
    """``reduce`` if it is one of :data:`Pool`'s readouts, else a ``ValueError``."""
    if reduce not in get_args(Pool):
        raise ValueError(f"pooling must be 'sum', 'mean' or 'max', got {reduce!r}")
    return reduce


def pool(x: Tensor, batch: Tensor | None, reduce: Pool = "sum", num_graphs: int | None = None):
    """Sum, mean or maximum of node rows per graph, ``(num_graphs, D)`` (0 for a graph without
    nodes); one graph if ``batch`` is None."""
    check_pooling(reduce)
    if batch is None:
        batch = x.new_zeros(x.shape[0], dtype=torch.long)
        num_graphs = 1
    size = num_graphs if num_graphs is not None else int(batch.max()) + 1 if batch.numel() else 0
    return scatter(x, batch, dim=0, dim_size=size, reduce=reduce)

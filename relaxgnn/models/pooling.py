"""Graph-level readout."""

from __future__ import annotations

from typing import Literal

from torch import Tensor
from torch_geometric.utils import scatter

Pool = Literal["sum", "mean"]


def pool(x: Tensor, batch: Tensor | None, reduce: Pool = "sum", num_graphs: int | None = None):
    """Sum or mean of node rows per graph, ``(num_graphs, D)``; one graph if ``batch`` is None."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"pooling must be 'sum' or 'mean', got {reduce!r}")
    if batch is None:
        return x.sum(0, keepdim=True) if reduce == "sum" else x.mean(0, keepdim=True)
    size = num_graphs if num_graphs is not None else int(batch.max()) + 1 if batch.numel() else 0
    return scatter(x, batch, dim=0, dim_size=size, reduce=reduce)

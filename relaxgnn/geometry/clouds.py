"""Per-graph centring of positions (a cloud, a molecule), below both ``nn``/``models`` and
``data``."""

from __future__ import annotations

from torch import Tensor
from torch_geometric.utils import scatter


def centre_per_graph(pos: Tensor, batch: Tensor | None) -> Tensor:
    """``pos`` minus the mean position of its own graph (translation invariant, rotation
    equivariant). Not the per-node mean over x, y, z, which is neither."""
    if batch is None:
        return pos - pos.mean(0, keepdim=True)
    # one row per node bounds the number of graphs without reading `batch.max()` (a host sync,
    # and a break in a compiled graph); the rows of no graph are never gathered
    return pos - scatter(pos, batch, dim=0, dim_size=pos.shape[0], reduce="mean")[batch]

"""Graph transforms: set ``edge_index`` (fully connected, k nearest neighbours, radius) on a
``Data``; the neighbour lists themselves are in :mod:`relaxgnn.geometry.neighbours`."""

from __future__ import annotations

import torch
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ..geometry.neighbours import (
    _check_k,
    edge_vectors,
    fully_connected_edges,
    knn_edges,
    radius_edges,
)

__all__ = ["FullyConnected", "KNNGraph", "RadiusGraph", "edge_vectors", "fully_connected_edges",
           "knn_edges", "radius_edges"]


class FullyConnected(BaseTransform):
    """Transform: set ``edge_index`` to all ordered pairs of distinct nodes of each graph."""

    def forward(self, data: Data) -> Data:
        data.edge_index = fully_connected_edges(
            data.num_nodes, getattr(data, "batch", None), device=data.pos.device
        )
        return data


class KNNGraph(BaseTransform):
    """Transform: set ``edge_index`` to the ``k``-nearest-neighbour graph of ``pos`` (edges
    ``j → i`` from the ``k`` nodes ``j`` nearest to each ``i``; batch-aware, exact, no pyg-lib:
    see :func:`knn_edges`)."""

    def __init__(self, k: int) -> None:
        self.k = _check_k(k)

    def forward(self, data: Data) -> Data:
        data.edge_index = knn_edges(data.pos, self.k, getattr(data, "batch", None))
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(k={self.k})"


class RadiusGraph(BaseTransform):
    """Transform: set ``edge_index`` (and ``edge_shift`` when periodic) to the pairs within
    ``cutoff``, using vesin (PyG's own ``RadiusGraph`` needs pyg-lib). Periodic graphs read
    ``data.cell`` (3×3, rows are lattice vectors) and ``data.pbc``."""

    def __init__(self, cutoff: float) -> None:
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.cutoff = cutoff

    def forward(self, data: Data) -> Data:
        pbc = getattr(data, "pbc", False)
        cell = getattr(data, "cell", None)
        edge_index, shift = radius_edges(
            data.pos,
            self.cutoff,
            getattr(data, "batch", None),
            cell=cell,
            pbc=pbc if pbc is not None else False,
        )
        data.edge_index = edge_index
        if cell is not None and bool(torch.as_tensor(pbc).any()):
            data.edge_shift = shift
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(cutoff={self.cutoff})"

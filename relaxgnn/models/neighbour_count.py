r"""The mean number of neighbours :math:`\bar n` that message-passing force fields divide their
aggregated messages by (MACE's and NequIP's ``avg_num_neighbors``), fitted on the training set
when a model is built with ``avg_num_neighbors="fit"``."""

from __future__ import annotations

from collections.abc import Iterable

from torch_geometric.data import Data

from ..geometry.neighbours import radius_edges


def mean_neighbours(dataset: Iterable[Data], cutoff: float) -> float:
    """The mean number of neighbours within ``cutoff`` over the atoms of ``dataset``."""
    atoms = edges = 0
    for item in dataset:
        edge_index, _ = radius_edges(item.pos.double(), cutoff, getattr(item, "batch", None))
        atoms += item.pos.shape[0]
        edges += edge_index.shape[1]
    if atoms == 0:
        raise ValueError("avg_num_neighbors='fit': the data set has no atoms")
    return max(edges / atoms, 1e-3)  # isolated atoms only: no neighbours to average


class FitsNeighbourCount:
    """For a model whose ``layers`` each divide by ``avg_num_neighbors`` and which records its
    constructor arguments (``init_args``): ``unfitted`` names ``avg_num_neighbors`` until
    :meth:`fit_statistics` (called by ``relaxgnn fit`` on the training split) or
    :meth:`set_avg_num_neighbors` resolves it; the value is written into ``init_args``, so the
    model file records it."""

    def _init_neighbour_count(self, avg_num_neighbors: float | str) -> float:
        """Call in ``__init__``; returns the value to build the layers with."""
        self.unfitted = {"avg_num_neighbors"} if avg_num_neighbors == "fit" else set()
        return 1.0 if avg_num_neighbors == "fit" else float(avg_num_neighbors)

    def fit_statistics(self, dataset: Iterable[Data]) -> dict[str, float]:
        """Resolve ``avg_num_neighbors="fit"`` on ``dataset``; returns what was fitted."""
        if "avg_num_neighbors" not in self.unfitted:
            return {}
        value = mean_neighbours(dataset, self.inputs.cutoff)
        self.set_avg_num_neighbors(value)
        return {"avg_num_neighbors": value}

    def set_avg_num_neighbors(self, value: float) -> None:
        r"""Set :math:`\bar n` in every layer (and in the recorded constructor arguments)."""
        if not value > 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {value}")
        for layer in self.layers:
            layer.avg_num_neighbors = float(value)
        self.unfitted = set()
        self.init_args["avg_num_neighbors"] = float(value)

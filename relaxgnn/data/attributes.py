"""The SEGNN attribute transform (the attributes themselves are in
:mod:`relaxgnn.geometry.attributes`)."""

from __future__ import annotations

from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform

from ..geometry.attributes import segnn_attributes, spherical_harmonics

__all__ = ["SEGNNAttributes", "segnn_attributes", "spherical_harmonics"]


class SEGNNAttributes(BaseTransform):
    """Transform: add ``node_attr``, ``edge_attr`` and ``edge_dist`` for SEGNN to a graph that
    already has ``edge_index``. With ``velocity_field`` set (e.g. ``"vel"``), its spherical
    harmonics are added to the node attributes, as in SEGNN's N-body model."""

    def __init__(self, lmax: int = 1, velocity_field: str | None = None) -> None:
        if lmax < 0:
            raise ValueError(f"lmax must be >= 0, got {lmax}")
        self.lmax = lmax
        self.velocity_field = velocity_field

    def forward(self, data: Data) -> Data:
        if getattr(data, "edge_index", None) is None:
            raise ValueError("SEGNNAttributes needs edge_index: apply a graph transform first")
        vel = getattr(data, self.velocity_field) if self.velocity_field else None
        data.node_attr, data.edge_attr, data.edge_dist = segnn_attributes(
            data.pos, data.edge_index, self.lmax, vel, getattr(data, "edge_shift", None)
        )
        return data

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(lmax={self.lmax}, velocity_field={self.velocity_field!r})"
        )

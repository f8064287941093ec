"""Data sets and graph transforms (independent of ``nn``, ``models`` and ``train``)."""

from .attributes import SEGNNAttributes, segnn_attributes, spherical_harmonics
from .graphs import (
    FullyConnected,
    RadiusGraph,
    edge_vectors,
    fully_connected_edges,
    radius_edges,
)

__all__ = [
    "FullyConnected",
    "RadiusGraph",
    "SEGNNAttributes",
    "edge_vectors",
    "fully_connected_edges",
    "radius_edges",
    "segnn_attributes",
    "spherical_harmonics",
]

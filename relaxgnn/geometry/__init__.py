"""Graph geometry below both ``nn`` and ``data``: neighbour lists (fully connected, exact kNN,
vesin radius graphs), edge vectors, per-graph centring and SEGNN's steerable attributes."""

from .attributes import segnn_attributes, spherical_harmonics
from .clouds import centre_per_graph
from .neighbours import edge_vectors, fully_connected_edges, knn_edges, radius_edges

__all__ = ["centre_per_graph", "edge_vectors", "fully_connected_edges", "knn_edges", "radius_edges",
           "segnn_attributes", "spherical_harmonics"]

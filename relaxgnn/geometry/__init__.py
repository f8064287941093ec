"""Graph geometry below both ``nn`` and ``data``: neighbour lists (fully connected, exact kNN,
vesin radius graphs), edge vectors and SEGNN's steerable attributes."""

from .attributes import segnn_attributes, spherical_harmonics
from .neighbours import edge_vectors, fully_connected_edges, knn_edges, radius_edges

__all__ = ["edge_vectors", "fully_connected_edges", "knn_edges", "radius_edges",
           "segnn_attributes", "spherical_harmonics"]

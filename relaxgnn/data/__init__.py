"""Data sets and graph transforms (independent of ``nn``, ``models`` and ``train``)."""

from .ase_dataset import ASEDataset
from .attributes import SEGNNAttributes, segnn_attributes, spherical_harmonics
from .graphs import (
    FullyConnected,
    KNNGraph,
    RadiusGraph,
    edge_vectors,
    fully_connected_edges,
    knn_edges,
    radius_edges,
)
from .md17 import MD17
from .md_generate import GeneratedMD, generate_md
from .modelnet import ModelNet, OFFFormatError, read_off, sample_surface
from .nbody import (
    ChargedParams,
    GravityNBody,
    GravityParams,
    NBody,
    generate_charged,
    generate_gravity,
    simulate_charged,
    simulate_gravity,
)
from .point_clouds import Normalize, PointFeatures, RandomRotation, normalize_points
from .qm9 import QM9
from .shapes import SHAPES, SyntheticShapes
from .splits import load_splits, save_splits, split_indices

__all__ = [
    "GeneratedMD",
    "MD17",
    "QM9",
    "ASEDataset",
    "ChargedParams",
    "FullyConnected",
    "GravityNBody",
    "GravityParams",
    "KNNGraph",
    "NBody",
    "RadiusGraph",
    "SEGNNAttributes",
    "edge_vectors",
    "fully_connected_edges",
    "generate_charged",
    "generate_md",
    "generate_gravity",
    "knn_edges",
    "load_splits",
    "radius_edges",
    "save_splits",
    "segnn_attributes",
    "simulate_charged",
    "simulate_gravity",
    "spherical_harmonics",
    "split_indices",
    "ModelNet",
    "Normalize",
    "OFFFormatError",
    "PointFeatures",
    "RandomRotation",
    "SHAPES",
    "SyntheticShapes",
    "normalize_points",
    "read_off",
    "sample_surface",
]

"""PyG message-passing layers (E(3)-equivariant) and their building blocks."""

from .egnn_conv import EGNNConv
from .mace_conv import ManyBodyConv
from .mlp import MLP
from .o3_blocks import O3TensorProduct, O3TensorProductGate, balanced_irreps
from .radial import BesselBasis, PolynomialCutoff
from .segnn_conv import SEGNNConv
from .symmetric_contraction import SymmetricContraction, symmetric_couplings
from .tp_conv import TensorProductConv
from .vector_neurons import (
    VNBatchNorm,
    VNLeakyReLU,
    VNLinear,
    VNLinearLeakyReLU,
    VNStdFeature,
    vn_leaky_relu,
)
from .vn_edge_conv import VNEdgeConv

__all__ = [
    "MLP",
    "ManyBodyConv",
    "BesselBasis",
    "EGNNConv",
    "O3TensorProduct",
    "O3TensorProductGate",
    "PolynomialCutoff",
    "SEGNNConv",
    "SymmetricContraction",
    "TensorProductConv",
    "VNBatchNorm",
    "VNEdgeConv",
    "VNLeakyReLU",
    "VNLinear",
    "VNLinearLeakyReLU",
    "VNStdFeature",
    "vn_leaky_relu",
    "balanced_irreps",
    "symmetric_couplings",
]

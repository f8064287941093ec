"""Whole networks built from the layers of :mod:`relaxgnn.nn`."""

from .egnn import EGNN
from .inputs import GraphInputs
from .io import build_model, load_model, model_spec, save_model
from .pooling import pool
from .segnn import SEGNN
from .tpnet import TPNet, hidden_irreps

__all__ = [
    "EGNN",
    "SEGNN",
    "GraphInputs",
    "TPNet",
    "build_model",
    "hidden_irreps",
    "load_model",
    "model_spec",
    "pool",
    "save_model",
]

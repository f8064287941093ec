"""Whole networks built from the layers of :mod:`relaxgnn.nn`."""

from .egnn import EGNN
from .inputs import GraphInputs
from .pooling import pool
from .segnn import SEGNN
from .tpnet import TPNet, hidden_irreps

__all__ = ["EGNN", "SEGNN", "GraphInputs", "TPNet", "hidden_irreps", "pool"]

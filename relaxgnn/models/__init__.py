"""Whole networks built from the layers of :mod:`relaxgnn.nn`."""

from .egnn import EGNN
from .energy import EnergyForceModel, fit_reference_energies
from .forces import energy_and_forces
from .inputs import GraphInputs
from .io import build_model, load_model, model_spec, register_model, save_model
from .mace import MACENet
from .pooling import pool
from .segnn import SEGNN
from .tpnet import TPNet, hidden_irreps
from .vndgcnn import VNDGCNN

# the classes model files and checkpoints may name (nothing else is ever built from a file)
for _cls in (EGNN, SEGNN, TPNet, MACENet, VNDGCNN, EnergyForceModel):
    register_model(_cls, f"relaxgnn.models.{_cls.__name__}")

__all__ = [
    "EGNN",
    "EnergyForceModel",
    "energy_and_forces",
    "fit_reference_energies",
    "SEGNN",
    "GraphInputs",
    "MACENet",
    "TPNet",
    "VNDGCNN",
    "build_model",
    "hidden_irreps",
    "load_model",
    "model_spec",
    "pool",
    "register_model",
    "save_model",
]

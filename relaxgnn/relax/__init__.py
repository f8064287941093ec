"""Constraint relaxation: paths, θ schedules, Lie-derivative penalties and projection."""

from .controller import Relaxation, find_paths, path_penalties, project
from .lie import lie_derivative, translation_derivative
from .path import RelaxationPath, RelaxConfig, build_paths
from .schedules import SCHEDULES, Constant, CosineDecay, LinearDecay, Schedule, Step, Triangle

__all__ = [
    "SCHEDULES",
    "Constant",
    "CosineDecay",
    "LinearDecay",
    "RelaxConfig",
    "Relaxation",
    "RelaxationPath",
    "Schedule",
    "Step",
    "Triangle",
    "build_paths",
    "find_paths",
    "lie_derivative",
    "path_penalties",
    "project",
    "translation_derivative",
]

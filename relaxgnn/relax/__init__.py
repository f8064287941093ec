"""Constraint relaxation: paths attached to any module, θ schedules, Lie-derivative penalties,
the controller that owns θ, and projection."""

from .attach import RelaxationPaths, attach, find_paths, project
from .controller import Relaxation
from .lie import lie_derivative, translation_derivative
from .path import RelaxationPath, RelaxationWarning, RelaxConfig
from .penalties import linear_penalties, path_penalties
from .schedules import SCHEDULES, Constant, CosineDecay, LinearDecay, Schedule, Step, Triangle

__all__ = [
    "SCHEDULES",
    "Constant",
    "CosineDecay",
    "LinearDecay",
    "RelaxConfig",
    "Relaxation",
    "RelaxationPath",
    "RelaxationPaths",
    "RelaxationWarning",
    "Schedule",
    "Step",
    "Triangle",
    "attach",
    "find_paths",
    "lie_derivative",
    "linear_penalties",
    "path_penalties",
    "project",
    "translation_derivative",
]

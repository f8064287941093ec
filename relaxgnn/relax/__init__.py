"""Constraint relaxation: paths attached to any module, θ schedules, Lie-derivative penalties,
the controller that owns θ, and projection."""

from .attach import RelaxationPaths, RelaxationState, attach, find_paths, plain_state, project
from .controller import Relaxation, RelaxationController
from .learned import LearnedRelaxation, RelaxationGammas
from .lie import lie_derivative, translation_derivative
from .path import RelaxationPath, RelaxationWarning, RelaxConfig
from .penalties import linear_penalties, path_penalties
from .schedules import SCHEDULES, Constant, CosineDecay, LinearDecay, Schedule, Step, Triangle

__all__ = [
    "SCHEDULES",
    "Constant",
    "CosineDecay",
    "LearnedRelaxation",
    "LinearDecay",
    "RelaxConfig",
    "Relaxation",
    "RelaxationPath",
    "RelaxationController",
    "RelaxationGammas",
    "RelaxationPaths",
    "RelaxationState",
    "RelaxationWarning",
    "Schedule",
    "Step",
    "Triangle",
    "attach",
    "find_paths",
    "lie_derivative",
    "linear_penalties",
    "path_penalties",
    "plain_state",
    "project",
    "translation_derivative",
]

"""Training on PyTorch Lightning: the only place relaxgnn imports Lightning."""

from .callbacks import EMA, EquivarianceMonitor, ExportModel, StageTwo, ValidateLastEpoch
from .checkpoint_io import AtomicCheckpointIO
from .datamodule import EpochSampler, GraphDataModule
from .module import RelaxGNNModule
from .plots import PlotMetrics, plot_run
from .predictions import WritePredictions
from .relaxation import Relax

__all__ = [
    "EMA",
    "StageTwo",
    "AtomicCheckpointIO",
    "EpochSampler",
    "EquivarianceMonitor",
    "ExportModel",
    "GraphDataModule",
    "PlotMetrics",
    "Relax",
    "RelaxGNNModule",
    "ValidateLastEpoch",
    "WritePredictions",
    "plot_run",
]

"""Callbacks that put relaxation into a Lightning run.

- :class:`Relax` builds the :class:`~relaxgnn.relax.Relaxation` controller, sets θ from the
  schedule before every optimizer step (or epoch), lets the module add the penalty, and logs θ.
- :class:`ExportModel` projects the model at the end of ``fit``, measures its equivariance
  error, logs it, and saves the projected (exactly equivariant) model next to the checkpoints.
- :class:`EquivarianceMonitor` logs the relaxed model's equivariance error and the per-block
  path norms and Lie derivatives every ``every_n_steps`` steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..models.io import save_model
from ..relax import SCHEDULES, Relaxation, find_paths, project
from ..symmetry import equivariance_error

ScheduleName = Literal["Constant", "LinearDecay", "CosineDecay", "Triangle", "Step"]


class Relax(Callback):
    """Schedule θ and add the relaxation penalty.

    Args:
        schedule: ``Constant``, ``LinearDecay``, ``CosineDecay``, ``Triangle`` or ``Step``.
        theta: θ0 (θmax for ``Triangle``).
        interval: ``"step"`` (θ per optimizer step; length = the run's optimizer steps) or
            ``"epoch"`` (θ per epoch; length = ``max_epochs``). The schedule reaches 0 at the
            last step or epoch of the run.
        milestones, gamma: for ``Step``, as fractions of the run (e.g. ``[0.5, 0.75]``).
        lie_weight, norm_weight, reflection_weight: penalty weights λ.
        total_steps: the schedule's length (in steps or epochs, as ``interval``); by default
            the length of the run when it starts. A resumed run keeps the length it started
            with — extending a finished run trains on at θ = 0 — unless ``total_steps`` is
            given, which changes it (and says so).
    """

    def __init__(
        self,
        schedule: ScheduleName = "Triangle",
        theta: float = 1.0,
        interval: Literal["step", "epoch"] = "step",
        milestones: list[float] | None = None,
        gamma: float = 0.1,
        lie_weight: float = 0.01,
        norm_weight: float = 0.01,
        reflection_weight: float = 0.0,
        total_steps: int | None = None,
    ) -> None:
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.schedule_name, self.theta = schedule, theta
        self.interval, self.milestones, self.gamma = interval, milestones or [0.5, 0.75], gamma
        self.weights = dict(lie_weight=lie_weight, norm_weight=norm_weight,
                            reflection_weight=reflection_weight)
        self.total_steps = total_steps
        self.controller: Relaxation | None = None
        self._length = 0

    def _schedule(self, total: int):
        cls = SCHEDULES[self.schedule_name]
        if self.schedule_name == "Step":
            return cls(self.theta, total, [max(1, round(m * total)) for m in self.milestones],
                       self.gamma)
        return cls(self.theta, total)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.interval == "epoch":
            total = trainer.max_epochs
            if total is None or total < 1:
                raise ValueError("Relax(interval='epoch') needs trainer.max_epochs")
        else:
            total = int(trainer.estimated_stepping_batches)
        self._build(pl_module, self.total_steps or total)

    def _build(self, pl_module: LightningModule, length: int) -> None:
        self._module = pl_module
        schedule = self._schedule(length)
        self._length = length
        self.controller = Relaxation(pl_module.model, schedule, interval=self.interval,
                                     **self.weights)
        pl_module.relaxation = self.controller
        rank_zero_info(f"relaxation: {schedule!r} over {length} {self.interval}s, "
                       f"{len(self.controller.paths)} paths")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the schedule keeps the length the run started with (see the class
        docstring), and θ continues from the saved step."""
        if self.controller is None or not state:
            return
        saved = state.get("total_steps")
        if saved is not None and saved != self._length:
            if self.total_steps is None:
                rank_zero_info(f"relaxation: the resumed run keeps its schedule of {saved} "
                               f"{self.interval}s (this run is {self._length}); θ is 0 after it. "
                               "Give Relax(total_steps=...) to change the length")
                self._build(self._module, saved)
            else:
                rank_zero_warn(f"relaxation: schedule length changed on resume from {saved} to "
                               f"{self._length} {self.interval}s (Relax(total_steps=...))")
                return
        self.controller.load_state_dict(state)

    def _index(self, trainer: Trainer) -> int:
        return trainer.global_step if self.interval == "step" else trainer.current_epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.controller is not None:
            theta = self.controller.step(self._index(trainer))
            pl_module.log("theta", theta, prog_bar=True, batch_size=1)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.controller is not None:
            self.controller.close()  # θ = 0: what follows (test, predict) is the projection
            pl_module.relaxation = None

    def state_dict(self) -> dict[str, Any]:
        if self.controller is None:
            return {}
        return {**self.controller.state_dict(), "total_steps": self._length}


class ExportModel(Callback):
    """At the end of ``fit``: project the model (remove every relaxation path), measure its
    equivariance error on a validation batch, log it, and save ``model.pt`` (a file for
    :func:`relaxgnn.models.load_model` and the ASE calculator) beside the checkpoints, with a
    ``summary.json``. The module itself keeps its (θ = 0) paths, so ``test`` after ``fit``
    computes exactly what the projected model computes."""

    def __init__(self, filename: str = "model.pt") -> None:
        self.filename = filename
        self.path: Path | None = None

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective call under DDP: every rank makes it
        if not trainer.is_global_zero or log_dir is None:
            return
        was_relaxed = bool(find_paths(pl_module.model))
        model = project(pl_module.model).eval()
        errors = {}
        batch = _first_batch(trainer)
        if batch is not None and hasattr(model, "signature"):
            batch = pl_module.on_after_batch_transfer(batch.to(pl_module.device), 0)
            errors = equivariance_error(model, batch, trials=3)
        out_dir = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback
                       else log_dir)
        self.path = save_model(model, out_dir / self.filename,
                               equivariance_error=errors, relaxed_during_training=was_relaxed)
        summary = {"model": str(self.path), "relaxed_during_training": was_relaxed,
                   "projected_equivariance_error": errors,
                   "global_step": trainer.global_step, "epochs": trainer.current_epoch}
        (Path(log_dir) / "summary.json").write_text(json.dumps(summary, indent=2))
        for logger in trainer.loggers:
            logger.log_metrics({f"projected/equivariance_{k}": v for k, v in errors.items()},
                               step=trainer.global_step)
            logger.save()
        rank_zero_info(f"projected model saved to {self.path}; equivariance error "
                       + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))


def _first_batch(trainer: Trainer):
    loaders = trainer.val_dataloaders or trainer.train_dataloader
    loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
    try:
        return next(iter(loader))
    except (StopIteration, TypeError):
        return None


class EquivarianceMonitor(Callback):
    """At the first training step, every ``every_n_steps`` steps and at the last step, log the
    model's equivariance error on the current batch at the current θ
    (``equivariance/<check>``) and, when relaxed, θ and every block's path norm and Lie
    derivative (``relax/<block>/…``); so even a short run has a curve, not a point."""

    def __init__(self, every_n_steps: int = 50, trials: int = 1) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.trials = every_n_steps, trials

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step, last = trainer.global_step, int(trainer.estimated_stepping_batches)
        if step % self.every_n_steps != 0 and step not in (1, last):
            return
        metrics: dict[str, float] = {}
        controller = getattr(pl_module, "relaxation", None)
        if controller is not None:
            metrics.update({f"relax/{k}": v for k, v in controller.metrics().items()
                            if k != "theta"})
        with torch.no_grad():
            errors = equivariance_error(pl_module.model, batch, trials=self.trials,
                                        seed=trainer.global_step)
        metrics.update({f"equivariance/{k}": v for k, v in errors.items()})
        for name, value in metrics.items():
            pl_module.log(name, value, batch_size=1)


class ValidateLastEpoch(Callback):
    """Validate after the last epoch even when ``check_val_every_n_epoch`` does not divide
    ``max_epochs``: a short run then still has its final validation metrics and a best
    checkpoint."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.max_epochs is not None and trainer.current_epoch == trainer.max_epochs - 1:
            trainer.check_val_every_n_epoch = 1


class EMA(Callback):
    r"""Exponential moving average of the weights,
    :math:`\bar w \leftarrow d\,\bar w + (1 - d)\,w` after every optimizer step; validation, test
    and the end of ``fit`` use :math:`\bar w`.

    It averages *parameters by name* only. Lightning's ``EMAWeightAveraging`` pairs parameters
    and buffers of a deep copy by position, which fails for e3nn modules: a deep-copied e3nn
    tensor product gains constant buffers its original does not have. Buffers here (θ, Wigner
    coefficients, masks) are not learned, so there is nothing to average in them.
    """

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] = {}

    def _params(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        for name, p in self._params(pl_module).items():
            if name not in self.shadow:
                self.shadow[name] = p.detach().clone()
            else:
                self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @torch.no_grad()
    def _swap(self, pl_module: LightningModule) -> None:
        for name, p in self._params(pl_module).items():
            if name in self.shadow:
                tmp = p.detach().clone()
                p.copy_(self.shadow[name])
                self.shadow[name] = tmp

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.shadow and not trainer.sanity_checking:
            self._swap(pl_module)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.shadow and not trainer.sanity_checking:
            self._swap(pl_module)

    @torch.no_grad()
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for name, p in self._params(pl_module).items():
            if name in self.shadow:
                p.copy_(self.shadow[name])

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

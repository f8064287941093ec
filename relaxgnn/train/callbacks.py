"""Callbacks of a relaxgnn run (the relaxation controller's is :mod:`relaxgnn.train.relaxation`).

- :class:`ExportModel` projects the model at the end of ``fit``, measures its equivariance
  error, logs it, and saves the projected (exactly equivariant) model next to the checkpoints.
- :class:`EquivarianceMonitor` logs the relaxed model's equivariance error and the per-block
  path norms and Lie derivatives every ``every_n_steps`` steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from ..models.io import save_model
from ..relax import LearnedRelaxation, find_paths, project
from ..symmetry import equivariance_error


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
            batch = pl_module.in_model_dtype(batch.to(pl_module.device))
            errors = equivariance_error(model, batch, trials=3)
        out_dir = Path(trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback
                       else log_dir)
        self.path = save_model(model, out_dir / self.filename,
                               equivariance_error=errors, relaxed_during_training=was_relaxed)
        summary = {"model": str(self.path), "relaxed_during_training": was_relaxed,
                   "projected_equivariance_error": errors,
                   "global_step": trainer.global_step, "epochs": trainer.current_epoch}
        controller = getattr(pl_module, "relaxation", None)
        if isinstance(controller, LearnedRelaxation):
            summary["last_gammas"] = controller.values()  # γ, λ (and u) per group at the end
        elif controller is not None:
            summary["last_thetas"] = controller.thetas
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
    (``equivariance/<check>``; in evaluation mode, so that dropout and batch statistics play
    no part and the model's running statistics are left alone) and, when relaxed, θ and every
    block's path norm and Lie derivative (``relax/<block>/…``); so even a short run has a
    curve, not a point."""

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
        model = pl_module.model
        was_training = model.training
        model.eval()  # no dropout, and batch norm neither uses nor updates batch statistics
        try:
            with torch.no_grad():
                errors = equivariance_error(model, pl_module.in_model_dtype(batch),
                                            trials=self.trials, seed=trainer.global_step)
        finally:
            model.train(was_training)
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
    :math:`\bar w \leftarrow d_t\,\bar w + (1 - d_t)\,w` after every optimizer step;
    validation, test and the end of ``fit`` use :math:`\bar w`. With ``warmup`` (the default,
    as ``torch_ema`` and MACE) the decay grows with the number of updates :math:`t`,
    :math:`d_t = \min(d, (1 + t)/(10 + t))`, so that the average does not hold on to the
    untrained initial weights for its first :math:`\sim 1/(1-d)` steps (with :math:`d = 0.99`
    a constant decay keeps 37 % of the initial weights after 100 steps).

    It averages *parameters by name* only. Lightning's ``EMAWeightAveraging`` pairs parameters
    and buffers of a deep copy by position, which fails for e3nn modules: a deep-copied e3nn
    tensor product gains constant buffers its original does not have. Buffers here (θ, Wigner
    coefficients, masks) are not learned, so there is nothing to average in them.
    """

    def __init__(self, decay: float = 0.999, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {}
        self._backup: dict[str, torch.Tensor] = {}

    def _params(self, pl_module: LightningModule) -> dict[str, torch.Tensor]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def current_decay(self) -> float:
        """:math:`d_t` for the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        decay = self.current_decay()
        for name, p in self._params(pl_module).items():
            if name not in self.shadow:
                self.shadow[name] = p.detach().clone()
            else:
                self.shadow[name].lerp_(p.detach(), 1.0 - decay)
        self.updates += 1

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
        return {"decay": self.decay, "shadow": self.shadow, "updates": self.updates,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}
        self.updates = state.get("updates", 0)  # checkpoints written before the warm-up
        self.warmup = state.get("warmup", False)


class StageTwo(Callback):
    r"""MACE's second training stage: from epoch ``start`` on, the training loss weights become
    ``(energy_weight, force_weight)`` (MACE: 1000 and 100, with ``energy_loss="per_atom"``)
    and the learning rate of every parameter group ``lr`` (MACE's ``swa_lr``, 1e-3), so that
    the last epochs refine the energies. Validation and test keep the module's own weights, so
    ``val/loss`` stays comparable across the switch (checkpoints and plateau schedulers).

    Args:
        start: the first epoch of stage two (0-based); a float in (0, 1) is a fraction of
            ``max_epochs`` (rounded down); ``None`` is MACE's default
            ``max(1, max_epochs // 4 * 3)`` (epoch 6 of 10, 15 of 20).
        energy_weight, force_weight: the training loss weights of stage two.
        lr: the learning rate set at the switch (``None``: unchanged).

    The switch is made once, at the start of epoch ``start`` (a run resumed after it restores
    the optimizer's rates from the checkpoint and only sets the weights again).
    """

    def __init__(self, start: float | None = None, energy_weight: float = 1000.0,
                 force_weight: float = 100.0, lr: float | None = 1e-3) -> None:
        fraction = isinstance(start, float) and not start.is_integer()
        if start is not None and (start <= 0 or fraction and start >= 1):
            raise ValueError(f"start must be an epoch >= 1 or a fraction in (0, 1), got {start}")
        if lr is not None and lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.start = start
        self.weights = (float(energy_weight), float(force_weight))
        self.lr = lr

    def first_epoch(self, trainer: Trainer) -> int:
        if self.start is not None and self.start >= 1:
            return int(self.start)
        if trainer.max_epochs is None or trainer.max_epochs < 0:
            raise ValueError("StageTwo without an integer start needs trainer.max_epochs")
        if self.start is None:
            return max(1, trainer.max_epochs // 4 * 3)
        return max(1, int(self.start * trainer.max_epochs))

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        first = self.first_epoch(trainer)
        if trainer.current_epoch < first:
            return
        pl_module.loss_weights = self.weights
        if trainer.current_epoch == first and self.lr is not None:
            for optimizer in trainer.optimizers:
                for group in optimizer.param_groups:
                    group["lr"] = self.lr
            rank_zero_info(f"stage two from epoch {first}: loss weights (energy, forces) "
                           f"{self.weights}, learning rate {self.lr}")

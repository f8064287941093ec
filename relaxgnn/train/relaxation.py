"""The relaxation controller of a Lightning run: :class:`Relax` builds it at the start of
``fit``, sets θ before every optimizer step, lets the module add the penalty, steps the dual
variables of a learned controller after every optimizer step, logs everything, saves it in the
checkpoint and restores it on resume.

Controllers (``controller=``):

- ``"scheduled"``: θ on a schedule (the relaxation paper, :class:`~relaxgnn.relax.Relaxation`);
- ``"learned"``: a learned γ per path group with the constraint γ = 0 (ACE,
  :class:`~relaxgnn.relax.LearnedRelaxation`);
- ``"resilient"``: the same with the relaxed constraint |γ| ≤ u.
"""

from __future__ import annotations

from typing import Any, Literal

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..relax import SCHEDULES, LearnedRelaxation, Relaxation

ScheduleName = Literal["Constant", "LinearDecay", "CosineDecay", "Triangle", "Step"]
ControllerName = Literal["scheduled", "learned", "resilient"]


class Relax(Callback):
    """Relax the run's model (module docstring).

    Args:
        schedule: scheduled controller: ``Constant``, ``LinearDecay``, ``CosineDecay``,
            ``Triangle`` or ``Step``.
        theta: θ0 (θmax for ``Triangle``).
        interval: ``"step"`` (θ per optimizer step; length = the run's optimizer steps) or
            ``"epoch"`` (θ per epoch; length = ``max_epochs``).
        active_fraction: the schedule runs over this fraction of the run and θ is 0 after it,
            so the equivariant model trains alone for the rest (1: the paper's, θ reaches 0 at
            the last step).
        milestones, gamma: for ``Step``, as fractions of the schedule (e.g. ``[0.5, 0.75]``).
        lie_weight, norm_weight, reflection_weight: path penalty weights λ (default 0.01,
            0.01, 0 for the scheduled controller, the paper's; 0 for the learned ones, ACE's).
        penalty_reduction: ``"global"``: one root over all paths (the relaxation paper's
            :math:`\\lambda(\\sqrt{\\sum\\lVert Lg\\rVert^2} + \\sqrt{\\sum\\lVert g\\rVert^2})`, as
            its code computes it); ``"per_path"``: a root per path, summed (see
            :mod:`relaxgnn.relax.controller`).
        relative_penalty: multiply the path penalties by the (detached) task loss, so that λ
            is relative to the task's scale (a force-weighted loss of 1000 no longer makes
            λ = 0.01 meaningless).
        total_steps: the schedule's length (in steps or epochs, as ``interval``); by default
            ``active_fraction`` of the run when it starts. A resumed run keeps the length it
            started with — extending a finished run trains on at θ = 0 — unless
            ``total_steps`` is given, which changes it (and says so).
        dual_lr, dual_optimizer, rho, groups, init_gamma, gamma_lr, auglag: learned controllers
            only, see :class:`~relaxgnn.relax.LearnedRelaxation` (ACE's N-body: dual_lr 8e-4,
            Adam, auglag 0; ``gamma_lr`` puts γ and u in a parameter group of their own).
    """

    def __init__(
        self,
        schedule: ScheduleName = "Triangle",
        theta: float = 1.0,
        interval: Literal["step", "epoch"] = "step",
        active_fraction: float = 1.0,
        milestones: list[float] | None = None,
        gamma: float = 0.1,
        lie_weight: float | None = None,
        norm_weight: float | None = None,
        reflection_weight: float = 0.0,
        penalty_reduction: Literal["global", "per_path"] = "global",
        relative_penalty: bool = False,
        total_steps: int | None = None,
        controller: ControllerName = "scheduled",
        dual_lr: float = 8e-4,
        dual_optimizer: Literal["adam", "sgd"] = "adam",
        rho: float = 1.0,
        groups: dict[str, str] | None = None,
        init_gamma: float = 1.0,
        gamma_lr: float | None = None,
        auglag: float = 0.0,
    ) -> None:
        if controller not in ("scheduled", "learned", "resilient"):
            raise ValueError(f"controller must be 'scheduled', 'learned' or 'resilient', got "
                             f"{controller!r}")
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0.0 < active_fraction <= 1.0:
            raise ValueError(f"active_fraction must be in (0, 1], got {active_fraction}")
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose from {sorted(SCHEDULES)}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.kind = controller
        self.schedule_name, self.theta = schedule, theta
        self.interval, self.milestones, self.gamma = interval, milestones or [0.5, 0.75], gamma
        self.active_fraction = active_fraction
        default = 0.01 if controller == "scheduled" else 0.0
        self.weights = dict(lie_weight=default if lie_weight is None else lie_weight,
                            norm_weight=default if norm_weight is None else norm_weight,
                            reflection_weight=reflection_weight,
                            penalty_reduction=penalty_reduction)
        self.relative_penalty = relative_penalty
        self.total_steps = total_steps
        self.learned = dict(dual_lr=dual_lr, dual_optimizer=dual_optimizer,
                            resilient=controller == "resilient", rho=rho, groups=groups,
                            init_gamma=init_gamma, gamma_lr=gamma_lr, auglag=auglag)
        self.controller: Relaxation | LearnedRelaxation | None = None
        self._length = 0

    def _schedule(self, total: int):
        cls = SCHEDULES[self.schedule_name]
        if self.schedule_name == "Step":
            return cls(self.theta, total, [max(1, round(m * total)) for m in self.milestones],
                       self.gamma)
        return cls(self.theta, total)

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Build the controller (before the optimizer is made: a learned controller adds its
        γ to the model's parameters)."""
        if stage != "fit":
            return
        if self.interval == "epoch":
            total = trainer.max_epochs
            if total is None or total < 1:
                raise ValueError("Relax(interval='epoch') needs trainer.max_epochs")
        else:
            total = int(trainer.estimated_stepping_batches)
        self._build(pl_module, self.total_steps or max(1, round(self.active_fraction * total)))

    def _build(self, pl_module: LightningModule, length: int) -> None:
        self._module = pl_module
        self._length = length
        if self.kind == "scheduled":
            schedule = self._schedule(length)
            self.controller = Relaxation(pl_module.model, schedule, interval=self.interval,
                                         **self.weights)
            what = f"{schedule!r} over {length} {self.interval}s"
        else:
            self.controller = LearnedRelaxation(pl_module.model, **self.learned, **self.weights)
            what = (f"{self.kind} γ ({len(self.controller.groups)} groups, dual lr "
                    f"{self.learned['dual_lr']:g})")
        self.controller.relative = self.relative_penalty
        pl_module.relaxation = self.controller
        rank_zero_info(f"relaxation: {what}, {len(self.controller.paths)} paths")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: θ (or γ, λ, u) continue from the saved step; a schedule keeps the length the
        run started with (see the class docstring)."""
        if self.controller is None or self._module.relaxation is not self.controller or not state:
            return  # nothing to restore: testing a checkpoint after fit (the controller closed)
        saved = state.get("total_steps")
        if self.kind == "scheduled" and saved is not None and saved != self._length:
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

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A learned controller's λ follows the model to its device (built in :meth:`setup`,
        before the trainer moved the model)."""
        if isinstance(self.controller, LearnedRelaxation):
            self.controller.to(pl_module.device)

    def _index(self, trainer: Trainer) -> int:
        return trainer.global_step if self.interval == "step" else trainer.current_epoch

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.controller is None:
            return
        theta = self.controller.step(self._index(trainer))
        pl_module.log("theta", theta, prog_bar=True, batch_size=1)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if isinstance(self.controller, LearnedRelaxation):
            self.controller.dual_step()  # after the optimizer's step
            for group, values in self.controller.values().items():
                for key, value in values.items():
                    pl_module.log(f"relax/{key}/{group}", value, batch_size=1)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.controller is not None:
            self.controller.close()  # θ = 0: what follows (test, predict) is the projection
            pl_module.relaxation = None

    def state_dict(self) -> dict[str, Any]:
        if self.controller is None:
            return {}
        return {**self.controller.state_dict(), "controller": self.kind,
                "total_steps": self._length}

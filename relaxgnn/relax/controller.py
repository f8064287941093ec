r"""The controller of a relaxed model, the one owner of θ: it finds the model's paths, sets θ
from a schedule, records the inputs the paths see, sums their penalties, reports per-block
numbers, and projects the model back to an exactly equivariant one.

Penalty on the inputs :math:`X_b` each block's path :math:`g_b` saw inside
:meth:`Relaxation.record` (terms in :mod:`relaxgnn.relax.penalties`). By default
(``penalty_reduction="global"``) one root over every path, node and generator, the relaxation
paper's :math:`\lambda(\sqrt{\sum\lVert Lg\rVert^2} + \sqrt{\sum\lVert g\rVert^2})` as its code
computes it:

.. math::
    P = \lambda_L \sqrt{\textstyle\sum_b \sum_{x \in X_b} \sum_k \lVert L_k g_b(x)\rVert^2}
      + \lambda_N \sqrt{\textstyle\sum_b \sum_{x \in X_b} \lVert g_b(x)\rVert^2}
      + \lambda_R \sqrt{\textstyle\sum_b \sum_{x \in X_b} \lVert g_b(Px) - P g_b(x)\rVert^2};

with ``penalty_reduction="per_path"`` a root per path, summed:
:math:`P = \sum_b \lambda_L\, \text{lie}_b + \lambda_N\, \text{norm}_b + \lambda_R\,
\text{reflection}_b` (larger, up to :math:`\sqrt{B}` times for :math:`B` equal paths).
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..symmetry.group import random_reflection
from .attach import find_paths, project
from .lie import linear_weight
from .path import RelaxationPath
from .penalties import linear_penalties, path_penalties, root_of
from .schedules import Schedule

PENALTY_REDUCTIONS = ("global", "per_path")


class RelaxationController:
    """What every controller of a relaxed model does: own θ (the paths read it; nothing else
    sets it), record the inputs the paths see, sum their penalties, report per-block numbers,
    pause for evaluation and project. Subclasses say where θ comes from: a schedule
    (:class:`Relaxation`, the relaxation paper's) or learned scalars under a constraint
    (:class:`~relaxgnn.relax.LearnedRelaxation`, ACE's).

    Creating a controller makes it the driver of the model's paths (a previous controller of
    the same paths stops driving them).
    """

    def __init__(self, model: nn.Module, lie_weight: float, norm_weight: float,
                 reflection_weight: float,
                 penalty_reduction: Literal["global", "per_path"] = "global") -> None:
        self.model = model
        self.paths = find_paths(model)
        if not self.paths:
            raise ValueError(
                f"{type(model).__name__} has no relaxation paths: build it with relax='linear' "
                "(or 'mlp', or a placement), or give it paths with relaxgnn.relax.attach")
        for name, weight in (("lie_weight", lie_weight), ("norm_weight", norm_weight),
                             ("reflection_weight", reflection_weight)):
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {weight}")
        self.lie_weight, self.norm_weight = float(lie_weight), float(norm_weight)
        self.reflection_weight = float(reflection_weight)
        if penalty_reduction not in PENALTY_REDUCTIONS:
            raise ValueError(f"penalty_reduction must be one of {PENALTY_REDUCTIONS}, got "
                             f"{penalty_reduction!r}")
        self.penalty_reduction = penalty_reduction
        self.relative = False  # scale the path penalties by the task loss (see penalty)
        self._recording: dict[str, list[Tensor]] | None = None
        self._recorded: dict[str, list[Tensor]] | None = None
        self._paused = False
        self._names = {id(path): name for name, path in self.paths.items()}
        for path in self.paths.values():
            path._controller = weakref.ref(self)
        self.step_index = 0

    def _check_driving(self) -> None:
        if any(path.controller is not self for path in self.paths.values()):
            raise RuntimeError("this controller no longer drives the model's paths: another "
                               "controller took them over, or it was closed")

    # ------------------------------------------------------------------ θ
    def _thetas_at(self, index: int) -> dict[str, float | Tensor]:  # pragma: no cover
        raise NotImplementedError

    def step(self, index: int) -> float:
        """Set every path's θ for step ``index``; returns the largest θ."""
        self._check_driving()
        self.step_index = int(index)
        self._paused = False
        for name, theta in self._thetas_at(self.step_index).items():
            self.paths[name]._set_theta(theta)
        return self.theta

    @property
    def theta(self) -> float:
        """The largest θ over the paths (the θ of the model when one schedule drives all)."""
        return max(path.theta for path in self.paths.values())

    @property
    def thetas(self) -> dict[str, float]:
        return {name: path.theta for name, path in self.paths.items()}

    def pause(self) -> None:
        """θ = 0 on every path until :meth:`resume` (or the next :meth:`step`): the model then
        computes its projection (validation and test run like this)."""
        self._check_driving()
        self._paused = True
        for path in self.paths.values():
            path._set_theta(0.0)

    def resume(self) -> None:
        """Undo :meth:`pause`: θ from the schedule at the current step again."""
        if self._paused:
            self.step(self.step_index)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """``with relax.paused(): ...`` runs the projected model (θ = 0) inside."""
        was_paused = self._paused
        self.pause()
        try:
            yield
        finally:
            if not was_paused:
                self.resume()

    def close(self) -> None:
        """Stop driving the model: θ = 0 everywhere and the paths forget this controller (a
        relaxed model without a controller computes its projection)."""
        for path in self.paths.values():
            if path.controller is self:
                path._set_theta(0.0)
                path._controller = None
        self._recording = self._recorded = None

    # ------------------------------------------------------------------ inputs and penalties
    @contextmanager
    def record(self) -> Iterator[RelaxationController]:
        """Record the inputs every active path sees in the forward passes inside the block (all
        of them, if there are several); :meth:`penalty` and :meth:`metrics` then use exactly
        these. Forward passes outside a recording (evaluation, monitoring) are not recorded."""
        self._check_driving()
        self._recording = {}
        try:
            yield self
        finally:
            self._recorded, self._recording = self._recording, None

    def _record(self, path: RelaxationPath, x: Tensor) -> None:
        name = self._names.get(id(path))  # None for a copy of one of our paths (deepcopy)
        if self._recording is not None and name is not None:
            self._recording.setdefault(name, []).append(x.detach())

    def inputs(self) -> dict[str, Tensor]:
        """The inputs each active path saw in the current (or else the last) recording, by path
        name: ``(rows, irreps_in.dim)``, detached, concatenated over the recorded passes."""
        recorded = self._recording if self._recording is not None else self._recorded
        active = [name for name, path in self.paths.items() if path.active]
        if recorded is None:
            if active:
                raise RuntimeError(
                    "Relaxation: no recorded forward pass. Run the model inside "
                    "`with relax.record(): ...` before asking for the penalty or the metrics")
            return {}
        return {name: torch.cat(recorded[name]) if len(recorded[name]) > 1
                else recorded[name][0] for name in active if recorded.get(name)}

    def _batched_terms(self, root: bool = True) -> list[tuple[list[str], dict[str, Tensor]]]:
        """The penalty terms of the active paths on the recorded inputs, in groups: linear
        paths of one shape are one batched call (each term ``(P,)``), other paths one group
        each (scalar terms); groups in the model's order of their first path. With
        ``root=False`` the sums of squares under the terms' roots."""
        reflection = None
        if self.reflection_weight > 0:  # drawn from the step, so resumed runs repeat it
            reflection = random_reflection(self.step_index, dtype=torch.float64)
        inputs = self.inputs()
        groups: dict[Any, list[str]] = {}  # linear paths of one shape: one batched call
        for name, x in inputs.items():
            path = self.paths[name]
            key: Any = name
            if linear_weight(path.g) is not None:
                key = (str(path.irreps_in), str(path.irreps_out), path.position_columns,
                       x.numel(), x.dtype, x.device)
            groups.setdefault(key, []).append(name)
        out = []
        for key, names in groups.items():
            first = self.paths[names[0]]
            if isinstance(key, str):
                out.append((names, path_penalties(first, inputs[key], reflection, root)))
                continue
            W = torch.stack([linear_weight(self.paths[n].g) for n in names])
            X = torch.stack([inputs[n].reshape(-1, W.shape[-1]) for n in names])
            out.append((names, linear_penalties(W, X, first.irreps_in, first.irreps_out,
                                                first.position_columns, reflection, root)))
        return out

    def _terms(self) -> dict[str, dict[str, Tensor]]:
        """The penalty terms per active path, in the model's order."""
        terms: dict[str, dict[str, Tensor]] = {}
        for names, batch in self._batched_terms():
            for i, name in enumerate(names):
                terms[name] = {term: value if value.dim() == 0 else value[i]
                               for term, value in batch.items()}
        return {name: terms[name] for name in self.paths if name in terms}

    def penalty(self, task_loss: Tensor | None = None) -> Tensor:
        """The weighted penalty (module docstring) on the recorded inputs; 0 when θ = 0
        everywhere (nothing is relaxed, nothing to penalise). With :attr:`relative` set it is
        multiplied by the detached ``task_loss``, so that the weights λ are relative to the
        task's scale."""
        total = self._path_penalty()
        if self.relative and task_loss is not None:
            total = total * task_loss.detach()
        return total

    def _path_penalty(self) -> Tensor:
        """λ_lie·lie + λ_norm·norm (+ λ_refl·reflection) with one root over all paths or a root
        per path (module docstring), summed per group (no per-path indexing: a few operations
        however many paths)."""
        per_path = self.penalty_reduction == "per_path"
        sums: dict[str, Tensor] = {}
        for _, terms in self._batched_terms(root=per_path):
            for term, value in terms.items():
                sums[term] = value.sum() + sums[term] if term in sums else value.sum()
        if not sums:
            weight = next(next(iter(self.paths.values())).parameters())
            return weight.new_zeros(())
        if not per_path:
            sums = {term: root_of(value) for term, value in sums.items()}
        total = self.lie_weight * sums["lie"] + self.norm_weight * sums["norm"]
        if "reflection" in sums:
            total = total + self.reflection_weight * sums["reflection"]
        return total

    @torch.no_grad()
    def metrics(self, data: Any = None) -> dict[str, float]:
        """Numbers for a logger: θ, and per block the path's output norm ``…/path_norm`` and
        Lie-derivative norm ``…/lie_derivative`` (unscaled by θ, on the recorded inputs); with
        ``data``, the model's equivariance errors ``equivariance/<check>`` at the current θ."""
        out: dict[str, float] = {"theta": self.theta}
        for name, terms in self._terms().items():
            out[f"{name}/path_norm"] = float(terms["norm"])
            out[f"{name}/lie_derivative"] = float(terms["lie"])
        if data is not None:
            from ..symmetry import equivariance_error

            for check, value in equivariance_error(self.model, data).items():
                out[f"equivariance/{check}"] = value
        return out

    def project(self) -> nn.Module:
        """:func:`~relaxgnn.relax.project` of the model (the controller's model is left as it
        is)."""
        return project(self.model)


class Relaxation(RelaxationController):
    """Drive the relaxation of ``model`` with θ on a schedule (the relaxation paper's method).

    Typical loop::

        relax = Relaxation(model, LinearDecay(1.0, total_steps), lie_weight=0.01)
        for i, batch in enumerate(loader):
            relax.step(i)                       # θ from the schedule
            with relax.record():                # the paths' inputs, for the penalty
                prediction = model(batch)
            loss = task_loss(prediction, batch) + relax.penalty()
            ...
        model = relax.project()

    θ is owned here (:class:`RelaxationController`): it is not part of the model's
    ``state_dict`` (a relaxed model without its controller computes the plain model);
    :meth:`state_dict` holds the schedule position.

    Args:
        model: a model with relaxation paths (built with ``relax=...``, or given paths with
            :func:`~relaxgnn.relax.attach`).
        schedule: one :class:`~relaxgnn.relax.schedules.Schedule` for every path, or a mapping
            from glob patterns of path names (see :attr:`paths`) to schedules; each path takes
            the first pattern that matches it.
        lie_weight, norm_weight, reflection_weight: :math:`\\lambda_L, \\lambda_N, \\lambda_R`.
        interval: ``"step"`` or ``"epoch"``: what the step index counts (read by the training
            engine; the controller itself just evaluates the schedule at the index given).
        penalty_reduction: ``"global"`` (one root over all paths: the paper's code) or
            ``"per_path"`` (a root per path, summed); module docstring.
    """

    def __init__(
        self,
        model: nn.Module,
        schedule: Schedule | Mapping[str, Schedule],
        lie_weight: float = 0.01,
        norm_weight: float = 0.01,
        reflection_weight: float = 0.0,
        interval: str = "step",
        penalty_reduction: Literal["global", "per_path"] = "global",
    ) -> None:
        super().__init__(model, lie_weight, norm_weight, reflection_weight, penalty_reduction)
        if interval not in ("step", "epoch"):
            raise ValueError(f"interval must be 'step' or 'epoch', got {interval!r}")
        self.interval = interval
        self.schedules = self._assign(schedule)
        self.step(0)

    def _assign(self, schedule: Schedule | Mapping[str, Schedule]) -> dict[str, Schedule]:
        if isinstance(schedule, Schedule):
            return dict.fromkeys(self.paths, schedule)
        if not isinstance(schedule, Mapping):
            raise TypeError(f"schedule must be a Schedule or a mapping of them, got "
                            f"{type(schedule).__name__}")
        assigned = {}
        for name in self.paths:
            match = next((s for pattern, s in schedule.items() if fnmatch.fnmatch(name, pattern)),
                         None)
            if match is None:
                raise ValueError(f"no schedule pattern among {list(schedule)} matches the path "
                                 f"{name!r}")
            assigned[name] = match
        return assigned

    # ------------------------------------------------------------------ θ
    @property
    def total_steps(self) -> int:
        """The longest schedule's length: after it every θ is 0."""
        return max(s.total_steps for s in self.schedules.values())

    def _thetas_at(self, index: int) -> dict[str, float]:
        return {name: self.schedules[name](index) for name in self.paths}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"step_index": self.step_index, "thetas": self.thetas}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume at the saved step (θ is recomputed from the schedules and checked against the
        saved values, which catches a changed schedule)."""
        self.step(int(state["step_index"]))
        saved = state.get("thetas", {})
        for name, theta in saved.items():
            if name in self.paths and not math.isclose(self.paths[name].theta, theta,
                                                        rel_tol=1e-12, abs_tol=1e-15):
                raise ValueError(f"schedule mismatch on resume: path {name!r} had θ={theta} at "
                                 f"step {self.step_index}, the schedule now gives "
                                 f"{self.paths[name].theta}")

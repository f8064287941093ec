r"""Learned relaxation under a constraint (ACE: "Learning (Approximately) Equivariant Networks
via Constrained Optimization", NeurIPS 2025).

Each group :math:`k` of paths has a learned scale :math:`\gamma_k` (initialised at 1), so a
relaxed module computes :math:`f_{eq}(x) + \gamma_k\, g(u)`; :math:`\gamma` is trained with the
task by the task's optimiser, and the constraint that the model end equivariant is imposed by a
Lagrange multiplier :math:`\lambda_k` (initialised at 0):

- **equality** (``resilient=False``): :math:`\gamma_k = 0`. The loss gains
  :math:`\sum_k \lambda_k \gamma_k`; after every optimiser step the dual ascent step is
  :math:`\lambda_k \leftarrow \lambda_k + \eta_d\, \gamma_k`.
- **resilient**: :math:`|\gamma_k| \le u_k` with a learned slack :math:`u_k \ge 0`
  (initialised at 0) that costs :math:`\rho \lVert u\rVert^2`. The loss gains
  :math:`\rho \sum_k u_k^2 + \sum_k \lambda_k (|\gamma_k| - u_k)`, and the dual step is the
  paper's projected ascent :math:`\lambda_k \leftarrow [\lambda_k + \eta_d (|\gamma_k| -
  u_k)]_+` (ACE's released code steps with :math:`-(|\gamma| - 2u)` instead, because it also
  subtracts :math:`u \cdot (|\gamma| - u)` in its loss; relaxgnn follows the paper), with
  :math:`u_k` kept :math:`\ge 0`.

``dual_optimizer="adam"`` makes the ascent an Adam step on :math:`-\partial/\partial\lambda` at
learning rate :math:`\eta_d` (ACE's code), ``"sgd"`` the plain step above. Evaluation, test and
export use :math:`f_{eq}` only (the controller pauses; :func:`~relaxgnn.relax.project` removes
the paths and the :math:`\gamma`, :math:`u` whatever their values). The optional Lie-derivative
and norm penalties of :class:`~relaxgnn.relax.Relaxation` apply too (ACE uses none).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .attach import RelaxationState
from .controller import RelaxationController

CONTAINER = "relaxation_gammas"


class RelaxationGammas(RelaxationState):
    """The learned scales :math:`\\gamma` (and slacks :math:`u`) of a model's path groups:
    parameters of the model, trained by its optimiser and saved with it; removed by
    :func:`~relaxgnn.relax.project`."""

    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.ParameterDict()
        self.slack = nn.ParameterDict()

    def forward(self, *args, **kwargs):  # pragma: no cover - a container
        raise RuntimeError("RelaxationGammas holds parameters; it is not called")


class LearnedRelaxation(RelaxationController):
    """Drive the relaxation of ``model`` with learned :math:`\\gamma` under a constraint
    (module docstring).

    Typical loop (the controller adds :math:`\\gamma` and :math:`u` to the model's parameters,
    so create it *before* the optimiser)::

        relax = LearnedRelaxation(model, dual_lr=8e-4)
        optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
        for i, batch in enumerate(loader):
            relax.step(i)
            with relax.record():
                prediction = model(batch)
            loss = task_loss(prediction, batch) + relax.penalty()   # + Σ λ γ
            optimizer.zero_grad(); loss.backward(); optimizer.step()
            relax.dual_step()                                         # λ ← λ + η_d γ
        model = relax.project()

    Args:
        model: a model with relaxation paths.
        dual_lr: :math:`\\eta_d`.
        dual_optimizer: ``"adam"`` (ACE's code) or ``"sgd"`` (plain ascent).
        resilient: the resilient constraint :math:`|\\gamma| \\le u` instead of
            :math:`\\gamma = 0`.
        rho: :math:`\\rho`, the cost of the slack (resilient only).
        groups: ``{glob pattern of path names: group name}``; paths of a group share one
            :math:`\\gamma`; a path no pattern matches is its own group. Default: one
            :math:`\\gamma` per path (as ACE).
        init_gamma: the initial :math:`\\gamma` (ACE: 1).
        gamma_lr: a learning rate of its own for :math:`\\gamma` and :math:`u` (their
            parameter group in :meth:`parameter_groups`); ``None``: the task's. With Adam a
            parameter moves about one learning rate per step, so at the task's 5e-4 a
            :math:`\\gamma` needs ~2,000 steps to go from 1 to 0: short runs need their own
            (ACE's code has the same idea: its ``adamsgd`` steps the :math:`\\gamma` by SGD
            at 1000× the task's rate).
        lie_weight, norm_weight, reflection_weight, penalty_reduction: optional penalties,
            as :class:`~relaxgnn.relax.Relaxation` (default 0, as ACE).
        auglag: :math:`c`, the augmented-Lagrangian term :math:`c \\sum_k c_k^2` on the
            constraint's violation :math:`c_k` (ACE's ``auglag_const``; its N-body command
            uses 0): a restoring force on :math:`\\gamma` that damps the oscillation of
            :math:`\\gamma` and :math:`\\lambda` around the constraint.
    """

    def __init__(
        self,
        model: nn.Module,
        dual_lr: float = 8e-4,
        dual_optimizer: Literal["adam", "sgd"] = "adam",
        resilient: bool = False,
        rho: float = 1.0,
        groups: Mapping[str, str] | None = None,
        init_gamma: float = 1.0,
        gamma_lr: float | None = None,
        lie_weight: float = 0.0,
        norm_weight: float = 0.0,
        reflection_weight: float = 0.0,
        penalty_reduction: Literal["global", "per_path"] = "global",
        auglag: float = 0.0,
    ) -> None:
        super().__init__(model, lie_weight, norm_weight, reflection_weight, penalty_reduction)
        checked = [("dual_lr", dual_lr), ("rho", rho), ("auglag", auglag)]
        if gamma_lr is not None:
            checked.append(("gamma_lr", gamma_lr))
        for name, value in checked:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value}")
        if dual_optimizer not in ("adam", "sgd"):
            raise ValueError(f"dual_optimizer must be 'adam' or 'sgd', got {dual_optimizer!r}")
        self.dual_lr, self.rho, self.resilient = float(dual_lr), float(rho), bool(resilient)
        self.auglag = float(auglag)
        self.dual_optimizer = dual_optimizer
        self.gamma_lr = None if gamma_lr is None else float(gamma_lr)
        self.group_of = {name: next((g for pattern, g in (groups or {}).items()
                                     if fnmatch.fnmatch(name, pattern)), name)
                         for name in self.paths}
        self.groups = list(dict.fromkeys(self.group_of.values()))
        self.container = self._container(init_gamma)
        like = next(iter(self.container.gamma.values()))
        self.lambdas = torch.zeros(len(self.groups), dtype=like.dtype, device=like.device)
        self._dual = torch.optim.Adam([self.lambdas], lr=self.dual_lr) \
            if dual_optimizer == "adam" else None
        self.step(0)

    @staticmethod
    def _key(group: str) -> str:
        return group.replace(".", ":") or "<root>"

    def _container(self, init_gamma: float) -> RelaxationGammas:
        """The model's :class:`RelaxationGammas` with one :math:`\\gamma` (and :math:`u`) per
        group; existing values (a resumed run, a second controller) are kept."""
        container = getattr(self.model, CONTAINER, None)
        if container is None:
            container = RelaxationGammas()
            self.model.add_module(CONTAINER, container)
        path = next(iter(self.paths.values()))
        like = next(path.parameters())
        for group in self.groups:
            key = self._key(group)
            if key not in container.gamma:
                container.gamma[key] = nn.Parameter(
                    torch.tensor(float(init_gamma), dtype=like.dtype, device=like.device))
            if self.resilient and key not in container.slack:
                container.slack[key] = nn.Parameter(
                    torch.zeros((), dtype=like.dtype, device=like.device))
        return container

    def parameter_groups(self, parameters: Iterable[nn.Parameter]
                         ) -> list[nn.Parameter] | list[dict[str, Any]]:
        """The optimiser's parameter groups for ``parameters`` (the model's): all of them in
        one group, or with ``gamma_lr`` set, the :math:`\\gamma` and :math:`u` in a group of
        their own at that learning rate (``torch.optim.Adam(relax.parameter_groups(
        model.parameters()), lr=...)``)."""
        parameters = list(parameters)
        if self.gamma_lr is None:
            return parameters
        own = {id(p) for p in self.container.parameters()}
        return [{"params": [p for p in parameters if id(p) not in own]},
                {"params": [p for p in parameters if id(p) in own], "lr": self.gamma_lr}]

    def gamma(self, group: str) -> Tensor:
        return self.container.gamma[self._key(group)]

    def slack(self, group: str) -> Tensor:
        return self.container.slack[self._key(group)]

    def _thetas_at(self, index: int) -> dict[str, Tensor]:
        return {name: self.gamma(group) for name, group in self.group_of.items()}

    def to(self, device: torch.device | str) -> LearnedRelaxation:
        r"""Move :math:`\lambda` and the dual optimiser's state to ``device`` (where the model's
        :math:`\gamma` went: the controller is built before a trainer moves the model);
        returns ``self``."""
        device = torch.device(device)
        if self.lambdas.device == device:
            return self
        state = self._dual.state_dict() if self._dual is not None else None
        self.lambdas = self.lambdas.detach().to(device)
        if state is not None:
            self._dual = torch.optim.Adam([self.lambdas], lr=self.dual_lr)
            self._dual.load_state_dict(state)  # casts the state to the new λ's device
        return self

    # ------------------------------------------------------------------ the Lagrangian
    def _violation(self) -> Tensor:
        """Per group: :math:`\\gamma_k` (equality) or :math:`|\\gamma_k| - u_k` (resilient)."""
        if self.resilient:
            return torch.stack([self.gamma(g).abs() - self.slack(g) for g in self.groups])
        return torch.stack([self.gamma(g) for g in self.groups])

    def penalty(self, task_loss: Tensor | None = None) -> Tensor:
        """The optional path penalties plus :math:`\\sum_k \\lambda_k c_k` with :math:`c_k`
        the constraint's violation (module docstring), plus :math:`\\rho\\lVert u\\rVert^2`
        when resilient. Trains :math:`\\gamma`, :math:`u` and (through the path penalties)
        the paths; :math:`\\lambda` is not trained by it (:meth:`dual_step` is). With
        :attr:`relative` set, every term is multiplied by the detached ``task_loss``: the
        constraint's force on :math:`\\gamma` is then :math:`\\lambda` against
        :math:`\\partial \\log L / \\partial\\gamma`, whatever the loss's scale."""
        violation = self._violation()
        total = (self.lambdas.detach() * violation).sum()
        if self.auglag:
            total = total + self.auglag * violation.pow(2).sum()
        if self.resilient:
            total = total + self.rho * torch.stack(
                [self.slack(g) for g in self.groups]).pow(2).sum()
        if self.relative and task_loss is not None:
            total = total * task_loss.detach()
        if self.lie_weight or self.norm_weight or self.reflection_weight:
            total = total + super().penalty(task_loss)
        return total

    @torch.no_grad()
    def dual_step(self) -> None:
        """The dual ascent step (after the optimiser's step): :math:`\\lambda` grows with the
        constraint's violation; resilient: :math:`\\lambda, u \\ge 0`."""
        self._check_driving()
        violation = self._violation().detach()
        if self._dual is None:
            self.lambdas.add_(self.dual_lr * violation)
        else:
            self.lambdas.grad = -violation  # ascent on λ·c
            self._dual.step()
            self.lambdas.grad = None
        if self.resilient:
            self.lambdas.clamp_(min=0.0)
            for group in self.groups:
                self.slack(group).clamp_(min=0.0)

    # ------------------------------------------------------------------ reporting
    def values(self) -> dict[str, dict[str, float]]:
        """``{group: {"gamma", "lambda"[, "u"]}}`` now."""
        out = {}
        for k, group in enumerate(self.groups):
            out[group] = {"gamma": self.gamma(group).item(), "lambda": self.lambdas[k].item()}
            if self.resilient:
                out[group]["u"] = self.slack(group).item()
        return out

    @torch.no_grad()
    def metrics(self, data: Any = None) -> dict[str, float]:
        """:meth:`RelaxationController.metrics` plus ``gamma/<group>``, ``lambda/<group>`` and
        (resilient) ``u/<group>``."""
        out = super().metrics(data)
        for group, values in self.values().items():
            for key, value in values.items():
                out[f"{key}/{group}"] = value
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The step, :math:`\\lambda` and the dual optimiser's state (:math:`\\gamma` and
        :math:`u` are parameters of the model: they are in its state dict)."""
        return {"step_index": self.step_index, "groups": list(self.groups),
                "lambdas": self.lambdas.detach().clone(),
                "dual": copy.deepcopy(self._dual.state_dict()) if self._dual is not None
                else None}  # a copy: the optimiser updates its state tensors in place

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if list(state.get("groups", self.groups)) != self.groups:
            raise ValueError(f"the saved groups {state.get('groups')} are not this controller's "
                             f"{self.groups}")
        with torch.no_grad():
            self.lambdas.copy_(torch.as_tensor(state["lambdas"]).to(self.lambdas))
        if self._dual is not None and state.get("dual") is not None:
            self._dual.load_state_dict(state["dual"])
        self.step(int(state["step_index"]))

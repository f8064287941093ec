r"""Schedules for the relaxation weight θ: functions of an integer step that end at exactly 0.

A schedule of ``total_steps`` steps is evaluated at steps ``0 … total_steps - 1`` (optimizer
steps or epochs, as the caller counts them). With progress :math:`p = i / (T - 1)`,
:math:`T` = ``total_steps``, every schedule is 0 at its last step :math:`i = T - 1` and stays 0
for any later step; a one-step schedule is 0 throughout.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


class Schedule:
    """Base class: ``schedule(step) -> θ``. Subclasses implement :meth:`value` on ``p ∈ [0, 1)``."""

    def __init__(self, total_steps: int) -> None:
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be a positive integer, got {total_steps!r}")
        self.total_steps = total_steps

    @property
    def last_step(self) -> int:
        return self.total_steps - 1

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        if step >= self.last_step:
            return 0.0
        return float(self.value(step / self.last_step, step))

    def value(self, progress: float, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _check_theta(name: str, theta: float) -> float:
        if not math.isfinite(theta) or theta < 0:
            raise ValueError(f"{name} must be a finite non-negative number, got {theta}")
        return float(theta)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{self.__class__.__name__}({args})"


class Constant(Schedule):
    """θ for every step but the last, which is 0."""

    def __init__(self, theta: float, total_steps: int) -> None:
        super().__init__(total_steps)
        self.theta = self._check_theta("theta", theta)

    def value(self, progress: float, step: int) -> float:
        return self.theta


class LinearDecay(Schedule):
    r""":math:`\theta(p) = \theta_0 (1 - p)`."""

    def __init__(self, theta0: float, total_steps: int) -> None:
        super().__init__(total_steps)
        self.theta0 = self._check_theta("theta0", theta0)

    def value(self, progress: float, step: int) -> float:
        return self.theta0 * (1.0 - progress)


class CosineDecay(Schedule):
    r""":math:`\theta(p) = \tfrac12\,\theta_0\,(1 + \cos \pi p)`."""

    def __init__(self, theta0: float, total_steps: int) -> None:
        super().__init__(total_steps)
        self.theta0 = self._check_theta("theta0", theta0)

    def value(self, progress: float, step: int) -> float:
        return 0.5 * self.theta0 * (1.0 + math.cos(math.pi * progress))


class Triangle(Schedule):
    r"""The paper's "cycle": 0 → θmax at mid-training → 0,
    :math:`\theta(p) = \theta_{max}\,(1 - |2p - 1|)`.

    This is the released code's ``mix_coef`` (``2e/E`` for ``e < E/2``, then
    ``1 - 2(e - E/2)/E``) with ``E`` the *last* step rather than the number of steps: the
    released code evaluates it at ``e = 0 … E-1`` and so ends at ``2/E``, never at 0.
    """

    def __init__(self, theta_max: float, total_steps: int) -> None:
        super().__init__(total_steps)
        self.theta_max = self._check_theta("theta_max", theta_max)

    def value(self, progress: float, step: int) -> float:
        return self.theta_max * (1.0 - abs(2.0 * progress - 1.0))


class Step(Schedule):
    r"""Piecewise constant: :math:`\theta_0\,\gamma^{k}` with :math:`k` the number of
    ``milestones`` (steps) already reached; 0 at the last step."""

    def __init__(self, theta0: float, total_steps: int, milestones: Sequence[int],
                 gamma: float = 0.1) -> None:
        super().__init__(total_steps)
        self.theta0 = self._check_theta("theta0", theta0)
        self.milestones = sorted(int(m) for m in milestones)
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be positive steps, got {list(milestones)}")
        self.gamma = self._check_theta("gamma", gamma)

    def value(self, progress: float, step: int) -> float:
        reached = sum(step >= m for m in self.milestones)
        return self.theta0 * self.gamma**reached


SCHEDULES = {cls.__name__: cls for cls in (Constant, LinearDecay, CosineDecay, Triangle, Step)}

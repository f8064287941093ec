r"""The generation parameters of the N-body data sets, one frozen record per kind.

A record holds every parameter that decides the numbers of a cache (split sizes, seed,
particles, integration); :func:`~relaxgnn.data.nbody.generate_charged`,
:func:`~relaxgnn.data.nbody.load_charged`, :class:`~relaxgnn.data.nbody.NBody` and the CLI all
take or build a :class:`ChargedParams` (likewise :class:`GravityParams` for gravity), so a new
parameter is one new field. The record's :meth:`~NBodyParams.asdict` is what the cache's JSON
records and compares. Frame :math:`k` of a stored trajectory is integration step
:math:`s\,(k + k_0)` with ``s = sample_freq`` and :math:`k_0` = ``first_frame`` (1 for the
charged set, whose initial state is not stored; 0 for gravity), so there are
``n_steps // sample_freq - first_frame`` frames.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .simulation import check_steps

SPLITS = ("train", "val", "test")
"""The splits of an N-body cache, in the order of their seeds (see ``split_seed``)."""

P = TypeVar("P", bound="NBodyParams")


@dataclass(frozen=True)
class NBodyParams:
    """Parameters that every kind has. Values are typed on construction (``dt=1`` becomes
    ``1.0``; ``num_train=10.0`` becomes ``10``, ``10.5`` or ``True`` is a ``TypeError``) and
    checked (``ValueError``), so two records that compare equal make the same data.

    Args:
        num_train: training trajectories (≥ 0).
        num_val: validation trajectories (≥ 0).
        num_test: test trajectories (≥ 0).
        seed: the data set's seed; each split draws from its own stream of it.
        n_particles: bodies per system (≥ 1).
        n_steps: integration steps, a multiple of ``sample_freq`` leaving at least one frame.
        sample_freq: integration steps between stored frames (≥ 1).
        dt: time step (> 0).
    """

    kind: ClassVar[str]
    first_frame: ClassVar[int]

    num_train: int = 10_000
    num_val: int = 2_000
    num_test: int = 2_000
    seed: int = 43
    n_particles: int = 5
    n_steps: int = 5000
    sample_freq: int = 100
    dt: float = 0.001

    def __post_init__(self) -> None:
        if not hasattr(type(self), "kind"):
            raise TypeError("NBodyParams is the common base; use ChargedParams or GravityParams")
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, _typed(field.name, value, field.type))
        for split in SPLITS:
            if self.num(split) < 0:
                raise ValueError(f"num_{split} must be >= 0, got {self.num(split)}")
        if self.n_particles < 1:
            raise ValueError(f"n_particles must be >= 1, got {self.n_particles}")
        check_steps(self.n_steps, self.sample_freq, self.dt)
        if self.frames < 1:
            least = self.first_frame + 1
            raise ValueError(
                f"n_steps ({self.n_steps}) must be at least {least} * sample_freq "
                f"({least * self.sample_freq}) to store a frame"
            )

    @classmethod
    def from_keywords(cls: type[P], **generation: Any) -> P:
        """``cls(**generation)`` (the defaults for the fields not given), with unknown names a
        ``TypeError`` that lists the known ones."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(generation) - set(known))
        if unknown:
            raise TypeError(
                f"unknown {cls.kind} N-body generation parameters {unknown}; known: {sorted(known)}"
            )
        return cls(**generation)

    @classmethod
    def build(cls: type[P], params: P | None = None, **generation: Any) -> P:
        """The record of a call that takes either a record or its fields as keywords:
        ``params`` itself, or :meth:`from_keywords`. A record of another kind, or both at once,
        is a ``TypeError``."""
        if params is None:
            return cls.from_keywords(**generation)
        if not isinstance(params, cls):
            raise TypeError(f"params must be a {cls.__name__}, got {params!r}")
        if generation:
            raise TypeError(
                f"give the generation parameters either as params ({cls.__name__}) or as "
                f"keywords, not both (got params and {sorted(generation)})"
            )
        return params

    @property
    def frames(self) -> int:
        """Number of stored frames per trajectory."""
        return self.n_steps // self.sample_freq - self.first_frame

    def num(self, split: str) -> int:
        """Trajectories of ``split`` (one of :data:`SPLITS`)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return getattr(self, f"num_{split}")

    def asdict(self) -> dict[str, Any]:
        """The fields by name, in their order (what the cache's JSON records)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ChargedParams(NBodyParams):
    """The charged-particle data set (EGNN's "nbody_small"; the seed is ours): the fields of
    :class:`NBodyParams` and

    Args:
        loc_std: standard deviation of each initial coordinate.
        vel_norm: norm of each initial velocity.
        clip: bound on each force component (> 0; ``math.inf`` for none).
    """

    kind: ClassVar[str] = "charged"
    first_frame: ClassVar[int] = 1

    n_particles: int = 5
    loc_std: float = 1.0
    vel_norm: float = 0.5
    clip: float = 100.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.clip > 0:
            raise ValueError(f"clip must be positive (math.inf for none), got {self.clip}")


@dataclass(frozen=True)
class GravityParams(NBodyParams):
    r"""SEGNN's gravity data set (the seed is ours): the fields of :class:`NBodyParams` and

    Args:
        G: gravitational constant.
        softening: :math:`\varepsilon` of the softened potential.
    """

    kind: ClassVar[str] = "gravity"
    first_frame: ClassVar[int] = 0

    n_particles: int = 100
    G: float = 1.0
    softening: float = 0.1


def _typed(name: str, value: Any, annotation: str) -> int | float:
    """``value`` as the ``int`` or ``float`` of its field (annotations are strings here)."""
    if annotation == "int":
        try:
            integral = not isinstance(value, bool) and int(value) == value
        except (TypeError, ValueError):
            integral = False
        if not integral:
            raise TypeError(f"generation parameter {name} must be an integer, got {value!r}")
        return int(value)
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"generation parameter {name} must be a number, got {value!r}") from None


__all__ = ["SPLITS", "ChargedParams", "GravityParams", "NBodyParams"]

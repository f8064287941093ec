r"""N-body data of EGNN, SEGNN and "Improving Equivariant Model Training via Constraint
Relaxation": charged particles (Coulomb) and gravity, simulated with torch, vectorised over
trajectories.

**Charged particles** (the EGNN authors' ``ChargedParticlesSim``, interaction strength 1, no
box). Unit masses and charges :math:`q_i = \pm 1`; the force on particle :math:`i` is

.. math::
    F_i = \operatorname{clip}\Big(\sum_{j \ne i} q_i q_j \,
          \frac{x_i - x_j}{\lVert x_i - x_j \rVert^3},\; \pm c\Big)
        = -\nabla_i U \text{ (unclipped)}, \qquad
    U = \sum_{i<j} \frac{q_i q_j}{\lVert x_i - x_j \rVert},

so like charges repel; each Cartesian component is clipped to :math:`[-c, c]`, ``clip`` = 100
(the reference's ``0.1 / dt``). The integrator (the reference's loop, a leapfrog with the
velocity kept half a step behind) is

.. math::
    v_1 = v_0 + \Delta t\, F(x_0), \qquad
    x_n = x_{n-1} + \Delta t\, v_n, \qquad
    v_{n+1} = v_n + \Delta t\, F(x_n) \quad (n \ge 1),

and frame :math:`k` stores :math:`(x_n, v_n)` with :math:`n = s(k + 1)`, ``s = sample_freq``:
the position after :math:`n` drifts and the velocity that made the last drift (the kick with
:math:`F(x_n)` is not in it). Read as a leapfrog, :math:`v_n = v(t_n - \Delta t/2)` with
:math:`t_n = n\Delta t`; the velocity at :math:`t_n` is :math:`v_n + \tfrac{\Delta t}{2}F(x_n)`.
The initial state is not stored: ``n_steps`` = 5000 and ``s`` = 100 give 49 frames, steps
100, 200, …, 4900 (EGNN's input frame 30 is step 3100, its target frame 40 step 4100).

**Gravity** (SEGNN's ``GravitySim``): masses :math:`m`, softened attraction

.. math::
    a_i = G \sum_j m_j \frac{x_j - x_i}{(\lVert x_j - x_i\rVert^2 + \varepsilon^2)^{3/2}},
    \qquad U = -G \sum_{i<j} \frac{m_i m_j}{\sqrt{\lVert x_i - x_j\rVert^2 + \varepsilon^2}},

integrated by kick–drift–kick leapfrog; frame :math:`k` is step :math:`s k` (t = 0 included).

**Data sets and their cache.** :class:`NBody` (charged) and :class:`GravityNBody` (gravity,
with k-nearest-neighbour graphs) read ``root/<kind>_{split}.npz`` and ``root/<kind>.json``,
written by :func:`generate_charged` / :func:`generate_gravity` and checked by
:func:`load_charged` / :func:`load_gravity`. One kind-generic implementation does the
parameter checks, per-split seeds, atomic writes and checked reads; a small table (``_KINDS``)
says per kind what differs: defaults, initial conditions, simulator, stored arrays and frames.

**Equivariance of the data.** Without clipping the simulation is exactly E(3)-equivariant
(rotating, reflecting or translating the initial state does the same to every frame). The
clip acts on each Cartesian component, so it depends on the frame: where it acts (two unit
charges closer than ≈ 0.1) it is not. In the first 3,000 default training trajectories the
clip acts between frames 30 and 40 in ≈ 18 %, and in ≈ 18 % simulating the rotated frame-30
state gives a frame-40 position more than 0.01 away from the rotated target (≈ 0.8 % without
the clip, where near-collisions amplify rounding). The clip is kept, for fidelity to the
published data. The reference also reflects initial positions beyond a box of half-width 5
into it (probability ≈ 6e-7 per coordinate with ``loc_std`` = 1); that is left out.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset

from ..atomic import atomic_write
from .graphs import KNNGraph

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1

#: Generation parameters of the charged data set (EGNN's "nbody_small"; the seed is ours).
CHARGED_DEFAULTS: dict[str, Any] = {
    "num_train": 10_000,
    "num_val": 2_000,
    "num_test": 2_000,
    "seed": 43,
    "n_particles": 5,
    "n_steps": 5000,
    "sample_freq": 100,
    "dt": 0.001,
    "loc_std": 1.0,
    "vel_norm": 0.5,
    "clip": 100.0,
}

#: Generation parameters of the gravity data set (SEGNN's; the seed is ours).
GRAVITY_DEFAULTS: dict[str, Any] = {
    "num_train": 10_000,
    "num_val": 2_000,
    "num_test": 2_000,
    "seed": 43,
    "n_particles": 100,
    "n_steps": 5000,
    "sample_freq": 100,
    "dt": 0.001,
    "G": 1.0,
    "softening": 0.1,
}


# ----------------------------------------------------------------------------- simulators


def _check_state(loc0: Tensor, vel0: Tensor) -> tuple[int, int]:
    if loc0.dim() != 3 or loc0.shape[-1] != 3:
        raise ValueError(f"loc0 must have shape (B, N, 3), got {tuple(loc0.shape)}")
    if vel0.shape != loc0.shape:
        raise ValueError(
            f"vel0 must have the shape of loc0 {tuple(loc0.shape)}, got {tuple(vel0.shape)}"
        )
    if not (loc0.is_floating_point() and vel0.is_floating_point()):
        raise TypeError(f"loc0 and vel0 must be floating tensors, got {loc0.dtype}, {vel0.dtype}")
    return loc0.shape[0], loc0.shape[1]


def _check_steps(n_steps: int, sample_freq: int, dt: float) -> None:
    if sample_freq < 1 or n_steps % sample_freq:
        raise ValueError(f"n_steps ({n_steps}) must be a multiple of sample_freq ({sample_freq})")
    if not dt > 0:
        raise ValueError(f"dt must be positive, got {dt}")


def _pair_incidence(n: int, dtype: torch.dtype, device) -> tuple[Tensor, Tensor, Tensor]:
    """Pairs ``i < j`` as index tensors ``(I, J)`` and the ``(n, P)`` incidence matrix ``D``
    with ``D[i, p] = 1``, ``D[j, p] = -1``: ``x @ D`` is ``x_i - x_j`` per pair (exactly),
    and ``f @ Dᵀ`` adds ``+f_p`` to ``i`` and ``-f_p`` to ``j``."""
    pairs = torch.tensor(list(itertools.combinations(range(n), 2)), device=device).T
    D = torch.zeros(n, pairs.shape[1], dtype=dtype, device=device)
    columns = torch.arange(pairs.shape[1], device=device)
    D[pairs[0], columns] = 1.0
    D[pairs[1], columns] = -1.0
    return pairs[0], pairs[1], D


def simulate_charged(
    loc0: Tensor,
    vel0: Tensor,
    charges: Tensor,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = 0.001,
    clip: float = 100.0,
) -> tuple[Tensor, Tensor]:
    """Integrate ``B`` charged-particle systems at once (equations in the module docstring).

    Args:
        loc0, vel0: ``(B, N, 3)`` initial positions and velocities.
        charges: ``(B, N)`` charges (±1 in the data set; any values work).
        n_steps: integration steps ``T`` of the reference loop (a multiple of ``sample_freq``).
        sample_freq: steps between stored frames.
        dt: time step.
        clip: bound on each force component (``math.inf`` for none).

    Returns:
        ``(loc, vel)``, each ``(B, n_steps // sample_freq - 1, N, 3)`` in the dtype of
        ``loc0``: frame ``k`` is step ``sample_freq·(k + 1)``, ``vel`` the half-step velocity
        of the module docstring. Computed in float64 with pairs ``i < j`` only; the steps
        after the last stored frame, which the reference runs, are skipped.

    A step is a few ops on ``B × 30`` numbers: one torch thread is as fast as several here and
    does not stall on a busy machine (see :func:`generate_charged`).
    """
    B, N = _check_state(loc0, vel0)
    if charges.shape != (B, N):
        raise ValueError(f"charges must have shape (B, N) = ({B}, {N}), got {tuple(charges.shape)}")
    _check_steps(n_steps, sample_freq, dt)
    if not clip > 0:
        raise ValueError(f"clip must be positive (math.inf for none), got {clip}")
    frames = n_steps // sample_freq - 1
    if frames < 1:
        raise ValueError(
            f"n_steps ({n_steps}) must be at least 2 * sample_freq "
            f"({2 * sample_freq}) to store a frame"
        )
    f64, device = torch.float64, loc0.device
    I, J, D = _pair_incidence(N, f64, device)
    P, DT = D.shape[1], D.T.contiguous()
    # Layout (B, 3, N): pair differences and force sums are small matmuls over the last axis.
    x = loc0.detach().to(f64).transpose(1, 2).contiguous()
    v = vel0.detach().to(f64).transpose(1, 2).contiguous()
    q = charges.detach().to(f64)
    qq = (q[:, I] * q[:, J]).unsqueeze(1)  # (B, 1, P)

    def force(x: Tensor) -> Tensor:
        diff = (x.view(B * 3, N) @ D).view(B, 3, P)  # x_i - x_j
        r2 = (diff * diff).sum(1, keepdim=True)
        diff.mul_(qq / (r2 * r2.sqrt()))
        return (diff.view(B * 3, P) @ DT).view(B, 3, N).clamp_(-clip, clip)

    loc = x.new_empty(B, frames, 3, N)
    vel = x.new_empty(B, frames, 3, N)
    v.add_(force(x), alpha=dt)
    last = frames * sample_freq  # later steps of the reference loop are never stored
    for n in range(1, last + 1):
        x.add_(v, alpha=dt)
        if n % sample_freq == 0:
            loc[:, n // sample_freq - 1] = x
            vel[:, n // sample_freq - 1] = v
        if n < last:
            v.add_(force(x), alpha=dt)
    dtype = loc0.dtype
    return loc.transpose(2, 3).to(dtype).contiguous(), vel.transpose(2, 3).to(dtype).contiguous()


def simulate_gravity(
    loc0: Tensor,
    vel0: Tensor,
    masses: Tensor | None = None,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = 0.001,
    G: float = 1.0,
    softening: float = 0.1,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Integrate ``B`` softened gravitational systems at once by kick–drift–kick leapfrog:

    .. math::
        v \mathrel{+}= \tfrac{\Delta t}{2} a(x), \quad x \mathrel{+}= \Delta t\, v, \quad
        v \mathrel{+}= \tfrac{\Delta t}{2} a(x)

    (acceleration in the module docstring). The state is integrated as given: SEGNN's
    generator removes the centre-of-mass velocity first (:func:`gravity_initial_conditions`).

    Args:
        loc0, vel0: ``(B, N, 3)``; SEGNN's data set has N = 100 bodies.
        masses: ``(B, N)``, default unit masses.
        n_steps, sample_freq, dt: 5000, 100 and 0.001 as in SEGNN.
        G: gravitational constant (1).
        softening: :math:`\varepsilon` (0.1).

    Returns:
        ``(loc, vel, force)``, each ``(B, n_steps // sample_freq, N, 3)`` in the dtype of
        ``loc0``: frame ``k`` is step ``sample_freq·k`` (frame 0 is the initial state; 50 frames
        by default), with the synchronised velocity and the force :math:`m_i a_i`.
    """
    B, N = _check_state(loc0, vel0)
    _check_steps(n_steps, sample_freq, dt)
    if n_steps < sample_freq:
        raise ValueError(f"n_steps ({n_steps}) must be at least sample_freq ({sample_freq})")
    f64 = torch.float64
    m = torch.ones(B, N, dtype=f64, device=loc0.device) if masses is None else masses.to(f64)
    if m.shape != (B, N):
        raise ValueError(f"masses must have shape (B, N) = ({B}, {N}), got {tuple(m.shape)}")
    x = loc0.detach().to(f64).transpose(1, 2).contiguous()  # (B, 3, N)
    v = vel0.detach().to(f64).transpose(1, 2).contiguous()
    eps2 = float(softening) ** 2
    mj = m.unsqueeze(1)  # (B, 1, N): mass of the source j

    def acceleration(x: Tensor) -> Tensor:
        diff = x.unsqueeze(-2) - x.unsqueeze(-1)  # (B, 3, i, j): x_j - x_i
        inv_r3 = ((diff * diff).sum(1) + eps2).pow_(-1.5).mul_(mj)  # (B, i, j)
        return G * (diff * inv_r3.unsqueeze(1)).sum(-1)

    frames = n_steps // sample_freq
    loc, vel, force = (x.new_empty(B, frames, 3, N) for _ in range(3))
    a = acceleration(x)
    for n in range(n_steps - sample_freq + 1):  # later steps are never stored
        if n % sample_freq == 0:
            k = n // sample_freq
            loc[:, k], vel[:, k], force[:, k] = x, v, a * m.unsqueeze(1)
            if k == frames - 1:
                break
        v.add_(a, alpha=dt / 2)
        x.add_(v, alpha=dt)
        a = acceleration(x)
        v.add_(a, alpha=dt / 2)
    return tuple(t.transpose(2, 3).to(loc0.dtype).contiguous() for t in (loc, vel, force))


def charged_initial_conditions(
    num: int,
    n_particles: int = 5,
    seed: int = 0,
    loc_std: float = 1.0,
    vel_norm: float = 0.5,
) -> tuple[Tensor, Tensor, Tensor]:
    """``num`` random initial states, float64: positions ``N(0, loc_std²)`` per coordinate,
    velocities of norm ``vel_norm`` in uniformly random directions, charges ±1 with probability
    ½ each. Drawn in that order from ``torch.Generator().manual_seed(seed)``.

    Returns ``(loc0 (num, N, 3), vel0 (num, N, 3), charges (num, N))``."""
    gen = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64
    loc0 = torch.randn(num, n_particles, 3, generator=gen, dtype=f64) * loc_std
    direction = torch.randn(num, n_particles, 3, generator=gen, dtype=f64)
    vel0 = direction * (vel_norm / direction.norm(dim=-1, keepdim=True))
    charges = torch.randint(0, 2, (num, n_particles), generator=gen).to(f64) * 2 - 1
    return loc0, vel0, charges


def gravity_initial_conditions(
    num: int, n_particles: int = 100, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """SEGNN's gravity start: positions and velocities ``N(0, 1)`` per coordinate (SEGNN
    ignores its ``loc_std`` and ``vel_norm``), unit masses, centre-of-mass velocity removed
    (total momentum 0). Returns ``(loc0, vel0, masses)``, float64."""
    gen = torch.Generator().manual_seed(int(seed))
    loc0 = torch.randn(num, n_particles, 3, generator=gen, dtype=torch.float64)
    vel0 = torch.randn(num, n_particles, 3, generator=gen, dtype=torch.float64)
    masses = torch.ones(num, n_particles, dtype=torch.float64)
    com = (masses.unsqueeze(-1) * vel0).sum(1, keepdim=True) / masses.sum(1)[:, None, None]
    return loc0, vel0 - com, masses


# ----------------------------------------------------------------------------- the cache


class NBodyCacheError(RuntimeError):
    """The N-body cache is missing (``reason="missing"``), was generated with other parameters
    (``"stale"``) or cannot be read (``"corrupt"``). The message names the file."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def split_seed(seed: int, split: str) -> int:
    """The seed of one split: ``seed`` and the split's index mixed by ``numpy.random.SeedSequence``
    (independent streams for train, val and test; different ``seed`` values never collide)."""
    return int(np.random.SeedSequence([int(seed), SPLITS.index(split)]).generate_state(1)[0])


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class _Kind:
    """What the kind-generic cache code needs to know about one kind of N-body data.

    ``initial(num, seed, params)`` draws the float64 initial state, a dict with ``loc0`` and
    ``vel0`` ``(num, N, 3)`` and any per-particle tensors ``(num, N)``; ``simulate(state,
    params)`` integrates a chunk of it (the same dict, sliced) into the ``trajectory`` arrays,
    each ``(B, frames, N, 3)``. A split file ``<kind>_{split}.npz`` stores the ``trajectory``
    arrays, the ``per_particle`` entries of the initial state and ``meta``; frame ``k`` is
    integration step ``sample_freq·(k + first_frame)``."""

    defaults: dict[str, Any]
    initial: Callable[[int, int, dict[str, Any]], dict[str, Tensor]]
    simulate: Callable[[dict[str, Tensor], dict[str, Any]], dict[str, Tensor]]
    trajectory: tuple[str, ...]
    per_particle: tuple[str, ...]
    first_frame: int
    frame_steps: str  # for the json; formatted with s = sample_freq and t = sample_freq * dt
    simulator: str


def _charged_initial(num: int, seed: int, p: dict[str, Any]) -> dict[str, Tensor]:
    loc0, vel0, charges = charged_initial_conditions(
        num, p["n_particles"], seed, p["loc_std"], p["vel_norm"]
    )
    return {"loc0": loc0, "vel0": vel0, "charges": charges}


def _charged_simulate(state: dict[str, Tensor], p: dict[str, Any]) -> dict[str, Tensor]:
    loc, vel = simulate_charged(
        state["loc0"], state["vel0"], state["charges"],
        p["n_steps"], p["sample_freq"], p["dt"], p["clip"],
    )  # fmt: skip
    return {"loc": loc, "vel": vel}


def _gravity_initial(num: int, seed: int, p: dict[str, Any]) -> dict[str, Tensor]:
    loc0, vel0, masses = gravity_initial_conditions(num, p["n_particles"], seed)
    return {"loc0": loc0, "vel0": vel0, "masses": masses}


def _gravity_simulate(state: dict[str, Tensor], p: dict[str, Any]) -> dict[str, Tensor]:
    loc, vel, force = simulate_gravity(
        state["loc0"], state["vel0"], state["masses"],
        p["n_steps"], p["sample_freq"], p["dt"], p["G"], p["softening"],
    )  # fmt: skip
    return {"loc": loc, "vel": vel, "force": force}


_KINDS: dict[str, _Kind] = {
    "charged": _Kind(
        defaults=CHARGED_DEFAULTS,
        initial=_charged_initial,
        simulate=_charged_simulate,
        trajectory=("loc", "vel"),
        per_particle=("charges",),
        first_frame=1,
        frame_steps="frame k is integration step {s}*(k+1) (time {t:g}*(k+1)); vel is the "
        "half-step velocity v(t - dt/2)",
        simulator="relaxgnn.data.nbody.simulate_charged",
    ),
    "gravity": _Kind(
        defaults=GRAVITY_DEFAULTS,
        initial=_gravity_initial,
        simulate=_gravity_simulate,
        trajectory=("loc", "vel", "force"),
        per_particle=(),  # unit masses: not stored
        first_frame=0,
        frame_steps="frame k is integration step {s}*k (time {t:g}*k; frame 0 is the initial "
        "state); vel is the velocity v(t) and force the force m*a(t) at that time (unit masses)",
        simulator="relaxgnn.data.nbody.simulate_gravity",
    ),
}


def _kind(kind: str) -> _Kind:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
    return _KINDS[kind]


def _frames(kind: str, params: dict[str, Any]) -> int:
    """Number of stored frames."""
    return params["n_steps"] // params["sample_freq"] - _kind(kind).first_frame


def _resolve(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """``kind``'s defaults updated by ``params``, typed like the defaults and checked."""
    defaults = _kind(kind).defaults
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise TypeError(
            f"unknown {kind} N-body generation parameters {unknown}; known: {sorted(defaults)}"
        )
    out = {**defaults, **params}
    for key, value in out.items():
        if isinstance(defaults[key], int):
            if isinstance(value, bool) or int(value) != value:
                raise TypeError(f"generation parameter {key} must be an integer, got {value!r}")
            out[key] = int(value)
        else:
            out[key] = float(value)
    _check_steps(out["n_steps"], out["sample_freq"], out["dt"])
    if _frames(kind, out) < 1:
        first = _kind(kind).first_frame
        raise ValueError(
            f"n_steps ({out['n_steps']}) must be at least {first + 1} * sample_freq "
            f"({(first + 1) * out['sample_freq']}) to store a frame"
        )
    return out


def _split_meta(kind: str, params: dict[str, Any], split: str) -> dict[str, Any]:
    """What a split file records about itself (compared on load)."""
    return {
        "format": CACHE_FORMAT,
        "kind": kind,
        "split": split,
        "params": params,
        "split_seed": split_seed(params["seed"], split),
    }


def _shapes(kind: str, params: dict[str, Any], split: str) -> dict[str, tuple[int, ...]]:
    """The float32 arrays of a split file and their shapes."""
    spec = _kind(kind)
    num, n, frames = params[f"num_{split}"], params["n_particles"], _frames(kind, params)
    return {
        **{key: (num, frames, n, 3) for key in spec.trajectory},
        **{key: (num, n) for key in spec.per_particle},
    }


def _simulate_split(
    kind: str, params: dict[str, Any], split: str, chunk: int, done: Callable[[int], Any]
) -> dict[str, np.ndarray]:
    """The arrays of one split file; ``done(k)`` is called after each chunk of ``k``."""
    spec = _kind(kind)
    meta = _split_meta(kind, params, split)
    num = params[f"num_{split}"]
    state = spec.initial(num, meta["split_seed"], params)
    shapes = _shapes(kind, params, split)
    arrays = {key: np.empty(shape, np.float32) for key, shape in shapes.items()}
    for start in range(0, num, chunk):
        part = slice(start, min(start + chunk, num))
        trajectories = spec.simulate({key: t[part] for key, t in state.items()}, params)
        for key in spec.trajectory:
            arrays[key][part] = trajectories[key].numpy()
        done(part.stop - part.start)
    for key in spec.per_particle:
        arrays[key][:] = state[key].numpy()
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def _generate(
    kind: str,
    root: str | os.PathLike,
    params: dict[str, Any],
    progress: bool,
    chunk: int,
    threads: int | None,
) -> dict[str, Any]:
    """Simulate the three splits of ``kind`` and write ``root/<kind>_{split}.npz`` and
    ``root/<kind>.json``, each atomically (see :func:`generate_charged`)."""
    spec = _kind(kind)
    params = _resolve(kind, params)
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    from tqdm.auto import tqdm

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(params[f"num_{split}"] for split in SPLITS)
    bar = tqdm(total=total, desc=f"{kind} N-body", unit="traj", disable=not progress)
    with bar, _torch_threads(threads):
        for split in SPLITS:
            arrays = _simulate_split(kind, params, split, chunk, bar.update)
            atomic_write(root / f"{kind}_{split}.npz", lambda f, a=arrays: np.savez(f, **a))
    shapes = {key: len(shape) for key, shape in _shapes(kind, params, "train").items()}
    s, dt = params["sample_freq"], params["dt"]
    info = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "params": params,
        "split_seeds": {split: split_seed(params["seed"], split) for split in SPLITS},
        "files": {split: f"{kind}_{split}.npz" for split in SPLITS},
        "arrays": {
            **{
                key: ("(num, frames, N, 3)" if rank == 4 else "(num, N)") + " float32"
                for key, rank in shapes.items()
            },
            "meta": "JSON of the split's parameters",
        },
        "frames": _frames(kind, params),
        "frame_steps": spec.frame_steps.format(s=s, t=s * dt),
        "simulator": spec.simulator,
    }
    text = json.dumps(info, indent=2).encode()
    atomic_write(root / f"{kind}.json", lambda f: f.write(text))
    return info


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    keys = sorted(set(stored) | set(wanted))
    return ", ".join(
        f"{k}: {stored.get(k)!r} != {wanted.get(k)!r}"
        for k in keys
        if stored.get(k) != wanted.get(k)
    )


# What numpy and zipfile raise on a damaged .npz (found by flipping, zeroing and cutting bytes).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, NotImplementedError, zipfile.BadZipFile)


def _load(
    kind: str,
    root: str | os.PathLike,
    split: str,
    params: dict[str, Any],
    frames: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Read and check one split of ``kind``'s cache (see :func:`load_charged`). With ``frames``
    the trajectory arrays keep only those frames (each array is checked whole, then cut, so
    that at most one whole array is in memory)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    wanted = _resolve(kind, params)
    root = Path(root)
    info_path, path = root / f"{kind}.json", root / f"{kind}_{split}.npz"
    for file in (info_path, path):
        if not file.is_file():
            raise NBodyCacheError(f"N-body cache file {file} does not exist", "missing")
    try:
        info = json.loads(info_path.read_text())
        stored = info["params"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NBodyCacheError(
            f"N-body cache file {info_path} is unreadable: {err}", "corrupt"
        ) from err
    if info.get("format") != CACHE_FORMAT or info.get("kind") != kind or stored != wanted:
        detail = _differences(stored, wanted) or (
            f"format {info.get('format')!r}, kind {info.get('kind')!r}"
        )
        raise NBodyCacheError(
            f"N-body cache {info_path} was generated with other parameters ({detail})", "stale"
        )
    shapes = _shapes(kind, wanted, split)
    trajectory = set(_kind(kind).trajectory)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({*shapes, "meta"} - set(npz.files))
            if missing:
                raise ValueError(f"missing arrays {missing} (has {sorted(npz.files)})")
            file_meta = json.loads(str(npz["meta"]))
            if file_meta != json.loads(json.dumps(_split_meta(kind, wanted, split))):
                raise NBodyCacheError(
                    f"N-body cache file {path} does not match {info_path} "
                    f"(its parameters: {file_meta})",
                    "stale",
                )
            for key, shape in shapes.items():
                a = npz[key]
                if a.shape != shape or a.dtype != np.float32:
                    raise NBodyCacheError(
                        f"N-body cache file {path}: `{key}` has shape {a.shape} "
                        f"{a.dtype}, expected {shape} float32",
                        "corrupt",
                    )
                if not np.isfinite(a).all():
                    raise NBodyCacheError(
                        f"N-body cache file {path}: `{key}` has non-finite values", "corrupt"
                    )
                arrays[key] = a[:, list(frames)] if frames is not None and key in trajectory else a
    except _UNREADABLE as err:
        raise NBodyCacheError(
            f"N-body cache file {path} is corrupt or truncated: {err}", "corrupt"
        ) from err
    return arrays


def generate_charged(
    root: str | os.PathLike,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    seed: int = 43,
    n_particles: int = 5,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = 0.001,
    loc_std: float = 1.0,
    vel_norm: float = 0.5,
    clip: float = 100.0,
    progress: bool = True,
    chunk: int = 4096,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Simulate the three splits and write ``root/charged_{split}.npz`` and ``root/charged.json``.

    Each split draws :func:`charged_initial_conditions` with its own :func:`split_seed` and is
    simulated ``chunk`` trajectories at a time (the result does not depend on ``chunk``). A
    split file holds float32 ``loc`` and ``vel`` ``(num, frames, N, 3)``, ``charges (num, N)``
    and ``meta``, the JSON of its parameters; ``charged.json`` records every parameter, the
    split seeds and the frame convention. Every file is written to a temporary file in ``root``
    and renamed, so a crash leaves either the old file or the new one, never a partial file.

    ``threads`` is the number of torch intra-op threads while simulating (restored afterwards;
    ``None`` keeps the current setting). One is the default: a step is a few ops on
    ``chunk × 30`` numbers, too small for threads to pay off, and on a busy machine OpenMP
    threads that wait for each other at every op make it up to 100× slower.

    Returns the contents of ``charged.json``.
    """
    params = {
        "num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
        "n_particles": n_particles, "n_steps": n_steps, "sample_freq": sample_freq, "dt": dt,
        "loc_std": loc_std, "vel_norm": vel_norm, "clip": clip,
    }  # fmt: skip
    return _generate("charged", root, params, progress, chunk, threads)


def generate_gravity(
    root: str | os.PathLike,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    seed: int = 43,
    n_particles: int = 100,
    n_steps: int = 5000,
    sample_freq: int = 100,
    dt: float = 0.001,
    G: float = 1.0,
    softening: float = 0.1,
    progress: bool = True,
    chunk: int = 64,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Simulate the three gravity splits and write ``root/gravity_{split}.npz`` and
    ``root/gravity.json``, the way :func:`generate_charged` does (own seed per split, atomic
    writes, result independent of ``chunk``), from :func:`gravity_initial_conditions` with
    :func:`simulate_gravity`.

    A split file holds float32 ``loc``, ``vel`` and ``force`` ``(num, frames, N, 3)`` (frame
    ``k`` is step ``sample_freq·k``, frame 0 the initial state: 50 frames by default; ``vel``
    and ``force`` at the frame's time) and ``meta``; the masses are 1 and not stored.

    ``chunk`` = 64 keeps memory modest: a step holds a few ``chunk × 3 × N × N`` float64
    tensors (≈ 15 MB each for N = 100), and larger chunks are no faster. One thread costs
    ≈ 0.1 ms per trajectory and step at N = 100 (the default 14,000 trajectories of 5,000
    steps take hours; ``threads`` may help on an idle machine).

    Returns the contents of ``gravity.json``.
    """
    params = {
        "num_train": num_train, "num_val": num_val, "num_test": num_test, "seed": seed,
        "n_particles": n_particles, "n_steps": n_steps, "sample_freq": sample_freq, "dt": dt,
        "G": G, "softening": softening,
    }  # fmt: skip
    return _generate("gravity", root, params, progress, chunk, threads)


def load_charged(root: str | os.PathLike, split: str, **params: Any) -> dict[str, np.ndarray]:
    """Read and check one split of the cache under ``root``, generated with ``params`` (the
    defaults of :func:`generate_charged` for those not given). Returns ``loc``, ``vel`` and
    ``charges``; raises :class:`NBodyCacheError` naming the file when it is missing, stale or
    unreadable (nothing half-read is ever returned)."""
    return _load("charged", root, split, params)


def load_gravity(root: str | os.PathLike, split: str, **params: Any) -> dict[str, np.ndarray]:
    """Read and check one split of the gravity cache under ``root`` (parameters and errors as
    :func:`load_charged`, defaults of :func:`generate_gravity`). Returns ``loc``, ``vel`` and
    ``force``."""
    return _load("gravity", root, split, params)


# ----------------------------------------------------------------------------- the data sets


def _dataset_arrays(
    kind: str,
    root: str | os.PathLike,
    split: str,
    params: dict[str, Any],
    frames: dict[str, int],
    max_samples: int | None,
    regenerate: Callable[..., Any] | None,
    progress: bool,
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Check a data set's arguments and read its split: the resolved parameters and the
    arrays of the first ``max_samples`` trajectories, trajectory arrays at ``frames`` only
    (``(num, len(frames), N, 3)``). A missing cache is generated with ``regenerate`` (the
    kind's public generator); a stale or corrupt one is regenerated with a warning, or raises
    :class:`NBodyCacheError` when ``regenerate`` is ``None``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    wanted = _resolve(kind, params)
    n_frames = _frames(kind, wanted)
    for name, frame in frames.items():
        if not 0 <= frame < n_frames:
            raise ValueError(
                f"{name} must be in [0, {n_frames}) ({n_frames} frames for "
                f"n_steps={wanted['n_steps']}, sample_freq={wanted['sample_freq']}), got {frame}"
            )
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
    try:
        arrays = _load(kind, root, split, wanted, list(frames.values()))
    except NBodyCacheError as err:
        if regenerate is None:
            raise
        if err.reason != "missing":
            warnings.warn(f"{err}; regenerating the cache", stacklevel=3)
        regenerate(root, **wanted, progress=progress)
        arrays = _load(kind, root, split, wanted, list(frames.values()))
    keep = slice(None if max_samples is None else max_samples)
    tensors = {key: torch.from_numpy(np.ascontiguousarray(a[keep])) for key, a in arrays.items()}
    return wanted, tensors


class NBody(Dataset):
    r"""The charged N-body data set of EGNN/SEGNN as ``Data`` graphs (no edges: apply e.g.
    :class:`~relaxgnn.data.FullyConnected` as ``transform``).

    Item ``i`` of a split is trajectory ``i``:
    ``Data(pos=loc[frame_in] (N, 3), vel=vel[frame_in] (N, 3), charges (N, 1),
    y=loc[frame_out] (N, 3))``, float32. With the defaults (EGNN's "nbody_small") the input is
    step 3100 and the target step 4100, 1000 steps (time 1.0) later.

    The cache under ``root`` (:func:`generate_charged`) is generated when missing; when it was
    generated with other parameters, or a file is corrupt, it is regenerated with a warning
    (``generate=True``) or :class:`NBodyCacheError` is raised (``generate=False``).

    Args:
        root: cache directory.
        kind: ``"charged"`` (the gravity data set is :class:`GravityNBody`).
        split: ``"train"`` (10,000), ``"val"`` (2,000) or ``"test"`` (2,000 trajectories).
        max_samples: keep the first ``max_samples`` trajectories (EGNN trains on 3,000);
            ``None`` keeps all.
        frame_in, frame_out: frames of the input and the target (0 ≤ frame < 49).
        generate: generate or regenerate the cache when needed.
        transform: applied to each item on access (PyG convention).
        progress: show the generation progress bar.
        num_train, …, clip: generation parameters of :func:`generate_charged` (explicit, so that
            a config file can set them).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        kind: str = "charged",
        split: str = "train",
        max_samples: int | None = 3000,
        frame_in: int = 30,
        frame_out: int = 40,
        generate: bool = True,
        transform: Callable[[Data], Data] | None = None,
        progress: bool = True,
        num_train: int = 10_000,
        num_val: int = 2_000,
        num_test: int = 2_000,
        seed: int = 43,
        n_particles: int = 5,
        n_steps: int = 5000,
        sample_freq: int = 100,
        dt: float = 0.001,
        loc_std: float = 1.0,
        vel_norm: float = 0.5,
        clip: float = 100.0,
    ) -> None:
        params = dict(num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                      n_particles=n_particles, n_steps=n_steps, sample_freq=sample_freq, dt=dt,
                      loc_std=loc_std, vel_norm=vel_norm, clip=clip)
        if kind != "charged":
            raise ValueError(f"kind must be 'charged', got {kind!r} (gravity: GravityNBody)")
        super().__init__(str(root), transform=transform)
        self.params, arrays = _dataset_arrays(
            "charged", root, split, params, {"frame_in": frame_in, "frame_out": frame_out},
            max_samples, generate_charged if generate else None, progress,
        )  # fmt: skip
        self.kind, self.split = kind, split
        self.frame_in, self.frame_out = frame_in, frame_out
        self._pos = arrays["loc"][:, 0].contiguous()
        self._vel = arrays["vel"][:, 0].contiguous()
        self._y = arrays["loc"][:, 1].contiguous()
        self._charges = arrays["charges"].unsqueeze(-1)

    def len(self) -> int:
        return self._pos.shape[0]

    def get(self, idx: int) -> Data:
        return Data(
            pos=self._pos[idx], vel=self._vel[idx], charges=self._charges[idx], y=self._y[idx]
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.kind}, split={self.split!r}, {len(self)} "
            f"graphs, frames {self.frame_in}→{self.frame_out})"
        )


class GravityNBody(Dataset):
    r"""SEGNN's gravity N-body data set as ``Data`` graphs with k-nearest-neighbour edges.

    Item ``i`` of a split is trajectory ``i`` (float32):
    ``Data(pos=loc[frame_in] (N, 3), vel=vel[frame_in] (N, 3), mass (N, 1) (ones), y (N, 3),
    edge_index (2, N·min(neighbours, N − 1)))``, where ``edge_index`` is
    :class:`~relaxgnn.data.KNNGraph` of ``pos``: an edge ``j → i`` (``edge_index[0] = j``,
    ``edge_index[1] = i``) from each of the ``neighbours`` nodes ``j`` nearest to ``i``
    (SEGNN's gravity setting: 6). With the defaults the input is step 3000 (time 3.0) and the
    target frame step 4000.

    Targets (``target``):

    - ``"pos"``: ``y = loc[frame_out]``, the positions ``frame_out − frame_in`` frames later
      (SEGNN's task; 1000 steps, time 1.0, by default).
    - ``"force"``: ``y = force[frame_in]``, the softened gravitational force
      :math:`m_i a_i` on each body at the input positions (``frame_out`` is then unused but
      must still be a valid frame).

    The cache under ``root`` (:func:`generate_gravity`: ``gravity_{split}.npz`` and
    ``gravity.json``) is generated when missing, and regenerated with a warning
    (``generate=True``) or reported by :class:`NBodyCacheError` (``generate=False``) when it
    is stale or corrupt, as for :class:`NBody`.

    Args:
        root: cache directory.
        split: ``"train"`` (10,000), ``"val"`` (2,000) or ``"test"`` (2,000 trajectories).
        max_samples: keep the first ``max_samples`` trajectories (``None``: all).
        frame_in, frame_out: frames of the input and the target (0 ≤ frame < 50).
        target: ``"pos"`` or ``"force"`` (above).
        neighbours: ``k`` of the k-nearest-neighbour graph.
        generate: generate or regenerate the cache when needed.
        transform: applied to each item on access, after the graph is built (PyG convention).
        progress: show the generation progress bar.
        num_train, …, softening: generation parameters of :func:`generate_gravity`.
    """

    TARGETS = ("pos", "force")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        max_samples: int | None = None,
        frame_in: int = 30,
        frame_out: int = 40,
        target: str = "pos",
        neighbours: int = 6,
        generate: bool = True,
        transform: Callable[[Data], Data] | None = None,
        progress: bool = True,
        num_train: int = 10_000,
        num_val: int = 2_000,
        num_test: int = 2_000,
        seed: int = 43,
        n_particles: int = 100,
        n_steps: int = 5000,
        sample_freq: int = 100,
        dt: float = 0.001,
        G: float = 1.0,
        softening: float = 0.1,
    ) -> None:
        params = dict(num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
                      n_particles=n_particles, n_steps=n_steps, sample_freq=sample_freq, dt=dt,
                      G=G, softening=softening)
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS}, got {target!r}")
        self._graph = KNNGraph(neighbours)  # checks neighbours
        super().__init__(str(root), transform=transform)
        self.params, arrays = _dataset_arrays(
            "gravity", root, split, params, {"frame_in": frame_in, "frame_out": frame_out},
            max_samples, generate_gravity if generate else None, progress,
        )  # fmt: skip
        self.split, self.target, self.neighbours = split, target, neighbours
        self.frame_in, self.frame_out = frame_in, frame_out
        self._pos = arrays["loc"][:, 0].contiguous()
        self._vel = arrays["vel"][:, 0].contiguous()
        self._y = (arrays["loc"][:, 1] if target == "pos" else arrays["force"][:, 0]).contiguous()

    def len(self) -> int:
        return self._pos.shape[0]

    def get(self, idx: int) -> Data:
        pos = self._pos[idx]
        data = Data(pos=pos, vel=self._vel[idx], mass=pos.new_ones(pos.shape[0], 1), y=self._y[idx])
        return self._graph(data)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(split={self.split!r}, {len(self)} graphs, frames "
            f"{self.frame_in}→{self.frame_out}, target={self.target!r}, "
            f"neighbours={self.neighbours})"
        )


__all__ = [
    "CHARGED_DEFAULTS",
    "GRAVITY_DEFAULTS",
    "GravityNBody",
    "NBody",
    "NBodyCacheError",
    "charged_initial_conditions",
    "generate_charged",
    "generate_gravity",
    "gravity_initial_conditions",
    "load_charged",
    "load_gravity",
    "simulate_charged",
    "simulate_gravity",
    "split_seed",
]

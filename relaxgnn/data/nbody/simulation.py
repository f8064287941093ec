r"""The N-body simulators of EGNN, SEGNN and "Improving Equivariant Model Training via
Constraint Relaxation": charged particles (Coulomb) and gravity in pure torch, vectorised over
trajectories, and their random initial conditions.

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

import torch
from torch import Tensor

__all__ = [
    "charged_initial_conditions",
    "check_steps",
    "gravity_initial_conditions",
    "simulate_charged",
    "simulate_gravity",
]


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


def check_steps(n_steps: int, sample_freq: int, dt: float) -> None:
    """``ValueError`` unless ``n_steps`` is a multiple of ``sample_freq`` ≥ 1 and ``dt`` > 0."""
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
    does not stall on a busy machine (see :func:`~relaxgnn.data.nbody.generate_charged`).
    """
    B, N = _check_state(loc0, vel0)
    if charges.shape != (B, N):
        raise ValueError(f"charges must have shape (B, N) = ({B}, {N}), got {tuple(charges.shape)}")
    check_steps(n_steps, sample_freq, dt)
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
    check_steps(n_steps, sample_freq, dt)
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

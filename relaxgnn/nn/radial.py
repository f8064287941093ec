r"""Radial building blocks of NequIP-style layers: a Bessel basis of the edge length and a
smooth polynomial envelope that takes it to zero at the cutoff."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BesselBasis(nn.Module):
    r"""Radial Bessel basis (DimeNet, Gasteiger et al. 2020; NequIP):

    .. math::
        e_n(r) = \sqrt{\frac{2}{c}}\, \frac{\sin(w_n r / c)}{r}, \qquad w_n = n\pi,
        \quad n = 1, \dots, N,

    the ``l = 0`` spherical Bessel functions that vanish at :math:`r = c`. At :math:`r \to 0`,
    :math:`e_n \to \sqrt{2/c}\, w_n / c`; near 0 (:math:`|w_n r/c| < 10^{-2}`) the value is its
    Taylor series :math:`\frac{\sin x}{x} = 1 - \frac{x^2}{6} + \frac{x^4}{120}`, so the value and
    every derivative stay finite and accurate at :math:`r = 0`.

    Args:
        cutoff: :math:`c`, in the unit of the positions.
        num_basis: :math:`N`.
        trainable: learn the frequencies :math:`w_n` (NequIP's option), initialised at
            :math:`n\pi`.

    Shapes: ``r (*)`` → ``(*, num_basis)``.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if num_basis < 1:
            raise ValueError(f"num_basis must be >= 1, got {num_basis}")
        self.cutoff = float(cutoff)
        self.num_basis = num_basis
        self.trainable = trainable
        # fixed frequencies are made in the dtype of r at each call (exact nπ in float64 even
        # for a model built in float32 and cast with .double())
        self.freq = nn.Parameter(torch.empty(num_basis)) if trainable else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.freq is not None:
            with torch.no_grad():
                self.freq.copy_(torch.arange(1, self.num_basis + 1) * math.pi)

    def forward(self, r: Tensor) -> Tensor:
        w = (self.freq.to(r.dtype) if self.freq is not None
             else torch.arange(1, self.num_basis + 1, dtype=r.dtype, device=r.device) * math.pi)
        x = w * r.unsqueeze(-1) / self.cutoff  # (*, N)
        small = x.abs() < 1e-2
        safe = torch.where(small, torch.ones_like(x), x)  # keeps sin(x)/x away from 0/0
        sinc = torch.where(small, 1 - x**2 / 6 + x**4 / 120, torch.sin(safe) / safe)
        return math.sqrt(2 / self.cutoff) * w / self.cutoff * sinc

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, num_basis={self.num_basis}, trainable={self.trainable}"


class PolynomialCutoff(nn.Module):
    r"""Smooth envelope of DimeNet / NequIP, with :math:`x = r / c`:

    .. math::
        u(r) = 1 - \frac{(p+1)(p+2)}{2} x^p + p(p+2)\, x^{p+1} - \frac{p(p+1)}{2} x^{p+2}
        \quad (x < 1), \qquad u(r) = 0 \quad (x \ge 1).

    :math:`u(0) = 1` and :math:`u(c) = u'(c) = u''(c) = 0`, so an edge leaving the cutoff sphere
    changes energies and forces continuously. No parameters.

    Shapes: ``r (*)`` → ``(*)``.
    """

    def __init__(self, cutoff: float, p: int = 6) -> None:
        super().__init__()
        if cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if p < 2:
            raise ValueError(f"p must be >= 2 (smoothness), got {p}")
        self.cutoff = float(cutoff)
        self.p = p

    def forward(self, r: Tensor) -> Tensor:
        p = self.p
        x = r / self.cutoff
        u = (1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
             - p * (p + 1) / 2 * x ** (p + 2))
        return torch.where(x < 1, u, torch.zeros_like(u))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, p={self.p}"

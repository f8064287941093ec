r"""Vector-Neuron layers (Deng et al. 2021, "Vector Neurons: A General Framework for
SO(3)-Equivariant Networks").

A vector-neuron feature is a list of :math:`C` three-vectors, :math:`V \in \mathbb R^{C\times 3}`;
a rotation or reflection :math:`R` acts as :math:`V \mapsto V R^\top` (every vector rotated).
Here it is stored flattened in e3nn's layout of the irreps ``"Cx1o"``: ``x[..., 3c:3c+3]`` is
vector :math:`c` (x, y, z), so relaxation paths, ``equivariance_error`` and the Lie-derivative
penalty (generators :math:`I_C \otimes A_k`) treat it like any other irreps.

- :class:`VNLinear`: :math:`V' = W V` with :math:`W \in \mathbb R^{C'\times C}` — mixes
  channels, never coordinates, so :math:`(W V) R^\top = W (V R^\top)`: O(3)-equivariant.
- :func:`vn_leaky_relu`: with a learned direction :math:`k` per channel,
  :math:`q' = q` where :math:`\langle q, k\rangle \ge 0`, else
  :math:`q - \frac{\langle q, k\rangle}{\lVert k\rVert^2} k` (the component along :math:`k`
  removed), mixed as :math:`\alpha q + (1 - \alpha) q'` (``negative_slope`` :math:`\alpha`).
  Inner products are invariant, so the map is equivariant.
- :class:`VNBatchNorm`: batch normalisation of the (invariant) norms,
  :math:`v_c \mapsto v_c\, \mathrm{BN}(\lVert v_c\rVert) / \lVert v_c\rVert`.
- :class:`VNLinearLeakyReLU`: :math:`\mathrm{LeakyReLU}_{U V}(\mathrm{BN}(W V))`, the block of
  VN-DGCNN — feature map :math:`W` and direction map :math:`U` both read the block's input.
- :class:`VNStdFeature`: invariant features :math:`V Z^\top` from an equivariant frame
  :math:`Z = \mathrm{VN}(V) \in \mathbb R^{3\times 3}` (:math:`V R^\top R Z^\top = V Z^\top`).

These layers contain no relaxation code: :meth:`VNLinearLeakyReLU.relaxation_placement` only
names where the paper's paths go — a dense map of the flattened vector features next to each
VN linear map, the feature map and the direction map (Pertigkiozoglou et al. 2024).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3
from torch import Tensor, nn

EPS = 1e-6  # added to norms, as in the Vector Neurons code


def _check_channels(**channels: int) -> None:
    for name, value in channels.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _vectors(x: Tensor, channels: int, where: str) -> Tensor:
    """``(*, C·3)`` → ``(*, C, 3)`` with a clear error on a wrong width."""
    if x.shape[-1] != 3 * channels:
        raise ValueError(f"{where} expects {channels} vectors ({3 * channels} numbers) per row, "
                         f"got input of shape {tuple(x.shape)}")
    return x.unflatten(-1, (channels, 3))


class VNLinear(nn.Module):
    r"""The vector-neuron linear map :math:`V' = W V` (no bias: a bias vector would not rotate).

    Initialised as ``nn.Linear(in_channels, out_channels, bias=False)`` is.

    Shapes:
        ``x``: ``(*, in_channels·3)`` (irreps ``irreps_in = in_channels x 1o``) →
        ``(*, out_channels·3)`` (``irreps_out``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.irreps_in = o3.Irreps(f"{in_channels}x1o")
        self.irreps_out = o3.Irreps(f"{out_channels}x1o")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        v = _vectors(x, self.in_channels, type(self).__name__)
        # (*, 3, C_in) @ (C_in, C_out): one large matrix product (W @ v is a batch of small ones)
        return (v.transpose(-1, -2) @ self.weight.T).transpose(-1, -2).flatten(-2)

    def extra_repr(self) -> str:
        return f"{self.in_channels}x1o -> {self.out_channels}x1o"


def vn_leaky_relu(q: Tensor, k: Tensor, negative_slope: float = 0.2) -> Tensor:
    r"""The vector-neuron leaky ReLU of features ``q`` along directions ``k`` (module docstring).

    Shapes:
        ``q``: ``(*, C, 3)``; ``k``: ``(*, C, 3)`` or ``(*, 1, 3)`` (one shared direction) →
        ``(*, C, 3)``.
    """
    dot = (q * k).sum(-1, keepdim=True)
    scale = torch.where(dot < 0, dot / ((k * k).sum(-1, keepdim=True) + EPS), 0.0)
    return q - (1.0 - negative_slope) * scale * k


class VNLeakyReLU(nn.Module):
    r"""Vector-neuron leaky ReLU with its own direction map :math:`k = U V` (``share``: one
    direction for all channels).

    Shapes:
        ``x``: ``(*, channels·3)`` → ``(*, channels·3)``.
    """

    def __init__(self, channels: int, share_nonlinearity: bool = False,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        _check_channels(channels=channels)
        self.channels, self.negative_slope = channels, negative_slope
        self.irreps_in = self.irreps_out = o3.Irreps(f"{channels}x1o")
        self.direction = VNLinear(channels, 1 if share_nonlinearity else channels)

    def reset_parameters(self) -> None:
        self.direction.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        k = self.direction(x).unflatten(-1, (-1, 3))
        return vn_leaky_relu(_vectors(x, self.channels, "VNLeakyReLU"), k,
                             self.negative_slope).flatten(-2)


class VNBatchNorm(nn.Module):
    r"""Batch normalisation of each channel's vector norm, direction kept:

    .. math::
        v_c \mapsto v_c\, \mathrm{BN}(n_c) / n_c, \qquad n_c = \lVert v_c\rVert + \epsilon

    (statistics over all rows: points, or edges of a graph convolution).

    Shapes:
        ``x``: ``(rows, channels·3)`` → ``(rows, channels·3)``.
    """

    def __init__(self, channels: int, momentum: float = 0.1) -> None:
        super().__init__()
        _check_channels(channels=channels)
        self.channels = channels
        self.irreps_in = self.irreps_out = o3.Irreps(f"{channels}x1o")
        self.bn = nn.BatchNorm1d(channels, momentum=momentum)

    def reset_parameters(self) -> None:
        self.bn.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        v = _vectors(x, self.channels, "VNBatchNorm")
        norm = v.norm(dim=-1) + EPS
        if x.shape[0] == 0:  # nothing to normalise (BatchNorm1d refuses empty batches)
            return x
        return (v * (self.bn(norm) / norm).unsqueeze(-1)).flatten(-2)


class VNLinearLeakyReLU(nn.Module):
    r"""The VN-DGCNN block :math:`V' = \mathrm{LeakyReLU}_{k}(\mathrm{BN}(W V))`,
    :math:`k = U V`: the feature map ``feature`` (:math:`W`) and the direction map ``direction``
    (:math:`U`, one shared direction with ``share_nonlinearity``) both read the input.

    Shapes:
        ``x``: ``(rows, in_channels·3)`` → ``(rows, out_channels·3)``.
    """

    def __init__(self, in_channels: int, out_channels: int, share_nonlinearity: bool = False,
                 negative_slope: float = 0.2, batch_norm: bool = True) -> None:
        super().__init__()
        _check_channels(in_channels=in_channels, out_channels=out_channels)
        self.negative_slope = negative_slope
        self.irreps_in = o3.Irreps(f"{in_channels}x1o")
        self.irreps_out = o3.Irreps(f"{out_channels}x1o")
        self.feature = VNLinear(in_channels, out_channels)
        self.batch_norm = VNBatchNorm(out_channels) if batch_norm else None
        self.direction = VNLinear(in_channels, 1 if share_nonlinearity else out_channels)

    def reset_parameters(self) -> None:
        for module in (self.feature, self.batch_norm, self.direction):
            if module is not None:
                module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        q = self.feature(x)
        if self.batch_norm is not None:
            q = self.batch_norm(q)
        k = self.direction(x).unflatten(-1, (-1, 3))
        return vn_leaky_relu(q.unflatten(-1, (-1, 3)), k, self.negative_slope).flatten(-2)

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        r"""The paper's paths: a dense map of the flattened input next to the feature map and
        next to the direction map,

        .. math::
            q = W V + \theta\, g_W(\mathrm{vec}\,V), \qquad
            k = U V + \theta\, g_U(\mathrm{vec}\,V),

        on the modules ``feature`` and ``direction`` (``targets`` choose among them)."""
        from ..relax import RelaxConfig

        config = RelaxConfig.parse(relax)
        offered = ["feature", "direction"]
        return {name: config for name in offered if config.wants(name, offered)}


class VNStdFeature(nn.Module):
    r"""Rotation-invariant features of vector-neuron features (VN-DGCNN's head):

    .. math::
        Z = W_3\,\mathrm{VN}_2(\mathrm{VN}_1(V)) \in \mathbb R^{3\times 3}, \qquad
        S = V Z^\top \in \mathbb R^{C\times 3},

    with :math:`\mathrm{VN}_1: C \to C/2`, :math:`\mathrm{VN}_2: C/2 \to C/4` blocks
    (:class:`VNLinearLeakyReLU`) and :math:`W_3` a :class:`VNLinear` to 3 channels (the frame).
    Under :math:`V \mapsto V R^\top`, :math:`Z \mapsto Z R^\top` and :math:`S` is unchanged, for
    rotations and reflections alike.

    Shapes:
        ``x``: ``(rows, channels·3)`` → ``(rows, channels·3)`` invariant numbers (irreps
        ``3·channels x 0e``).
    """

    def __init__(self, channels: int, share_nonlinearity: bool = False,
                 negative_slope: float = 0.2) -> None:
        super().__init__()
        if channels < 4:
            raise ValueError(f"VNStdFeature needs at least 4 channels (it halves them twice), "
                             f"got {channels}")
        self.channels = channels
        self.irreps_in = o3.Irreps(f"{channels}x1o")
        self.irreps_out = o3.Irreps(f"{3 * channels}x0e")
        self.vn1 = VNLinearLeakyReLU(channels, channels // 2, share_nonlinearity, negative_slope)
        self.vn2 = VNLinearLeakyReLU(channels // 2, channels // 4, share_nonlinearity,
                                     negative_slope)
        self.frame = VNLinear(channels // 4, 3)

    def reset_parameters(self) -> None:
        for module in (self.vn1, self.vn2, self.frame):
            module.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        z = self.frame(self.vn2(self.vn1(x))).unflatten(-1, (3, 3))
        v = _vectors(x, self.channels, "VNStdFeature")
        return (v @ z.transpose(-1, -2)).flatten(-2)


__all__ = ["VNBatchNorm", "VNLeakyReLU", "VNLinear", "VNLinearLeakyReLU", "VNStdFeature",
           "vn_leaky_relu"]

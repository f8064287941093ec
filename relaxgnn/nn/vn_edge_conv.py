r"""Vector-Neuron edge convolution (the layer of VN-DGCNN, Deng et al. 2021)."""

from __future__ import annotations

from typing import Any

import torch
from e3nn import o3
from torch import Tensor
from torch_geometric.nn import MessagePassing

from .checks import check_edge_index, check_features
from .vector_neurons import VNLinearLeakyReLU


class VNEdgeConv(MessagePassing):
    r"""DGCNN's edge convolution on vector-neuron features :math:`V_i \in \mathbb R^{C\times 3}`:

    .. math::
        V_i' = \frac{1}{|\mathcal N(i)|} \sum_{j \in \mathcal N(i)}
            \mathrm{VN}\big([V_j - V_i \,\Vert\, V_i]\big),

    :math:`\mathrm{VN}` a :class:`~relaxgnn.nn.vector_neurons.VNLinearLeakyReLU` block on the
    :math:`2C` edge vectors (``layer``), averaged over the neighbours (0 for a node without
    any). Differences and copies of vectors rotate with them, so :math:`V'` is
    O(3)-equivariant; it is translation-invariant only where :math:`V` is (VN-DGCNN centres
    its points). The neighbourhoods (a kNN graph in VN-DGCNN, rebuilt on each layer's input
    features) are given as ``edge_index``.

    Args:
        in_channels, out_channels: vectors per node before and after.
        share_nonlinearity, negative_slope: of the block (one shared direction or one per
            channel; the leaky ReLU's slope).

    Shapes:
        ``x``: ``(N, in_channels·3)`` (irreps ``in_channels x 1o``), ``edge_index``: ``(2, E)``
        (``j → i``) → ``(N, out_channels·3)``.
    """

    def __init__(self, in_channels: int, out_channels: int, share_nonlinearity: bool = False,
                 negative_slope: float = 0.2) -> None:
        super().__init__(aggr="mean")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.irreps_in = o3.Irreps(f"{in_channels}x1o")
        self.irreps_out = o3.Irreps(f"{out_channels}x1o")
        self.layer = VNLinearLeakyReLU(2 * in_channels, out_channels, share_nonlinearity,
                                       negative_slope)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.layer.reset_parameters()

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        check_features(x, "x", x.shape[0], 3 * self.in_channels)
        check_edge_index(edge_index, x.shape[0])
        return self.propagate(edge_index, x=x, size=(x.shape[0], x.shape[0]))

    def message(self, x_i: Tensor, x_j: Tensor) -> Tensor:
        return self.layer(torch.cat([x_j - x_i, x_i], -1))

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        """The paper's paths, in the block: see
        :meth:`~relaxgnn.nn.vector_neurons.VNLinearLeakyReLU.relaxation_placement`."""
        return {f"layer.{name}": config
                for name, config in self.layer.relaxation_placement(relax).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.in_channels}x1o -> {self.out_channels}x1o)"

"""VN-DGCNN: the rotation-invariant point-cloud classifier of Vector Neurons (Deng et al. 2021)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Data

from ..geometry.clouds import centre_per_graph
from ..geometry.neighbours import knn_edges
from ..nn.checks import check_batch, check_positions, trusted_inputs
from ..nn.vector_neurons import VNLinearLeakyReLU, VNStdFeature
from ..nn.vn_edge_conv import VNEdgeConv
from ..relax.attach import attach, nested, resolve_placement
from ..symmetry.signature import Signature
from .io import records_init_args
from .pooling import pool


def knn_with_self(x: Tensor, k: int, batch: Tensor | None) -> Tensor:
    """DGCNN's neighbourhoods: each node's ``k - 1`` nearest other nodes of its cloud and the
    node itself (the reference's kNN finds the point among its own ``k`` nearest), ``(2, N·k)``
    for clouds of more than ``k`` points; distances in the space of ``x``'s rows."""
    node = torch.arange(x.shape[0], device=x.device)
    loops = torch.stack([node, node])
    if k == 1:
        return loops
    return torch.cat([knn_edges(x, k - 1, batch), loops], 1)


@records_init_args
class VNDGCNN(nn.Module):
    r"""VN-DGCNN classifier (Deng et al. 2021), rotation-invariant logits per point cloud.

    Points :math:`p_i` (centred per cloud, so translations do nothing) are one vector each,
    :math:`V^0_i = [p_i]`. Four :class:`~relaxgnn.nn.VNEdgeConv` layers follow DGCNN: layer
    :math:`t` builds the kNN graph of its input :math:`V^{t-1}` (of the points for
    :math:`t = 1`; distances :math:`\lVert V_i - V_j\rVert_F` are invariant, so the graph is
    too) and computes :math:`V^t`. Then

    .. math::
        U_i = \mathrm{VN}_5\big([V^1_i \Vert V^2_i \Vert V^3_i \Vert V^4_i]\big),\quad
        S_i = \mathrm{Std}\big([U_i \,\Vert\, \bar U]\big),\quad
        y = \mathrm{MLP}\big([\max_i S_i \,\Vert\, \mathrm{mean}_i S_i]\big),

    :math:`\bar U` the cloud's mean, :math:`\mathrm{VN}_5` a
    :class:`~relaxgnn.nn.vector_neurons.VNLinearLeakyReLU` with one shared direction,
    :math:`\mathrm{Std}` the invariant features :class:`~relaxgnn.nn.vector_neurons.VNStdFeature`
    and the head ``Linear–BN–LeakyReLU–Dropout`` twice, then ``Linear``. Every step before
    :math:`S` is O(3)-equivariant and :math:`S` is invariant, so the logits are invariant to
    rotations, reflections, translations and permutations of the points. The defaults are the
    paper's ModelNet40 network (channels ``1024/3`` etc., k = 20, mean pooling over
    neighbours).

    Args:
        num_classes: logits per cloud.
        k: neighbours per point (the point itself included, as in the reference).
        channels: vector channels of the four edge convolutions.
        embed_channels: vector channels of :math:`\mathrm{VN}_5`.
        head: hidden widths of the classifier MLP.
        dropout: dropout probability in the head.
        negative_slope: of the VN leaky ReLUs and the head's.
        relax: relaxation paths: a path kind or :class:`~relaxgnn.relax.RelaxConfig` fields for
            the paper's placement — a dense map of the flattened vector features next to the
            feature map and the direction map of every VN block (the edge convolutions,
            :math:`\mathrm{VN}_5` and the two blocks of :math:`\mathrm{Std}`; ``targets``
            choose among ``"feature"`` and ``"direction"``) — or an explicit placement
            ``{module pattern: config}``; ``None`` for none.

    Shapes:
        ``data.pos``: ``(N, 3)``, ``data.batch``: ``(N,)`` → ``(num_graphs, num_classes)``.
    """

    def __init__(
        self,
        num_classes: int = 40,
        k: int = 20,
        channels: Sequence[int] = (21, 21, 42, 85),
        embed_channels: int = 341,
        head: Sequence[int] = (512, 256),
        dropout: float = 0.5,
        negative_slope: float = 0.2,
        relax: str | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not channels:
            raise ValueError("VNDGCNN needs at least one edge convolution (channels)")
        self.num_classes, self.k = num_classes, k
        widths = [1, *channels]
        self.convs = nn.ModuleList(VNEdgeConv(a, b, negative_slope=negative_slope)
                                   for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.embed = VNLinearLeakyReLU(sum(channels), embed_channels, share_nonlinearity=True,
                                       negative_slope=negative_slope)
        self.std_feature = VNStdFeature(2 * embed_channels, negative_slope=negative_slope)
        sizes = [2 * 3 * 2 * embed_channels, *head]
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.LeakyReLU(negative_slope),
                       nn.Dropout(dropout)]
        self.head = nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes))
        self.relax = relax
        placement = resolve_placement(relax, self.relaxation_placement)
        if placement:
            attach(self, placement)

    def relaxation_placement(self, relax: Any = "linear") -> dict[str, Any]:
        """The default placement (class docstring) as ``{module pattern: config}``."""
        blocks = {f"convs.{i}": conv for i, conv in enumerate(self.convs)}
        blocks |= {"embed": self.embed, "std_feature.vn1": self.std_feature.vn1,
                   "std_feature.vn2": self.std_feature.vn2}
        return {key: value for name, block in blocks.items()
                for key, value in nested(name, block.relaxation_placement(relax)).items()}

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    @property
    def signature(self) -> Signature:
        return Signature({"pos": "1x1o"}, f"{self.num_classes}x0e", "graph")

    def forward(self, data: Data) -> Tensor:
        pos = check_positions(getattr(data, "pos", None))
        dtype = self.head[-1].weight.dtype
        if pos.dtype != dtype:
            raise TypeError(f"`pos` is {pos.dtype} but the model computes in {dtype}: convert "
                            "the data or the model")
        batch = check_batch(getattr(data, "batch", None), pos.shape[0])
        num_graphs = getattr(data, "num_graphs", None) if batch is not None else 1
        if batch is None:  # one cloud
            batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        x = centre_per_graph(pos, batch)
        features = []
        with trusted_inputs():
            for conv in self.convs:
                x = conv(x, knn_with_self(x, self.k, batch))
                features.append(x)
        u = self.embed(torch.cat(features, -1))
        u = torch.cat([u, pool(u, batch, "mean", num_graphs)[batch]], -1)
        s = self.std_feature(u)
        s = torch.cat([pool(s, batch, "max", num_graphs), pool(s, batch, "mean", num_graphs)], -1)
        return self.head(s)

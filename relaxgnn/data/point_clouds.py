r"""Point-cloud transforms shared by :class:`~relaxgnn.data.ModelNet` and
:class:`~relaxgnn.data.SyntheticShapes`: centring and unit-sphere scaling, rotation augmentation
and invariant/equivariant point features. All are batch-aware: on a PyG ``Batch`` (a ``batch``
vector is present) every cloud is treated on its own.

With :math:`p_i` the points of one cloud (:math:`n` of them) and
:math:`c = \frac{1}{n}\sum_i p_i` its centroid:

- :class:`Normalize`: :math:`p_i \mapsto (p_i - c) / \max_j \lVert p_j - c \rVert` (PointNet's
  ``pc_normalize``): centred, farthest point on the unit sphere.
- :class:`RandomRotation`: :math:`p_i \mapsto R p_i` with :math:`R` a rotation about the z axis
  by a uniform angle, or Haar-uniform on SO(3); fresh on every call, or a fixed function of a
  seed and the item's index.
- :class:`PointFeatures`: invariant scalars :math:`x_i = (\lVert p_i - c\rVert,
  \frac{1}{|\mathcal N(i)|}\sum_{j \in \mathcal N(i)} \lVert p_j - p_i \rVert)` (irreps
  ``2x0e``) and the equivariant vector :math:`\mathrm{rel}_i = p_i - c` (``1x1o``).

k-nearest-neighbour graphs are :class:`~relaxgnn.data.KNNGraph` (exact, batch-aware, no
pyg-lib).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.transforms import BaseTransform
from torch_geometric.utils import scatter

from ..geometry import centre_per_graph, edge_vectors
from ..symmetry.group import random_rotation

ROTATIONS = ("none", "z", "so3")
"""Rotation augmentations of the point-cloud data sets: none, about the z (up) axis, SO(3)."""

__all__ = [
    "ROTATIONS",
    "Normalize",
    "PointFeatures",
    "RandomRotation",
    "centroids",
    "normalize_points",
]


def _batch_of(pos: Tensor, batch: Tensor | None) -> tuple[Tensor, int]:
    """The graph index of each point (zeros without ``batch``) and the number of graphs."""
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"pos must have shape (num_points, 3), got {tuple(pos.shape)}")
    if batch is None:
        return torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device), 1
    if batch.shape != (pos.shape[0],):
        raise ValueError(f"batch must have shape ({pos.shape[0]},), got {tuple(batch.shape)}")
    return batch, int(batch.max()) + 1 if batch.numel() else 0


def centroids(pos: Tensor, batch: Tensor | None = None) -> Tensor:
    r"""The centroid :math:`c_g = \frac{1}{n_g}\sum_{i \in g} p_i` of each cloud: ``(G, 3)``
    (``G`` = 1 without ``batch``)."""
    graph, num_graphs = _batch_of(pos, batch)
    return scatter(pos, graph, dim=0, dim_size=num_graphs, reduce="mean")


def normalize_points(
    pos: Tensor, batch: Tensor | None = None, center: bool = True, scale: bool = True
) -> Tensor:
    r"""Centre each cloud at its centroid (``center``) and divide it by its largest distance
    from the centroid (``scale``): :math:`p_i \mapsto (p_i - c)/\max_j\lVert p_j - c\rVert`.
    ``scale`` alone divides by the largest norm about the centroid but leaves the cloud where
    it is. A cloud whose points all coincide is only centred."""
    graph, num_graphs = _batch_of(pos, batch)
    if not (center or scale) or pos.shape[0] == 0:
        return pos
    c = centroids(pos, graph)[graph]
    rel = pos - c
    if scale:
        radius = scatter(rel.norm(dim=1), graph, dim=0, dim_size=num_graphs, reduce="max")
        rel = rel / torch.where(radius > 0, radius, torch.ones_like(radius))[graph, None]
    return rel if center else c + rel


class Normalize(BaseTransform):
    r"""Transform: centre each cloud at its centroid and scale it into the unit ball, farthest
    point at distance 1 (see :func:`normalize_points`); batch-aware."""

    def __init__(self, center: bool = True, scale: bool = True) -> None:
        self.center, self.scale = bool(center), bool(scale)

    def forward(self, data: Data) -> Data:
        data.pos = normalize_points(data.pos, getattr(data, "batch", None), self.center,
                                    self.scale)
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(center={self.center}, scale={self.scale})"


def _item_seed(seed: int, index: int) -> int:
    """A 64-bit seed for item ``index`` of a rotated data set with ``rotation_seed=seed``
    (``numpy.random.SeedSequence``: different seeds or indices give independent streams)."""
    words = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return int(words[0]) | (int(words[1]) << 32)


def z_rotation(angle: float | Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""The rotation about the z axis by ``angle`` (radians):
    :math:`\begin{pmatrix}\cos a & -\sin a & 0\\ \sin a & \cos a & 0\\ 0 & 0 & 1\end{pmatrix}`."""
    a = torch.as_tensor(angle, dtype=torch.float64)
    c, s = torch.cos(a), torch.sin(a)
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    rows = [torch.stack([c, -s, zero]), torch.stack([s, c, zero]), torch.stack([zero, zero, one])]
    return torch.stack(rows).to(dtype)


class RandomRotation(BaseTransform):
    r"""Rotation augmentation: ``data.pos`` (and the other ``keys``, vectors ``(N, 3)``)
    become :math:`p_i \mapsto R p_i` about the origin (the centroid, after :class:`Normalize`).

    - ``axis="z"``: :math:`R = R_z(a)`, :math:`a \sim U[0, 2\pi)`: rotations about the up axis
      (ModelNet's shapes stand upright; "z/z" and "z/SO3" protocols).
    - ``axis="so3"``: :math:`R` Haar-uniform on SO(3) (:func:`relaxgnn.symmetry.random_rotation`).

    ``seed=None``: a fresh rotation from torch's global generator on every call (training
    augmentation). ``seed`` an int: called with the item's ``index`` (as the data sets do),
    the rotation is a fixed function of ``(seed, index)``, so a rotated test set is the same on
    every access and in every process; called as a plain transform without ``index``, the
    rotations come from one generator seeded with ``seed`` (reproducible in call order).

    Positions are rotated in float64 and cast back to their dtype.
    """

    def __init__(self, axis: str = "so3", seed: int | None = None,
                 keys: Sequence[str] = ("pos",)) -> None:
        if axis not in ("z", "so3"):
            raise ValueError(f"axis must be 'z' or 'so3', got {axis!r}")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed):
            raise ValueError(f"seed must be an integer or None, got {seed!r}")
        self.axis, self.seed, self.keys = axis, None if seed is None else int(seed), tuple(keys)
        self._stream = None if seed is None else torch.Generator().manual_seed(int(seed))

    def matrix(self, index: int | None = None) -> Tensor:
        """The ``(3, 3)`` float64 rotation of item ``index`` (see the class docstring)."""
        if self.seed is None:
            gen = None
        elif index is None:
            gen = self._stream
        else:
            gen = torch.Generator().manual_seed(_item_seed(self.seed, index))
        if self.axis == "z":
            u = torch.rand((), generator=gen, dtype=torch.float64)
            return z_rotation(2 * math.pi * u)
        return random_rotation(gen, torch.float64)

    def __call__(self, data: Data, index: int | None = None) -> Data:
        return self.forward(copy.copy(data), index)

    def forward(self, data: Data, index: int | None = None) -> Data:
        R = self.matrix(index)
        for key in self.keys:
            value = getattr(data, key, None)
            if value is None:
                raise ValueError(f"RandomRotation: data has no field {key!r} to rotate")
            if value.dim() != 2 or value.shape[1] != 3:
                raise ValueError(
                    f"RandomRotation: data.{key} must have shape (N, 3), got {tuple(value.shape)}"
                )
            # R v as a broadcast sum: a (N, 3) @ (3, 3) matmul stalls for ~20 ms in BLAS
            # threads on a busy machine, on every item
            rotated = (value.to(torch.float64).unsqueeze(-2) * R.to(value.device)).sum(-1)
            setattr(data, key, rotated.to(value.dtype))
        return data

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(axis={self.axis!r}, seed={self.seed})"


def rotation_transform(rotation: str, rotation_seed: int | None) -> RandomRotation | None:
    """The data sets' ``rotation`` argument (one of :data:`ROTATIONS`) as a
    :class:`RandomRotation`, or ``None`` for ``"none"``."""
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {ROTATIONS}, got {rotation!r}")
    return None if rotation == "none" else RandomRotation(rotation, rotation_seed)


class PointFeatures(BaseTransform):
    r"""Transform: invariant and equivariant features of each point of a cloud with a graph.

    With :math:`c` the centroid of the point's cloud (per graph of a batch) and
    :math:`\mathcal N(i)` the senders ``j`` of the edges ``j → i`` of ``edge_index`` (e.g.
    :class:`~relaxgnn.data.KNNGraph`'s ``k`` nearest neighbours):

    - ``data.x`` ``(N, 2)``, irreps ``2x0e``: :math:`\big(\lVert p_i - c\rVert,\;
      \frac{1}{|\mathcal N(i)|}\sum_{j\in\mathcal N(i)}\lVert p_j - p_i\rVert\big)` (0 for a
      point without neighbours): invariant under rotations, reflections, translations and
      permutations of the points (when ``edge_index`` is permuted with them, as a kNN graph is);
    - ``data.rel`` ``(N, 3)``, irreps ``1x1o``: :math:`p_i - c`, translation-invariant and
      rotating (and reflecting) with the cloud.

    ``data.x`` is overwritten. Differentiable in ``pos``.
    """

    irreps = {"x": "2x0e", "rel": "1x1o"}

    def forward(self, data: Data) -> Data:
        edge_index = getattr(data, "edge_index", None)
        if edge_index is None:
            raise ValueError(
                "PointFeatures needs data.edge_index (the mean neighbour distance is over its "
                "edges): apply KNNGraph(k) first"
            )
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(
                f"PointFeatures: edge_index must have shape (2, E), got {tuple(edge_index.shape)}"
            )
        pos, batch = data.pos, getattr(data, "batch", None)
        graph, _ = _batch_of(pos, batch)
        rel = centre_per_graph(pos, graph)
        length = edge_vectors(pos, edge_index).norm(dim=1)
        mean_length = scatter(length, edge_index[1], dim=0, dim_size=pos.shape[0], reduce="mean")
        data.x = torch.stack([rel.norm(dim=1), mean_length], dim=1)
        data.rel = rel
        return data

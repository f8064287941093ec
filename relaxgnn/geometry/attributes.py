r"""Steerable node and edge attributes of SEGNN (Brandstetter et al. 2022).

For an edge :math:`j \to i` with :math:`r_{ij} = x_j - x_i`:

.. math::
    a_{ij} = Y^{(\le L)}\!\left(\frac{r_{ij}}{\lVert r_{ij}\rVert}\right), \qquad
    a_i = \frac{1}{|\mathcal N(i)|}\sum_{j \in \mathcal N(i)} a_{ij}
          \;\big[+\, Y^{(\le L)}(v_i/\lVert v_i\rVert)\big]
          \quad\text{with its } 0e \text{ component set to } 1,

spherical harmonics in e3nn's ``"integral"`` normalisation, as SEGNN uses
(:math:`Y^{(0)} = 1/\sqrt{4\pi}`, :math:`\lVert Y^{(l)}\rVert = \sqrt{(2l+1)/4\pi}`: with the
``"component"`` normalisation, where :math:`Y^{(0)} = 1`, every tensor product with the
attributes amplifies the features and a 4-layer SEGNN's activations grow ~10× per layer), and
the invariant edge feature :math:`\lVert r_{ij}\rVert` (the distance, as SEGNN's N-body and
gravity code use). Like SEGNN's code (its ``catch_isolated_nodes``), the scalar component of
every :math:`a_i` is 1 — not the mean :math:`Y^{(0)}` (plus :math:`Y^{(0)}` of the velocity) — so
a node without neighbours gets :math:`a_i = (1, 0, …, 0)`, and the tensor products with
:math:`a_i` pass scalars through at unit scale (with :math:`2Y^{(0)} = 0.56` instead, the N-body
SEGNN trains about half as fast).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import Tensor
from torch_geometric.utils import scatter

from .neighbours import edge_vectors

Y0 = 1.0 / math.sqrt(4.0 * math.pi)


def spherical_harmonics(lmax: int, vectors: Tensor) -> Tensor:
    """Real spherical harmonics up to ``lmax`` of the directions of ``vectors``, ``"integral"``
    normalisation (zero vectors map to ``(Y0, 0, …, 0)``), irreps
    ``Irreps.spherical_harmonics(lmax)``."""
    return o3.spherical_harmonics(
        o3.Irreps.spherical_harmonics(lmax), vectors, normalize=True, normalization="integral"
    ).nan_to_num(0.0)


def segnn_attributes(
    pos: Tensor,
    edge_index: Tensor,
    lmax: int,
    vel: Tensor | None = None,
    shift: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(node_attr (N, d), edge_attr (E, d), edge_dist (E, 1))`` with
    ``d = (lmax + 1)²`` as in the module docstring."""
    rel = edge_vectors(pos, edge_index, shift)
    edge_attr = spherical_harmonics(lmax, rel)
    node_attr = scatter(edge_attr, edge_index[1], dim=0, dim_size=pos.shape[0], reduce="mean")
    if vel is not None:
        node_attr = node_attr + spherical_harmonics(lmax, vel)
    # SEGNN's code sets the 0e component of every node's attribute to 1 (its
    # `catch_isolated_nodes`), which also gives isolated nodes a well-defined attribute
    node_attr = torch.cat([torch.ones_like(node_attr[:, :1]), node_attr[:, 1:]], -1)
    edge_dist = rel.norm(dim=-1, keepdim=True)
    return node_attr, edge_attr, edge_dist

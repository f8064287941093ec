"""Every relaxed layer: θ = 0 computes the plain layer bit for bit, θ > 0 breaks equivariance,
projection restores it (float64, random rotations, reflections, translations, permutations)."""

import pytest
import torch
from conftest import check_relaxed_then_projected, molecule_data, point_cloud
from torch_geometric.data import Batch

from relaxgnn.data import fully_connected_edges, segnn_attributes
from relaxgnn.dtype import default_dtype
from relaxgnn.nn import EGNNConv, ManyBodyConv, SEGNNConv, TensorProductConv
from relaxgnn.symmetry import Signature, equivariance_error


class LayerProbe(torch.nn.Module):
    """A layer as a ``Data -> Tensor`` map with a signature (features ``x``, ``pos``, ``vel``)."""

    def __init__(self, kind: str, relax):
        super().__init__()
        self.kind = kind
        if kind == "EGNNConv":
            self.layer = EGNNConv(4, 4, 8, velocity=True, relax=relax)
            irreps_x, out, translates = "4x0e", "1x1o", True
        elif kind == "SEGNNConv":
            self.layer = SEGNNConv("2x0e+1x1o", irreps_hidden="4x0e+2x1o", relax=relax)
            irreps_x, out, translates = "2x0e+1x1o", "2x0e+1x1o", False
        elif kind == "ManyBodyConv":
            self.layer = ManyBodyConv("2x0e+1x1o", "2x0e+2x1o", num_elements=1, channels=2,
                                      lmax=2, correlation=2, cutoff=4.0, radial_hidden=8,
                                      relax=relax)
            irreps_x, out, translates = "2x0e+1x1o", "2x0e+2x1o", False
        else:
            self.layer = TensorProductConv("2x0e+1x1o", "2x0e+1x1o+1x1e", cutoff=4.0,
                                           irreps_node_attr="1x0e", relax=relax)
            irreps_x, out, translates = "2x0e+1x1o", "2x0e+1x1o+1x1e", False
        self.signature = Signature({"pos": "1x1o", "vel": "1x1o", "x": irreps_x}, out, "node",
                                   output_translates=translates)

    def forward(self, data):
        edges = fully_connected_edges(data.num_nodes, data.batch)
        if self.kind == "EGNNConv":
            return self.layer(data.x, data.pos, edges, vel=data.vel)[1]
        if self.kind == "SEGNNConv":
            node_attr, edge_attr, dist = segnn_attributes(data.pos, edges, 1)
            return self.layer(data.x, edges, node_attr, edge_attr, dist, pos=data.pos)
        return self.layer(data.x, data.pos, edges, node_attr=torch.ones_like(data.x[:, :1]))


def build(kind, relax, seed=0):
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return LayerProbe(kind, relax)


def batch(kind):
    data = Batch.from_data_list([molecule_data("H2O"), point_cloud(4, seed=2)])
    width = {"EGNNConv": 4}.get(kind, 5)
    data.x = torch.randn(data.num_nodes, width, generator=torch.Generator().manual_seed(1),
                         dtype=torch.float64)
    return data


@pytest.mark.parametrize("relax", ["linear", "mlp"])
@pytest.mark.parametrize("kind", ["EGNNConv", "SEGNNConv", "TensorProductConv",
                                  "ManyBodyConv"])
def test_relaxed_layer(kind, relax):
    plain, relaxed = build(kind, None), build(kind, relax)
    data = batch(kind)
    assert torch.equal(relaxed(data), plain(data))  # θ = 0: the plain layer
    assert max(equivariance_error(relaxed, data, trials=2).values()) < 1e-9

    errors, _ = check_relaxed_then_projected(relaxed, data)
    if kind == "SEGNNConv":  # the paper's placement: the update layers, which see no positions
        assert errors["translation"] < 1e-9
    else:  # the paths see absolute positions
        assert errors["translation"] > 1e-4

"""EGNNConv and EGNN: exact E(3) × S_n equivariance, input errors, stability and gradients."""

import pytest
import torch
from conftest import molecule_data, point_cloud
from torch_geometric.data import Batch, Data

from relaxgnn.data import fully_connected_edges
from relaxgnn.models import EGNN
from relaxgnn.nn import EGNNConv
from relaxgnn.symmetry import Signature, equivariance_error

TOL64, TOL32 = 1e-9, 1e-5


class ConvProbe(torch.nn.Module):
    """Runs one EGNNConv on ``x`` (invariant), ``pos`` and ``vel``; returns ``[h' | x']`` parts."""

    def __init__(self, conv: EGNNConv, part: str):
        super().__init__()
        self.conv, self.part = conv, part
        translates = part == "pos"
        out = "1x1o" if part == "pos" else f"{conv.out_channels}x0e"
        self.signature = Signature(
            {"pos": "1x1o", "vel": "1x1o", "x": f"{conv.in_channels}x0e"},
            out,
            "node",
            output_translates=translates,
        )

    def forward(self, data):
        edges = fully_connected_edges(data.num_nodes, data.batch)
        h, pos = self.conv(data.x, data.pos, edges, vel=data.vel)
        return pos if self.part == "pos" else h


@pytest.mark.parametrize("part", ["pos", "h"])
@pytest.mark.parametrize("options", [{}, {"normalize": True, "coord_tanh": True}])
def test_conv_equivariant(batch64, part, options):
    torch.manual_seed(0)
    batch64.x = torch.randn(batch64.num_nodes, 8, dtype=torch.float64)
    conv = EGNNConv(8, 8, 16, velocity=True, **options).double()
    errors = equivariance_error(ConvProbe(conv, part), batch64, trials=3, seed=7)
    assert max(errors.values()) < TOL64, errors


def _models():
    return {
        "position": EGNN(
            {"charges": "1x0e"},
            velocity_field="vel",
            pair_fields=["charges"],
            hidden_channels=16,
            num_layers=3,
        ),
        "node": EGNN(
            atomic_numbers=[1, 6, 8],
            output="node",
            out_channels=2,
            hidden_channels=16,
            num_layers=2,
        ),
        "graph": EGNN(
            {"charges": "1x0e"},
            atomic_numbers=[1, 6, 8],
            output="graph",
            hidden_channels=16,
            num_layers=2,
            cutoff=2.0,
            pooling="mean",
        ),
    }


@pytest.mark.parametrize("kind", ["position", "node", "graph"])
@pytest.mark.parametrize("seed", [0, 1])
def test_model_equivariant_float64(batch64, kind, seed):
    torch.manual_seed(seed)
    model = _models()[kind].double()
    errors = equivariance_error(model, batch64, trials=2, seed=seed)
    assert set(errors) == {"rotation", "reflection", "translation", "permutation"}
    assert max(errors.values()) < TOL64, errors


@pytest.mark.parametrize("kind", ["position", "node", "graph"])
def test_model_equivariant_float32(batch32, kind):
    torch.manual_seed(0)
    errors = equivariance_error(_models()[kind], batch32, trials=2)
    assert max(errors.values()) < TOL32, errors


def test_degenerate_graphs():
    torch.manual_seed(0)
    model = _models()["position"].double()
    single = point_cloud(1)
    assert torch.isfinite(model(single)).all()
    isolated = Batch.from_data_list([point_cloud(3), point_cloud(1, seed=1)])
    no_edges = point_cloud(4)
    no_edges.edge_index = torch.zeros(2, 0, dtype=torch.long)
    assert torch.isfinite(model(isolated)).all()
    assert torch.isfinite(model(no_edges)).all()
    graph_model = _models()["graph"].double()
    out = graph_model(Batch.from_data_list([molecule_data("H2O"), point_cloud(1)]))
    assert out.shape == (2, 1) and torch.isfinite(out).all()


def test_coordinates_cannot_explode():
    """Huge coordinate weights: the clamp bounds every update, so nothing becomes NaN/inf."""
    torch.manual_seed(0)
    conv = EGNNConv(4, 4, 8, coord_clamp=10.0).double()
    with torch.no_grad():
        conv.coord_mlp[-1].weight.fill_(1e30)
    data = point_cloud(6)
    h, pos = conv(torch.randn(6, 4, dtype=torch.float64), data.pos, fully_connected_edges(6))
    assert torch.isfinite(pos).all()
    assert (pos - data.pos).norm(dim=-1).max() <= 10.0 + 1e-9


def test_bad_input_errors():
    model = _models()["position"]
    good = point_cloud(4, torch.float32)
    with pytest.raises(ValueError, match="missing node positions `pos`"):
        model(Data(vel=good.vel, charges=good.charges, num_nodes=4))
    bad = good.clone()
    bad.pos[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite values .* nodes \[2\]"):
        model(bad)
    bad = good.clone()
    bad.batch = torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"`batch` must have shape \(4,\)"):
        model(bad)
    bad = good.clone()
    bad.charges = torch.ones(4, 2)
    with pytest.raises(ValueError, match=r"`charges` must have shape \(4, 1\)"):
        model(bad)
    with pytest.raises(ValueError, match="`x` must have shape"):
        EGNNConv(5)(torch.zeros(4, 3), good.pos, fully_connected_edges(4))
    with pytest.raises(ValueError, match="vector field `vel` but the data has none"):
        model(Data(pos=good.pos, charges=good.charges))
    with pytest.raises(ValueError, match="only invariant"):
        EGNN({"vel": "1x1o"})
    with pytest.raises(ValueError, match=r"element\(s\) \[9\] not known"):
        _models()["node"](Data(pos=good.pos, z=torch.tensor([1, 6, 9, 8])))


@pytest.mark.parametrize("kind", ["position", "graph"])
def test_gradients_reach_every_parameter(kind):
    torch.manual_seed(0)
    model = _models()[kind].double()
    data = Batch.from_data_list([molecule_data(), point_cloud(5)])
    out = model(data)
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("edge_dim", [0, 2])
def test_per_node_first_edge_layer_equals_the_mlp_on_gathered_inputs(edge_dim):
    """The edge MLP's first linear map is applied per node before the gather; the result is
    φ_e on the concatenated [h_i, h_j, |r_ij|², a_ij] (float64), and a hook on ``edge_mlp``
    makes the layer call the MLP as a module, so the hook sees (and may change) that input."""
    torch.manual_seed(0)
    conv = EGNNConv(6, 6, 8, edge_dim=edge_dim, velocity=True).double()
    data = point_cloud(7, torch.float64)
    edge_index = fully_connected_edges(7)
    x = torch.randn(7, 6, dtype=torch.float64)
    attr = torch.randn(edge_index.shape[1], edge_dim, dtype=torch.float64) if edge_dim else None
    fast = conv(x, data.pos, edge_index, vel=data.vel, edge_attr=attr)
    seen = []
    handle = conv.edge_mlp.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    slow = conv(x, data.pos, edge_index, vel=data.vel, edge_attr=attr)
    handle.remove()
    j, i = edge_index
    rel = data.pos[i] - data.pos[j]
    expected_input = torch.cat([x[i], x[j], rel.pow(2).sum(-1, keepdim=True)]
                               + ([attr] if edge_dim else []), -1)
    torch.testing.assert_close(seen[0], expected_input)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

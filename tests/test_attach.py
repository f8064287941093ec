"""`relax.attach` on any module (e3nn's, a user's own), the paper's SEGNN placement, and the
controller as the one owner of θ and of the recorded inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import molecule_data, point_cloud
from e3nn import o3
from e3nn.nn import Gate
from torch import nn
from torch_geometric.data import Batch
from torch_geometric.utils import scatter

from relaxgnn.data import fully_connected_edges, segnn_attributes
from relaxgnn.dtype import default_dtype
from relaxgnn.models import EGNN, SEGNN
from relaxgnn.relax import (
    Constant,
    Relaxation,
    RelaxationWarning,
    attach,
    find_paths,
    project,
)
from relaxgnn.relax import path as path_module
from relaxgnn.symmetry import Signature, equivariance_error

SH = o3.Irreps.spherical_harmonics(1)


class UserModel(nn.Module):
    """A user's own model built from e3nn modules and a plain MLP, with a signature:
    ``x`` (2x0e+1x1o) per node, positions relative to the graph's centre as attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = o3.Linear("2x0e+1x1o", "4x0e+2x1o")
        self.tp = o3.FullyConnectedTensorProduct("4x0e+2x1o", SH, "4x0e+2x1o")
        self.gate = Gate("2x0e", [torch.tanh], "2x0e", [torch.sigmoid], "2x1o")
        self.scalars = nn.Sequential(nn.Linear(2, 8), nn.SiLU(), nn.Linear(8, 2))  # no irreps
        self.out = o3.Linear("2x0e+2x1o", "1x0e+1x1o")
        self.signature = Signature({"pos": "1x1o", "x": "2x0e+1x1o"}, "1x0e+1x1o", "node")

    def forward(self, data) -> torch.Tensor:
        centre = scatter(data.pos, data.batch, dim=0, reduce="mean")[data.batch]
        sh = o3.spherical_harmonics(SH, data.pos - centre, normalize=False)
        h = self.gate(self.tp(self.lin(data.x), sh))
        h = torch.cat([self.scalars(h[:, :2]), h[:, 2:]], -1)
        return self.out(h)


def user_data() -> Batch:
    batch = Batch.from_data_list([molecule_data("CH3CH2OH"), point_cloud(6, seed=4)])
    batch.x = o3.Irreps("2x0e+1x1o").randn(batch.num_nodes, -1, dtype=torch.float64)
    return batch


def build_user(seed: int = 0) -> UserModel:
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return UserModel()


PLACEMENT = {
    "lin": "linear",  # e3nn o3.Linear: irreps_in / irreps_out
    "tp": {"kind": "mlp", "hidden": 16, "inputs": ["x", "y"]},  # both inputs: irreps_in1, _in2
    "gate": {"kind": "linear", "init_std": 0.1},  # e3nn Gate
    "scalars": {"irreps_in": "2x0e", "irreps_out": "2x0e"},  # a plain module: irreps given
}


def test_attach_relaxes_foreign_modules_and_projects_exactly():
    plain, model = build_user(), build_user()
    paths = attach(model, PLACEMENT)
    assert list(paths) == ["lin", "tp", "gate", "scalars"]
    assert paths["tp"].irreps_in == o3.Irreps("4x0e+2x1o") + SH
    batch = user_data()
    assert torch.equal(model(batch), plain(batch))  # no controller: θ = 0, the plain model

    relax = Relaxation(model, Constant(1.0, 10))
    with torch.no_grad():
        for path in paths.values():
            for p in path.parameters():
                p.normal_(0.0, 0.3)
    errors = equivariance_error(model, batch, trials=2)
    assert errors["rotation"] > 1e-3 and errors["reflection"] > 1e-3, errors
    with relax.record():
        model(batch)
    assert set(relax.inputs()) == set(paths)
    assert relax.penalty() > 0

    projected = project(model)
    assert not find_paths(projected)
    errors = equivariance_error(projected, batch, trials=3)
    assert max(errors.values()) < 1e-12, errors
    fresh = build_user(seed=7)
    fresh.load_state_dict(projected.state_dict(), strict=True)
    relax.step(10)  # the end of the schedule: θ = 0
    assert torch.equal(fresh(batch), model(batch))
    assert torch.equal(projected(batch), plain(batch))


def test_attach_names_the_module_when_irreps_are_unknown():
    model = build_user()
    with pytest.raises(ValueError, match=r"`scalars` \(Sequential\).*irreps.*`input`"):
        attach(model, {"scalars": "linear"})
    with pytest.raises(ValueError, match="pattern 'blocks.*' matches no module"):
        attach(model, {"blocks.*": "linear"})
    with pytest.raises(ValueError, match="has no argument `z`"):
        attach(model, {"lin": {"inputs": ["z"]}})
    attach(model, {"lin": "linear"})
    with pytest.raises(ValueError, match="already has the relaxation path `lin`"):
        attach(model, {"l*": "linear"})
    with pytest.raises(ValueError, match="placed by both"):
        attach(build_user(), {"lin": "linear", "l?n": "mlp"})


def test_path_output_shape_is_checked_when_it_runs():
    model = build_user()
    attach(model, {"gate": {"irreps_out": "2x0e"}})  # the gate outputs 2x0e+2x1o
    Relaxation(model, Constant(1.0, 10))
    with pytest.raises(ValueError, match=r"path on `gate` gives shape \(\d+, 2\)"):
        model(user_data())


def segnn(relax=None, seed=0):
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return SEGNN({"vel": "1x1o"}, irreps_hidden="4x0e+2x1o", num_layers=2,
                     velocity_field="vel", pair_fields=["charges"], relax=relax)


def test_segnn_default_placement_is_the_papers_and_sees_the_message():
    """θ·g₁([h_i ‖ m_i]) after the first update layer's gate and θ·g₂(u) after the second: the
    first path's input is the layer's h next to the aggregated message m, computed here from
    the layer's own message layers."""
    model = segnn("linear")
    assert list(find_paths(model)) == [f"layers.{k}.update_layer_{j}"
                                       for k in range(2) for j in (1, 2)]
    relax = Relaxation(model, Constant(1.0, 10))
    batch = Batch.from_data_list([molecule_data("H2O"), point_cloud(4, seed=2)])
    seen = {}
    model.layers[0].register_forward_pre_hook(lambda m, args: seen.setdefault("in", args))
    with relax.record():
        model(batch)
    x, edge_index, node_attr, edge_attr, edge_feat = seen["in"][:5]
    layer = model.layers[0]
    src, dst = edge_index
    m = layer.message_layer_2(layer.message_layer_1(
        torch.cat([x[dst], x[src], edge_feat], -1), edge_attr), edge_attr)
    m = scatter(m, dst, dim=0, dim_size=x.shape[0], reduce="sum")
    u = relax.inputs()["layers.0.update_layer_1"]
    H = layer.irreps_hidden.dim
    assert u.shape == (x.shape[0], 2 * H)
    torch.testing.assert_close(u, torch.cat([x, m], -1), rtol=1e-12, atol=1e-12)
    assert relax.inputs()["layers.0.update_layer_2"].shape == (x.shape[0], H)


def test_explicit_placement_on_message_layers():
    """A config can move the paths with one line: on the edge-level message layer, whose input
    arrives in parts gathered per edge, the path reads the gathered [h_i ‖ h_j ‖ e_ij]."""
    model = segnn({"layers.*.message_layer_1": "linear"})
    assert list(find_paths(model)) == ["layers.0.message_layer_1", "layers.1.message_layer_1"]
    relax = Relaxation(model, Constant(1.0, 10))
    for path in find_paths(model).values():
        with torch.no_grad():
            path.g.weight.normal_(0.0, 0.1)
    batch = Batch.from_data_list([molecule_data("H2O"), point_cloud(4, seed=2)])
    with relax.record():
        model(batch)
    num_edges = fully_connected_edges(batch.num_nodes, batch.batch).shape[1]
    u = relax.inputs()["layers.0.message_layer_1"]
    assert u.shape == (num_edges, model.layers[0].message_layer_1.irreps_in1.dim)
    assert equivariance_error(model, batch, trials=2)["rotation"] > 1e-4
    assert max(equivariance_error(project(model), batch, trials=2).values()) < 1e-9


def test_record_collects_every_pass_inside_and_none_outside():
    model = segnn("linear")
    relax = Relaxation(model, Constant(1.0, 10))
    with pytest.raises(RuntimeError, match="no recorded forward pass"):
        relax.penalty()
    a = Batch.from_data_list([molecule_data("H2O")])
    b = Batch.from_data_list([point_cloud(5, seed=3)])
    with relax.record():
        model(a)
    only_a = {k: v.clone() for k, v in relax.inputs().items()}
    penalty_a = relax.penalty()
    model(b)  # outside a recording: a later penalty is still a's
    torch.testing.assert_close(relax.penalty(), penalty_a, rtol=0, atol=0)
    with relax.record():
        model(a)
        model(b)
    both = relax.inputs()
    for name, x in both.items():
        assert x.shape[0] == only_a[name].shape[0] + b.num_nodes
        torch.testing.assert_close(x[:a.num_nodes], only_a[name], rtol=0, atol=0)
    assert relax.penalty() > penalty_a


def test_the_controller_is_the_one_owner_of_theta():
    model = segnn("linear")
    batch = Batch.from_data_list([molecule_data("H2O"), point_cloud(4, seed=2)])
    plain = segnn(None)
    first = Relaxation(model, Constant(0.5, 10))
    assert first.theta == 0.5 and all(p.controller is first for p in find_paths(model).values())
    with first.paused():
        assert first.theta == 0.0 and torch.equal(model(batch), plain(batch))
    assert first.theta == 0.5
    second = Relaxation(model, Constant(2.0, 10))  # takes the paths over
    assert second.theta == 2.0
    with pytest.raises(RuntimeError, match="no longer drives"):
        first.step(1)
    second.close()
    assert all(p.controller is None and p.theta == 0 for p in find_paths(model).values())
    assert torch.equal(model(batch), plain(batch))


def test_training_a_relaxed_model_without_a_controller_warns_once(monkeypatch):
    monkeypatch.setattr(path_module, "_warned", [False])
    model = EGNN(hidden_channels=8, num_layers=2, relax="linear")
    batch = Batch.from_data_list([point_cloud(5, torch.float32, seed=1),
                                  point_cloud(4, torch.float32, seed=2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            model(batch)  # evaluation: no warning
        model.eval()
        model(batch).sum().backward()  # e.g. forces by autograd in evaluation mode: no warning
        model.train()
        assert not caught
        for _ in range(3):
            model(batch).sum().backward()
    assert [w.category for w in caught] == [RelaxationWarning]
    assert "without a relaxation controller" in str(caught[0].message)
    monkeypatch.setattr(path_module, "_warned", [False])
    relax = Relaxation(model, Constant(1.0, 10))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with relax.record():
            out = model(batch)
        (out.sum() + relax.penalty()).backward()
    assert not [w for w in caught if w.category is RelaxationWarning]


def test_layer_level_shorthand_and_explicit_placement_agree():
    """``relax="linear"`` on a layer attaches its default placement; the same placement given
    explicitly to a plain layer gives the same paths and the same numbers."""
    from relaxgnn.nn import SEGNNConv

    torch.manual_seed(0)
    with default_dtype(torch.float64):
        shorthand = SEGNNConv("2x0e+1x1o", irreps_hidden="4x0e+2x1o", relax="linear")
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        explicit = SEGNNConv("2x0e+1x1o", irreps_hidden="4x0e+2x1o")
    attach(explicit, explicit.relaxation_placement("linear"))
    assert list(find_paths(shorthand)) == list(find_paths(explicit)) == \
        ["update_layer_1", "update_layer_2"]
    assert all(torch.equal(a, b) for a, b in zip(shorthand.state_dict().values(),
                                                  explicit.state_dict().values(), strict=True))
    data = point_cloud(5, seed=1)
    edges = fully_connected_edges(5)
    attrs = segnn_attributes(data.pos, edges, 1)
    x = o3.Irreps("2x0e+1x1o").randn(5, -1, dtype=torch.float64)
    outs = []
    for layer in (shorthand, explicit):
        Relaxation(layer, Constant(1.0, 4))
        with torch.no_grad():
            for path in find_paths(layer).values():
                path.g.weight.fill_(0.01)
        outs.append(layer(x, edges, *attrs))
    assert torch.equal(*outs)


def test_patterns_match_level_by_level():
    from relaxgnn.relax.attach import matches

    assert matches("layers.0", "layers.*") and not matches("layers.0.tp", "layers.*")
    assert matches("layers.3.update_layer_1", "layers.*.update_layer_1")
    assert matches("layers.2", "layers.[0-2]") and not matches("layers.3", "layers.[0-2]")
    assert matches("a.b.lin", "**.lin") and matches("lin", "**.lin")
    assert matches("a.b.c", "a.**") and not matches("b.c", "a.**")
    model = segnn()
    assert len(attach(model, {"layers.*": {"irreps_in": {"x": "4x0e+2x1o"},
                                           "irreps_out": "4x0e+2x1o"}})) == 2  # the 2 layers

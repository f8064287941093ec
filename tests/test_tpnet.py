"""Radial basis and envelope, the NequIP interaction block (TensorProductConv) and TPNet."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from conftest import finite_difference_forces, molecule_data, point_cloud
from torch_geometric.data import Batch, Data

from relaxgnn.data.graphs import fully_connected_edges, radius_edges
from relaxgnn.dtype import default_dtype
from relaxgnn.models.tpnet import TPNet, hidden_irreps
from relaxgnn.nn.radial import BesselBasis, PolynomialCutoff
from relaxgnn.nn.tp_conv import TensorProductConv
from relaxgnn.symmetry import Signature, equivariance_error, random_reflection, random_rotation

SPECIES = [1, 6, 8]
HIDDEN = "8x0e+4x1o+4x1e"
CUTOFF = 3.0


def grad(y: torch.Tensor, x: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    return torch.autograd.grad(y.sum(), x, create_graph=create_graph)[0]


# ---------------------------------------------------------------- radial basis and envelope


def test_bessel_values_and_derivative_finite_at_zero():
    c, n = 4.0, 6
    basis = BesselBasis(c, n).double()
    r = torch.tensor([0.0, 1e-12, 1e-4, 0.0039, 0.5, 2.0, c], dtype=torch.float64,
                     requires_grad=True)
    e = basis(r)
    assert e.shape == (7, n) and torch.isfinite(e).all()
    w = torch.arange(1, n + 1, dtype=torch.float64) * math.pi
    exact_at_0 = math.sqrt(2 / c) * w / c
    torch.testing.assert_close(e[0], exact_at_0, rtol=1e-15, atol=0)
    rr = r[2:].detach().unsqueeze(-1)  # the closed form, away from 0 (Taylor branch included)
    torch.testing.assert_close(e[2:], math.sqrt(2 / c) * torch.sin(w * rr / c) / rr,
                               rtol=1e-13, atol=1e-13)
    d = grad(e, r, create_graph=True)
    assert torch.isfinite(d).all() and d[0] == 0  # sin(ar)/r is even in r
    dd = grad(d, r)
    assert torch.isfinite(dd).all()
    torch.testing.assert_close(dd[0], -(w**3 / c**3).sum() * math.sqrt(2 / c) / 3)
    assert torch.allclose(e[-1], torch.zeros(n, dtype=torch.float64), atol=1e-15)  # e_n(c) = 0


def test_bessel_trainable_frequencies_reset():
    basis = BesselBasis(5.0, 4, trainable=True)
    assert [n for n, _ in basis.named_parameters()] == ["freq"]
    with torch.no_grad():
        basis.freq.mul_(2)
    basis.reset_parameters()
    torch.testing.assert_close(basis.freq, torch.arange(1, 5) * math.pi)


def test_polynomial_cutoff_smooth_at_cutoff():
    c, p = 2.5, 6
    env = PolynomialCutoff(c, p)
    r = torch.tensor([0.0, 0.3, 1.0, 2.0, 2.4999, c, 3.0, 10.0], dtype=torch.float64,
                     requires_grad=True)
    u = env(r)
    assert u[0] == 1 and u[5] == 0 and u[6] == 0 and u[7] == 0
    assert (u[:5].detach().diff() < 0).all()  # decreasing from 1 to 0 inside the sphere
    du = grad(u, r, create_graph=True)
    ddu = grad(du, r)
    x = r.detach() / c
    k = p * (p + 1) * (p + 2) / 2  # u'(x) = -k x^{p-1} (1-x)^2 inside
    inside = x < 1
    torch.testing.assert_close(du.detach()[inside], (-k * x**(p - 1) * (1 - x)**2 / c)[inside])
    dd_exact = -k * ((p - 1) * x**(p - 2) * (1 - x)**2 - 2 * x**(p - 1) * (1 - x)) / c**2
    torch.testing.assert_close(ddu[inside], dd_exact[inside])
    assert (du[~inside] == 0).all() and (ddu[~inside] == 0).all()
    # one-sided limits: u' = O(δ²), u'' = O(δ) as r → c from below, so u ∈ C²
    for delta in (1e-2, 1e-3, 1e-4):
        s = torch.tensor([c * (1 - delta)], dtype=torch.float64, requires_grad=True)
        d1 = grad(env(s), s, create_graph=True)
        d2 = grad(d1, s)
        assert abs(d1.item()) < 2 * k * delta**2 / c and abs(d2.item()) < 3 * k * delta / c**2


# ---------------------------------------------------------------- the interaction block


def with_features(data: Batch, dim: int, seed: int = 0) -> Batch:
    data = data.clone()
    gen = torch.Generator().manual_seed(seed)
    data.x = torch.randn(data.num_nodes, dim, generator=gen, dtype=data.pos.dtype)
    return data


def one_hot(z: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return (z.unsqueeze(-1) == torch.tensor(SPECIES)).to(dtype)


@functools.lru_cache
def make_conv(irreps_out: str = HIDDEN, attr: bool = True) -> TensorProductConv:
    """A small float64 layer (cached: do not modify; copy it first)."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return TensorProductConv(HIDDEN, irreps_out, cutoff=CUTOFF, radial_hidden=16,
                                 avg_num_neighbors=3.0, irreps_node_attr="3x0e" if attr else None)


def conv_as_model(conv: TensorProductConv):
    """A ``Data -> Tensor`` view of the layer on the radius graph, and its signature."""

    def run(data: Data) -> torch.Tensor:
        edge_index, _ = radius_edges(data.pos, CUTOFF, data.batch)
        attr = one_hot(data.z, data.pos.dtype) if conv.irreps_node_attr is not None else None
        return conv(data.x, data.pos, edge_index, node_attr=attr)

    return run, Signature({"x": conv.irreps_in, "pos": "1x1o"}, conv.irreps_out, "node")


@pytest.mark.parametrize("irreps_out,attr", [(HIDDEN, True), ("4x0e+2x0o+2x1o+1x2e", False)])
def test_conv_equivariant_float64(batch64, irreps_out, attr):
    conv = make_conv(irreps_out, attr)
    run, sig = conv_as_model(conv)
    for seed in (0, 1):
        data = with_features(batch64, conv.irreps_in.dim, seed)
        errors = equivariance_error(run, data, signature=sig, trials=3, seed=seed)
        assert max(errors.values()) <= 1e-9, errors


def test_conv_equivariant_float32(batch32):
    conv = copy.deepcopy(make_conv()).float()
    run, sig = conv_as_model(conv)
    errors = equivariance_error(run, with_features(batch32, conv.irreps_in.dim), signature=sig,
                                trials=2)
    assert max(errors.values()) <= 1e-5, errors


def test_conv_edges_at_or_beyond_cutoff_contribute_zero():
    conv = make_conv()
    c = CUTOFF
    pos = torch.tensor([[0.0, 0, 0], [c, 0, 0], [0, c + 0.5, 0], [0, 0, c - 1e-3]],
                       dtype=torch.float64)
    x = torch.randn(4, conv.irreps_in.dim, dtype=torch.float64)
    attr = one_hot(torch.tensor([1, 6, 8, 1]))
    full = fully_connected_edges(4)
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    far = full[:, full.max(0).values < 3]  # edges among nodes 0, 1, 2: all at distance ≥ c
    assert torch.equal(conv(x, pos, far, attr), conv(x, pos, no_edges, attr))
    near = torch.tensor([[3], [0]])  # 3 → 0 at c - 1e-3: small but not zero
    assert not torch.equal(conv(x, pos, near, attr)[0], conv(x, pos, no_edges, attr)[0])


def test_conv_bad_inputs_and_degenerate_graphs():
    conv = make_conv()
    pos = torch.randn(3, 3, dtype=torch.float64)
    x = torch.randn(3, conv.irreps_in.dim, dtype=torch.float64)
    ei = torch.tensor([[0, 1, 2, 0], [1, 0, 0, 0]])  # includes a self-loop 0 → 0
    attr = one_hot(torch.tensor([1, 6, 8]))
    with pytest.raises(ValueError, match="`x`"):
        conv(x[:, :-1], pos, ei, attr)
    with pytest.raises(ValueError, match="node_attr"):
        conv(x, pos, ei)
    with pytest.raises(ValueError, match="2o"):
        TensorProductConv("4x0e", "2x2o", irreps_sh="1x0e+1x1o")
    with pytest.raises(ValueError, match="scalars first"):
        TensorProductConv("4x0e", "2x1o+2x0e")
    pos = pos.requires_grad_(True)
    out = conv(x, pos, ei, attr)
    assert torch.isfinite(out).all() and torch.isfinite(grad(out.pow(2), pos)).all()
    assert torch.isfinite(conv(x, pos, torch.zeros(2, 0, dtype=torch.long), attr)).all()


# ---------------------------------------------------------------- TPNet


@functools.lru_cache
def make_net(output: str = "graph", irreps_out: str = "1x0e", fields: tuple = ()) -> TPNet:
    """A small float64 TPNet (cached: do not modify; copy it first)."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return TPNet(fields=dict(fields), atomic_numbers=SPECIES, irreps_hidden=HIDDEN,
                     num_layers=2, cutoff=CUTOFF, radial_hidden=16, avg_num_neighbors=4.0,
                     output=output, irreps_out=irreps_out)


VEL_CHARGES = (("vel", "1x1o"), ("charges", "1x0e"))
NETS = [("graph", "1x0e", ()), ("node", "1x0e", ()), ("node", "1x0e+1x1o", VEL_CHARGES),
        ("graph", "1x0e+1x1o", VEL_CHARGES)]


@pytest.mark.parametrize("output,irreps_out,fields", NETS)
def test_tpnet_equivariant_float64(batch64, output, irreps_out, fields):
    model = make_net(output, irreps_out, fields)
    assert model.signature.level == output and str(model.signature.irreps_out) == irreps_out
    for seed in (0, 1):
        errors = equivariance_error(model, batch64, trials=3, seed=seed)
        assert max(errors.values()) <= 1e-9, errors


@pytest.mark.parametrize("output,irreps_out,fields", NETS[::2])
def test_tpnet_equivariant_float32(batch32, output, irreps_out, fields):
    model = copy.deepcopy(make_net(output, irreps_out, fields)).float()
    errors = equivariance_error(model, batch32, trials=2)
    assert max(errors.values()) <= 1e-5, errors


def test_tpnet_default_irreps_and_layer_irreps():
    assert str(hidden_irreps(32, 2)) == "32x0e+16x1o+16x1e+8x2o+8x2e"
    model = make_net()
    # layer 0 reads scalars: only 0e ⊗ Y^l = (l, (-1)^l) is reachable
    assert [str(layer.irreps_out) for layer in model.layers] == ["8x0e+4x1o", HIDDEN]


def test_tpnet_radius_graph_matches_given_edges(batch64):
    model = make_net("node")
    reference = model(batch64)
    for edge_index in (radius_edges(batch64.pos, CUTOFF, batch64.batch)[0],
                       fully_connected_edges(batch64.num_nodes, batch64.batch)):
        data = batch64.clone()
        data.edge_index = edge_index
        torch.testing.assert_close(model(data), reference, rtol=1e-12, atol=1e-12)


def energy_and_forces(model, data, create_graph: bool = False):
    data = data.clone()
    data.pos = data.pos.detach().requires_grad_(True)
    energy = model(data)
    return energy, -grad(energy, data.pos, create_graph=create_graph)


def test_tpnet_forces_equivariant_and_match_finite_differences():
    model = make_net()
    data = molecule_data("CH3CH2OH")
    _, forces = energy_and_forces(model, data)
    gen = torch.Generator().manual_seed(0)
    for sample in (random_rotation, random_reflection):
        g = sample(gen, dtype=torch.float64)
        moved = data.clone()
        moved.pos = data.pos @ g.T
        torch.testing.assert_close(energy_and_forces(model, moved)[1], forces @ g.T,
                                   rtol=1e-10, atol=1e-12)
    fd = finite_difference_forces(model, data)
    assert (fd - forces).norm() <= 1e-6 * forces.norm()


def test_tpnet_bad_inputs():
    model = make_net("node", "1x0e+1x1o", VEL_CHARGES)
    data = molecule_data("H2O")
    data.vel = torch.randn(data.num_nodes, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="vel"):
        model(data)
    data = molecule_data("H2O")
    data.z = torch.tensor([8, 9, 1])
    with pytest.raises(ValueError, match=r"\[9\]"):
        model(data)
    with pytest.raises(ValueError, match="3o"):
        TPNet(irreps_hidden=HIDDEN, irreps_out="1x3o", num_layers=1)
    with pytest.raises(ValueError, match="output"):
        TPNet(output="position")


def test_tpnet_no_edges_and_single_atom():
    model = make_net("graph", "1x0e+1x1o", VEL_CHARGES)
    apart = point_cloud(4)
    apart.pos = apart.pos * 0 + torch.arange(4.0, dtype=torch.float64).unsqueeze(-1) * 10
    single = point_cloud(1)
    empty = point_cloud(3)
    empty.edge_index = torch.zeros(2, 0, dtype=torch.long)
    for data in (apart, single, empty, Batch.from_data_list([single, apart])):
        energy, forces = energy_and_forces(model, data)
        assert energy.shape == (getattr(data, "num_graphs", 1), 4)
        assert torch.isfinite(energy).all() and torch.isfinite(forces).all()


def test_tpnet_gradients_reach_every_parameter():
    """Energy and force losses (double backward) give every parameter tensor a nonzero grad."""
    torch.manual_seed(1)
    model = TPNet(fields=dict(VEL_CHARGES), atomic_numbers=SPECIES, irreps_hidden=HIDDEN,
                  num_layers=2, cutoff=CUTOFF, radial_hidden=16, irreps_out="1x0e")
    data = Batch.from_data_list([molecule_data("CH3CH2OH", torch.float32),
                                 point_cloud(6, torch.float32, seed=4)])
    energy, forces = energy_and_forces(model, data, create_graph=True)
    loss = (energy * torch.randn_like(energy)).sum() + (forces * torch.randn_like(forces)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


def test_tpnet_reset_parameters_redraws_weights():
    model = copy.deepcopy(make_net())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_parameters()
    after = model.state_dict()
    assert before.keys() == after.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert set(changed) == {n for n, _ in model.named_parameters()}

"""SEGNN: balanced irreps, the e3nn blocks, the layer and the model (equivariance in float64 and
float32, the per-node centring bug, precomputed attributes, bad inputs, gradients)."""

from __future__ import annotations

import copy
import functools

import e3nn
import pytest
import torch
from conftest import molecule_data, point_cloud
from e3nn import o3
from torch_geometric.data import Batch, Data

from relaxgnn.data.attributes import SEGNNAttributes, segnn_attributes
from relaxgnn.data.graphs import FullyConnected, fully_connected_edges
from relaxgnn.dtype import default_dtype
from relaxgnn.geometry import centre_per_graph
from relaxgnn.models.segnn import SEGNN
from relaxgnn.nn.o3_blocks import (
    O3TensorProduct,
    O3TensorProductGate,
    balanced_irreps,
    fc_weight_numel,
)
from relaxgnn.nn.segnn_conv import SEGNNConv
from relaxgnn.symmetry.equivariance import equivariance_error
from relaxgnn.symmetry.signature import Signature

SH = o3.Irreps.spherical_harmonics


@pytest.fixture(autouse=True, scope="module")
def _fast_e3nn_build():
    """Skip e3nn's einsum-path optimisation while building (same results, ~30% faster builds)."""
    defaults = e3nn.get_optimization_defaults()
    e3nn.set_optimization_defaults(optimize_einsums=False)
    yield
    e3nn.set_optimization_defaults(**defaults)


def assert_small(errors: dict[str, float], tolerance: float) -> None:
    bad = {k: v for k, v in errors.items() if not v <= tolerance}
    assert not bad, f"not equivariant (tolerance {tolerance:g}): {bad}"


def check_equivariant(model, data, tolerance, signature=None, seeds=(0, 1)) -> None:
    for seed in seeds:
        assert_small(equivariance_error(model, data, signature, trials=3, seed=seed), tolerance)


# ----------------------------------------------------------------------------- balanced irreps

@pytest.mark.parametrize("hidden, lmax", [(64, 1), (16, 1), (64, 2), (8, 0), (10, 3)])
def test_balanced_irreps_is_the_smallest_with_the_scalar_weight_count(hidden, lmax):
    irreps = balanced_irreps(hidden, lmax)
    n = irreps[0].mul
    assert irreps == (SH(lmax) * n).sort().irreps.simplify()
    target = o3.FullyConnectedTensorProduct(f"{hidden}x0e", "1x0e", f"{hidden}x0e").weight_numel
    assert o3.FullyConnectedTensorProduct(irreps, SH(lmax), irreps).weight_numel >= target
    if n > 1:
        smaller = (SH(lmax) * (n - 1)).sort().irreps.simplify()
        assert o3.FullyConnectedTensorProduct(smaller, SH(lmax), smaller).weight_numel < target


def test_balanced_irreps_known_values():
    # lmax = 1: paths 0e⊗0e, 0e⊗1o, 1o⊗0e, 1o⊗1o→0e give 4n² weights, 4n² >= 64² at n = 32
    assert balanced_irreps(64, 1) == o3.Irreps("32x0e+32x1o")
    assert balanced_irreps(64, 2) == o3.Irreps("20x0e+20x1o+20x2e")  # 11n² >= 4096
    assert balanced_irreps(64, 0) == o3.Irreps("64x0e")
    assert balanced_irreps(64, 1, irreps_attr="1x0e") == o3.Irreps("46x0e+46x1o")  # 2n²


def test_fc_weight_numel_matches_e3nn():
    for args in [("3x0e+2x1o+1x2e", SH(2), "4x0e+1x1o+2x2e"), ("2x0e", "1x1o", "1x0e")]:
        assert fc_weight_numel(*args) == o3.FullyConnectedTensorProduct(*args).weight_numel


# ------------------------------------------------------------------------------- o3 blocks

def test_tensor_product_bias_only_on_even_scalars():
    tp = O3TensorProduct("2x0e+1x1o", SH(1), "3x0e+1x0o+2x1o+1x0e")
    assert tp.bias.shape == (4,)
    with torch.no_grad():
        tp.weight.zero_()
        tp.bias.copy_(torch.arange(1.0, 5.0))
    out = tp(torch.randn(2, 5), torch.randn(2, 4))
    expected = torch.tensor([1.0, 2, 3, 0, 0, 0, 0, 0, 0, 0, 4])
    torch.testing.assert_close(out, expected.expand(2, -1))
    linear = O3TensorProduct("2x0e+1x1o", None, "1x1o")  # constant second input
    assert linear.bias is None and linear(torch.randn(3, 5)).shape == (3, 3)
    with pytest.raises(ValueError, match="second input"):
        tp(torch.randn(2, 5))


@pytest.mark.parametrize("irreps", [
    ("32x0e+32x1o", "1x0e+1x1o", "64x0e+32x1o"),  # SEGNN's gated hidden layer
    ("3x0e+2x1o+1x2e+2x1e", SH(2), "2x0e+3x1o+1x2e+1x1e+2x0o+1x0e"),  # general paths, odd order
    ("2x0e+1x1o", "2x0e+1x1o+2x1e", "3x0e+1x0o+2x1o+1x1e"),  # second input with multiplicities
    ("2x1o", "1x0e", "1x2e+1x1o+1x0e"),  # outputs no path reaches
    ("2x0e+1x1o+1x2e", None, "1x0e+2x1o+1x2e"),  # constant second input
])
def test_fused_tensor_product_equals_e3nn(irreps):
    """Output and gradients equal e3nn's FullyConnectedTensorProduct with the weight vector
    ``e3nn_weight() = weight * sqrt(fan-in)`` (the documented change of parameterisation) plus
    the scalar bias, in float64."""
    in1, in2, out = irreps
    with default_dtype(torch.float64):
        ref = o3.FullyConnectedTensorProduct(in1, in2 or "1x0e", out)
        tp = O3TensorProduct(in1, in2, out)
    assert tp.weight.shape == ref.weight.shape
    with torch.no_grad():
        if tp.bias is not None:
            tp.bias.normal_()
    x1 = o3.Irreps(in1).randn(6, -1, dtype=torch.float64).requires_grad_()
    x2 = None if in2 is None else o3.Irreps(in2).randn(6, -1, dtype=torch.float64)
    bias = torch.zeros(o3.Irreps(out).dim, dtype=torch.float64)
    if tp.bias is not None:
        irreps_out = o3.Irreps(out)
        scalars = [i for (_, ir), sl in zip(irreps_out, irreps_out.slices(), strict=True)
                   if ir == o3.Irrep("0e") for i in range(sl.start, sl.stop)]
        bias[scalars] = tp.bias.detach()
    ones = torch.ones(6, 1, dtype=torch.float64)
    expected = ref(x1, ones if x2 is None else x2, weight=tp.e3nn_weight()) + bias
    got = tp(x1, x2)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    cotangent = torch.randn_like(got)
    g_ref = torch.autograd.grad(expected, [x1, tp.weight], cotangent)
    g_tp = torch.autograd.grad(got, [x1, tp.weight], cotangent)
    for a, b in zip(g_tp, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_e3nn_weight_scale_is_the_fan_in():
    """``e3nn_weight`` multiplies each path's block by the square root of its output's fan-in
    (Σ m_a m_b over the paths into that output), in e3nn's weight order."""
    tp = O3TensorProduct("2x0e+3x1o", "1x0e+1x1o", "4x0e+1x1o")
    # paths in e3nn's order: 0e⊗0e→0e (2·1·4), 0e⊗1o→1o (2·1·1), 1o⊗0e→1o (3·1·1),
    # 1o⊗1o→0e (3·1·4); fan-in of 0e: 2 + 3 = 5, of 1o: 2 + 3 = 5
    ratio = tp.e3nn_weight() / tp.weight
    torch.testing.assert_close(ratio, torch.full_like(ratio, 5 ** 0.5))
    tp = O3TensorProduct("2x0e+3x1o", "2x0e", "4x0e+1x1o")  # 0e: 2·2 = 4, 1o: 3·2 = 6
    ratio = tp.e3nn_weight() / tp.weight
    torch.testing.assert_close(ratio[:16], torch.full((16,), 2.0))
    torch.testing.assert_close(ratio[16:], torch.full((6,), 6 ** 0.5))


def test_scalar_tensor_product_is_nn_linear():
    """On scalars (``Fx0e ⊗ 1x0e → Gx0e``) the layer is ``nn.Linear(F, G)``: the same initial
    distribution (U(±1/√F) weights and biases), and with the same weights the same output and
    the same Adam trajectory — so a learning rate means what it means for ``nn.Linear``. Also
    for vectors (``Fx1o ⊗ 1x0e → Gx1o``): an ``nn.Linear`` on the multiplicities."""
    F, G = 48, 16
    torch.manual_seed(0)
    tp = O3TensorProduct(f"{F}x0e", "1x0e", f"{G}x0e")
    bound = F ** -0.5
    assert tp.weight.abs().max() <= bound and tp.bias.abs().max() <= bound
    assert tp.weight.abs().max() > 0.95 * bound  # uniform over the whole interval
    assert abs(tp.weight.std().item() - bound / 3 ** 0.5) < 0.05 * bound
    linear = torch.nn.Linear(F, G)
    with torch.no_grad():
        linear.weight.copy_(tp.weight.view(F, G).T)  # e3nn's layout: (m_in, m_out)
        linear.bias.copy_(tp.bias)
    x, one, y = torch.randn(64, F), torch.ones(64, 1), torch.randn(64, G)
    opt_tp = torch.optim.Adam(tp.parameters(), lr=1e-2)
    opt_lin = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(3):
        for opt, out in ((opt_tp, tp(x, one)), (opt_lin, linear(x))):
            opt.zero_grad()
            (out - y).pow(2).mean().backward()
            opt.step()
        torch.testing.assert_close(tp(x, one), linear(x), rtol=1e-5, atol=1e-6)
    vec = O3TensorProduct(f"{F}x1o", "1x0e", f"{G}x1o")
    v = torch.randn(8, F, 3)
    expected = torch.einsum("nfk,fg->ngk", v, vec.weight.view(F, G)).flatten(1)
    # the vector block of a 1x0e attribute a0 is scaled by a0, like a scalar layer's input
    torch.testing.assert_close(vec(v.flatten(1), torch.ones(8, 1)), expected)


def test_tensor_product_on_gathered_parts():
    """Input given in parts gathered by row indices (weights applied before the gather) equals
    the layer on the concatenated gathered input; parts must hold whole irrep blocks."""
    with default_dtype(torch.float64):
        layer = O3TensorProductGate("3x0e+2x1o+1x2e+3x0e+2x1o+1x2e+1x0e", SH(2), "4x0e+2x1o+1x2e")
    h = torch.randn(5, 14, dtype=torch.float64)
    e = torch.randn(9, 1, dtype=torch.float64)
    a = SH(2).randn(9, -1, dtype=torch.float64)
    src, dst = torch.randint(0, 5, (2, 9))
    expected = layer(torch.cat([h[dst], h[src], e], -1), a)
    torch.testing.assert_close(layer([h, h, e], a, [dst, src, None]), expected,
                               rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="irrep block"):
        layer.tp.blocks([h[:, :4], h[:, 4:], h, e], a[:5], [None, None, None, None])
    with pytest.raises(ValueError, match="needs 29"):
        layer.tp.blocks([h, h], a, [dst, src])
    with pytest.raises(ValueError, match=r"second input of shape \(9, 3\)"):
        layer([h, h, e], a[:, :3], [dst, src, None])
    with pytest.raises(ValueError, match="different numbers of rows"):
        layer([h, h, e], a[:4], [dst, src, None])


def test_gate_equals_e3nn_gate():
    """The fused gate equals e3nn's Gate (normalised SiLU and sigmoid) on the product."""
    from e3nn.nn import Gate

    with default_dtype(torch.float64):
        layer = O3TensorProductGate("2x0e+1x1o", SH(2), "2x0e+2x1o+1x2e")
        gate = Gate("2x0e", [torch.nn.functional.silu], "3x0e", [torch.sigmoid], "2x1o+1x2e")
    x1, x2 = torch.randn(5, 5, dtype=torch.float64), SH(2).randn(5, -1, dtype=torch.float64)
    torch.testing.assert_close(layer(x1, x2), gate(layer.tp(x1, x2)), rtol=1e-12, atol=1e-12)


def test_gate_irreps():
    x = torch.randn(4, 5)
    assert O3TensorProductGate("2x0e+1x1o", SH(1), "3x0e")(x, torch.randn(4, 4)).shape == (4, 3)
    assert O3TensorProductGate("2x0e+1x1o", SH(1), "1x1o")(x, torch.randn(4, 4)).shape == (4, 3)
    gate = O3TensorProductGate("2x0e+1x1o", SH(1), "2x0e+2x1o+1x2e")
    assert gate.tp.irreps_out == o3.Irreps("5x0e+2x1o+1x2e")  # 2 scalars + 3 gates
    with pytest.raises(ValueError, match="0e channels first"):
        O3TensorProductGate("1x0e", SH(1), "1x1o+1x0e")


# ------------------------------------------------------------------------------- the layer

class ConvOnPositions:
    """``SEGNNConv`` as a ``Data -> Tensor`` map: features ``data.x``, attributes computed from
    ``data.pos`` on the fully connected graph (so that a rotation of ``pos`` rotates them)."""

    def __init__(self, conv: SEGNNConv, lmax: int) -> None:
        self.conv, self.lmax = conv, lmax
        self.signature = Signature({"x": conv.irreps_in, "pos": "1x1o"}, conv.irreps_out)

    def __call__(self, data: Data) -> torch.Tensor:
        edge_index = fully_connected_edges(data.num_nodes, data.batch)
        node_attr, edge_attr, dist = segnn_attributes(data.pos, edge_index, self.lmax)
        return self.conv(data.x, edge_index, node_attr, edge_attr, dist)


CONVS = {  # (irreps_in, kwargs): a residual layer and a non-residual l = 2 layer
    "residual": ("2x0e+1x1o", dict(irreps_hidden="4x0e+2x1o", aggr="mean")),
    "l2": ("1x0e+1x1o+1x0o+1x2e", dict(irreps_out="2x0e+1x1o", irreps_hidden="3x0e+2x1o+1x2e",
                                       irreps_attr=SH(2))),
}


@functools.cache
def conv(name: str, dtype: torch.dtype) -> ConvOnPositions:
    irreps_in, kwargs = CONVS[name]
    torch.manual_seed(0)
    layer = SEGNNConv(irreps_in, **kwargs).to(dtype)
    return ConvOnPositions(layer, layer.irreps_attr.lmax)


def with_features(data: Batch, irreps: o3.Irreps, seed: int = 0) -> Batch:
    data = data.clone()
    gen = torch.Generator().manual_seed(seed)
    data.x = torch.randn(data.num_nodes, irreps.dim, generator=gen, dtype=torch.float64)
    data.x = data.x.to(data.pos.dtype)
    return data


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_equivariant_float64(name, batch64):
    wrapped = conv(name, torch.float64)
    assert wrapped.conv.residual == (name == "residual")
    check_equivariant(wrapped, with_features(batch64, wrapped.conv.irreps_in), 1e-9)


@pytest.mark.parametrize("name", list(CONVS))
def test_conv_equivariant_float32(name, batch32):
    wrapped = conv(name, torch.float32)
    check_equivariant(wrapped, with_features(batch32, wrapped.conv.irreps_in), 1e-5)


def test_conv_bad_inputs_and_no_edges():
    layer = conv("residual", torch.float64).conv
    x = torch.randn(4, layer.irreps_in.dim, dtype=torch.float64)
    attr = torch.randn(4, 4, dtype=torch.float64)
    none = torch.zeros(2, 0, dtype=torch.long)
    empty = torch.zeros(0, 4, dtype=torch.float64)
    out = layer(x, none, attr, empty, torch.zeros(0, 1, dtype=torch.float64))
    assert out.shape == (4, 5) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="`x`.*\\(4, 5\\)"):
        layer(x[:, :4], none, attr, empty, torch.zeros(0, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="`node_attr`"):
        layer(x, none, attr[:, :3], empty, torch.zeros(0, 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="missing `edge_feat`"):
        layer(x, none, attr, empty)


# ------------------------------------------------------------------------------- the model

FIELDS = {"vel": "1x1o", "charges": "1x0e"}
MODELS = {
    "position-vel": dict(output="position", fields=FIELDS, velocity_field="vel"),
    "position": dict(output="position", fields={"charges": "1x0e"}, position_input="centred"),
    # ACE's N-body inputs [x, v, |v|] (absolute positions): O(3) about the origin only
    "absolute": dict(output="position", fields={"charges": "1x0e"}, velocity_field="vel",
                     position_input="absolute", speed_input=True),
    "node-vel": dict(output="node", fields={"charges": "1x0e"}, velocity_field="vel",
                     irreps_out="1x0e+1x1o"),
    "node": dict(output="node", fields=FIELDS),
    "graph-vel": dict(output="graph", fields=FIELDS, velocity_field="vel",
                      irreps_out="2x0e+1x1o", pooling="mean"),
    "graph": dict(output="graph", fields={"charges": "1x0e"}, lmax=2),
}
# reads a centred position computed outside the model (for the centring-bug test)
CENTRING = dict(output="node", fields={"centred": "1x1o"})


@functools.cache
def model(name: str, dtype: torch.dtype = torch.float64) -> SEGNN:
    """Cached models, built in float32 and cast to float64 (as users do); float32 copies."""
    if dtype != torch.float64:
        return copy.deepcopy(model(name)).to(dtype)
    torch.manual_seed(0)
    kwargs = {**MODELS, "centring": CENTRING}[name]
    return SEGNN(atomic_numbers=[1, 6, 8], hidden_features=8, num_layers=2, **kwargs).double()


@pytest.mark.parametrize("name", list(MODELS))
def test_model_equivariant_float64(name, batch64):
    m = model(name)
    out = m(batch64)
    rows = batch64.num_graphs if m.output == "graph" else batch64.num_nodes
    assert out.shape == (rows, m.irreps_out.dim)
    check_equivariant(m, batch64, 1e-9, seeds=(0,))


@pytest.mark.parametrize("name", ["position-vel", "node-vel", "graph"])
def test_model_equivariant_float32(name, batch32):
    check_equivariant(model(name, torch.float32), batch32, 1e-5, seeds=(0,))


def test_absolute_positions_claim_no_translation_and_break_it():
    """The signature leaves translation out (so the default checks pass above), and the claim
    is honest: a translation changes the prediction by more than the shift."""
    m = model("absolute")
    assert "translation" not in m.signature.symmetries
    assert "translation" in model("position").signature.symmetries
    data = Batch.from_data_list([molecule_data("H2O"), point_cloud(5, seed=3)])
    assert equivariance_error(m, data, checks=("translation",))["translation"] > 1e-3
    with pytest.raises(ValueError, match="position_input"):
        SEGNN(position_input="centered")


def test_speed_input_is_the_velocity_norm():
    """``speed_input`` appends ‖v‖ (a scalar) to the node input: the embedding's input grows by
    one 0e, and it needs a velocity field."""
    with_speed = SEGNN({"charges": "1x0e"}, velocity_field="vel", speed_input=True,
                       position_input="centred")
    without = SEGNN({"charges": "1x0e"}, velocity_field="vel", position_input="centred")
    assert with_speed.irreps_in == without.irreps_in + o3.Irreps("1x0e")
    with pytest.raises(ValueError, match="speed_input reads the norm of velocity_field"):
        SEGNN({"charges": "1x0e"}, speed_input=True)


def test_signature():
    sig = model("position-vel").signature
    assert sig.irreps_in == {"pos": o3.Irreps("1x1o"), "vel": o3.Irreps("1x1o"),
                             "charges": o3.Irreps("1x0e")}
    assert sig.output_translates and sig.level == "node"
    sig = model("graph-vel").signature
    assert sig.level == "graph" and sig.irreps_out == o3.Irreps("2x0e+1x1o")
    assert model("graph").irreps_hidden == balanced_irreps(8, 2)


def with_centred_field(centre):
    def run(data: Batch) -> torch.Tensor:
        data = data.clone()
        data.centred = centre(data)
        return model("centring")(data)
    return run


def test_per_node_centring_breaks_equivariance_per_graph_does_not(batch64):
    """SEGNN's public N-body code feeds ``pos - pos.mean(1, keepdims=True)`` with ``pos`` of
    shape (N, 3): each node minus the mean of its own x, y, z. That is neither rotation nor
    translation equivariant, and the check must see it; centring per graph is both."""
    signature = Signature({"pos": "1x1o"}, "1x0e")
    per_node = with_centred_field(lambda d: d.pos - d.pos.mean(-1, keepdim=True))
    per_graph = with_centred_field(lambda d: centre_per_graph(d.pos, d.batch))
    bad = equivariance_error(per_node, batch64, signature, trials=3)
    assert min(bad["rotation"], bad["reflection"], bad["translation"]) > 1e-5, bad  # ≫ 1e-9
    check_equivariant(per_graph, batch64, 1e-9, signature)
    centred = centre_per_graph(batch64.pos, batch64.batch)
    means = torch.zeros(batch64.num_graphs, 3, dtype=centred.dtype).index_add(0, batch64.batch,
                                                                              centred)
    assert means.abs().max() < 1e-12


def test_precomputed_attributes_give_the_same_output(batch64):
    m = model("position-vel")
    pre = SEGNNAttributes(lmax=1, velocity_field="vel")(FullyConnected()(batch64.clone()))
    torch.testing.assert_close(m(pre), m(batch64), rtol=0, atol=1e-12)
    wrong = SEGNNAttributes(lmax=2, velocity_field="vel")(FullyConnected()(batch64.clone()))
    with pytest.raises(ValueError, match="`node_attr`"):
        m(wrong)


def test_bad_field_width_names_the_field():
    data = molecule_data()
    data.vel = data.vel[:, :2]
    for name in ("node", "node-vel"):  # `vel` as an input field / as the velocity attribute
        with pytest.raises(ValueError, match="`vel`"):
            model(name)(data)
    data = molecule_data()
    data.charges = torch.ones(data.num_nodes, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="`charges`"):
        model("node")(data)
    with pytest.raises(ValueError, match="irreps_out"):
        SEGNN(output="position", irreps_out="1x0e", hidden_features=4, num_layers=1)


@pytest.mark.parametrize("name", ["position-vel", "graph-vel", "node"])
def test_graphs_without_edges(name):
    m = model(name)
    no_edges = molecule_data()
    no_edges.edge_index = torch.zeros(2, 0, dtype=torch.long)
    one_atom = point_cloud(1)
    for data in (no_edges, one_atom, Batch.from_data_list([one_atom, point_cloud(3)])):
        out = m(data)
        rows = getattr(data, "num_graphs", 1) if m.output == "graph" else data.num_nodes
        assert out.shape == (rows, m.irreps_out.dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_every_parameter(name):
    m = model(name)
    m.zero_grad(set_to_none=True)
    data = Batch.from_data_list([molecule_data(), point_cloud(4, seed=5)])
    out = m(data)
    gen = torch.Generator().manual_seed(0)
    (out * torch.randn(out.shape, generator=gen, dtype=out.dtype)).sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    zero = [n for n, p in m.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing and not zero, (missing, zero)
    m.zero_grad(set_to_none=True)

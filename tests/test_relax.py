"""Constraint relaxation on every model: θ = 0 is the plain model, θ > 0 breaks equivariance,
projection restores it exactly, penalties train only the paths, the controller's state keeps θ."""

import copy

import pytest
import torch
from conftest import molecule_data, point_cloud
from torch_geometric.data import Batch

from relaxgnn.dtype import default_dtype
from relaxgnn.models import EGNN, SEGNN, TPNet
from relaxgnn.relax import (
    Constant,
    LinearDecay,
    Relaxation,
    RelaxationPath,
    RelaxConfig,
    Triangle,
    find_paths,
)
from relaxgnn.symmetry import equivariance_error, random_reflection

BUILDERS = {
    "EGNN": lambda relax: EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                               hidden_channels=8, num_layers=2, relax=relax),
    "SEGNN": lambda relax: SEGNN({"charges": "1x0e"}, [1, 6, 8], irreps_hidden="4x0e+2x1o",
                                 num_layers=2, velocity_field="vel", relax=relax),
    "TPNet": lambda relax: TPNet(atomic_numbers=[1, 6, 8], irreps_hidden="4x0e+2x1o+2x1e",
                                 num_layers=2, cutoff=3.0, output="node", irreps_out="1x0e+1x1o",
                                 relax=relax),
}
KINDS = ["linear", {"kind": "mlp", "hidden": 8}]


def build(name, relax, seed=0):
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return BUILDERS[name](relax)


def data():
    return Batch.from_data_list([molecule_data("CH3CH2OH"), point_cloud(5, seed=3)])


def train(model, relax, steps=5, lr=1e-2):
    """A few Adam steps on a random (non-equivariant) target, penalty included."""
    batch = data()
    target = torch.randn_like(model(batch))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        relax.step(i)
        with relax.record():
            out = model(batch)
        loss = (out - target).pow(2).mean() + relax.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def count_path_calls(model):
    calls = []
    for path in find_paths(model).values():
        path.register_forward_hook(lambda *_: calls.append(1))
    return calls


@pytest.mark.parametrize("kind", KINDS, ids=["linear", "mlp"])
@pytest.mark.parametrize("name", BUILDERS)
def test_theta_zero_is_the_plain_model_bit_for_bit(name, kind):
    plain, relaxed = build(name, None), build(name, kind)
    paths = find_paths(relaxed)
    assert len(paths) >= 2 and not find_paths(plain)
    plain_state = plain.state_dict()
    relaxed_state = {k: v for k, v in relaxed.state_dict().items() if k in plain_state}
    assert all(torch.equal(plain_state[k], relaxed_state[k]) for k in plain_state)
    calls = count_path_calls(relaxed)
    batch = data()
    assert torch.equal(relaxed(batch), plain(batch))
    assert calls == []  # θ = 0: no path evaluated
    Relaxation(relaxed, Constant(0.5, 10))
    out = relaxed(batch)
    assert len(calls) == len(paths) and not torch.equal(out, plain(batch))


@pytest.mark.parametrize("kind", KINDS, ids=["linear", "mlp"])
@pytest.mark.parametrize("name", BUILDERS)
def test_relaxed_is_not_equivariant_projection_is_exact(name, kind):
    model = build(name, kind)
    relax = Relaxation(model, LinearDecay(1.0, 100), lie_weight=0.01, norm_weight=0.01)
    train(model, relax)
    relax.step(5)
    batch = data()
    errors = equivariance_error(model, batch, trials=2)
    assert max(errors["rotation"], errors["reflection"]) > 1e-4, errors
    projected = relax.project()
    assert not find_paths(projected) and projected.relax is None
    assert find_paths(model)  # the controller's model is untouched
    errors = equivariance_error(projected, batch, trials=3)
    assert max(errors.values()) < 1e-9, errors
    # the projected model loads strictly into the plain architecture and matches θ = 0
    plain = build(name, None, seed=123)
    plain.load_state_dict(projected.state_dict(), strict=True)
    relax.step(relax.total_steps)  # past the end: θ = 0
    assert relax.theta == 0.0
    assert torch.equal(plain(batch), model(batch))
    assert torch.equal(projected(batch), model(batch))
    assert sum(p.numel() for p in plain.parameters()) == \
        sum(p.numel() for p in projected.parameters())


@pytest.mark.parametrize("name", BUILDERS)
def test_penalty_trains_only_the_paths(name):
    model = build(name, "linear")
    relax = Relaxation(model, Constant(1.0, 10), lie_weight=1.0, norm_weight=1.0)
    with relax.record():
        model(data())
    penalty = relax.penalty()
    assert penalty > 0
    penalty.backward()
    path_params = {id(p) for path in find_paths(model).values() for p in path.parameters()}
    for pname, p in model.named_parameters():
        if id(p) in path_params:
            assert p.grad is not None and p.grad.abs().sum() > 0, pname
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, pname


def test_penalty_is_zero_for_an_equivariant_path_and_matches_the_paper():
    """A path whose W commutes with the generators has zero Lie penalty; the total is
    λ(sqrt(Σ‖Lg‖²) + sqrt(Σ‖g‖²)) with one root over all blocks (the paper's code), or with
    ``penalty_reduction="per_path"`` a root per block, summed."""
    model = build("SEGNN", {"kind": "linear", "positions": False})
    relax = Relaxation(model, Constant(1.0, 10), lie_weight=0.01, norm_weight=0.01)
    with relax.record():
        model(data())
    paths = find_paths(model)
    inputs = relax.inputs()
    assert set(inputs) == set(paths)
    with torch.no_grad():
        for path in paths.values():  # W = identity on the h part: equivariant
            path.g.weight.zero_()
            n = min(path.g.weight.shape)
            path.g.weight[:, :n] = torch.eye(n)
    squares = [path.g(inputs[name]).pow(2).sum() for name, path in paths.items()]
    assert torch.allclose(relax.penalty(), 0.01 * sum(squares).sqrt(), rtol=1e-12)
    metrics = relax.metrics()
    assert all(metrics[f"{name}/lie_derivative"] < 1e-12 for name in paths)
    per_path = Relaxation(model, Constant(1.0, 10), lie_weight=0.01, norm_weight=0.01,
                          penalty_reduction="per_path")
    with per_path.record():  # the paths now change the later paths' inputs: new inputs
        model(data())
    inputs = per_path.inputs()
    roots = [path.g(inputs[name]).pow(2).sum().sqrt() for name, path in paths.items()]
    assert torch.allclose(per_path.penalty(), 0.01 * sum(roots), rtol=1e-12)
    assert per_path.penalty() > 0.01 * sum(r**2 for r in roots).sqrt() * 1.5  # 8 paths
    with pytest.raises(ValueError, match="penalty_reduction"):
        Relaxation(model, Constant(1.0, 10), penalty_reduction="mean")


class TwoVectorMaps(torch.nn.Module):
    """Two maps of one vector (``1x1o``) each, the second reading the first's output."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Identity(), torch.nn.Identity()

    def forward(self, x):
        return self.second(self.first(x))


def test_global_penalty_equals_the_cr_formula_on_two_hand_computed_paths():
    """CR's penalty λ(√(Σ_paths Σ_x Σ_k ‖(W A_k − A_k W) x‖²) + √(Σ_paths Σ_x ‖W x‖²)), one root
    over both paths, computed here by hand with the so(3) generators of vectors written out
    (the basis's sign and order do not change the squared norms)."""
    from relaxgnn.relax import attach

    model = TwoVectorMaps()
    config = {"kind": "linear", "irreps_in": "1x1o", "irreps_out": "1x1o"}
    paths = attach(model, {"first": config, "second": config})
    model.double()
    W1 = torch.tensor([[1.0, 0, 0], [0, 2, 0], [0, 0, 3]], dtype=torch.float64)
    W2 = torch.tensor([[0.0, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=torch.float64)
    with torch.no_grad():
        paths["first"].g.weight.copy_(W1)
        paths["second"].g.weight.copy_(W2)
    relax = Relaxation(model, Constant(0.5, 10), lie_weight=0.01, norm_weight=0.01)
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]], dtype=torch.float64)
    with relax.record():
        y = model(x)
    x2 = x + 0.5 * x @ W1.T  # what the second path saw: the first map's output
    generators = [torch.tensor(a, dtype=torch.float64) for a in (
        [[0, 0, 0], [0, 0, -1], [0, 1, 0]], [[0, 0, 1], [0, 0, 0], [-1, 0, 0]],
        [[0, -1, 0], [1, 0, 0], [0, 0, 0]])]
    lie = sum(((W @ A - A @ W) @ v).pow(2).sum().item()
              for W, inputs in ((W1, x), (W2, x2)) for A in generators for v in inputs)
    norm = sum((W @ v).pow(2).sum().item() for W, inputs in ((W1, x), (W2, x2))
               for v in inputs)
    assert torch.allclose(y, x2 + 0.5 * x2 @ W2.T)
    assert relax.penalty().item() == pytest.approx(0.01 * (lie ** 0.5 + norm ** 0.5), rel=1e-12)


def test_penalty_and_metrics_report_per_block():
    model = build("EGNN", "linear")
    relax = Relaxation(model, Triangle(1.0, 21), reflection_weight=0.1)
    assert relax.theta == 0.0 and relax.penalty() == 0  # Triangle starts at 0
    relax.step(10)
    assert relax.theta == pytest.approx(1.0)
    batch = data()
    with relax.record():
        model(batch)
    metrics = relax.metrics(batch)
    names = list(find_paths(model))
    # features and coordinates of the first layer; the last has no feature update
    assert set(names) == {"layers.0.features", "layers.0.coords", "layers.1.coords"}
    for name in names:
        assert metrics[f"{name}/path_norm"] > 0 and metrics[f"{name}/lie_derivative"] > 0
    assert metrics["theta"] == pytest.approx(1.0)
    assert metrics["equivariance/rotation"] > 0
    assert torch.isfinite(relax.penalty())


def test_per_block_schedules():
    model = build("EGNN", "linear")
    relax = Relaxation(model, {"layers.0.*": Constant(1.0, 5), "*": LinearDecay(2.0, 5)})
    assert relax.thetas == {"layers.0.features": 1.0, "layers.0.coords": 1.0,
                            "layers.1.coords": 2.0}
    with pytest.raises(ValueError, match="no schedule pattern"):
        Relaxation(model, {"layers.0.*": Constant(1.0, 5)})


def test_relaxation_targets():
    model = EGNN(hidden_channels=8, num_layers=2, relax={"kind": "linear", "targets": ["coords"]})
    assert list(find_paths(model)) == ["layers.0.coords", "layers.1.coords"]
    with pytest.raises(ValueError, match="not offered"):
        TPNet(atomic_numbers=[1], num_layers=1, relax={"targets": ["coords"]})


def test_theta_lives_in_the_controller_and_its_state_restores_it():
    """θ is the controller's: the model's state dict has none (a relaxed model loaded without
    its controller computes the plain model), and the controller's state resumes it exactly."""
    model = build("SEGNN", "linear")
    relax = Relaxation(model, LinearDecay(1.0, 20))
    train(model, relax, steps=4)
    relax.step(7)
    assert not any("theta" in key for key in model.state_dict())
    state, relax_state = copy.deepcopy(model.state_dict()), relax.state_dict()

    restored = build("SEGNN", "linear", seed=99)
    restored.load_state_dict(state)
    plain = build("SEGNN", None, seed=98)
    plain.load_state_dict({k: v for k, v in state.items() if "relaxation_paths" not in k})
    batch = data()
    assert torch.equal(restored(batch), plain(batch))  # no controller: θ = 0
    restored_relax = Relaxation(restored, LinearDecay(1.0, 20))
    assert restored_relax.theta == 1.0
    restored_relax.load_state_dict(relax_state)
    assert restored_relax.theta == relax.theta == pytest.approx(1.0 - 7 / 19)
    assert torch.equal(restored(batch), model(batch))
    restored_relax.step(8)
    relax.step(8)
    assert restored_relax.theta == relax.theta
    with pytest.raises(ValueError, match="schedule mismatch"):
        Relaxation(restored, LinearDecay(5.0, 20)).load_state_dict(relax_state)


def test_bad_configuration():
    with pytest.raises(ValueError, match="unknown relaxation path kind 'quadratic'"):
        EGNN(relax="quadratic")
    with pytest.raises(ValueError, match="unknown relaxation option"):
        EGNN(relax={"kind": "linear", "width": 3})
    with pytest.raises(ValueError, match="has no relaxation paths"):
        Relaxation(EGNN(), LinearDecay(1.0, 10))
    with pytest.raises(ValueError, match="theta0 must be a finite non-negative"):
        LinearDecay(-0.1, 10)
    with pytest.raises(ValueError, match="total_steps must be a positive integer"):
        LinearDecay(1.0, 0)
    path = RelaxationPath("1x0e", "1x0e")
    with pytest.raises(ValueError, match="lie_weight"):
        Relaxation(EGNN(relax="linear"), LinearDecay(1.0, 10), lie_weight=-1)
    with pytest.raises(ValueError, match="expects 1 input features"):
        path(torch.zeros(2, 3))
    assert RelaxConfig.parse(None) is None and RelaxConfig.parse("mlp").kind == "mlp"


def test_linear_path_initialisation():
    torch.manual_seed(0)
    path = RelaxationPath("64x0e+16x1o", "64x0e+16x1o")
    assert path.g.weight.std().item() == pytest.approx(1e-4, rel=0.05)
    mlp = RelaxationPath("4x0e", "2x0e", RelaxConfig(kind="mlp", hidden=16, layers=2))
    last = [m for m in mlp.g if isinstance(m, torch.nn.Linear)][-1]
    assert last.weight.abs().max() < 1e-3 and torch.all(last.bias == 0)


def test_linear_penalty_closed_form_equals_the_per_sample_derivatives():
    """The Gram-matrix form used for linear paths gives the same three terms as the generic
    per-sample route (Jacobian-vector products through an opaque function)."""
    from relaxgnn.relax.lie import lie_derivative, translation_derivative
    from relaxgnn.relax.penalties import path_penalties
    from relaxgnn.symmetry.irreps import representation

    with default_dtype(torch.float64):
        path = RelaxationPath("2x0e+1x1o+1x2e+1x1o", "1x0e+2x1o", RelaxConfig(init_std=1.0),
                              position_columns=[10])
    x = torch.randn(3, 7, path.irreps_in.dim, dtype=torch.float64)
    reflection = random_reflection(0, dtype=torch.float64)
    terms = path_penalties(path, x, reflection)

    def opaque(v):  # not an nn.Linear: forces the jvp route
        return path.g(v)
    lie = (lie_derivative(opaque, x, path.irreps_in, path.irreps_out).pow(2).sum()
           + translation_derivative(opaque, x, [10]).pow(2).sum()).sqrt()
    D_in = representation(path.irreps_in, reflection)
    D_out = representation(path.irreps_out, reflection)
    refl = (path.g(x @ D_in.T) - path.g(x) @ D_out.T).pow(2).sum().sqrt()
    torch.testing.assert_close(terms["lie"], lie, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["norm"], path.g(x).pow(2).sum().sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["reflection"], refl, rtol=1e-12, atol=0)
    assert terms["lie"] > 1.0  # a random W is far from equivariant


def test_batched_layer_penalties_equal_the_per_path_ones():
    """Relaxation evaluates the linear paths of equal shape in one batch (a model's layers):
    every block's terms equal path_penalties of that path alone."""
    from relaxgnn.relax.penalties import path_penalties

    model = build("SEGNN", "linear")
    relax = Relaxation(model, Constant(1.0, 10), reflection_weight=0.1)
    for path in find_paths(model).values():
        with torch.no_grad():
            path.g.weight.normal_()
    with relax.record():
        model(data())
    batched = relax._terms()
    assert len(batched) == 4  # two update layers in each of two layers
    reflection = random_reflection(relax.step_index, dtype=torch.float64)
    for name, path in find_paths(model).items():
        alone = path_penalties(path, relax.inputs()[name], reflection)
        for term in ("lie", "norm", "reflection"):
            torch.testing.assert_close(batched[name][term], alone[term], rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_zero_initialised_paths_have_finite_gradients(kind):
    """init_std = 0 makes every path exactly zero: √(Σ‖g‖²) is then at its kink, and its
    gradient must be 0, not NaN (which would poison the whole model at the first step)."""
    model = build("EGNN", {"kind": kind, "init_std": 0.0})
    relax = Relaxation(model, Constant(1.0, 10), reflection_weight=0.1)
    with relax.record():
        out = model(data())
    loss = out.pow(2).mean() + relax.penalty()
    loss.backward()
    assert relax.penalty() == 0
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


def test_linear_penalty_gradients_equal_autograd_of_the_plain_expression():
    """The Gram-matrix terms use a hand-written gradient (2AS from the forward's product): it
    equals autograd through Σ_x |A x|² computed sample by sample (float64)."""
    from e3nn import o3

    from relaxgnn.relax.penalties import linear_penalties

    torch.manual_seed(0)
    irreps_in, irreps_out = o3.Irreps("2x0e+1x1o+1x2e"), o3.Irreps("1x0e+2x1o")
    W = torch.randn(3, irreps_out.dim, irreps_in.dim, dtype=torch.float64, requires_grad=True)
    X = torch.randn(3, 11, irreps_in.dim, dtype=torch.float64)
    weights = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    terms = linear_penalties(W, X, irreps_in, irreps_out)
    (grad,) = torch.autograd.grad(sum((weights * t).sum() for t in terms.values()), W)

    from relaxgnn.relax.lie import generator_commutator

    def plain(W):
        A = generator_commutator(W, irreps_in, irreps_out)  # (P, 3, out, in)
        lie = torch.einsum("pkoi,pni->pkno", A, X).pow(2).flatten(1).sum(1).sqrt()
        norm = torch.einsum("poi,pni->pno", W, X).pow(2).flatten(1).sum(1).sqrt()
        return (weights * lie).sum() + (weights * norm).sum()
    (expected,) = torch.autograd.grad(plain(W), W)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-12)

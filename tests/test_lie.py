"""Lie derivatives: exactly zero for equivariant maps, equal to finite differences otherwise."""

import pytest
import torch
from e3nn import o3

from relaxgnn.dtype import default_dtype
from relaxgnn.relax import lie_derivative, translation_derivative
from relaxgnn.symmetry import so3_generators

IRREPS_IN = "2x0e+2x1o+1x1e+1x2e"
IRREPS_OUT = "1x0e+3x1o+1x2e+1x2o"


def equivariant_matrix(irreps_in: str, irreps_out: str) -> torch.Tensor:
    """The dense matrix of a random e3nn ``o3.Linear`` (exactly equivariant)."""
    with default_dtype(torch.float64):
        lin = o3.Linear(irreps_in, irreps_out)
        eye = torch.eye(o3.Irreps(irreps_in).dim)
        return lin(eye).T  # column j is the image of basis vector j


def finite_difference(fn, x, irreps_in, irreps_out, k, t=1e-5):
    """d/dt [D_out(-t) fn(D_in(t) x)] at t = 0 by a central difference."""
    G_in, G_out = so3_generators(irreps_in, x.dtype), so3_generators(irreps_out, x.dtype)

    def h(s):
        D_in, D_out = torch.linalg.matrix_exp(s * G_in[k]), torch.linalg.matrix_exp(-s * G_out[k])
        return fn(x @ D_in.T) @ D_out.T

    return (h(t) - h(-t)) / (2 * t)


def test_equivariant_linear_map_has_zero_lie_derivative():
    torch.manual_seed(0)
    W = equivariant_matrix(IRREPS_IN, IRREPS_OUT)
    assert W.abs().max() > 0.1
    x = torch.randn(7, o3.Irreps(IRREPS_IN).dim, dtype=torch.float64)
    layer = torch.nn.Linear(W.shape[1], W.shape[0], bias=False).double()
    layer.weight.data.copy_(W)
    closed = lie_derivative(layer, x, IRREPS_IN, IRREPS_OUT)  # closed form
    autodiff = lie_derivative(lambda v: v @ W.T, x, IRREPS_IN, IRREPS_OUT)  # forward mode
    assert closed.shape == (3, 7, o3.Irreps(IRREPS_OUT).dim)
    assert closed.abs().max() < 1e-10 and autodiff.abs().max() < 1e-10


def test_wrong_generator_order_is_not_zero():
    """The released code's defect, replicated: stacking the generators on the feature axis and
    reshaping in the other order gives a non-zero 'Lie derivative' for an equivariant W."""
    torch.manual_seed(0)
    W = equivariant_matrix(IRREPS_IN, IRREPS_OUT)
    d_in = W.shape[1]
    x = torch.randn(5, d_in, dtype=torch.float64)
    G_in = so3_generators(IRREPS_IN, torch.float64)
    G_out = so3_generators(IRREPS_OUT, torch.float64)
    stacked = (G_in @ x.T).permute(2, 0, 1).reshape(5, 3 * d_in)  # (n, [k, i]) k-major
    g_out = torch.einsum("koi,ni->nko", G_out, x @ W.T)  # (n, k, d_out)
    wrong = stacked.reshape(5, d_in, 3).transpose(1, 2) @ W.T - g_out  # read back i-major
    assert wrong.abs().max() > 1e-2
    right = stacked.reshape(5, 3, d_in) @ W.T - g_out
    assert right.abs().max() < 1e-10


@pytest.mark.parametrize("k", [0, 1, 2])
def test_random_linear_and_mlp_match_finite_differences(k):
    torch.manual_seed(k)
    d_in, d_out = o3.Irreps(IRREPS_IN).dim, o3.Irreps(IRREPS_OUT).dim
    x = torch.randn(6, d_in, dtype=torch.float64)
    linear = torch.nn.Linear(d_in, d_out, bias=False).double()
    mlp = torch.nn.Sequential(torch.nn.Linear(d_in, 32), torch.nn.SiLU(),
                              torch.nn.Linear(32, d_out)).double()
    for fn in (linear, mlp):
        exact = lie_derivative(fn, x, IRREPS_IN, IRREPS_OUT)[k]
        fd = finite_difference(fn, x, IRREPS_IN, IRREPS_OUT, k)
        assert exact.abs().max() > 1e-3
        assert (exact - fd).norm() / fd.norm() < 1e-5


def test_mlp_lie_derivative_is_differentiable_in_parameters():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.SiLU(), torch.nn.Linear(8, 4))
    x = torch.randn(3, 4)
    lie_derivative(mlp, x, "1x0e+1x1o", "1x0e+1x1o").pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mlp.parameters())


def test_translation_derivative():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    mlp = mlp.double()
    x = torch.randn(4, 5, dtype=torch.float64)  # columns 2..4 are a position
    exact = translation_derivative(mlp, x, [2])
    for k in range(3):
        shift = torch.zeros(5, dtype=torch.float64)
        shift[2 + k] = 1e-6
        fd = (mlp(x + shift) - mlp(x - shift)) / 2e-6
        assert torch.allclose(exact[k], fd, atol=1e-8)
    linear = torch.nn.Linear(5, 2, bias=False).double()
    assert torch.allclose(translation_derivative(linear, x, [2])[1],
                          linear.weight[:, 3].expand(4, 2))
    invariant = torch.nn.Linear(2, 2, bias=False).double()
    assert translation_derivative(lambda v: invariant(v[:, :2]), x, [2]).abs().max() == 0


def test_lie_derivative_checks_width():
    with pytest.raises(ValueError, match="x has 3 features but irreps_in 1x0e"):
        lie_derivative(lambda v: v, torch.zeros(2, 3), "1x0e", "1x0e")


def test_commutator_of_a_batch_of_matrices():
    """generator_commutator maps (*batch, d_out, d_in) to (*batch, 3, d_out, d_in), matrix by
    matrix, and its rows are the Lie derivatives of x -> Wx."""
    from relaxgnn.relax.lie import generator_commutator

    W = torch.randn(2, o3.Irreps(IRREPS_OUT).dim, o3.Irreps(IRREPS_IN).dim, dtype=torch.float64)
    batched = generator_commutator(W, IRREPS_IN, IRREPS_OUT)
    assert batched.shape == (2, 3, *W.shape[1:])
    x = torch.randn(o3.Irreps(IRREPS_IN).dim, dtype=torch.float64)
    for b in range(2):
        torch.testing.assert_close(batched[b], generator_commutator(W[b], IRREPS_IN, IRREPS_OUT))
        expected = finite_difference(lambda v, b=b: v @ W[b].T, x, IRREPS_IN, IRREPS_OUT, 1)
        torch.testing.assert_close(batched[b, 1] @ x, expected, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="expected"):
        generator_commutator(W.mT, IRREPS_IN, IRREPS_OUT)


def test_blockwise_commutator_equals_the_dense_one():
    from relaxgnn.relax.lie import generator_commutator

    W = torch.randn(o3.Irreps(IRREPS_OUT).dim, o3.Irreps(IRREPS_IN).dim, dtype=torch.float64)
    dense = (W @ so3_generators(IRREPS_IN, torch.float64)
             - so3_generators(IRREPS_OUT, torch.float64) @ W)
    torch.testing.assert_close(generator_commutator(W, IRREPS_IN, IRREPS_OUT), dense,
                               rtol=0, atol=1e-14)

"""Group actions, generators and the equivariance check itself (including that it can fail)."""

import pytest
import torch
from conftest import point_cloud
from e3nn import o3
from torch_geometric.data import Batch

from relaxgnn.symmetry import (
    Signature,
    apply_permutation,
    equivariance_error,
    random_permutation_within,
    random_reflection,
    random_rotation,
    representation,
    so3_generators,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_elements_are_orthogonal_and_seedable(seed):
    R, P = random_rotation(seed), random_reflection(seed)
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(R @ R.T, eye, atol=1e-12) and torch.det(R) == pytest.approx(1.0)
    assert torch.allclose(P @ P.T, eye, atol=1e-12) and torch.det(P) == pytest.approx(-1.0)
    assert torch.equal(R, random_rotation(seed)) and torch.equal(P, random_reflection(seed))
    assert not torch.equal(R, random_rotation(seed + 10))


def test_vectors_are_xyz():
    R = random_rotation(3)
    assert torch.allclose(representation("1x1o", R), R, atol=1e-12)
    assert torch.allclose(representation("1x1e", -R), R, atol=1e-12)  # pseudovector


@pytest.mark.parametrize("irreps", ["1x0e", "1x1o", "2x1o+1x2e", "3x0e+2x1e+1x2o+1x3o"])
def test_generators_exponentiate_to_representation(irreps):
    """exp(t dρ(A_k)) = D(exp(t A_k)): the generators are those of this irreps' representation."""
    gens = so3_generators(irreps, torch.float64)
    vec_gens = so3_generators("1x1o", torch.float64)
    assert gens.shape == (3, o3.Irreps(irreps).dim, o3.Irreps(irreps).dim)
    for k in range(3):
        t = 0.37
        R = torch.linalg.matrix_exp(t * vec_gens[k])
        assert torch.allclose(
            torch.linalg.matrix_exp(t * gens[k]), representation(irreps, R), atol=1e-10
        )


def test_generator_blocks_follow_irreps_order():
    gens = so3_generators("1x0e+1x1o", torch.float64)
    assert torch.all(gens[:, 0, :] == 0)
    assert torch.equal(gens[:, 1:, 1:], so3_generators("1x1o", torch.float64))


def test_permutation_keeps_graphs_contiguous():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    perm = random_permutation_within(batch, 5)
    assert torch.equal(torch.sort(perm).values, torch.arange(9))
    assert torch.equal(batch[perm], batch)
    data = Batch.from_data_list([point_cloud(3), point_cloud(2), point_cloud(4)])
    data.edge_index = torch.tensor([[0, 1, 3], [1, 2, 4]])
    permuted = apply_permutation(data, perm)
    inverse = torch.argsort(perm)
    assert torch.equal(permuted.pos, data.pos[perm])
    assert torch.equal(permuted.edge_index, inverse[data.edge_index])


class PlainMLP(torch.nn.Module):
    """A deliberately non-equivariant model: an MLP on raw coordinates."""

    signature = Signature({"pos": "1x1o"}, "1x1o", "node", output_translates=True)

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3)
        )

    def forward(self, data):
        return data.pos + self.net(data.pos)


def test_broken_model_is_reported():
    torch.manual_seed(0)
    model = PlainMLP().double()
    data = Batch.from_data_list([point_cloud(6), point_cloud(4, seed=1)])
    errors = equivariance_error(model, data, trials=2)
    assert errors["rotation"] > 1e-3 and errors["reflection"] > 1e-3
    assert errors["translation"] > 1e-3
    assert errors["permutation"] < 1e-12  # pointwise, so it is permutation-equivariant


def test_permutation_breaking_model_is_reported():
    def first_node(data):  # output depends on node order
        return data.pos[:1].expand(data.num_nodes, 3) - data.pos.mean(0)

    sig = Signature({"pos": "1x1o"}, "1x1o", "node")
    errors = equivariance_error(first_node, point_cloud(6), signature=sig, checks=("permutation",))
    assert errors["permutation"] > 1e-3


def test_signature_and_check_errors():
    with pytest.raises(ValueError, match="not a valid e3nn irreps"):
        Signature({"pos": "1x1q"}, "1x0e")
    with pytest.raises(ValueError, match="translated field 'pos'"):
        Signature({"x": "1x0e"}, "1x0e")
    with pytest.raises(TypeError, match="Signature"):
        equivariance_error(lambda d: d.pos, point_cloud(3))
    with pytest.raises(ValueError, match="unknown checks"):
        equivariance_error(PlainMLP().double(), point_cloud(3), checks=("shear",))


@pytest.mark.parametrize("seed", [0, 1])
def test_representation_matches_e3nn_and_is_exact(seed):
    """Same convention as e3nn's ``D_from_matrix`` (which is float32-limited), and a
    homomorphism to float64 precision: D(R1 R2) = D(R1) D(R2), D(-I) = parity."""
    irreps = "1x0e+1x1o+1x1e+1x2e+1x2o+1x3o"
    R1, R2, P = random_rotation(seed), random_rotation(seed + 5), random_reflection(seed)
    for g in (R1, P):
        assert torch.allclose(
            representation(irreps, g), o3.Irreps(irreps).D_from_matrix(g), atol=1e-5
        )
    assert torch.allclose(
        representation(irreps, R1 @ R2),
        representation(irreps, R1) @ representation(irreps, R2),
        atol=1e-12,
    )
    assert torch.allclose(
        representation(irreps, P @ R2),
        representation(irreps, P) @ representation(irreps, R2),
        atol=1e-12,
    )
    parity = torch.diag(representation(irreps, -torch.eye(3, dtype=torch.float64)))
    assert parity.tolist() == [1, -1, -1, -1, 1, 1, 1] + [1] * 5 + [-1] * 5 + [-1] * 7

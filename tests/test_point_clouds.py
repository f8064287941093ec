"""Point-cloud transforms: PointFeatures' invariance and equivariance (float64), batch
awareness, KNNGraph against a brute-force kNN, Normalize and RandomRotation."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from relaxgnn.data import KNNGraph, Normalize, PointFeatures, RandomRotation
from relaxgnn.symmetry import random_reflection, random_rotation, random_translation

TOL = 1e-9


def cloud(n: int, seed: int, dtype=torch.float64) -> Data:
    gen = torch.Generator().manual_seed(seed)
    return Data(pos=torch.randn(n, 3, generator=gen, dtype=dtype) * 2 + 1)


def features(data: Data, k: int = 6) -> Data:
    return PointFeatures()(KNNGraph(k)(data))


@pytest.mark.parametrize("kind", ["rotation", "reflection"])
def test_point_features_invariant_and_equivariant(kind):
    data = cloud(40, seed=0)
    Q = random_rotation(1) if kind == "rotation" else random_reflection(1)
    t = random_translation(2)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    moved = Data(pos=(data.pos @ Q.T + t)[perm])
    a, b = features(data), features(moved)
    assert a.x.shape == (40, 2) and a.rel.shape == (40, 3)
    assert PointFeatures.irreps == {"x": "2x0e", "rel": "1x1o"}
    torch.testing.assert_close(b.x, a.x[perm], atol=TOL, rtol=0)
    torch.testing.assert_close(b.rel, (a.rel @ Q.T)[perm], atol=TOL, rtol=0)
    # the features are not trivially constant
    assert a.x.std(0).min() > 1e-2


def test_point_features_values():
    pos = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0, 4, 0], [0, 0, 6]], dtype=torch.float64)
    data = PointFeatures()(Data(pos=pos, edge_index=torch.tensor([[1, 2], [0, 0]])))
    centre = pos.mean(0)
    torch.testing.assert_close(data.rel, pos - centre)
    torch.testing.assert_close(data.x[:, 0], (pos - centre).norm(dim=1))
    # node 0 receives from 1 (distance 2) and 2 (distance 4); the others receive nothing
    torch.testing.assert_close(data.x[:, 1], torch.tensor([3.0, 0, 0, 0], dtype=torch.float64))


def test_point_features_batched_equals_each_alone():
    clouds = [cloud(30, seed=4), cloud(17, seed=5)]
    batched = features(Batch.from_data_list(clouds))
    alone = [features(c) for c in clouds]
    torch.testing.assert_close(batched.x, torch.cat([a.x for a in alone]), atol=TOL, rtol=0)
    torch.testing.assert_close(batched.rel, torch.cat([a.rel for a in alone]), atol=TOL, rtol=0)
    edges = torch.cat([alone[0].edge_index, alone[1].edge_index + 30], 1)
    assert torch.equal(batched.edge_index, edges)


def test_point_features_needs_edges():
    with pytest.raises(ValueError, match="edge_index.*KNNGraph"):
        PointFeatures()(cloud(5, seed=0))


@pytest.mark.parametrize("k", [1, 5, 12])
def test_knn_graph_matches_brute_force(k):
    data = Batch.from_data_list([cloud(25, seed=6), cloud(9, seed=7), cloud(14, seed=8)])
    edge_index = KNNGraph(k)(data).edge_index
    pos, batch = data.pos, data.batch
    for i in range(pos.shape[0]):
        others = [j for j in range(pos.shape[0]) if j != i and batch[j] == batch[i]]
        dist = [float(((pos[j] - pos[i]) ** 2).sum()) for j in others]
        order = sorted(range(len(others)), key=lambda m: dist[m])
        expected = {others[m] for m in order[:k]}
        got = set(edge_index[0, edge_index[1] == i].tolist())
        assert got == expected, f"node {i}"


def test_normalize_centres_and_scales_each_cloud():
    clouds = [cloud(20, seed=9), cloud(11, seed=10)]
    batch = Normalize()(Batch.from_data_list(clouds))
    for g, c in enumerate(clouds):
        p = batch.pos[batch.batch == g]
        torch.testing.assert_close(p.mean(0), torch.zeros(3, dtype=torch.float64), atol=TOL,
                                   rtol=0)
        assert abs(float(p.norm(dim=1).max()) - 1) < TOL
        alone = Normalize()(c).pos
        torch.testing.assert_close(p, alone, atol=TOL, rtol=0)
    # a cloud of one repeated point is only centred
    same = Normalize()(Data(pos=torch.ones(4, 3, dtype=torch.float64)))
    assert torch.equal(same.pos, torch.zeros(4, 3, dtype=torch.float64))


def test_random_rotation_z_keeps_heights_so3_does_not():
    data = cloud(50, seed=11)
    z = RandomRotation("z")(data)
    torch.testing.assert_close(z.pos[:, 2], data.pos[:, 2], atol=TOL, rtol=0)
    torch.testing.assert_close(z.pos.norm(dim=1), data.pos.norm(dim=1), atol=TOL, rtol=0)
    assert not torch.allclose(z.pos, data.pos)
    so3 = RandomRotation("so3")(data)
    assert (so3.pos[:, 2] - data.pos[:, 2]).abs().max() > 0.1
    torch.testing.assert_close(so3.pos.norm(dim=1), data.pos.norm(dim=1), atol=TOL, rtol=0)
    assert data.pos is not so3.pos  # the input is left as it was


@pytest.mark.parametrize("axis", ["z", "so3"])
def test_random_rotation_seeds(axis):
    a, b = RandomRotation(axis, seed=5), RandomRotation(axis, seed=5)
    assert torch.equal(a.matrix(3), b.matrix(3))  # a function of (seed, index)
    assert torch.equal(a.matrix(3), a.matrix(3))
    assert not torch.allclose(a.matrix(3), a.matrix(4))
    assert not torch.allclose(a.matrix(3), RandomRotation(axis, seed=6).matrix(3))
    fresh = RandomRotation(axis)
    assert not torch.allclose(fresh.matrix(3), fresh.matrix(3))
    R = a.matrix(0)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=torch.float64), atol=TOL, rtol=0)
    assert abs(float(torch.linalg.det(R)) - 1) < TOL
    # seeded, without an index: one reproducible stream
    c, d = RandomRotation(axis, seed=5), RandomRotation(axis, seed=5)
    assert torch.equal(c.matrix(), d.matrix()) and not torch.equal(c.matrix(), d.matrix(0))


def test_random_rotation_distribution():
    """Haar measure on SO(3): E[R] = 0; rotations about z: E[R] = diag(0, 0, 1)."""
    so3 = torch.stack([RandomRotation("so3", seed=1).matrix(i) for i in range(3000)])
    assert so3.mean(0).abs().max() < 0.05
    z = torch.stack([RandomRotation("z", seed=1).matrix(i) for i in range(3000)])
    expected = torch.diag(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    assert (z.mean(0) - expected).abs().max() < 0.05


def test_random_rotation_errors():
    with pytest.raises(ValueError, match="axis"):
        RandomRotation("x")
    with pytest.raises(ValueError, match="normal"):
        RandomRotation("z", keys=("pos", "normal"))(cloud(3, seed=0))

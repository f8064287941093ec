"""Graph construction (fully connected, k nearest neighbours, vesin radius graph, periodic) and
SEGNN attributes."""

import math

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list
from conftest import point_cloud
from torch_geometric.data import Batch, Data

from relaxgnn.data import (
    FullyConnected,
    KNNGraph,
    RadiusGraph,
    SEGNNAttributes,
    edge_vectors,
    fully_connected_edges,
    knn_edges,
    radius_edges,
)


def _pairs(edge_index):
    return sorted(map(tuple, edge_index.T.tolist()))


def test_fully_connected_is_per_graph():
    batch = torch.tensor([0, 0, 0, 1, 2, 2])
    edges = fully_connected_edges(6, batch)
    expected = [(a, b) for g in ([0, 1, 2], [3], [4, 5]) for a in g for b in g if a != b]
    assert _pairs(edges) == sorted(expected)
    assert fully_connected_edges(1).shape == (2, 0)


def brute_force_knn(pos, k, batch):
    """Edges (j, i) to each i, in order, from its k nearest j ≠ i of its graph, nearest first."""
    edges = []
    for i in range(len(pos)):
        others = [j for j in range(len(pos)) if j != i and batch[j] == batch[i]]
        others.sort(key=lambda j: float(((pos[j] - pos[i]) ** 2).sum()))
        edges += [(j, i) for j in others[:k]]
    return edges


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_knn_graph_matches_brute_force_per_graph(k, dtype):
    """Graphs of 40, 12, 9, 4 and 1 nodes: exactly the k nearest of each graph (those of at most
    k nodes fully connected, the single node alone), edges j → i grouped by i, nearest first."""
    clouds = [point_cloud(n, dtype, seed=n) for n in (40, 12, 9, 4, 1)]
    data = Batch.from_data_list(clouds)
    edges = knn_edges(data.pos, k, data.batch)
    assert edges.dtype == torch.long
    assert edges.T.tolist() == [list(e) for e in brute_force_knn(data.pos, k, data.batch)]
    assert edges.shape[1] == sum(n * min(k, n - 1) for n in (40, 12, 9, 4, 1))
    # one graph at a time gives the same edges, shifted
    offset, parts = 0, []
    for cloud in clouds:
        parts.append(knn_edges(cloud.pos, k) + offset)
        offset += cloud.num_nodes
    assert torch.equal(edges, torch.cat(parts, 1))
    # the transform, on one graph and on a batch; positions keep their gradient
    pos = clouds[0].pos.clone().requires_grad_()
    assert torch.equal(KNNGraph(k)(Data(pos=pos)).edge_index, parts[0])
    assert torch.equal(KNNGraph(k)(data.clone()).edge_index, edges)


def test_knn_graph_errors_and_edge_cases():
    assert knn_edges(torch.zeros(0, 3), 6).shape == (2, 0)
    assert knn_edges(torch.zeros(1, 3), 6).shape == (2, 0)
    assert repr(KNNGraph(6)) == "KNNGraph(k=6)"
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            knn_edges(torch.zeros(4, 3), k)
        with pytest.raises(ValueError, match="k must be a positive integer"):
            KNNGraph(k)
    with pytest.raises(ValueError, match="sorted"):
        knn_edges(torch.randn(4, 3), 2, torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="batch must have shape"):
        knn_edges(torch.randn(4, 3), 2, torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="pos must have shape"):
        knn_edges(torch.randn(4), 2)


def test_radius_graph_matches_brute_force():
    data = Batch.from_data_list([point_cloud(12, seed=1), point_cloud(9, seed=2)])
    edges, shift = radius_edges(data.pos, 1.3, data.batch)
    dist = torch.cdist(data.pos, data.pos)
    same = data.batch[:, None] == data.batch[None, :]
    mask = (dist < 1.3) & same & ~torch.eye(21, dtype=torch.bool)
    assert _pairs(edges) == _pairs(mask.nonzero().T.flip(0))
    assert torch.all(shift == 0)
    vec = edge_vectors(data.pos, edges)
    assert torch.allclose(vec, data.pos[edges[0]] - data.pos[edges[1]])


def test_periodic_radius_graph_matches_ase():
    atoms = bulk("Si", "diamond", a=5.43) * (2, 1, 1)
    atoms.rattle(0.05, seed=0)
    pos = torch.tensor(atoms.positions)
    cell = torch.tensor(np.array(atoms.cell))
    edges, shift = radius_edges(pos, 3.0, cell=cell, pbc=True)
    i, j, D = neighbor_list("ijD", atoms, 3.0)
    assert edges.shape[1] == len(i)
    ours = sorted(
        zip(
            edges[1].tolist(),
            edges[0].tolist(),
            np.round(edge_vectors(pos, edges, shift).numpy(), 8).tolist(),
            strict=True,
        )
    )
    theirs = sorted(zip(i.tolist(), j.tolist(), np.round(D, 8).tolist(), strict=True))
    assert [(a, b) for a, b, _ in ours] == [(a, b) for a, b, _ in theirs]
    assert np.allclose([v for *_, v in ours], [v for *_, v in theirs], atol=1e-7)


def test_transforms():
    data = FullyConnected()(point_cloud(4))
    assert data.edge_index.shape == (2, 12)
    data = RadiusGraph(0.5)(point_cloud(4))
    assert data.edge_index.dim() == 2
    data = SEGNNAttributes(lmax=2)(FullyConnected()(point_cloud(5)))
    assert data.node_attr.shape == (5, 9) and data.edge_attr.shape == (20, 9)
    y0 = 1 / math.sqrt(4 * math.pi)  # "integral" normalisation, as SEGNN
    assert torch.allclose(data.edge_attr[:, 0], torch.full((20,), y0, dtype=data.pos.dtype))
    assert torch.allclose(data.edge_attr[:, 1:4].norm(dim=-1),
                          torch.full((20,), math.sqrt(3) * y0, dtype=data.pos.dtype))
    lonely = SEGNNAttributes(lmax=1)(
        Data(pos=torch.zeros(1, 3), edge_index=torch.zeros(2, 0).long())
    )
    # SEGNN's code sets every node attribute's scalar component to 1
    assert torch.allclose(lonely.node_attr, torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    assert torch.all(data.node_attr[:, 0] == 1)


def test_graph_errors():
    with pytest.raises(ValueError, match="cutoff must be positive"):
        RadiusGraph(0.0)
    with pytest.raises(ValueError, match="pos must have shape"):
        radius_edges(torch.zeros(4, 2), 1.0)
    with pytest.raises(ValueError, match="no cell"):
        radius_edges(torch.zeros(4, 3), 1.0, pbc=True)
    with pytest.raises(ValueError, match="edge_index"):
        SEGNNAttributes()(Data(pos=torch.zeros(3, 3)))

"""EGNN, SEGNN and TPNet as point-cloud classifiers: logits per cloud from the kNN graph the
model builds, invariant in float64; relaxed not invariant; exact again after projection."""

import pytest
import torch
from conftest import check_relaxed_then_projected
from torch_geometric.data import Batch, Data

from relaxgnn.dtype import default_dtype
from relaxgnn.geometry import knn_edges
from relaxgnn.models import EGNN, SEGNN, TPNet
from relaxgnn.symmetry import equivariance_error

F64 = torch.float64
CLASSES = 4


def classifier(kind: str, relax=None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    with default_dtype(F64):
        if kind == "EGNN":
            return EGNN(hidden_channels=8, num_layers=2, output="graph", out_channels=CLASSES,
                        pooling="mean", knn=5, relax=relax)
        if kind == "SEGNN":
            return SEGNN(hidden_features=8, num_layers=2, output="graph",
                         irreps_out=f"{CLASSES}x0e", pooling="mean", knn=5,
                         position_input="centred", relax=relax)
        return TPNet(hidden_features=8, lmax=1, num_layers=2, cutoff=3.0, output="graph",
                     irreps_out=f"{CLASSES}x0e", pooling="mean", knn=5, relax=relax)


def clouds(sizes=(12, 15, 9), seed=0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([
        Data(pos=torch.randn(n, 3, generator=gen, dtype=F64) * torch.tensor([1.0, 0.7, 0.4],
                                                                           dtype=F64))
        for n in sizes])


def test_models_build_the_knn_graph_of_each_cloud():
    data = clouds()
    model = classifier("EGNN")
    edge_index, _, batch = model.inputs.graph(data)
    assert torch.equal(edge_index, knn_edges(data.pos, 5, data.batch))
    assert bool((batch[edge_index[0]] == batch[edge_index[1]]).all())


@pytest.mark.parametrize("kind", ["EGNN", "SEGNN", "TPNet"])
def test_classifier_logits_are_invariant(kind):
    data = clouds()
    model = classifier(kind).eval()
    logits = model(data)
    assert logits.shape == (3, CLASSES)
    assert (logits - logits.mean(0)).abs().max() > 1e-6  # clouds are told apart
    errors = equivariance_error(model, data, trials=2)
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.parametrize("kind", ["EGNN", "SEGNN", "TPNet"])
def test_relaxed_classifier_until_projected(kind):
    data = clouds()
    plain, relaxed = classifier(kind).eval(), classifier(kind, "linear").eval()
    assert torch.equal(relaxed(data), plain(data))
    check_relaxed_then_projected(relaxed, data, broken=1e-6)

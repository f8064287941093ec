"""`torch.compile` of a whole model runs on CPU in one graph (``fullgraph=True``: a graph break
is an error) and computes what eager mode computes, forward and backward.

SEGNN used to fail inside dynamo's guards (e3nn's ``Irrep`` is a tuple whose ``__len__``
raises); value checks of the inputs (finiteness, index ranges) split the graph. Inductor builds
C++ kernels: ~40 s on 2 cores for both models.
"""

import pytest
import torch
from conftest import point_cloud
from torch_geometric.data import Batch

from relaxgnn.data import FullyConnected
from relaxgnn.models import EGNN, SEGNN


def _models():
    yield "egnn", lambda: EGNN({"charges": "1x0e"}, velocity_field="vel",
                               pair_fields=["charges"], hidden_channels=16, num_layers=2)
    yield "segnn", lambda: SEGNN({"vel": "1x1o"}, hidden_features=8, lmax=1, num_layers=1,
                                 velocity_field="vel", pair_fields=["charges"],
                                 centred_position_input=True)


@pytest.mark.parametrize("name, build", list(_models()), ids=[n for n, _ in _models()])
def test_compiled_model_is_one_graph_and_matches_eager(name, build):
    torch.manual_seed(0)
    model = build()
    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(3)]))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(data)
    expected = model(data)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    eager = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    for (pname, _), g, e in zip(model.named_parameters(), grads, eager, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=pname)

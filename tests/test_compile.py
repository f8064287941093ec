"""`torch.compile` of a model runs on CPU and computes what eager mode computes.

Input validation (data-dependent checks such as finiteness) causes graph breaks; the compiled
model still runs and matches. Takes ~30 s on 2 cores (inductor builds C++ kernels).
"""

import torch
from conftest import point_cloud
from torch_geometric.data import Batch

from relaxgnn.data import FullyConnected
from relaxgnn.models import EGNN


def test_compiled_egnn_matches_eager():
    torch.manual_seed(0)
    model = EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                 hidden_channels=16, num_layers=2)
    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(3)]))
    compiled = torch.compile(model)
    out = compiled(data)
    assert torch.allclose(out, model(data), atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())

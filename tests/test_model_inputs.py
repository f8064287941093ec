"""Bad model inputs get errors that name the field and the dtypes at fault; empty graphs work
in every model."""

from __future__ import annotations

import pytest
import torch
from conftest import point_cloud
from torch_geometric.data import Batch, Data

from relaxgnn.models import EGNN, SEGNN, EnergyForceModel, TPNet

BUILD = {
    "EGNN": lambda: EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                         hidden_channels=8, num_layers=2),
    "SEGNN": lambda: SEGNN({"vel": "1x1o", "charges": "1x0e"}, velocity_field="vel",
                           pair_fields=["charges"], irreps_hidden="4x0e+2x1o", num_layers=2),
    "TPNet": lambda: TPNet({"charges": "1x0e"}, atomic_numbers=[1, 6, 8], num_layers=2,
                           hidden_features=4, cutoff=3.0),
}


def batch(dtype=torch.float32) -> Batch:
    return Batch.from_data_list([point_cloud(5, dtype, seed=1), point_cloud(4, dtype, seed=2)])


@pytest.mark.parametrize("name", BUILD)
def test_non_finite_declared_field_is_named(name):
    model, data = BUILD[name](), batch()
    data.charges[3] = float("nan")
    with pytest.raises(ValueError, match=r"`charges` has non-finite values .* at nodes \[3\]"):
        model(data)


@pytest.mark.parametrize("name", BUILD)
def test_dtype_mismatch_names_both_dtypes(name):
    model = BUILD[name]()
    with pytest.raises(TypeError, match=r"`pos` is torch.float64 but the model computes in "
                                        r"torch.float32"):
        model(batch(torch.float64))
    with pytest.raises(TypeError, match=r"`pos` is torch.float16 .* torch.float32"):
        model(batch(torch.float16))
    data = batch()
    data.charges = data.charges.double()
    with pytest.raises(TypeError, match=r"`charges` is torch.float64 .* torch.float32"):
        model(data)
    with pytest.raises(TypeError, match="compute in float32 or float64; this one is "
                                        "torch.float16"):
        model.half()(batch(torch.float16))
    model.double()
    assert model(batch(torch.float64)).dtype == torch.float64
    data = batch(torch.float64)
    data.charges = data.charges.long()  # integer fields are read as numbers
    assert torch.isfinite(model(data)).all()


def test_batch_vector_and_edge_index_errors():
    model, data = BUILD["EGNN"](), batch()
    data.batch = data.batch.float()
    with pytest.raises(TypeError, match=r"`batch` must be an integer tensor .* got torch.float32"):
        model(data)
    data = point_cloud(4, torch.float32)
    data.edge_index = torch.tensor([[0, -1], [1, 2]])
    with pytest.raises(ValueError, match=r"negative node indices \(the smallest is -1\)"):
        model(data)
    data.edge_index = torch.tensor([[0, 7], [1, 2]])
    with pytest.raises(ValueError, match="refers to node 7 but there are 4 nodes"):
        model(data)


def empty_graph() -> Data:
    return Data(pos=torch.zeros(0, 3), z=torch.zeros(0, dtype=torch.long),
                vel=torch.zeros(0, 3), charges=torch.zeros(0))


CASES = [(name, output) for name in BUILD for output in ("position", "node", "graph")
         if (name, output) != ("TPNet", "position")]  # TPNet has no position head


@pytest.mark.parametrize("name, output", CASES)
def test_empty_graphs_work_in_every_model(name, output):
    if name == "TPNet":
        model = TPNet({"charges": "1x0e"}, atomic_numbers=[1, 6, 8], num_layers=1,
                      hidden_features=4, cutoff=3.0, output=output)
    elif name == "EGNN":
        model = EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                     hidden_channels=8, num_layers=2, output=output)
    else:
        model = SEGNN({"vel": "1x1o", "charges": "1x0e"}, velocity_field="vel",
                      pair_fields=["charges"], irreps_hidden="4x0e+2x1o", num_layers=2,
                      cutoff=2.0, output=output)
    one, two = empty_graph(), Batch.from_data_list([empty_graph(), empty_graph()])
    for data, graphs in ((one, 1), (two, 2)):
        out = model(data)
        assert out.shape[0] == (graphs if output == "graph" else 0)
        assert torch.isfinite(out).all()
    mixed = Batch.from_data_list([point_cloud(4, torch.float32, seed=1), empty_graph()])
    out = model(mixed)
    assert out.shape[0] == (2 if output == "graph" else 4) and torch.isfinite(out).all()


def test_energy_model_on_an_empty_molecule():
    model = EnergyForceModel({"class_path": "relaxgnn.models.TPNet",
                              "init_args": {"num_layers": 1, "hidden_features": 4}}, [1, 6])
    energy, forces = model.energy_and_forces(empty_graph())
    assert energy.shape == (1,) and forces.shape == (0, 3)

"""float64 means float64: e3nn constants stay exact after casts and float32 checkpoint loads."""

import pytest
import torch
from conftest import molecule_data, point_cloud
from e3nn import o3
from torch_geometric.data import Batch

from relaxgnn.dtype import default_dtype, refresh_wigner_3j
from relaxgnn.models import SEGNN, TPNet
from relaxgnn.symmetry import equivariance_error


def _segnn():
    return SEGNN({"vel": "1x1o"}, [1, 6, 8], irreps_hidden="4x0e+2x1o+2x2e", lmax_attr=2,
                 num_layers=1, output="node", irreps_out="1x0e+1x2e")


def _tpnet():
    return TPNet(atomic_numbers=[1, 6, 8], irreps_hidden="4x0e+2x1o+2x2e+1x3o", num_layers=2,
                 cutoff=3.0, output="node", irreps_out="1x0e+1x3o")


@pytest.mark.parametrize("build", [_segnn, _tpnet], ids=["SEGNN", "TPNet"])
def test_float32_built_model_is_exact_after_double(build):
    torch.manual_seed(0)
    data = Batch.from_data_list([molecule_data(), point_cloud(4)])
    model = build().double()
    errors = equivariance_error(model, data, trials=2)
    assert max(errors.values()) < 1e-12, errors


@pytest.mark.parametrize("build", [_segnn, _tpnet], ids=["SEGNN", "TPNet"])
def test_float32_checkpoint_keeps_float64_constants_exact(build):
    torch.manual_seed(0)
    state32 = build().state_dict()
    with default_dtype(torch.float64):
        model = build()
    model.load_state_dict(state32)
    w3j = {n: b for n, b in model.named_buffers() if "_w3j_" in n}
    assert w3j, "no e3nn Wigner-3j buffers found: has e3nn renamed them?"
    for name, buf in w3j.items():
        l1, l2, l3 = map(int, name.rsplit("_w3j_", 1)[1].split("_"))
        assert buf.dtype == torch.float64
        assert torch.equal(buf, o3.wigner_3j(l1, l2, l3, dtype=torch.float64)), name


def test_refresh_finds_e3nn_buffers():
    """Guards the private e3nn naming that refresh_wigner_3j relies on."""
    tp = o3.FullyConnectedTensorProduct("1x1o+1x2e", "1x1o+1x2e", "1x1o+1x2e").double()
    assert refresh_wigner_3j(tp) >= 4

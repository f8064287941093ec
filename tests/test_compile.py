"""`torch.compile` of a whole model runs on CPU in one graph (``fullgraph=True``: a graph break
is an error) and computes what eager mode computes, forward and backward.

SEGNN, TPNet and TensorProductConv used to fail inside dynamo's guards (e3nn's ``Irrep`` is a
tuple whose ``__len__`` raises; the layers keep ints for forward); value checks of the inputs
(finiteness, index ranges, unknown elements) split the graph and run in eager mode only. MACENet's
symmetric contraction selects each element's nodes in eager mode (a data-dependent shape);
compiled, it contracts every node with each element's weights and masks. Inductor builds
C++ kernels (~30 s on 2 cores per model): SEGNN is built with it; EGNN, whose inductor build
``test_train_module.py::test_compiled_training_matches_eager`` already runs, goes through
dynamo and AOTAutograd only (``aot_eager``: the same graph capture, no C++).
"""

import pytest
import torch
from conftest import point_cloud
from torch_geometric.data import Batch

from relaxgnn.data import FullyConnected
from relaxgnn.models import EGNN, SEGNN, MACENet, TPNet


def _models():
    yield "egnn", "aot_eager", lambda: EGNN({"charges": "1x0e"}, velocity_field="vel",
                                            pair_fields=["charges"], hidden_channels=16,
                                            num_layers=2)
    yield "segnn", "inductor", lambda: SEGNN({"vel": "1x1o"}, hidden_features=8, lmax=1,
                                             num_layers=1, velocity_field="vel",
                                             pair_fields=["charges"],
                                             position_input="centred")
    # the graph comes with the data (a radius graph is built outside the compiled model)
    yield "tpnet", "aot_eager", lambda: TPNet({"charges": "1x0e"}, atomic_numbers=[1, 6, 8],
                                              irreps_hidden="4x0e+2x1o+2x1e", num_layers=2,
                                              cutoff=3.0, output="node", irreps_out="1x1o")
    yield "macenet", "aot_eager", lambda: MACENet(atomic_numbers=[1, 6, 8], channels=8,
                                                  num_layers=2, cutoff=3.0, output="node")


@pytest.mark.parametrize("name, backend, build", list(_models()),
                         ids=[n for n, _, _ in _models()])
def test_compiled_model_is_one_graph_and_matches_eager(name, backend, build):
    torch.manual_seed(0)
    model = build()
    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(3)]))
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    out = compiled(data)
    expected = model(data)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    eager = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
    for (pname, _), g, e in zip(model.named_parameters(), grads, eager, strict=True):
        # float32 sums in another order: tolerances relative to the gradient's scale
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * scale, msg=pname)


def test_compiled_relaxed_model_follows_theta_without_recompiling():
    """A relaxed model compiles with its paths (forward hooks) in the graph: the controller
    records the paths' inputs from the compiled run (same penalty as eager), and a scheduled θ
    that changes every step is read as a tensor, not baked in (no recompilation per value)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from relaxgnn.relax import Relaxation, Triangle

    torch.manual_seed(0)
    model = SEGNN({"vel": "1x1o"}, hidden_features=8, lmax=1, num_layers=2, velocity_field="vel",
                  pair_fields=["charges"], position_input="centred", relax="linear")
    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(3)]))
    relax = Relaxation(model, Triangle(1.0, 10), lie_weight=0.1, norm_weight=0.1)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")  # graphs counted, no C++ build
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    thetas = []
    for step in (1, 2, 3, 4):
        thetas.append(relax.step(step))
        with relax.record():
            out = compiled(data)
        penalty = relax.penalty()
        with relax.record():
            expected = model(data)
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(penalty, relax.penalty(), rtol=1e-5, atol=1e-7)
        assert penalty > 0
    assert len(set(thetas)) == 4
    assert counter.frame_count == 1  # θ changed three times: still the first graph
    relax.pause()  # θ = 0: the paths are skipped, one more graph
    torch.testing.assert_close(compiled(data), project_output(model, data), rtol=1e-5, atol=1e-6)
    assert counter.frame_count == 2


def project_output(model, data):
    from relaxgnn.relax import project

    return project(model)(data)


def test_compiling_a_relaxed_model_after_the_plain_one_keeps_its_paths():
    """The relaxed and the plain SEGNN share their forward code; the graph traced for the plain
    one (no hooks) must not be reused for the relaxed one (paths in hooks), nor the reverse."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from relaxgnn.relax import Constant, Relaxation, project

    def build(relax):
        torch.manual_seed(0)
        return SEGNN({"vel": "1x1o"}, hidden_features=8, lmax=1, num_layers=1,
                     velocity_field="vel", pair_fields=["charges"],
                     position_input="centred", relax=relax)

    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(2)]))
    plain, relaxed = build(None), build({"kind": "linear", "init_std": 0.5})
    relax = Relaxation(relaxed, Constant(0.5, 10), lie_weight=0.1, norm_weight=0.1)
    relax.step(0)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("eager")
    for model in (plain, relaxed, project(relaxed)):
        torch.testing.assert_close(torch.compile(model, backend=counter)(data), model(data))
    assert (relaxed(data) - plain(data)).abs().max() > 1e-2  # the paths change the output


def test_compiled_tensor_product_conv_is_one_graph_and_matches_eager():
    from relaxgnn.nn import TensorProductConv

    torch.manual_seed(0)
    layer = TensorProductConv("4x0e+2x1o", "4x0e+2x1o+2x1e", irreps_node_attr="3x0e")
    data = FullyConnected()(Batch.from_data_list(
        [point_cloud(5, torch.float32, seed=s) for s in range(2)]))
    x = torch.randn(data.num_nodes, layer.irreps_in.dim)
    attr = torch.nn.functional.one_hot(data.z % 3, 3).float()
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(x, data.pos, data.edge_index, node_attr=attr)
    torch.testing.assert_close(out, layer(x, data.pos, data.edge_index, node_attr=attr),
                               rtol=1e-5, atol=1e-5)

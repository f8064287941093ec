"""Vector-Neuron layers and VN-DGCNN: O(3)-equivariant (invariant logits) in float64, relaxed
not equivariant, exactly equivariant after projection; the paper's paths and their Lie
derivatives."""

import pytest
import torch
from conftest import check_relaxed_then_projected
from torch_geometric.data import Batch, Data

from relaxgnn.dtype import default_dtype
from relaxgnn.geometry import knn_edges
from relaxgnn.models import VNDGCNN, build_model, model_spec
from relaxgnn.models.vndgcnn import knn_with_self
from relaxgnn.nn import (
    VNBatchNorm,
    VNEdgeConv,
    VNLeakyReLU,
    VNLinear,
    VNLinearLeakyReLU,
    VNStdFeature,
)
from relaxgnn.relax import Constant, Relaxation, find_paths, lie_derivative
from relaxgnn.symmetry import equivariance_error, random_reflection, random_rotation

F64 = torch.float64


def act(x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``Q`` on vector-neuron features ``(rows, C·3)``: every vector ``v ↦ Q v``."""
    return (x.unflatten(-1, (-1, 3)) @ Q.T).flatten(-2)


def orthogonal_elements():
    return [random_rotation(3, dtype=F64), random_reflection(4, dtype=F64)]


def calibrated(model: torch.nn.Module, *inputs) -> torch.nn.Module:
    """Batch-norm statistics from ``inputs`` (one pass in training mode, momentum 1), then
    evaluation mode: the outputs are of order one instead of the nearly constant ones of
    untouched running statistics."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(*inputs)
    return model.eval()


LAYERS = {
    "VNLinear": lambda: VNLinear(5, 4),
    "VNLeakyReLU": lambda: VNLeakyReLU(5),
    "VNLeakyReLU-shared": lambda: VNLeakyReLU(5, share_nonlinearity=True),
    "VNBatchNorm": lambda: VNBatchNorm(5),
    "VNLinearLeakyReLU": lambda: VNLinearLeakyReLU(5, 6),
    "VNLinearLeakyReLU-shared": lambda: VNLinearLeakyReLU(5, 6, share_nonlinearity=True),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_vn_layers_are_o3_equivariant(name):
    torch.manual_seed(0)
    with default_dtype(F64):
        layer = LAYERS[name]()
    x = torch.randn(40, 15, dtype=F64)
    calibrated(layer, x)
    out = layer(x)
    assert out.abs().max() > 1e-2  # not trivially zero
    for Q in orthogonal_elements():
        assert torch.allclose(layer(act(x, Q)), act(out, Q), atol=1e-12, rtol=0)
    perm = torch.randperm(40)
    assert torch.allclose(layer(x[perm]), out[perm], atol=1e-12, rtol=0)


def test_vn_leaky_relu_is_the_papers_map():
    """Where ⟨q, k⟩ ≥ 0 the vector passes; else its component along k is removed, mixed with
    slope α."""
    torch.manual_seed(1)
    layer = VNLeakyReLU(1, negative_slope=0.2).double()
    layer.direction.weight.data.fill_(1.0)  # k = q: always ⟨q, k⟩ ≥ 0
    x = torch.randn(6, 3, dtype=F64)
    assert torch.allclose(layer(x), x)
    layer.direction.weight.data.fill_(-1.0)  # k = -q: the whole vector is removed, α q remains
    assert torch.allclose(layer(x), 0.2 * x, atol=1e-5)


def test_std_feature_is_invariant():
    torch.manual_seed(2)
    with default_dtype(F64):
        layer = VNStdFeature(8)
    x = torch.randn(30, 24, dtype=F64)
    calibrated(layer, x)
    out = layer(x)
    assert out.shape == (30, 24) and out.std() > 1e-2
    for Q in orthogonal_elements():
        assert torch.allclose(layer(act(x, Q)), out, atol=1e-10, rtol=0)


def test_vn_layers_name_the_offending_shape():
    with pytest.raises(ValueError, match="expects 5 vectors"):
        VNLinear(5, 2)(torch.zeros(3, 14))
    with pytest.raises(ValueError, match="positive integer"):
        VNLinear(0, 2)
    with pytest.raises(ValueError, match="at least 4 channels"):
        VNStdFeature(2)


def test_edge_conv_is_equivariant_on_its_knn_graph():
    torch.manual_seed(3)
    with default_dtype(F64):
        conv = VNEdgeConv(2, 3)
    x = torch.randn(50, 6, dtype=F64)
    batch = torch.arange(2).repeat_interleave(25)
    edges = knn_with_self(x, 6, batch)
    calibrated(conv, x, edges)
    out = conv(x, edges)
    for Q in orthogonal_elements():
        rotated = act(x, Q)
        rotated_edges = knn_with_self(rotated, 6, batch)  # distances are invariant: same graph
        assert set(map(tuple, rotated_edges.T.tolist())) == set(map(tuple, edges.T.tolist()))
        assert torch.allclose(conv(rotated, rotated_edges), act(out, Q), atol=1e-12, rtol=0)


def test_knn_with_self_has_the_point_and_its_nearest_others():
    pos = torch.randn(2 * 12, 3, dtype=F64, generator=torch.Generator().manual_seed(4))
    batch = torch.arange(2).repeat_interleave(12)
    edges = knn_with_self(pos, 5, batch)
    assert edges.shape == (2, 24 * 5)
    for i in range(24):
        sources = edges[0, edges[1] == i].tolist()
        assert i in sources and len(sources) == 5
        same = (batch == batch[i]).nonzero().flatten()
        d = (pos[same] - pos[i]).norm(dim=-1)
        assert set(same[d.argsort()[:5]].tolist()) == set(sources)
    assert torch.equal(knn_with_self(pos, 1, batch), torch.arange(24).repeat(2, 1))
    assert knn_edges(pos, 4, batch).shape[1] == 24 * 4


def clouds(n=(24, 30, 27), seed=5):
    gen = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([
        Data(pos=torch.randn(k, 3, generator=gen, dtype=F64) * torch.tensor([1.0, 0.6, 0.3],
                                                                           dtype=F64))
        for k in n])


def small_vndgcnn(relax=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    with default_dtype(F64):
        return VNDGCNN(num_classes=5, k=6, channels=(4, 4, 6, 6), embed_channels=8,
                       head=(16, 12), dropout=0.0, relax=relax, **kwargs)


def test_vndgcnn_logits_are_invariant():
    data = clouds()
    model = calibrated(small_vndgcnn(), data)
    logits = model(data)
    assert logits.shape == (3, 5)
    assert (logits - logits.mean(0)).abs().max() > 1e-3  # the clouds are told apart
    errors = equivariance_error(model, data, trials=3)
    assert set(errors) == {"rotation", "reflection", "translation", "permutation"}
    assert max(errors.values()) < 1e-9, errors


@pytest.mark.parametrize("relax", ["linear", "mlp"])
def test_relaxed_vndgcnn_breaks_invariance_until_projected(relax):
    data = clouds()
    plain = calibrated(small_vndgcnn(), data)
    relaxed = small_vndgcnn(relax)
    relaxed.load_state_dict(plain.state_dict(), strict=False)
    relaxed.eval()
    paths = find_paths(relaxed)
    blocks = ["convs.0.layer", "convs.1.layer", "convs.2.layer", "convs.3.layer", "embed",
              "std_feature.vn1", "std_feature.vn2"]
    assert sorted(paths) == sorted(f"{b}.{m}" for b in blocks for m in ("feature", "direction"))
    assert torch.equal(relaxed(data), plain(data))  # θ = 0: the plain network
    _, projected = check_relaxed_then_projected(relaxed, data)
    fresh = small_vndgcnn()
    fresh.load_state_dict(projected.state_dict(), strict=True)


def test_vn_path_lie_derivative_uses_the_vector_generators():
    """A dense path that commutes with rotations (W ⊗ I₃, a VN linear map) has zero Lie
    derivative under the generators I_C ⊗ A_k; a random dense map has not; the controller's
    penalty on a relaxed VN-DGCNN is finite and positive."""
    torch.manual_seed(6)
    W = torch.randn(3, 2, dtype=F64)
    equivariant = torch.kron(W, torch.eye(3, dtype=F64))  # (9, 6)
    x = torch.randn(7, 6, dtype=F64)
    zero = lie_derivative(lambda u: u @ equivariant.T, x, "2x1o", "3x1o")
    assert zero.shape == (3, 7, 9) and zero.abs().max() < 1e-12
    dense = torch.randn(9, 6, dtype=F64)
    assert lie_derivative(lambda u: u @ dense.T, x, "2x1o", "3x1o").abs().max() > 1e-2

    data = clouds()
    model = small_vndgcnn("linear")
    controller = Relaxation(model, Constant(0.5, 10), lie_weight=1.0, norm_weight=1.0)
    controller.step(0)
    model.train()
    with controller.record():
        model(data).sum().backward()
    penalty = controller.penalty()
    assert torch.isfinite(penalty) and penalty > 0


def test_vndgcnn_round_trips_through_its_spec():
    model = small_vndgcnn("linear")
    rebuilt = build_model(model_spec(model))
    assert isinstance(rebuilt, VNDGCNN) and sorted(find_paths(rebuilt)) == sorted(
        find_paths(model))


def test_vndgcnn_refuses_mismatched_dtype():
    model = small_vndgcnn()
    with pytest.raises(TypeError, match="float32"):
        model(Data(pos=torch.randn(10, 3), batch=torch.zeros(10, dtype=torch.long)))

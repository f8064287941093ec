"""MACE's symmetric contraction, the many-body layer (ManyBodyConv) and MACENet: couplings
equivariant, symmetric and independent; the contraction equal to its definition; layers and
models equivariant in float64; forces equal minus the energy gradient."""

from __future__ import annotations

import copy
import functools
import itertools

import pytest
import torch
from conftest import (
    check_relaxed_then_projected,
    finite_difference_forces,
    molecule_data,
    point_cloud,
)
from e3nn import o3
from torch_geometric.data import Batch

from relaxgnn.dtype import default_dtype
from relaxgnn.models import EnergyForceModel, MACENet, load_model, save_model
from relaxgnn.nn import ManyBodyConv, SymmetricContraction, symmetric_couplings
from relaxgnn.symmetry import equivariance_error, random_reflection, random_rotation
from relaxgnn.symmetry.irreps import representation

BASIS = "0e+1o+2e+3o"  # one channel of MACE's atomic basis (lmax 3)


def rotation_and_reflection(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [random_rotation(gen, dtype=torch.float64), random_reflection(gen, dtype=torch.float64)]


@pytest.mark.parametrize("ir_out,order,count", [("0e", 1, 1), ("1o", 1, 1), ("0e", 2, 4),
                                                 ("1o", 2, 3), ("1e", 2, 0), ("0e", 3, 8),
                                                 ("1o", 3, 12)])
def test_couplings_symmetric_equivariant_orthonormal(ir_out, order, count):
    """Each coupling is an equivariant map A^{⊗ν} → L, symmetric in its slots, and the basis is
    orthonormal (Frobenius norm √(2L+1)). Counts: ν = 2 to 0e is one invariant |a_l|² per l
    (4); to 1o the symmetric pairs (0,1), (1,2), (2,3) (1⊗1 → 1 is antisymmetric: none); no
    symmetric product of natural-parity irreps reaches 1e."""
    U = symmetric_couplings(BASIS, ir_out, order)
    irreps, ir = o3.Irreps(BASIS), o3.Irrep(ir_out)
    assert U.shape == (16,) * order + (ir.dim, count)
    if count == 0:
        return
    flat = U.reshape(-1, count)
    torch.testing.assert_close(flat.T @ flat, ir.dim * torch.eye(count, dtype=torch.float64))
    for perm in itertools.permutations(range(order)):
        torch.testing.assert_close(U.permute(*perm, order, order + 1), U)
    for g in rotation_and_reflection():
        D_in, D_out = representation(irreps, g), representation(str(ir), g)
        moved = U
        for axis in range(order):  # U(D a, D b, ...) = D_out U(a, b, ...)
            moved = torch.movedim(torch.tensordot(D_in.T, moved, dims=([1], [axis])), 0, axis)
        torch.testing.assert_close(moved, torch.einsum("ml,...lk->...mk", D_out, U),
                                   rtol=1e-10, atol=1e-12)


def test_couplings_of_order_two_to_scalars_are_the_squared_norms():
    """ν = 2 to 0e spans exactly the four invariants |a_0|², |a_1|², |a_2|², |a_3|²: the
    quadratic forms of the couplings and the projectors on the irreps span the same space."""
    forms = symmetric_couplings(BASIS, "0e", 2)[..., 0, :].permute(2, 0, 1)  # (4, 16, 16)
    projectors = torch.stack([torch.diag(torch.zeros(16, dtype=torch.float64).index_fill(
        0, torch.arange(s.start, s.stop), 1.0)) for s in o3.Irreps(BASIS).slices()])
    both = torch.cat([forms, projectors]).reshape(8, -1)
    assert torch.linalg.matrix_rank(forms.reshape(4, -1)) == 4
    assert torch.linalg.matrix_rank(both) == 4


@functools.lru_cache
def make_contraction(correlation: int = 3) -> SymmetricContraction:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        return SymmetricContraction("3x0e+3x1o+3x2e", "3x0e+3x1o", correlation, num_elements=2)


def test_contraction_equals_its_definition():
    """The Horner evaluation equals Σ_ν Σ_η w_{z,k,η} U_η · A_k^{⊗ν} computed term by term."""
    layer = make_contraction()
    torch.manual_seed(1)
    x = torch.randn(5, layer.irreps_in.dim, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1])
    out = layer(x, species)
    A = layer._channels_last(x)  # (n, k, D)
    expected = []
    weights = iter(layer.weights)
    for names in layer._couplings:
        ws = [next(weights) for _ in names]
        total = 0
        for nu, (name, w) in enumerate(zip(names, ws, strict=True), start=1):
            U = getattr(layer, name)
            power = A
            for _ in range(nu - 1):  # A^{⊗ν}: (n, k, D, ..., D)
                power = power.unsqueeze(-1) * A.view(*A.shape[:2], *([1] * (power.dim() - 2)),
                                                     A.shape[-1])
            total = total + torch.einsum("nk...,...mr,nkr->nkm", power, U, w[species])
        expected.append(total.reshape(5, -1))
    torch.testing.assert_close(out, torch.cat(expected, -1), rtol=1e-12, atol=1e-12)


def test_contraction_equivariant_and_element_dependent():
    layer = make_contraction()
    irreps_in, irreps_out = layer.irreps_in, layer.irreps_out
    x = torch.randn(4, irreps_in.dim, dtype=torch.float64)
    species = torch.tensor([0, 1, 0, 1])
    out = layer(x, species)
    for g in rotation_and_reflection(2):
        torch.testing.assert_close(layer(x @ representation(irreps_in, g).T, species),
                                   out @ representation(irreps_out, g).T, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(layer(x, 1 - species), out)  # the weights are per element


def test_contraction_casts_keep_couplings_exact():
    layer = copy.deepcopy(make_contraction()).float().double()
    for names, ir in zip(layer._couplings, layer._output_irreps, strict=True):
        for nu, name in enumerate(names, start=1):
            exact = symmetric_couplings(layer._per_channel, ir, nu)
            assert torch.equal(getattr(layer, name), exact)
    assert not any("coupling" in k for k in layer.state_dict())


def test_contraction_rejects_mixed_multiplicities():
    with pytest.raises(ValueError, match="multiplicity"):
        SymmetricContraction("4x0e+2x1o", "4x0e")
    with pytest.raises(ValueError, match="reaches"):
        SymmetricContraction("2x0e", "2x1o", correlation=3)


# ---------------------------------------------------------------- the layer and the model
SPECIES = [1, 6, 8]


@functools.lru_cache
def make_net(relax=None) -> MACENet:
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        net = MACENet(SPECIES, channels=4, num_layers=2, cutoff=3.0, radial_hidden=8,
                      avg_num_neighbors=4.0, relax=relax)
    with torch.no_grad():  # MACE starts near 0 energy: spread the readouts for a sharp test
        for p in net.readouts.parameters():
            p.mul_(30.0)
    return net


def molecules() -> Batch:
    return Batch.from_data_list([molecule_data("CH3CH2OH"), molecule_data("H2O", seed=1),
                                 point_cloud(5, seed=3)])


def test_layer_equivariant_float64_and_float32():
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        layer = ManyBodyConv("4x0e+2x1o", "4x0e+4x1o", num_elements=3, channels=4, lmax=2,
                             correlation=3, cutoff=3.0, radial_hidden=8, avg_num_neighbors=3.0)
    from relaxgnn.data.graphs import radius_edges
    from relaxgnn.symmetry import Signature

    data = molecules()
    data.x = torch.randn(data.num_nodes, layer.irreps_in.dim, dtype=torch.float64)

    def run(d):
        edges, _ = radius_edges(d.pos, 3.0, d.batch)
        attr = torch.nn.functional.one_hot(torch.tensor([SPECIES.index(int(z)) for z in d.z]),
                                           3).to(d.pos.dtype)
        return layer(d.x, d.pos, edges, node_attr=attr)

    signature = Signature({"x": "4x0e+2x1o", "pos": "1x1o"}, layer.irreps_out, "node")
    errors = equivariance_error(run, data, signature=signature, trials=3)
    assert max(errors.values()) <= 1e-9, errors
    layer.float()
    errors = equivariance_error(run, _float(data),
                                signature=signature, trials=2)
    assert max(errors.values()) <= 1e-5, errors


def _float(data: Batch) -> Batch:
    data = data.clone()
    for key in ("pos", "x", "vel", "charges"):
        setattr(data, key, getattr(data, key).float())
    return data


def test_net_energies_invariant_float64():
    net = make_net()
    data = molecules()
    errors = equivariance_error(net, data, trials=3)
    assert max(errors.values()) <= 1e-9, errors
    assert net(data).std() > 1e-3  # not a trivially invariant (constant) output


def test_forces_equal_minus_the_energy_gradient_and_are_equivariant():
    model = EnergyForceModel(make_net(), SPECIES)
    data = molecule_data("CH3CH2OH")
    energy, forces = model.energy_and_forces(data)
    for g in rotation_and_reflection(3):
        moved = data.clone()
        moved.pos = data.pos @ g.T
        torch.testing.assert_close(model.energy_and_forces(moved)[1], forces @ g.T,
                                   rtol=1e-10, atol=1e-12)
    fd = finite_difference_forces(model, data)
    assert (fd - forces).norm() <= 1e-6 * forces.norm()


def test_gradients_reach_every_parameter():
    """Energy and force losses (double backward) give every parameter a nonzero gradient."""
    torch.manual_seed(1)
    net = MACENet(SPECIES, channels=4, num_layers=2, cutoff=3.0, radial_hidden=8)
    model = EnergyForceModel(net, SPECIES)
    data = Batch.from_data_list([molecule_data("CH3CH2OH", torch.float32),
                                 point_cloud(6, torch.float32, seed=4)])
    energy, forces = model.energy_and_forces(data, training=True)
    loss = (energy * torch.randn_like(energy)).sum() + (forces * torch.randn_like(forces)).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


@pytest.mark.parametrize("relax", ["linear", "mlp"])
def test_relaxed_net_at_zero_then_projected(relax):
    plain, relaxed = copy.deepcopy(make_net()), copy.deepcopy(make_net(relax))
    data = molecules()
    assert torch.equal(relaxed(data), plain(data))  # θ = 0: the plain model
    _, projected = check_relaxed_then_projected(relaxed, data)
    assert torch.equal(projected(data), plain(data))


def test_model_file_round_trip(tmp_path):
    model = EnergyForceModel(make_net(), SPECIES, reference_energies={1: -13.6, 6: -1029.8,
                                                                      8: -2041.0})
    path = save_model(model, tmp_path / "mace.pt")
    loaded = load_model(path)
    data = molecules()
    torch.testing.assert_close(loaded(data), model(data), rtol=0, atol=0)


def test_avg_num_neighbors_fitted_on_the_training_set():
    """avg_num_neighbors='fit': three atoms 1 Å apart on a line with a 1.5 Å cutoff have
    1 + 2 + 1 neighbours, a lone atom none: 4 / 4 = 1.0; set in every layer and recorded."""
    from torch_geometric.data import Data

    line = Data(pos=torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0, 0]]),
                z=torch.tensor([1, 6, 1]))
    lone = Data(pos=torch.zeros(1, 3), z=torch.tensor([8]))
    net = MACENet(SPECIES, channels=2, num_layers=2, cutoff=1.5, avg_num_neighbors="fit")
    model = EnergyForceModel(net, SPECIES, "fit", energy_scale=1.0)
    assert model.unfitted == {"avg_num_neighbors", "reference_energies"}
    for item, energy in ((line, -3.0), (lone, -2.0)):
        item.energy, item.forces = torch.tensor([energy]), torch.zeros(item.num_nodes, 3)
    fitted = model.fit_statistics([line, lone])
    assert fitted["avg_num_neighbors"] == pytest.approx(1.0)
    assert [layer.avg_num_neighbors for layer in net.layers] == [1.0, 1.0]
    assert net.init_args["avg_num_neighbors"] == 1.0 and not model.unfitted


@pytest.mark.parametrize("ir_out,order", [("0e", 2), ("1o", 2), ("0e", 3), ("1o", 3)])
def test_mace_coupling_paths_span_the_reduced_couplings(ir_out, order):
    """MACE's full set of coupling paths (reduced=False), contracted with a symmetric A^{⊗ν},
    spans exactly the reduced symmetric couplings. The path counts are MACE's (mace-torch
    0.3.16's weights for atomic basis 0e+1o+2e+3o: 4 and 6 at order 2; 23 and 51 at order 3,
    where 1o needs the pseudo-tensor and l = 4 intermediates)."""
    full = symmetric_couplings(BASIS, ir_out, order, reduced=False)
    reduced = symmetric_couplings(BASIS, ir_out, order)
    assert full.shape[-1] == {("0e", 2): 4, ("1o", 2): 6, ("0e", 3): 23, ("1o", 3): 51}[
        (ir_out, order)]
    symmetric = sum(full.permute(*perm, order, order + 1)
                    for perm in itertools.permutations(range(order))).reshape(-1, full.shape[-1])
    both = torch.cat([symmetric, reduced.reshape(-1, reduced.shape[-1])], 1)
    rank = torch.linalg.matrix_rank(symmetric, atol=1e-9)
    assert rank == reduced.shape[-1] == torch.linalg.matrix_rank(both, atol=1e-9)

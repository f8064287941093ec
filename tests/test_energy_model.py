"""EnergyForceModel: energies as sums of per-atom terms and references, forces as exact
gradients, invariance and equivariance, clear errors, model files, relaxation and projection,
and the least-squares reference energies."""

import pytest
import torch
from ase.build import molecule
from conftest import finite_difference_forces
from torch_geometric.data import Batch, Data

from relaxgnn.models import EGNN, TPNet, load_model, save_model
from relaxgnn.models.energy import EnergyForceModel, fit_reference_energies
from relaxgnn.relax import Constant, Relaxation, find_paths, project
from relaxgnn.symmetry import Signature, equivariance_error

ELEMENTS = [1, 6, 8]
REFS = {1: -13.6, 6: -1029.9, 8: -2042.6}
TPNET = {"class_path": "relaxgnn.models.TPNet",
         "init_args": {"irreps_hidden": "8x0e+4x1o+2x1e", "num_layers": 2, "cutoff": 4.0,
                       "radial_hidden": 16}}


def energy_model(relax=None, scale=0.7, seed=0, **kwargs) -> EnergyForceModel:
    torch.manual_seed(seed)
    return EnergyForceModel(TPNET, ELEMENTS, REFS, energy_scale=scale, relax=relax,
                            **kwargs).double()


def ethanol(shake=0.05, seed=0) -> Data:
    atoms = molecule("CH3CH2OH")
    gen = torch.Generator().manual_seed(seed)
    pos = torch.tensor(atoms.positions) + shake * torch.randn(len(atoms), 3, generator=gen,
                                                               dtype=torch.float64)
    return Data(z=torch.tensor(atoms.numbers), pos=pos)


def water() -> Data:
    atoms = molecule("H2O")
    return Data(z=torch.tensor(atoms.numbers), pos=torch.tensor(atoms.positions))


def test_energy_is_the_sum_of_scaled_atomic_terms_and_references():
    model = energy_model()
    batch = Batch.from_data_list([ethanol(), water()])
    with torch.no_grad():
        eps = model.network(batch).reshape(-1)  # per-atom outputs of the wrapped TPNet
        energy = model(batch)
        atomic = model.atomic_energies(batch)
    assert energy.shape == (2, 1)
    refs = torch.tensor([REFS[int(z)] for z in batch.z], dtype=torch.float64)
    expected = torch.zeros(2, dtype=torch.float64).index_add_(0, batch.batch, 0.7 * eps + refs)
    torch.testing.assert_close(energy.reshape(-1), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(atomic, 0.7 * eps + refs, rtol=1e-12, atol=1e-12)
    assert abs(float(energy[1]) - (2 * REFS[1] + REFS[8])) < 5.0  # references dominate
    # a graph-level network (sum pooling) gives the same energies
    graph_net = TPNet(atomic_numbers=ELEMENTS, **TPNET["init_args"], output="graph").double()
    graph_net.load_state_dict(model.network.state_dict())
    wrapped = EnergyForceModel(graph_net, ELEMENTS, REFS, energy_scale=0.7).double()
    with torch.no_grad():
        torch.testing.assert_close(wrapped(batch), energy, rtol=1e-12, atol=1e-10)


def test_forces_are_minus_the_gradient_by_central_differences():
    model = energy_model()
    data = ethanol()
    energy, forces = model.energy_and_forces(data)
    assert energy.shape == (1,) and forces.shape == (9, 3) and not forces.requires_grad
    assert data.pos.grad is None and not data.pos.requires_grad  # the caller's data untouched
    numeric = finite_difference_forces(model, data, h=1e-4)
    assert (numeric - forces).norm() / forces.norm() < 1e-6


def test_training_mode_keeps_the_graph_of_the_forces():
    model = energy_model()
    energy, forces = model.energy_and_forces(Batch.from_data_list([ethanol(), water()]),
                                             training=True)
    assert energy.requires_grad and forces.requires_grad
    forces.pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)


def test_energy_invariant_and_forces_equivariant():
    model = energy_model()
    data = ethanol()
    errors = equivariance_error(model, data, trials=3)
    assert set(errors) == {"rotation", "reflection", "translation", "permutation"}
    assert max(errors.values()) < 1e-12
    forces = lambda d: model.energy_and_forces(d)[1]  # noqa: E731
    signature = Signature(model.signature.irreps_in, "1x1o", "node")
    force_errors = equivariance_error(forces, data, signature=signature, trials=3)
    assert max(force_errors.values()) < 1e-9
    # the check has teeth: relaxation paths at θ ≠ 0 break the symmetry
    relaxed = energy_model(relax={"kind": "linear", "init_std": 0.1})
    Relaxation(relaxed, Constant(1.0, 10))
    relaxed_forces = lambda d: relaxed.energy_and_forces(d)[1]  # noqa: E731
    assert equivariance_error(relaxed_forces, data, signature=signature)["rotation"] > 1e-6


def test_signature_is_graph_level_energy_with_the_network_inputs():
    signature = energy_model().signature
    assert signature.level == "graph" and str(signature.irreps_out) == "1x0e"
    assert set(signature.irreps_in) == {"pos"} and signature.translated == ("pos",)
    assert energy_model().cutoff == 4.0


def test_errors_name_what_is_wrong():
    model = energy_model()
    fluorine = Data(z=torch.tensor([6, 9, 1]), pos=torch.randn(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"F \(Z=9\) not known to the energy model"):
        model(fluorine)
    with pytest.raises(ValueError, match=r"N \(Z=7\) not in atomic_numbers"):
        EnergyForceModel(TPNET, ELEMENTS, {**REFS, 7: -1485.3})
    with pytest.raises(ValueError, match=r"\['num_layers'\] beside class_path and init_args"):
        EnergyForceModel({**TPNET, "num_layers": 3}, ELEMENTS)  # silently ignored before
    with pytest.raises(ValueError, match=r"reference_energies lack element\(s\) O \(Z=8\)"):
        EnergyForceModel(TPNET, ELEMENTS, {1: -13.6, 6: -1029.9})
    mean_pool = {"class_path": "relaxgnn.models.TPNet",
                 "init_args": {**TPNET["init_args"], "output": "graph", "pooling": "mean"}}
    with pytest.raises(ValueError, match="pooling='sum'"):
        EnergyForceModel(mean_pool, ELEMENTS)
    with pytest.raises(ValueError, match="one invariant scalar"):
        EnergyForceModel(EGNN(atomic_numbers=ELEMENTS, hidden_channels=8, num_layers=1),
                         ELEMENTS)
    with pytest.raises(ValueError, match="knows elements"):
        EnergyForceModel(TPNet(atomic_numbers=[1, 6], output="node", num_layers=1), ELEMENTS)
    with pytest.raises(ValueError, match="relax` applies to a network given as a spec"):
        EnergyForceModel(TPNet(atomic_numbers=ELEMENTS, output="node", num_layers=1),
                         ELEMENTS, relax="linear")
    with pytest.raises(TypeError, match="spec"):
        EnergyForceModel("TPNet", ELEMENTS)
    with pytest.raises(ValueError, match="energy_scale"):
        EnergyForceModel(TPNET, ELEMENTS, energy_scale=0.0)
    with pytest.raises(RuntimeError, match="inference mode"), torch.inference_mode():
        model.energy_and_forces(ethanol())


def test_model_file_round_trip(tmp_path):
    model = energy_model()
    batch = Batch.from_data_list([ethanol(), water()])
    loaded = load_model(save_model(model, tmp_path / "energy.pt"))
    assert isinstance(loaded, EnergyForceModel)
    assert next(loaded.parameters()).dtype == torch.float64
    assert loaded.energy_scale == 0.7 and loaded.atomic_numbers == ELEMENTS
    for a, b in zip(loaded.energy_and_forces(batch), model.energy_and_forces(batch),
                    strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # a network given as a module is recorded by its spec
    torch.manual_seed(0)
    net = TPNet(atomic_numbers=ELEMENTS, output="node", **TPNET["init_args"])
    wrapped = EnergyForceModel(net, ELEMENTS, REFS)
    assert wrapped.init_args["network"]["class_path"] == "relaxgnn.models.tpnet.TPNet"
    again = load_model(save_model(wrapped, tmp_path / "wrapped.pt"))
    float32 = Batch.from_data_list([Data(z=d.z, pos=d.pos.float()) for d in (ethanol(), water())])
    with torch.no_grad():
        torch.testing.assert_close(again(float32), wrapped(float32), rtol=0, atol=0)


def test_relaxed_model_projects_to_a_plain_model_file(tmp_path):
    relax = {"kind": "linear", "init_std": 0.1}  # paths far from zero, so that θ shows
    relaxed = energy_model(relax=relax)
    assert len(find_paths(relaxed)) == 2
    assert relaxed.init_args["relax"] == relax
    batch = Batch.from_data_list([ethanol(), water()])
    controller = Relaxation(relaxed, Constant(0.5, 10))
    with torch.no_grad():
        at_half = relaxed(batch)
        controller.step(10)  # past the end of the schedule: θ = 0
        assert controller.theta == 0.0
        at_zero = relaxed(batch)
    assert (at_half - at_zero).abs().max() > 1e-8
    controller.step(0)
    projected = project(relaxed)
    assert not find_paths(projected) and find_paths(relaxed)
    path = save_model(projected, tmp_path / "projected.pt")
    payload = torch.load(path, weights_only=False)
    assert payload["init_args"]["relax"] is None
    assert payload["init_args"]["network"]["init_args"]["relax"] is None
    loaded = load_model(path)
    assert not find_paths(loaded) and loaded.relax is None
    energy, forces = loaded.energy_and_forces(batch)
    controller.pause()
    e0, f0 = relaxed.energy_and_forces(batch)
    torch.testing.assert_close(energy, e0, rtol=0, atol=0)
    torch.testing.assert_close(forces, f0, rtol=0, atol=0)
    # the same state dict loads into the never-relaxed architecture
    plain = EnergyForceModel(TPNET, ELEMENTS, REFS, energy_scale=0.7).double()
    plain.load_state_dict(projected.state_dict(), strict=True)


def test_reference_energies_are_string_keyed_in_files():
    model = EnergyForceModel(TPNET, ELEMENTS, {"1": -1.0, "6": -2.0, "8": -3.0})
    assert model.reference_energies.tolist() == [-1.0, -2.0, -3.0]
    assert model.init_args["reference_energies"] == {"1": -1.0, "6": -2.0, "8": -3.0}


def test_fit_reference_energies():
    truth = {1: -0.5, 6: -37.8, 8: -75.0}
    gen = torch.Generator().manual_seed(0)
    items = []
    for _ in range(12):
        z = torch.tensor([1, 6, 8])[torch.randint(0, 3, (int(torch.randint(2, 8, (1,),
                                                                          generator=gen)),),
                                                  generator=gen)]
        energy = sum(truth[int(v)] for v in z)
        items.append(Data(z=z, pos=torch.zeros(len(z), 3),
                          energy=torch.tensor([energy], dtype=torch.float64)))
    fitted = fit_reference_energies(items, [1, 6, 8, 9])
    for z, e in truth.items():
        assert fitted[z] == pytest.approx(e, abs=1e-9)
    assert fitted[9] == 0.0  # absent from the data
    # batches count per molecule
    batched = fit_reference_energies([Batch.from_data_list(items[:5]),
                                      Batch.from_data_list(items[5:])], [1, 6, 8])
    assert all(batched[z] == pytest.approx(e, abs=1e-9) for z, e in truth.items())
    # one composition (MD17): the minimum-norm solution reproduces the mean energy
    frames = [Data(z=torch.tensor([6, 6, 8, 1, 1, 1, 1, 1, 1]), energy=torch.tensor([e]))
              for e in (-100.0, -101.0, -102.0)]
    single = fit_reference_energies(frames, [1, 6, 8])
    assert 6 * single[1] + 2 * single[6] + single[8] == pytest.approx(-101.0)
    assert single[1] == pytest.approx(6 * -101.0 / 41)
    with pytest.raises(ValueError, match=r"F \(Z=9\) not in atomic_numbers"):
        fit_reference_energies([Data(z=torch.tensor([9]), energy=torch.tensor([1.0]))], [1])
    with pytest.raises(ValueError, match="empty"):
        fit_reference_energies([], [1])


def test_fit_statistics_resolves_fit_against_hand_computed_values():
    """reference_energies='fit' and energy_scale='fit': H2 (E = -1), O2 (E = -4) and H2O
    (E = -3) give e_H = -0.5, e_O = -2 exactly; the forces (3, 4, 0 | 0, 0, 0 | ...) have
    RMS sqrt(25 / 21) over 7 atoms x 3 components. Unfitted models refuse to run; the fitted
    numbers are what the model file records."""
    def item(z, energy, forces):
        return Data(z=torch.tensor(z), pos=torch.randn(len(z), 3, dtype=torch.float64),
                    energy=torch.tensor([energy], dtype=torch.float64),
                    forces=torch.tensor(forces, dtype=torch.float64))

    items = [item([1, 1], -1.0, [[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]),
             item([8, 8], -4.0, [[0.0] * 3] * 2),
             item([1, 8, 1], -3.0, [[0.0] * 3] * 2 + [[0.0, 0.0, 0.0]])]
    model = EnergyForceModel(TPNET, [1, 8], "fit", energy_scale="fit").double()
    with pytest.raises(RuntimeError, match="energy_scale and reference_energies .* never "
                                           "fitted"):
        model(water())
    fitted = model.fit_statistics(items)
    assert fitted["reference_energies"] == {1: pytest.approx(-0.5), 8: pytest.approx(-2.0)}
    assert fitted["energy_scale"] == pytest.approx((25 / 21) ** 0.5)
    assert model.energy_scale == pytest.approx((25 / 21) ** 0.5)
    assert model.reference_energies.tolist() == pytest.approx([-0.5, -2.0])
    assert model.init_args["energy_scale"] == pytest.approx((25 / 21) ** 0.5)
    assert model.init_args["reference_energies"] == {"1": pytest.approx(-0.5),
                                                     "8": pytest.approx(-2.0)}
    model(water())  # fitted: runs
    given = EnergyForceModel(TPNET, [1, 8], {1: 1.0, 8: 2.0}, energy_scale="fit")
    assert given.fit_statistics(items)["reference_energies"] == {1: 1.0, 8: 2.0}  # kept
    with pytest.raises(ValueError, match="'fit'"):
        EnergyForceModel(TPNET, [1, 8], "average")

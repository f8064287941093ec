"""The ASE calculator on a force field trained (briefly) by the engine on MD17 ethanol: exact
forces, invariance, energy conservation in NVE dynamics, what it refuses; and the GFN2-xTB
molecular-dynamics generator (tblite, the `md` extra, is installed in the test environment)."""

import json
import os
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from train_helpers import make_trainer

from relaxgnn.calculator import RelaxGNNCalculator
from relaxgnn.data import MD17, ASEDataset
from relaxgnn.data.md_generate import generate_md, thermalize
from relaxgnn.models import TPNet, load_model
from relaxgnn.models.energy import EnergyForceModel, fit_reference_energies
from relaxgnn.relax import Constant, Relaxation, find_paths
from relaxgnn.symmetry import random_rotation
from relaxgnn.train import GraphDataModule, Relax, RelaxGNNModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")
ROOT = Path(__file__).resolve().parents[1]
ETHANOL_DB = ROOT / "datasets" / "md" / "md17_ethanol_20frames.db"
ELEMENTS = [1, 6, 8]


def tiny_network(relax=None, kind: str = "TPNet") -> dict:
    if kind == "MACENet":
        return {"class_path": "relaxgnn.models.MACENet",
                "init_args": {"atomic_numbers": ELEMENTS, "channels": 8, "lmax": 2,
                              "num_layers": 2, "cutoff": 4.0, "radial_hidden": 16,
                              "avg_num_neighbors": 8.0, "output": "node", "relax": relax}}
    return {"class_path": "relaxgnn.models.TPNet",
            "init_args": {"irreps_hidden": "8x0e+4x1o", "num_layers": 2, "cutoff": 4.0,
                          "radial_hidden": 16, "avg_num_neighbors": 8.0, "relax": relax}}


@pytest.fixture(scope="module", params=["TPNet", "MACENet"])
def trained(tmp_path_factory, request):
    """A relaxed EnergyForceModel (NequIP-style TPNet or MACE-style MACENet) trained for a few
    steps on the 20 MD17 ethanol frames; returns the projected model file the engine exported
    and the data set."""
    tmp = tmp_path_factory.mktemp("train")
    L.seed_everything(0)
    dataset = ASEDataset(ETHANOL_DB, energy_unit="kcal/mol")
    refs = fit_reference_energies([dataset[i] for i in range(14)], ELEMENTS)
    force_rms = float(torch.cat([dataset[i].forces for i in range(14)]).pow(2).mean().sqrt())
    model = EnergyForceModel(tiny_network("linear", request.param), ELEMENTS, refs,
                             energy_scale=force_rms)
    module = RelaxGNNModule(model, task="energy_forces", target_unit="eV", force_weight=100.0,
                            optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    data = GraphDataModule(dataset=dataset, split=[14, 3, 3], batch_size=7)
    trainer = make_trainer(tmp, [Relax("LinearDecay", theta=0.5)], max_epochs=3)
    before = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]["val/loss"]
    path = tmp / "run" / "version_0" / "checkpoints" / "model.pt"
    return {"path": path, "dataset": dataset, "loss": (before, after)}


def ethanol_atoms(dataset, index=0):
    from ase import Atoms

    item = dataset[index]
    return Atoms(numbers=item.z.numpy(), positions=item.pos.double().numpy())


def test_the_engine_exports_a_projected_model_the_calculator_loads(trained):
    before, after = trained["loss"]
    assert after < before
    model = load_model(trained["path"])
    assert isinstance(model, EnergyForceModel) and not find_paths(model)
    assert model.init_args["relax"] is None
    calc = RelaxGNNCalculator(trained["path"])
    assert calc.dtype == torch.float64
    atoms = ethanol_atoms(trained["dataset"])
    atoms.calc = calc
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    assert isinstance(energy, float) and forces.shape == (9, 3) and forces.dtype == np.float64
    assert atoms.get_potential_energy(force_consistent=True) == energy  # free_energy
    truth = trained["dataset"][0].energy.item()
    assert abs(energy - truth) < 2.0  # eV: the fitted references put it near the data


def test_calculator_forces_are_finite_differences_of_its_energies(trained):
    atoms = ethanol_atoms(trained["dataset"], 1)
    atoms.calc = RelaxGNNCalculator(trained["path"])
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.linalg.norm(numeric - forces) / np.linalg.norm(forces) < 1e-6


def test_rotating_the_atoms_rotates_the_forces(trained):
    atoms = ethanol_atoms(trained["dataset"], 2)
    atoms.calc = RelaxGNNCalculator(trained["path"])
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    R = random_rotation(3, dtype=torch.float64).numpy()
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ R.T + np.array([0.3, -1.2, 2.0])
    rotated.calc = RelaxGNNCalculator(trained["path"])
    assert rotated.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(rotated.get_forces(), forces @ R.T, atol=1e-10)


def test_nve_dynamics_conserves_energy(trained):
    """500 velocity-Verlet steps of 0.25 fs (125 fs) in float64 from 300 K: the total energy
    stays within 0.4 meV of its start, and its mean over the last 50 steps is within 0.1 meV of
    its mean over the first 50.

    Why this bound: velocity Verlet is symplectic, so for a smooth potential whose forces are
    its exact gradient (the model's energy is smooth: a polynomial envelope takes every message
    to zero at the cutoff) the total energy only oscillates, by O(dt²), around a conserved
    shadow energy, with no systematic drift. Measured (kinetic energy 0.3–0.5 eV), TPNet /
    MACENet: oscillation 0.02 / 0.10 meV, drift 0.004 / 0.03 meV (MACENet's stiffer untrained
    potential oscillates 4.1x less at half the step, as O(dt²) says). The bound fails for what
    it must catch: forces 2% off the energy's gradient give 3.1 / 5.6 meV and a 1.9 / 3.3 meV
    drift; a float32 model (the energy, -4214 eV, then has a resolution of 0.5 meV) gives
    0.58 / 1.1 meV.
    """
    atoms = ethanol_atoms(trained["dataset"])
    atoms.calc = RelaxGNNCalculator(trained["path"])
    thermalize(atoms, 300.0, np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals = []
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=1)
    dynamics.run(500)
    totals = np.array(totals)
    assert len(totals) == 501 and np.isfinite(totals).all()
    deviation = np.abs(totals - totals[0]).max()
    drift = abs(totals[-50:].mean() - totals[:50].mean())
    assert deviation < 4e-4, f"total energy deviates by {deviation:.2e} eV"
    assert drift < 1e-4, f"total energy drifts by {drift:.2e} eV"
    assert atoms.get_kinetic_energy() > 0.05  # it moved: not a trivially frozen molecule


def test_periodic_atoms_get_a_periodic_graph(trained):
    atoms = ethanol_atoms(trained["dataset"])
    atoms.calc = RelaxGNNCalculator(trained["path"])
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    boxed = atoms.copy()
    boxed.cell, boxed.pbc = np.eye(3) * 20.0, True  # larger than molecule + cutoff: no images
    boxed.center()
    boxed.calc = RelaxGNNCalculator(trained["path"])
    assert boxed.get_potential_energy() == pytest.approx(energy, rel=1e-12)
    np.testing.assert_allclose(boxed.get_forces(), forces, atol=1e-10)
    small = boxed.copy()
    small.cell = np.eye(3) * 5.0  # neighbours through the faces now
    small.center()
    small.calc = RelaxGNNCalculator(trained["path"])
    assert abs(small.get_potential_energy() - energy) > 1e-6
    numeric = calculate_numerical_forces(small, eps=1e-4)
    forces = small.get_forces()
    assert np.linalg.norm(numeric - forces) / np.linalg.norm(forces) < 1e-6


def test_relaxed_models_are_projected_or_refused(trained, tmp_path):
    torch.manual_seed(0)
    model = EnergyForceModel(tiny_network({"kind": "linear", "init_std": 0.1}), ELEMENTS)
    atoms = molecule("CH3CH2OH")
    # θ = 0 everywhere: the same function; the calculator drops the paths
    calc = RelaxGNNCalculator(model)
    assert not find_paths(calc.model) and find_paths(model)
    assert next(model.parameters()).dtype == torch.float32  # the caller's module is untouched
    at_zero = calc.get_potential_energy(atoms)
    Relaxation(model, Constant(0.5, 10))
    with pytest.raises(ValueError, match="θ ≠ 0 .*relaxgnn project"):
        RelaxGNNCalculator(model)
    with pytest.warns(UserWarning, match="relaxed model"):
        relaxed = RelaxGNNCalculator(model, allow_relaxed=True)
    assert abs(relaxed.get_potential_energy(atoms) - at_zero) > 1e-9
    per_atom = TPNet(atomic_numbers=ELEMENTS, output="node", num_layers=1)
    with pytest.raises(ValueError, match="one energy .* per molecule"):
        RelaxGNNCalculator(per_atom)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RelaxGNNCalculator(tmp_path / "missing.pt")
    fluorine = molecule("HF")
    with pytest.raises(ValueError, match=r"F \(Z=9\) not known"):
        RelaxGNNCalculator(trained["path"]).get_potential_energy(fluorine)
    with pytest.raises(ValueError, match="dtype must be one of"):
        RelaxGNNCalculator(trained["path"], dtype="float16")


# ---------------------------------------------------------------------- MD data generation
def test_generate_md_writes_an_rmd17_file(tmp_path):
    threads = torch.get_num_threads()
    omp = os.environ.get("OMP_NUM_THREADS")
    out = tmp_path / "ethanol_xtb.npz"
    info = generate_md("ethanol", steps=5, out=out, sample_every=1, equilibration_steps=0,
                       seed=3, progress=False)
    assert torch.get_num_threads() == threads and os.environ.get("OMP_NUM_THREADS") == omp
    with np.load(out) as npz:
        assert set(npz.files) == {"nuclear_charges", "coords", "energies", "forces"}
        assert npz["coords"].shape == (5, 9, 3) and npz["energies"].shape == (5,)
        energies_kcal = npz["energies"]
    dataset = MD17(out, dtype=torch.float64)
    assert len(dataset) == 5
    assert sorted(dataset[0].z.tolist()) == sorted(molecule("CH3CH2OH").numbers.tolist())
    energies = dataset.energy
    assert torch.isfinite(energies).all()
    assert ((energies > -312) & (energies < -306)).all()  # GFN2-xTB ethanol: about -310 eV
    assert energies.std() < 0.5  # five 0.5 fs steps of one trajectory
    torch.testing.assert_close(energies, torch.tensor(energies_kcal) * units.kcal / units.mol)
    forces = torch.cat([dataset[i].forces for i in range(5)])
    assert torch.isfinite(forces).all() and forces.abs().max() < 20.0  # eV/Å
    assert forces.sum(0).abs().max() < 1e-3 * 5  # no net force on an isolated molecule
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta == json.loads(json.dumps(info))
    assert {meta[k] for k in ("temperature_K", "timestep_fs", "friction_per_fs")} == \
        {500.0, 0.5, 0.01}
    assert meta["method"] == "GFN2-xTB" and meta["frames"] == 5 and meta["seed"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left
    # seeded: the same run gives the same trajectory
    generate_md("ethanol", steps=5, out=tmp_path / "again.npz", sample_every=1,
                equilibration_steps=0, seed=3, progress=False)
    with np.load(out) as a, np.load(tmp_path / "again.npz") as b:
        np.testing.assert_array_equal(a["coords"], b["coords"])


def test_generate_md_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="output directory .*nowhere does not exist"):
        generate_md("ethanol", steps=5, sample_every=1, out=tmp_path / "nowhere" / "x.npz",
                    progress=False)
    with pytest.raises(ValueError, match="unknown molecule 'unobtainium'"):
        generate_md("unobtainium", steps=5, sample_every=1, out=tmp_path / "x.npz", progress=False)
    with pytest.raises(ValueError, match="must end in .npz"):
        generate_md("ethanol", steps=5, sample_every=1, out=tmp_path / "x.xyz", progress=False)
    with pytest.raises(ValueError, match="sample_every"):
        generate_md("ethanol", steps=5, sample_every=0, out=tmp_path / "x.npz")
    monkeypatch.setitem(__import__("sys").modules, "tblite.ase", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install relaxgnn\[md\]"):
        generate_md("ethanol", steps=5, sample_every=1, out=tmp_path / "x.npz", progress=False)
    assert not list(tmp_path.iterdir())  # nothing written


def test_eval_writes_predictions_and_errors_for_any_frames(trained, tmp_path, capsys):
    """``relaxgnn eval``: labelled molecules (REF_energy / REF_forces, as MACE users store
    them), an unlabelled one and a periodic one; the predictions equal the calculator's, the
    labels stay, the printed errors are the frames' own."""
    import ase.io

    from relaxgnn.cli import main
    from relaxgnn.evaluate import ENERGY_KEY, FORCES_KEY

    dataset = trained["dataset"]
    frames = []
    for i in range(5):
        atoms = ethanol_atoms(dataset, i)
        atoms.info["REF_energy"] = float(dataset[i].energy)
        atoms.arrays["REF_forces"] = dataset[i].forces.double().numpy()
        frames.append(atoms)
    frames.append(ethanol_atoms(dataset, 5))  # no labels
    boxed = ethanol_atoms(dataset, 6)
    boxed.cell, boxed.pbc = np.eye(3) * 6.0, True
    frames.append(boxed)
    source, out = tmp_path / "in.xyz", tmp_path / "out.xyz"
    ase.io.write(source, frames, format="extxyz")
    assert main(["eval", str(trained["path"]), str(source), str(out), "--batch-size", "2"]) == 0
    printed = capsys.readouterr().out
    written = ase.io.read(out, index=":")
    assert len(written) == 7 and "REF_energy" in written[0].info
    calc = RelaxGNNCalculator(trained["path"])
    errors = []
    for atoms, result in zip(frames, written, strict=True):
        atoms.calc = calc
        assert result.info[ENERGY_KEY] == pytest.approx(atoms.get_potential_energy(),
                                                        rel=1e-9, abs=1e-9)
        np.testing.assert_allclose(result.arrays[FORCES_KEY], atoms.get_forces(), atol=1e-8)
        if "REF_energy" in atoms.info:
            errors.append(abs(atoms.get_potential_energy() - atoms.info["REF_energy"]) * 1e3)
    assert f"energy_mae_meV: {np.mean(errors):.4g}" in printed
    assert "frames_with_energy: 5" in printed and "forces_mae_meV_per_A" in printed
    assert main(["eval", str(trained["path"]), str(tmp_path / "none.xyz"), str(out)]) == 2
    assert capsys.readouterr().err.strip().startswith("relaxgnn eval: error: input file")

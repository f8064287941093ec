"""MD17 / rMD17 / ASE loaders on the genuine samples of ``datasets/md`` (kcal/mol, kcal/mol/Å),
and the split helpers."""

from __future__ import annotations

import json
from pathlib import Path

import ase.db
import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from torch_geometric.loader import DataLoader

from relaxgnn.data.ase_dataset import ASEDataset
from relaxgnn.data.md17 import MD17, energy_factor
from relaxgnn.data.splits import load_splits, save_splits, split_indices

DATA = Path(__file__).resolve().parents[1] / "datasets" / "md"
ETHANOL = DATA / "md17_ethanol_20frames.db"
ASPIRIN = DATA / "aspirin_15frames.extxyz"
KCAL = 4184 / 96485.33289  # eV per kcal/mol: 4.184 kJ over the Faraday constant (CODATA 2014)


def test_conversion_factor():
    assert energy_factor("kcal/mol") == pytest.approx(KCAL, rel=1e-9)
    assert energy_factor("kcal/mol") == pytest.approx(0.0433641039, abs=1e-10)


def test_ethanol_database_in_ev():
    dataset = ASEDataset(ETHANOL, energy_unit="kcal/mol", dtype=torch.float64)
    rows = list(ase.db.connect(str(ETHANOL)).select())
    assert len(dataset) == len(rows) == 20
    for d, row in zip(dataset, rows, strict=True):
        assert d.z.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
        assert d.energy.shape == (1,)
        assert d.energy.item() == pytest.approx(row.data["energy"][0] * KCAL, rel=1e-9)
        torch.testing.assert_close(d.forces, torch.tensor(row.data["forces"]) * KCAL)
        torch.testing.assert_close(d.pos, torch.tensor(row.positions))
    # the raw numbers of the first frame, by hand
    assert dataset[0].energy.item() == pytest.approx(-97195.50478287 * KCAL, rel=1e-9)
    assert dataset[0].forces[0, 0].item() == pytest.approx(-69.99323553 * KCAL, rel=1e-9)


def test_aspirin_extxyz_in_ev():
    dataset = ASEDataset(ASPIRIN, energy_unit="kcal/mol")
    assert len(dataset) == 15
    d = dataset[0]
    assert d.pos.dtype == d.energy.dtype == d.forces.dtype == torch.float32
    assert d.z.dtype == torch.long and d.z.shape == (21,) and d.z[0].item() == 6
    # first lines of the file: energy=-405681.6, then `C x y z fx fy fz`
    assert d.energy.item() == pytest.approx(-405681.6 * KCAL, rel=1e-7)
    assert d.pos[0].tolist() == pytest.approx([2.13448882, -0.98436105, -0.19521789], rel=1e-7)
    expected = [-38.77897263 * KCAL, -7.44909763 * KCAL, 32.24373245 * KCAL]
    assert d.forces[0].tolist() == pytest.approx(expected, rel=1e-6)
    in_ev = ASEDataset(ASPIRIN)  # energy_unit="eV": the numbers as stored
    assert in_ev[0].energy.item() == pytest.approx(-405681.6, rel=1e-7)


def test_index_selection_and_batching():
    assert len(ASEDataset(ASPIRIN, index="2:5")) == 3
    assert len(ASEDataset(ETHANOL, index="-3:")) == 3
    last = ASEDataset(ASPIRIN, index=-1, energy_unit="kcal/mol")[0]
    assert last.energy.item() == pytest.approx(
        ASEDataset(ASPIRIN, energy_unit="kcal/mol")[14].energy.item()
    )
    dataset = ASEDataset(ETHANOL, energy_unit="kcal/mol")
    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch.energy.shape == (4,) and batch.forces.shape == (36, 3)
    subset = dataset[[1, 3]]
    assert len(subset) == 2 and torch.equal(subset[1].pos, dataset[3].pos)


def raw_aspirin() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    frames = ase.io.read(ASPIRIN, index=":")
    z = frames[0].numbers
    R = np.stack([a.positions for a in frames])
    E = np.array([a.get_potential_energy() for a in frames])
    F = np.stack([a.get_forces() for a in frames])
    return z, R, E, F


@pytest.mark.parametrize("layout", ["md17", "rmd17"])
def test_npz_round_trip(tmp_path, layout):
    z, R, E, F = raw_aspirin()
    path = tmp_path / f"aspirin_{layout}.npz"
    if layout == "md17":
        np.savez(path, z=z.astype(np.uint8), R=R, E=E[:, None], F=F, name="aspirin", theory="PBE")
    else:
        old = np.arange(len(E))
        np.savez(path, nuclear_charges=z, coords=R, energies=E, forces=F, old_indices=old)
    loaded = MD17(path, dtype=torch.float64)
    reference = ASEDataset(ASPIRIN, energy_unit="kcal/mol", dtype=torch.float64)
    assert len(loaded) == len(reference) == 15
    for a, b in zip(loaded, reference, strict=True):
        assert a.z.dtype == torch.long and torch.equal(a.z, b.z)
        for key in ("pos", "energy", "forces"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert loaded[0].energy.item() == pytest.approx(E[0] * KCAL, rel=1e-9)


def test_npz_errors(tmp_path):
    z, R, E, F = raw_aspirin()
    no_forces = tmp_path / "no_forces.npz"
    np.savez(no_forces, z=z, R=R, E=E)
    with pytest.raises(ValueError, match=r"no_forces\.npz has no forces: .*'F'.*'forces'"):
        MD17(no_forces)
    no_energy = tmp_path / "no_energy.npz"
    np.savez(no_energy, nuclear_charges=z, coords=R, forces=F)
    with pytest.raises(ValueError, match=r"no_energy\.npz has no energies.*'energies'"):
        MD17(no_energy)
    mismatched = tmp_path / "mismatched.npz"
    np.savez(mismatched, z=z[:-1], R=R, E=E, F=F)
    with pytest.raises(ValueError, match=r"mismatched\.npz: atom counts.*\(20,\).*\(15, 21, 3\)"):
        MD17(mismatched)
    bad_forces = tmp_path / "bad_forces.npz"
    np.savez(bad_forces, z=z, R=R, E=E, F=F[:, :-1])
    with pytest.raises(ValueError, match=r"bad_forces\.npz: forces.*\(15, 20, 3\)"):
        MD17(bad_forces)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        MD17(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unknown energy unit 'kcal'"):
        MD17(tmp_path / "absent.npz", energy_unit="kcal")


def test_ase_frame_without_forces(tmp_path):
    frames = []
    for k in range(3):
        atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
        results = {"energy": -10.0 - k}
        if k != 1:  # frame 1 has no forces
            results["forces"] = np.ones((3, 3))
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    path = tmp_path / "water.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=r"water\.extxyz, frame 1 has no forces"):
        ASEDataset(path)
    assert len(ASEDataset(path, index="::2")) == 2
    no_energy = tmp_path / "no_energy.extxyz"
    ase.io.write(no_energy, Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]]))
    with pytest.raises(ValueError, match=r"no_energy\.extxyz, frame 0 has no energy"):
        ASEDataset(no_energy)
    with pytest.raises(FileNotFoundError, match="absent.xyz"):
        ASEDataset(tmp_path / "absent.xyz")


# ------------------------------------------------------------------------------------ splits


def test_split_counts_are_disjoint_and_deterministic():
    splits = split_indices(100, 70, 10, seed=3)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [70, 10, 20]
    union = set(splits["train"]) | set(splits["val"]) | set(splits["test"])
    assert union == set(range(100))
    assert splits == split_indices(100, 70, 10, seed=3)
    assert splits != split_indices(100, 70, 10, seed=4)
    partial = split_indices(100, 50, 10, 5, seed=0)
    sizes = [len(partial[k]) for k in ("train", "val", "test")]
    assert sizes == [50, 10, 5]
    assert len(set().union(*partial.values())) == 65


def test_split_fractions():
    splits = split_indices(100, 0.8, 0.1, seed=0)
    assert [len(splits[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert len(split_indices(100, 0.29, 0.0)["train"]) == 29  # not 28 by float round-off


@pytest.mark.parametrize(
    "args, match",
    [
        ((10, 8, 3), "need 11 items but the data set has 10"),
        ((10, 5, 2, 4), "need 11 items"),
        ((10, -1, 2), "non-negative"),
        ((10, 1.5, 0), r"in \[0, 1\]"),
        ((10, 0.9, 0.2), "need 11 items"),
    ],
)
def test_split_impossible_sizes(args, match):
    with pytest.raises(ValueError, match=match):
        split_indices(*args)


def test_save_and_load_splits(tmp_path):
    splits = split_indices(20, 10, 5, seed=1)
    splits["val"] = torch.tensor(splits["val"])  # tensors are written as lists
    path = tmp_path / "sub" / "splits.json"
    save_splits(path, splits)
    loaded = load_splits(path)
    assert loaded["train"] == splits["train"] and loaded["val"] == splits["val"].tolist()
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]
    path.write_text(json.dumps({"train": [1, "2"]}))
    with pytest.raises(ValueError, match=r"splits\.json: entry 'train'"):
        load_splits(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_splits(tmp_path / "missing.json")


def test_splits_select_dataset_items():
    dataset = ASEDataset(ETHANOL, energy_unit="kcal/mol")
    splits = split_indices(len(dataset), 12, 4, seed=0)
    train = dataset[splits["train"]]
    assert len(train) == 12
    assert torch.equal(train[0].energy, dataset[splits["train"][0]].energy)

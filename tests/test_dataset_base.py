"""Every data set of ``relaxgnn.data`` is a PyG ``Dataset`` on PyG's protocol (``len()`` and
``get()``; PyG's ``__getitem__``): ints and negative ints, errors beyond either end, slices,
index lists, tensors and masks as views that share the storage, transforms applied on access,
and the per-item tensors of a view its own."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_geometric.data
from torch_geometric.loader import DataLoader

from relaxgnn.data import QM9, ASEDataset, GravityNBody, NBody
from relaxgnn.data.base import GraphDataset
from relaxgnn.data.md17 import EnergyForceDataset

DATA = Path(__file__).resolve().parents[1] / "datasets"
SMALL = dict(num_train=6, num_val=3, num_test=2, n_steps=300, sample_freq=100, progress=False,
             max_samples=None)


def energy_forces(tmp_path: Path) -> EnergyForceDataset:
    sizes = [2, 3, 1, 4, 2]
    rng = np.random.default_rng(0)
    return EnergyForceDataset([np.full(n, 1 + k) for k, n in enumerate(sizes)],
                              [rng.normal(size=(n, 3)) for n in sizes], rng.normal(size=5),
                              [rng.normal(size=(n, 3)) for n in sizes])


def qm9(tmp_path: Path) -> QM9:
    raw = tmp_path / "qm9" / "raw"
    shutil.copytree(DATA / "qm9" / "xyz", raw)
    shutil.copy(DATA / "qm9" / "uncharacterized.txt", raw)
    return QM9(tmp_path / "qm9")


FACTORIES = {
    "EnergyForceDataset": energy_forces,
    "ASEDataset": lambda tmp_path: ASEDataset(DATA / "md" / "aspirin_15frames.extxyz"),
    "QM9": qm9,
    "NBody": lambda tmp_path: NBody(tmp_path, frame_in=0, frame_out=1, **SMALL),
    "GravityNBody": lambda tmp_path: GravityNBody(tmp_path, n_particles=8, frame_in=0,
                                                  frame_out=1, **SMALL),
}


@pytest.fixture(params=sorted(FACTORIES))
def dataset(request, tmp_path) -> GraphDataset:
    return FACTORIES[request.param](tmp_path)


def same(a, b) -> bool:
    return torch.equal(a.pos, b.pos)


def test_pyg_protocol_and_int_indices(dataset):
    assert isinstance(dataset, torch_geometric.data.Dataset)
    assert isinstance(dataset, GraphDataset)
    for method in ("__getitem__", "__len__", "index_select"):  # PyG's, not per data set
        assert getattr(type(dataset), method) is getattr(GraphDataset, method)
    n = len(dataset)
    assert n == dataset.len() >= 5
    assert same(dataset[-1], dataset[n - 1]) and same(dataset[-n], dataset[0])
    assert same(dataset[np.int64(2)], dataset[2]) and same(dataset[torch.tensor(2)], dataset[2])
    for beyond in (n, -n - 1):
        with pytest.raises(IndexError):
            dataset[beyond]


def test_selections_are_views(dataset):
    n = len(dataset)
    view = dataset[1:4]
    assert type(view) is type(dataset) and len(view) == 3
    assert same(view[0], dataset[1]) and same(view[-1], dataset[3])
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[0, 2]] = True
    for index in ([0, 2], (0, 2), [0, -n + 2], torch.tensor([0, 2]),
                  torch.tensor([0, 2], dtype=torch.int32), np.array([0, 2], dtype=np.int32),
                  mask, mask.numpy(), mask.tolist()):
        chosen = dataset[index]
        assert len(chosen) == 2 and same(chosen[0], dataset[0]) and same(chosen[1], dataset[2])
    assert same(dataset[1:][1:][0], dataset[2])  # a view of a view
    assert len(dataset[[]]) == 0 and len(dataset[::2]) == (n + 1) // 2


def test_bad_selections_are_index_errors_naming_the_length(dataset):
    n = len(dataset)
    with pytest.raises(IndexError, match=f"mask has {n + 1} entries, data set has {n} items"):
        dataset[torch.ones(n + 1, dtype=torch.bool)]
    with pytest.raises(IndexError, match=f"mask has 2 entries, data set has {n} items"):
        dataset[[True, False]]
    with pytest.raises(IndexError, match=f"index {n} is out of range for a data set of {n}"):
        dataset[[0, n]]
    with pytest.raises(IndexError, match="index 2 is out of range for a data set of 2 items"):
        dataset[1:3][[2]]
    with pytest.raises(IndexError):
        dataset[1:3][2]
    with pytest.raises(IndexError):
        dataset[torch.tensor([0.5])]


def test_transforms_apply_on_access_in_views_and_batches(dataset):
    def mark(data):
        data.marked = torch.ones(1)
        return data

    dataset.transform = mark
    assert dataset[0].marked.item() == 1 and dataset[[1, 3]][1].marked.item() == 1
    batch = next(iter(DataLoader(dataset[[0, 2, 4]], batch_size=3)))
    assert batch.num_graphs == 3 and batch.marked.tolist() == [1.0] * 3


def test_per_item_tensors_of_a_view_are_its_own(tmp_path):
    molecules = qm9(tmp_path)
    view = molecules[[3, 0]]
    assert torch.equal(view.y, molecules.y[[3, 0]])
    assert view.qm9_indices.tolist() == molecules.qm9_indices[[3, 0]].tolist() == [4, 1]
    assert view.mean(7) == pytest.approx(float(molecules.y[[3, 0], 7].double().mean()))
    assert view.std(7) == pytest.approx(float(molecules.y[[3, 0], 7].double().std()))
    frames = energy_forces(tmp_path)
    assert torch.equal(frames[4:0:-2].energy, frames.energy[[4, 2]])
    assert repr(frames[1:]) == "EnergyForceDataset(4)"


def test_predictions_of_a_view_name_their_items_in_the_whole_data_set(tmp_path):
    """``relaxgnn predict`` on ``test=dataset[idx]`` records the items' indices in the whole
    data set, as it does for a torch ``Subset``."""
    from types import SimpleNamespace

    from torch.utils.data import Subset

    from relaxgnn.train.predictions import _dataset_index

    frames = energy_forces(tmp_path)
    positions = torch.tensor([1, 0])
    for test_set, expected in ((frames[[4, 2, 0]], [2, 4]), (Subset(frames, [4, 2, 0]), [2, 4]),
                               (frames, [1, 0])):
        trainer = SimpleNamespace(datamodule=SimpleNamespace(test_set=test_set))
        assert _dataset_index(trainer, positions).tolist() == expected

"""Data sets of equal-size systems build whole batches from their arrays (``get_batch``), and the
data module's loaders then give exactly the batches PyG's collation of items gives."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from relaxgnn.data import FullyConnected, NBody
from relaxgnn.data.base import stack_batch
from relaxgnn.train import GraphDataModule


@pytest.fixture(scope="module")
def nbody(tmp_path_factory) -> NBody:
    root = tmp_path_factory.mktemp("nbody")
    return NBody(root, split="train", max_samples=None, num_train=23, num_val=4, num_test=4,
                 n_steps=200, sample_freq=50, frame_in=0, frame_out=2, progress=False)


def assert_same_batch(fast: Batch, slow: Batch) -> None:
    assert type(fast).__name__ == type(slow).__name__
    assert sorted(fast.keys()) == sorted(slow.keys())
    for key in slow.keys():
        assert torch.equal(fast[key], slow[key]), key
        assert fast[key].dtype == slow[key].dtype, key
    assert fast.num_graphs == slow.num_graphs
    for got, want in zip(fast.to_data_list(), slow.to_data_list(), strict=True):
        for key in want.keys():
            assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("indices", [[0], [5, 3, 17], list(range(23))])
def test_get_batch_equals_collated_items(nbody, indices):
    assert_same_batch(nbody.get_batch(indices), Batch.from_data_list([nbody[i] for i in indices]))


def test_get_batch_of_a_view_and_with_a_transform(nbody):
    view = nbody[[4, 9, 2, 7]]
    assert_same_batch(view.get_batch([3, 0]), Batch.from_data_list([nbody[7], nbody[4]]))
    transformed = nbody.index_select(slice(None))
    transformed.transform = FullyConnected()
    assert transformed.get_batch([0, 1]) is None  # a per-item transform: items are collated


def test_stack_batch_checks_shapes():
    with pytest.raises(ValueError, match="field `vel` has shape"):
        stack_batch({"pos": torch.zeros(2, 5, 3), "vel": torch.zeros(2, 4, 3)})


def test_data_module_loaders_give_the_collated_batches_in_the_same_order(nbody):
    module = GraphDataModule(train=nbody, val=nbody[:10], test=nbody[10:], batch_size=5,
                             shuffle_seed=3)
    for epoch in (0, 1):
        loader = module.train_dataloader()
        loader.batch_sampler.sampler.set_epoch(epoch)
        order = list(loader.batch_sampler.sampler)
        assert order != list(range(len(nbody)))  # shuffled
        slow = DataLoader([nbody[i] for i in order], batch_size=5)
        batches = list(loader)
        assert len(batches) == 5  # 23 items: four of 5 and the last of 3
        for fast, want in zip(batches, slow, strict=True):
            assert_same_batch(fast, want)
    val = list(module.val_dataloader())
    assert_same_batch(val[0], Batch.from_data_list([nbody[i] for i in range(5)]))

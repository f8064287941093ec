"""Data for training: any dataset of PyG ``Data``, split by counts or fractions with a seed,
batched by PyG, in an order that is a pure function of ``(seed, epoch)``.

Because the order depends on nothing else (not on the global random state), a run resumed from
a checkpoint sees exactly the batches an uninterrupted run sees, and under DDP every rank draws
the same permutation and takes its own share.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import BatchSampler, Dataset, Sampler, Subset
from torch.utils.data import DataLoader as TorchDataLoader
from torch_geometric.data import Batch
from torch_geometric.loader import DataLoader

from ..data.splits import save_splits, split_indices


class EpochSampler(Sampler[int]):
    """Indices ``0 … size-1`` in the order ``randperm(size, seed=f(seed, epoch))`` (or in order
    when ``shuffle`` is off), padded to a multiple of ``world_size`` and strided by ``rank``."""

    def __init__(self, size: int, seed: int = 0, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1) -> None:
        self.size, self.seed, self.shuffle = size, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.size, generator=gen)
        else:
            order = torch.arange(self.size)
        total = len(self) * self.world_size
        if total > self.size:  # pad by repeating the start, as DistributedSampler does
            order = torch.cat([order, order[: total - self.size]])
        return iter(order[self.rank:total:self.world_size].tolist())

    def __len__(self) -> int:
        return math.ceil(self.size / self.world_size)


class _Positions(Dataset):
    """``0 … size-1``: what a loader that lets the data set build whole batches draws."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __getitem__(self, index: int) -> int:
        return index

    def __len__(self) -> int:
        return self.size


class GraphDataModule(LightningDataModule):
    """Train/validation/test loaders over datasets of PyG ``Data``.

    Give either one ``dataset`` and a ``split`` — counts (``[1000, 100, 100]``) or fractions
    (``[0.8, 0.1, 0.1]``; two sizes: no test set) — drawn with ``split_seed`` (the indices are
    saved as ``splits.json`` in the run directory), or the three datasets
    ``train``/``val``/``test`` (e.g. the N-body set's own splits), or a ``file`` of labelled
    frames: any file ASE reads (extended XYZ, an ASE database), energies and forces from the
    frames' calculator results or under ``energy_key``/``forces_key`` (eV, eV/Å;
    :class:`~relaxgnn.data.ASEDataset`), ``valid_fraction`` of it for validation and
    ``test_fraction`` for test, the rest for training — MACE's ``--train_file`` and
    ``--valid_fraction``. On the command line ``--data.file`` replaces the config's
    ``dataset``.

    A data set whose ``get_batch(indices)`` returns a ``Batch`` (systems of one size, e.g.
    :class:`~relaxgnn.data.NBody`) builds each batch itself from its arrays: the same batches
    as collating its items, about 15× faster to load (N-body, 100 graphs: 0.44 instead
    of 6.4 ms per batch).

    Args:
        batch_size: training batch size; ``eval_batch_size`` for validation and test
            (default: the same).
        shuffle_seed: seed of the per-epoch training order.
        num_workers: DataLoader workers.
        file, energy_key, forces_key, valid_fraction, test_fraction: see above.
    """

    def __init__(
        self,
        dataset: Dataset | None = None,
        split: Sequence[int | float] | None = None,
        split_seed: int = 0,
        train: Dataset | None = None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        shuffle_seed: int = 0,
        num_workers: int = 0,
        file: str | None = None,
        energy_key: str = "REF_energy",
        forces_key: str = "REF_forces",
        valid_fraction: float = 0.1,
        test_fraction: float = 0.0,
    ) -> None:
        super().__init__()
        if file is not None:
            if dataset is not None or train is not None:
                raise ValueError("give `file` alone: not with `dataset` or `train`/`val`/`test`")
            dataset, split = _labelled_file(file, energy_key, forces_key, valid_fraction,
                                            test_fraction)
        if (dataset is None) == (train is None):
            raise ValueError("give either `dataset` (with `split`) or `train` (with `val`, "
                             "`test`), or a `file`, not several or none")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.splits: dict[str, list[int]] | None = None
        if dataset is not None:
            sizes = list(split) if split is not None else [0.8, 0.1, 0.1]
            if len(sizes) == 2:  # train and validation only
                sizes.append(0)
            if len(sizes) != 3:
                raise ValueError(f"split needs two or three sizes (train, val[, test]), got "
                                 f"{sizes}")
            self.splits = split_indices(len(dataset), *sizes, seed=split_seed)
            train, val, test = (Subset(dataset, self.splits[k]) for k in ("train", "val", "test"))
        if len(train) == 0:
            raise ValueError("the training set is empty")
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.shuffle_seed = shuffle_seed
        self.num_workers = num_workers

    def example(self) -> Any:
        """The first training sample (for checks before training)."""
        return self.train_set[0]

    def train_targets(self, batch_size: int = 256) -> Iterator[Batch]:
        """The training set in order, batched (for target statistics)."""
        yield from DataLoader(self.train_set, batch_size=batch_size, shuffle=False)

    def setup(self, stage: str) -> None:
        trainer = self.trainer
        if self.splits is None or trainer is None or stage != "fit":
            return
        log_dir = trainer.log_dir  # a collective call under DDP: every rank makes it, once
        if log_dir and trainer.is_global_zero:
            save_splits(Path(log_dir) / "splits.json", self.splits)

    def _loader(self, dataset: Dataset | None, shuffle: bool, batch_size: int) -> DataLoader:
        if dataset is None:
            return []  # type: ignore[return-value]  # Lightning skips an empty loader
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.trainer.world_size if self.trainer is not None else 1
        sampler = EpochSampler(len(dataset), self.shuffle_seed, shuffle, rank, world)
        get_batch = getattr(dataset, "get_batch", None)
        if get_batch is not None and get_batch([0]) is not None:
            # the data set batches itself (systems of one size): the same batches, in the same
            # order, as PyG's collation of items, without a Data per item
            return TorchDataLoader(_Positions(len(dataset)),
                                   batch_sampler=BatchSampler(sampler, batch_size, False),
                                   collate_fn=get_batch, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler,
                          num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False, self.eval_batch_size)


def _labelled_file(path: str, energy_key: str, forces_key: str, valid_fraction: float,
                   test_fraction: float) -> tuple[Dataset, list[int]]:
    """The frames of ``path`` and the split counts ``[train, val, test]`` of the fractions
    (validation and test at least one frame each when their fraction is positive)."""
    from ..data import ASEDataset

    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {value}")
    dataset = ASEDataset(path, energy_key=energy_key, forces_key=forces_key)
    n = len(dataset)
    counts = [max(1, round(f * n)) if f > 0 else 0 for f in (valid_fraction, test_fraction)]
    if n - sum(counts) < 1:
        raise ValueError(f"{path} has {n} frames: too few for valid_fraction {valid_fraction} "
                         f"and test_fraction {test_fraction} with a training frame left")
    return dataset, [n - sum(counts), *counts]


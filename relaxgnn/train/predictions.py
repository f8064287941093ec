"""``relaxgnn predict`` writes its predictions: one ``predictions.pt`` per run, in the run's
directory (``predictions_rank<r>.pt`` per process under DDP).

The file is a ``torch.save``-d dict of tensors and plain data (it loads with
``torch.load(path, weights_only=True)``)::

    {"format": 1, "task": "node" | "graph" | "energy_forces" | "classification",
     "split": "test",
     "index":         (S,) long   position of each predicted sample in the split,
     "dataset_index": (S,) long   its index in the dataset the split was drawn from
                                   (= index when the split is its own dataset),
     "node_sample":   (N,) long   the sample of each node row (node-level outputs),
     "y": ...  |  "energy": (S,), "forces": (N, 3)       predictions in the data's units
       |  "logits": (S, C), "label": (S,) long               (classification),
     "checkpoint": str | None}

``y`` is ``(N, d)`` for node tasks (rows grouped by sample, in sample order) and ``(S, d)`` for
graph tasks. Samples are in the split's order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import Subset
from torch_geometric.data import Dataset

from ..atomic import atomic_torch_save

NODE_LEVEL = {"node": {"y"}, "graph": set(), "energy_forces": {"forces"},
              "classification": set()}


class WritePredictions(Callback):
    """Collect the outputs of ``predict`` and write them to the run directory (module
    docstring); ``filename`` is the file's name."""

    def __init__(self, filename: str = "predictions.pt") -> None:
        self.filename = filename
        self.path: Path | None = None
        self._outputs: list[dict[str, torch.Tensor]] = []
        self._graph_sizes: list[torch.Tensor] = []

    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._outputs, self._graph_sizes = [], []

    def on_predict_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._outputs.append({k: v.detach().cpu() for k, v in outputs.items()})
        sizes = torch.bincount(batch.batch.cpu(), minlength=batch.num_graphs) \
            if getattr(batch, "batch", None) is not None else torch.tensor([batch.num_nodes])
        self._graph_sizes.append(sizes)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._outputs:
            return
        task = getattr(pl_module, "task", "node")
        sizes = torch.cat(self._graph_sizes)
        positions = _positions(trainer, len(sizes))
        result: dict[str, Any] = {
            "format": 1, "task": task, "split": "test", "index": positions,
            "dataset_index": _dataset_index(trainer, positions),
            "node_sample": torch.repeat_interleave(positions, sizes),
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None}
        for key in self._outputs[0]:
            result[key] = torch.cat([out[key] for out in self._outputs])
        if not NODE_LEVEL.get(task, set()) & set(self._outputs[0]):
            del result["node_sample"]
        name = self.filename if trainer.world_size == 1 else \
            f"{Path(self.filename).stem}_rank{trainer.global_rank}{Path(self.filename).suffix}"
        log_dir = Path(trainer.log_dir or ".")
        self.path = atomic_torch_save(result, log_dir / name)
        rank_zero_info(f"predictions of {len(positions)} samples written to {self.path}")


def _positions(trainer: Trainer, count: int) -> torch.Tensor:
    """The split positions of the predicted samples, from the loader's sampler (in order)."""
    loader = trainer.predict_dataloaders
    loader = loader[0] if isinstance(loader, (list, tuple)) else loader
    sampler = getattr(loader, "sampler", None)
    order = list(iter(sampler)) if sampler is not None else list(range(count))
    return torch.tensor(order[:count], dtype=torch.long)


def _dataset_index(trainer: Trainer, positions: torch.Tensor) -> torch.Tensor:
    datamodule = getattr(trainer, "datamodule", None)
    split = getattr(datamodule, "test_set", None)
    if isinstance(split, Subset):
        return torch.as_tensor(split.indices, dtype=torch.long)[positions]
    if isinstance(split, Dataset):  # PyG's; a view (dataset[idx]) lists its items' indices
        return torch.as_tensor(list(split.indices()), dtype=torch.long)[positions]
    return positions.clone()

"""Checkpoints written atomically: to a temporary file beside the target, then renamed, so a
run killed while saving never leaves a truncated checkpoint behind."""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..atomic import atomic_torch_save


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic ``save_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path,
                        storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

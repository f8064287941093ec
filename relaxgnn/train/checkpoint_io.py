"""Checkpoints written atomically (to a temporary file beside the target, then renamed, so a
run killed while saving never leaves a truncated checkpoint behind) and read weights-only (a
checkpoint holding anything but tensors and plain data is refused: nothing of it runs)."""

from __future__ import annotations

from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from ..atomic import atomic_torch_save
from ..models.io import load_weights_only


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with an atomic ``save_checkpoint`` and a weights-only
    ``load_checkpoint``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path,
                        storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError("relaxgnn loads checkpoints weights-only")
        return load_weights_only(path, map_location or "cpu", what="checkpoint")

"""One readable line per epoch when the progress bar is off (batch jobs, logs to a file)."""

from __future__ import annotations

import math
import time

from lightning.pytorch import Callback, LightningModule, Trainer


class EpochSummary(Callback):
    """Print ``epoch 3/100: train/loss 0.0123 | val/loss 0.0045, val/mse 0.0045 (12.3 s)`` at
    the end of every training epoch, on rank 0, when the trainer shows no progress bar: the
    means over the epoch's steps of the training metrics and, on epochs that validated, the
    validation metrics."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._validated = False
        self._sums: dict[str, list[float]] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._validated, self._sums = time.perf_counter(), False, {}

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args) -> None:
        for key, value in _scalars(trainer).items():
            if key.startswith("train/"):
                total = self._sums.setdefault(key, [0.0, 0])
                total[0], total[1] = total[0] + value, total[1] + 1

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.progress_bar_callback is not None or not trainer.is_global_zero:
            return
        print(self.line(trainer), flush=True)

    def line(self, trainer: Trainer) -> str:
        metrics = _scalars(trainer)
        metrics.update({k: total / count for k, (total, count) in self._sums.items()})
        train = [k for k in sorted(metrics) if k.startswith("train/")]
        val = [k for k in sorted(metrics) if k.startswith("val/")] if self._validated else []
        parts = [", ".join(f"{k} {metrics[k]:.4g}" for k in keys if math.isfinite(metrics[k]))
                 for keys in (train, val) if keys]
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return (f"epoch {trainer.current_epoch + 1}{total}: {' | '.join(parts) or 'no metrics'}"
                f" ({time.perf_counter() - self._start:.1f} s)")


def _scalars(trainer: Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items()
            if getattr(v, "numel", lambda: 1)() == 1}

"""The run's ``metrics.csv``, kept whole across resumes and written atomically.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when a run directory is reused,
so a resumed run (``--ckpt_path last``) used to lose every row before the resume, and it
rewrote the file in place when a new metric appeared. :class:`RunCSVLogger` instead reads the
existing rows, keeps them, and writes the whole file atomically at every flush;
:class:`KeepHistory` drops, on resume, the rows of the steps the resumed run repeats (those
logged after its checkpoint), so every step appears once.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..atomic import atomic_write_text

# rows holding only these metrics come after fit (test results, the projected model's errors):
# they are history, not steps a resumed run repeats
_AFTER_FIT = ("test/", "projected/")


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV experiment writer that keeps the rows already on disk and rewrites the
    whole file atomically."""

    def __init__(self, log_dir: str) -> None:
        self.rows: list[dict[str, Any]] = []
        existing: list[str] = []
        path = Path(log_dir) / self.NAME_METRICS_FILE
        if path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.rows = [dict(r) for r in reader]
                existing = list(reader.fieldnames or [])
        super().__init__(log_dir)
        self.metrics_keys = sorted(set(existing))

    def _check_log_dir_exists(self) -> None:
        pass  # never delete the metrics of an earlier part of the run

    def drop_repeated(self, step: int) -> int:
        """Forget the training and validation rows from ``step`` on (a run resumed at ``step``
        logs them again); returns how many were dropped."""
        def repeated(row: dict[str, Any]) -> bool:
            if int(float(row.get("step") or 0)) < step:
                return False
            logged = [k for k, v in row.items() if v not in ("", None) and k not in
                      ("step", "epoch")]
            return not all(k.startswith(_AFTER_FIT) for k in logged)

        before = len(self.rows)
        self.rows = [r for r in self.rows if not repeated(r)]
        dropped = before - len(self.rows)
        if dropped:
            self._write()
        return dropped

    def save(self) -> None:
        if not self.metrics:
            return
        self._record_new_keys()
        self.rows.extend(self.metrics)
        self.metrics = []
        self._write()

    def _write(self) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.metrics_keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.metrics_file_path, text.getvalue())


class RunCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives resumes (module docstring)."""

    @property
    def experiment(self) -> _HistoryWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


class KeepHistory(Callback):
    """On a resumed ``fit``, drop the CSV rows of the steps the run repeats (see
    :class:`RunCSVLogger`)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.ckpt_path or not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            if isinstance(logger, RunCSVLogger):
                logger.experiment.drop_repeated(trainer.global_step)

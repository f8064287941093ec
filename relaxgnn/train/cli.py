"""The training command line: ``relaxgnn fit|validate|test|predict --config FILE.yaml`` on
LightningCLI (``class_path``/``init_args`` configs, ``--trainer.max_epochs 5`` overrides), and
``relaxgnn project CKPT OUT``.

Every run writes to ``runs/<experiment>/version_<k>/`` (``<experiment>`` defaults to the config
file's name): ``config.yaml`` (the resolved config), ``metrics.csv``, TensorBoard events,
``checkpoints/{last,best-…}.ckpt``, ``checkpoints/model.pt`` (the projected model),
``splits.json``, ``summary.json`` and ``plots/*.png``; ``relaxgnn predict`` writes
``predictions.pt`` (see :mod:`relaxgnn.train.predictions`). ``--ckpt_path last`` resumes the newest
run of the experiment in its own directory.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from ..models.io import (
    build_model,
    check_format,
    load_state,
    load_weights_only,
    plain_spec,
    save_model,
)
from ..relax import find_paths, plain_state
from .callbacks import ExportModel, ValidateLastEpoch
from .checkpoint_io import AtomicCheckpointIO
from .datamodule import GraphDataModule
from .epoch_log import EpochSummary
from .module import RelaxGNNModule
from .plots import PlotMetrics
from .predictions import WritePredictions
from .run_log import KeepHistory, RunCSVLogger

SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for p in root.iterdir()
                  if (m := re.fullmatch(r"version_(\d+)", p.name)))


class RelaxGNNCLI(LightningCLI):
    """LightningCLI with relaxgnn's run directory, persistent callbacks and atomic checkpoints."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--experiment", type=str | None, default=None,
                            help="run name under runs_dir (default: the config file's name)")
        parser.add_argument("--runs_dir", type=str, default="runs",
                            help="where run directories are created")

    def _cfg(self):
        """The parsed config of the subcommand (or the root config when ``run=False``)."""
        return self.config[self.subcommand] if self.subcommand else self.config

    def _experiment(self) -> tuple[Path, str]:
        cfg = self._cfg()
        name = cfg.get("experiment")
        if not name:
            configs = cfg.get("config") or []
            name = Path(str(configs[-1])).stem if configs else "run"
        return Path(cfg.get("runs_dir") or "runs"), name

    def before_instantiate_classes(self) -> None:
        cfg = self._cfg()
        if cfg.get("data") is not None and cfg["data"].get("file"):
            # a file of the user's replaces the config's data set (not built, not generated)
            cfg["data"]["dataset"] = None
            cfg["data"]["split"] = None
        root, name = self._experiment()
        self._version = None
        ckpt = cfg.get("ckpt_path")
        if ckpt == "last":
            candidates = [root / name / f"version_{v}" / "checkpoints" / "last.ckpt"
                          for v in _versions(root / name)]
            candidates = [c for c in candidates if c.is_file()]
            if not candidates:
                raise FileNotFoundError(f"--ckpt_path last: no last.ckpt under {root / name}/"
                                        "version_*/checkpoints; nothing to resume")
            ckpt = candidates[-1]
            cfg["ckpt_path"] = str(ckpt)
        if ckpt:
            ckpt = Path(ckpt)
            if not ckpt.is_file():
                raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
            match = re.fullmatch(r"version_(\d+)", ckpt.parent.parent.name)
            if self.subcommand in ("fit", None) and ckpt.parent.name == "checkpoints" and match:
                self._version = int(match.group(1))  # resume in the run's own directory

    def _parse_ckpt_path(self) -> None:
        """Lightning reads the module's hyperparameters back from ``--ckpt_path``; here only
        plain values of the module's own arguments are taken, read weights-only (a checkpoint
        that names classes cannot make the CLI import or build anything)."""
        if not self.config.get("subcommand"):
            return
        ckpt_path = self.config[self.config.subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        checkpoint = load_weights_only(ckpt_path, what="checkpoint")
        hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
        if not isinstance(hparams, dict):
            return
        allowed = set(inspect.signature(RelaxGNNModule.__init__).parameters) - {
            "self", "model", "optimizer", "lr_scheduler"}
        plain = {k: v for k, v in hparams.items() if k in allowed and _plain_data(v)}
        if plain:
            self.config = self.parser.parse_object(
                {self.config.subcommand: {"model": plain}}, self.config)

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        if config.get("strategy") == "ddp" and find_paths(self.model):
            # relaxation paths are skipped while θ = 0 (the schedule's ends): DDP must expect
            # parameters without gradients in those steps
            config["strategy"] = DDPStrategy(find_unused_parameters=True)
        if not config.get("plugins"):  # here, not a parser default: the run's saved
            config["plugins"] = [AtomicCheckpointIO()]  # config.yaml must load back
        if config.get("logger") in (None, True):
            root, name = self._experiment()
            _check_writable(root / name)
            version = self._version
            if version is None:
                existing = _versions(root / name)
                version = existing[-1] + 1 if existing else 0
            config["logger"] = [
                RunCSVLogger(str(root), name=name, version=version),
                TensorBoardLogger(str(root), name=name, version=version, default_hp_metric=False),
            ]
        return super()._instantiate_trainer(config, callbacks)


def _check_writable(directory: Path) -> None:
    """A clear error, before anything runs, when the run directory cannot be written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"cannot write the run directory {directory}: "
                         f"{err.strerror or err}") from None


def _plain_data(value: Any) -> bool:
    """Numbers, strings, booleans, None and lists/dicts of them, with no ``class_path``."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain_data(v) for v in value)
    if isinstance(value, dict):
        return "class_path" not in value and all(
            isinstance(k, (str, int)) and _plain_data(v) for k, v in value.items())
    return False


def trainer_defaults() -> dict[str, Any]:
    return {
        "callbacks": [
            ModelCheckpoint(monitor="val/loss", mode="min", save_last=True, save_top_k=1,
                            filename="best-{epoch:03d}-{step}", auto_insert_metric_name=False),
            ExportModel(),
            PlotMetrics(),
            WritePredictions(),
            KeepHistory(),
            ValidateLastEpoch(),
            EpochSummary(),
        ],
        "use_distributed_sampler": False,  # GraphDataModule shards by rank itself
        "inference_mode": False,  # evaluation of forces needs autograd (torch.no_grad is used)
    }


def run_lightning(args: list[str]) -> None:
    """``relaxgnn fit|validate|test|predict …``. From the command line (``args`` are the
    process's own arguments) LightningCLI reads ``sys.argv`` itself — a DDP launch re-runs
    the command from it —, otherwise it is given ``args``."""
    with quiet_lightning():
        RelaxGNNCLI(RelaxGNNModule, GraphDataModule,
                    args=None if list(args) == sys.argv[1:] else args,
                    trainer_defaults=trainer_defaults(), save_config_kwargs={"overwrite": True},
                    parser_kwargs={"prog": "relaxgnn", "exit_on_error": False})


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith("💡 Tip")


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning without the noise a relaxgnn command does not need: its advertising tip and a
    deprecation warning that Lightning's own pytree code raises under torch >= 2.10."""
    tips = _DropTips()
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.addFilter(tips)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
            yield
    finally:
        logger.removeFilter(tips)


def project_checkpoint(ckpt_path: str | Path, out: str | Path) -> Path:
    """Turn a (relaxed) training checkpoint into a projected model file (see
    :func:`relaxgnn.models.load_model`). The checkpoint is read weights-only and the model built
    only from registered classes, so nothing from the file runs."""
    ckpt_path = Path(ckpt_path)
    checkpoint = load_weights_only(ckpt_path, what="checkpoint")
    spec = checkpoint.get("relaxgnn_model") if isinstance(checkpoint, dict) else None
    if not isinstance(spec, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"{ckpt_path} is not a relaxgnn training checkpoint (no relaxgnn_model "
                         "entry)")
    check_format(checkpoint, spec, ckpt_path, key="relaxgnn_format")
    # the projection is the architecture without relaxation, with the checkpoint's weights
    # less its relaxation containers (paths, learned γ): built and loaded directly
    model = build_model(plain_spec(spec), source=ckpt_path)
    state = plain_state({k.removeprefix("model."): v
                         for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)
    model = model.to(dtype)
    load_state(model, state, ckpt_path)
    return save_model(model, out, source_checkpoint=str(ckpt_path),
                      global_step=checkpoint.get("global_step"))

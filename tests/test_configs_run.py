"""Every shipped config trains on a fresh clone: QM9 on the genuine samples in datasets/, the
N-body and MD configs on data they generate on first use (here smaller, and under tmp_path, to
keep the suite fast; the models, losses and callbacks are the configs' own)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from relaxgnn.cli import main

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Generated data shared by the configs of one kind (generated once, reused after)."""
    return tmp_path_factory.mktemp("data")


def data_overrides(config: Path, tmp_path: Path) -> list[str]:
    data = yaml.safe_load(config.read_text())["data"]
    if "dataset" in data:  # one data set, split by the data module
        kind = data["dataset"]["class_path"].rsplit(".", 1)[-1]
        if kind == "QM9":  # the shipped samples as they are; the cache under tmp_path
            return [f"--data.dataset.init_args.root={tmp_path / 'qm9'}"]
        assert kind == "GeneratedMD", kind
        return [f"--data.dataset.init_args.path={tmp_path / 'md' / 'ethanol.npz'}",
                "--data.dataset.init_args.steps=300", "--data.dataset.init_args.sample_every=10",
                "--data.dataset.init_args.equilibration_steps=50",
                "--data.dataset.init_args.progress=false", "--data.split=[16, 7, 7]"]
    out = []
    for split in ("train", "val", "test"):
        assert data[split]["class_path"] == "relaxgnn.data.NBody"
        out += [f"--data.{split}.init_args.{key}={value}" for key, value in {
            "root": tmp_path / "nbody", "max_samples": "null", "num_train": 40, "num_val": 20,
            "num_test": 20, "n_steps": 400, "sample_freq": 50, "frame_in": 2, "frame_out": 5,
            "progress": "false"}.items()]
    return out


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_trains_out_of_the_box(config, tmp_path, data_dir, monkeypatch):
    monkeypatch.chdir(REPO)  # the configs' paths are relative to the repository
    runs = tmp_path / "runs"
    args = ["fit", "--config", str(config), "--runs_dir", str(runs),
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            *data_overrides(config, data_dir)]
    assert main(args) == 0
    [run] = (runs / config.stem).glob("version_*")
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "model.pt" in checkpoints and any(c.startswith("best-") for c in checkpoints)

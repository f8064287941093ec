"""Every shipped config trains on a fresh clone: QM9 on the genuine samples in datasets/, the
N-body, MD and synthetic-shape configs on data they generate on first use (here smaller, and
under tmp_path, to keep the suite fast), ModelNet40 on a two-class sample in its layout written
here; the models, losses and callbacks are the configs' own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from relaxgnn.cli import main
from relaxgnn.models import load_model

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
    kind = data["train"]["class_path"].rsplit(".", 1)[-1]
    if kind == "ModelNet":  # a two-class ModelNet written here, in the official layout
        root = modelnet_sample(tmp_path / "modelnet")
        return [f"--data.{split}.init_args.{key}={value}" for split in ("train", "val", "test")
                for key, value in {"root": root, "num_points": 32, "progress": "false"}.items()]
    if kind == "SyntheticShapes":
        sizes = {"train": 4, "val": 2, "test": 2}
        return [f"--data.{split}.init_args.{key}={value}" for split in sizes
                for key, value in {"root": tmp_path / "shapes",
                                   "samples_per_class": sizes[split]}.items()]
    out = []
    for split in ("train", "val", "test"):
        assert data[split]["class_path"] == "relaxgnn.data.NBody"
        out += [f"--data.{split}.init_args.{key}={value}" for key, value in {
            "root": tmp_path / "nbody", "max_samples": "null", "num_train": 40, "num_val": 20,
            "num_test": 20, "n_steps": 400, "sample_freq": 50, "frame_in": 2, "frame_out": 5,
            "progress": "false"}.items()]
    return out


def modelnet_sample(root: Path) -> Path:
    """Two classes (a cube and a tetrahedron, randomly stretched) of three training and two
    test meshes each, as ``<root>/<class>/<split>/<class>_NNNN.off``."""
    cube = [(x, y, z) for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]
    shapes = {"cube": (cube, [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6),
                              (0, 2, 6, 4), (1, 5, 7, 3)]),
              "tetrahedron": ([(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)],
                              [(0, 1, 2), (0, 3, 1), (0, 2, 3), (1, 3, 2)])}
    if root.is_dir():
        return root
    for name, (vertices, faces) in shapes.items():
        number = 0
        for split, count in (("train", 3), ("test", 2)):
            (root / name / split).mkdir(parents=True)
            for _ in range(count):
                number += 1
                stretch = (1.0 + 0.3 * number, 1.0, 1.0 / (1.0 + 0.2 * number))
                lines = ["OFF", f"{len(vertices)} {len(faces)} 0"]
                lines += [" ".join(str(c * s) for c, s in zip(v, stretch, strict=True))
                          for v in vertices]
                lines += [f"{len(f)} " + " ".join(map(str, f)) for f in faces]
                (root / name / split / f"{name}_{number:04d}.off").write_text("\n".join(lines))
    return root


def record_export(monkeypatch) -> dict:
    """Wrap :class:`ExportModel`'s ``on_fit_end`` to keep the trained network's outputs at
    θ = 0 (as validation and test compute them) on the first validation batch, in evaluation
    mode, for comparison with the file."""
    from relaxgnn.train.callbacks import ExportModel, _first_batch

    seen: dict = {}
    original = ExportModel.on_fit_end

    def on_fit_end(self, trainer, pl_module):
        original(self, trainer, pl_module)
        batch = pl_module.in_model_dtype(_first_batch(trainer).to(pl_module.device))
        network = pl_module.model.eval()
        if pl_module.relaxation is not None:  # evaluated as validation and test are: at θ = 0
            pl_module.relaxation.pause()
        seen.update(batch=batch, path=self.path, task=pl_module.task,
                    outputs=outputs(network, batch, pl_module.task))

    monkeypatch.setattr(ExportModel, "on_fit_end", on_fit_end)
    return seen


def outputs(model, batch, task: str) -> tuple[torch.Tensor, ...]:
    if task == "energy_forces":
        return model.energy_and_forces(batch)
    with torch.no_grad():
        return (model(batch),)


def check_export(seen: dict) -> None:
    """The exported model.pt loads with load_model and computes what the trained network
    computed; a force field also runs in the ASE calculator with the same energy and forces."""
    model = load_model(seen["path"]).eval()
    for got, expected in zip(outputs(model, seen["batch"], seen["task"]), seen["outputs"],
                             strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    if seen["task"] != "energy_forces":
        return
    from ase import Atoms

    from relaxgnn.calculator import RelaxGNNCalculator

    batch = seen["batch"]
    first = batch.batch == 0
    atoms = Atoms(numbers=batch.z[first].numpy(), positions=batch.pos[first].double().numpy())
    atoms.calc = RelaxGNNCalculator(seen["path"], dtype=None)
    energy, forces = seen["outputs"]
    assert atoms.get_potential_energy() == pytest.approx(float(energy[0]), rel=1e-5, abs=1e-5)
    np.testing.assert_allclose(atoms.get_forces(), forces[first].numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_trains_out_of_the_box(config, tmp_path, data_dir, monkeypatch):
    """Every config trains for two steps, and the model.pt it exports loads and computes what
    the trained network computed (in the ASE calculator too, for force fields)."""
    monkeypatch.chdir(REPO)
    seen = record_export(monkeypatch)  # the configs' paths are relative to the repository
    runs = tmp_path / "runs"
    args = ["fit", "--config", str(config), "--runs_dir", str(runs),
            "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
            "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
            *data_overrides(config, data_dir)]
    if yaml.safe_load(config.read_text())["model"].get("compile_model"):
        # compiled training is tested in test_train_module (a minute per model here)
        args.append("--model.compile_model=false")
    assert main(args) == 0
    [run] = (runs / config.stem).glob("version_*")
    checkpoints = {p.name for p in (run / "checkpoints").iterdir()}
    assert "model.pt" in checkpoints and any(c.startswith("best-") for c in checkpoints)
    check_export(seen)

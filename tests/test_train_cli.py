"""The `relaxgnn` training command line end to end: a run directory with everything in it,
test/project commands, clear errors before training, exact resume after SIGKILL, and DDP."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from relaxgnn.cli import main
from relaxgnn.models import load_model
from relaxgnn.relax import find_paths

TESTS = Path(__file__).resolve().parent
RELAXGNN = Path(sys.executable).parent / "relaxgnn"


def tiny_config(tmp_path: Path, **trainer) -> Path:
    """A relaxed EGNN on a small generated N-body set (60/20/20 trajectories of 400 steps)."""
    nbody = {"root": str(tmp_path / "nbody"), "max_samples": None, "num_train": 60,
             "num_val": 20, "num_test": 20, "n_steps": 400, "sample_freq": 50, "frame_in": 2,
             "frame_out": 5, "progress": False}
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 4, "log_every_n_steps": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "accelerator": "cpu", "devices": 1,
                    "callbacks": [{"class_path": "relaxgnn.train.Relax",
                                   "init_args": {"schedule": "Triangle", "theta": 1.0,
                                                 "reflection_weight": 0.01}},
                                  {"class_path": "relaxgnn.train.EquivarianceMonitor",
                                   "init_args": {"every_n_steps": 5}}], **trainer},
        "model": {"task": "node", "random_rotation": True,
                  "model": {"class_path": "relaxgnn.models.EGNN",
                            "init_args": {"hidden_channels": 16, "num_layers": 2,
                                          "velocity_field": "vel", "pair_fields": ["charges"],
                                          "relax": "linear"}},
                  "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 3e-3}}},
        "data": {"batch_size": 10,
                 **{split: {"class_path": "relaxgnn.data.NBody",
                            "init_args": {**nbody, "split": split}}
                    for split in ("train", "val", "test")}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(TESTS), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([str(RELAXGNN), *args], capture_output=True, text=True, env=env,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"relaxgnn {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def last_metric(run: Path, name: str) -> float:
    rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r.get(name)]
    return float(rows[-1][name])


def test_fit_writes_a_complete_run_directory(tmp_path):
    config = tiny_config(tmp_path)
    assert main(["fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.csv", "summary.json", "plots", "checkpoints"} <= names
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    ckpts = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.ckpt", "model.pt"} <= ckpts and any(c.startswith("best-") for c in ckpts)
    assert {p.name for p in (run / "plots").iterdir()} >= {"loss.png", "theta.png",
                                                             "penalty.png", "equivariance.png"}
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["model"]["model"]["init_args"]["relax"] == "linear"

    assert resolved["trainer"]["plugins"] is None  # nothing unserialisable: it loads back

    # test on θ = 0 from the best checkpoint, with the run's own config; project the last one
    best = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("best-"))
    assert main(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(best)]) == 0
    assert main(["predict", "--config", str(config), "--runs_dir", str(tmp_path / "runs"),
                 "--ckpt_path", str(best)]) == 0
    [written] = (tmp_path / "runs" / "tiny").glob("version_*/predictions.pt")
    predictions = torch.load(written, weights_only=True)
    assert predictions["task"] == "node" and predictions["checkpoint"] == str(best)
    assert torch.equal(predictions["index"], torch.arange(20))  # the 20 test trajectories
    assert torch.equal(predictions["node_sample"], torch.arange(20).repeat_interleave(5))
    from relaxgnn.data import NBody

    nbody = yaml.safe_load(config.read_text())["data"]["test"]["init_args"]
    test_set = NBody(**nbody)
    from relaxgnn.train.cli import project_checkpoint

    best_model = load_model(project_checkpoint(best, tmp_path / "best.pt"))
    with torch.no_grad():
        expected = torch.cat([best_model(test_set[i]) for i in range(20)])
    torch.testing.assert_close(predictions["y"], expected, rtol=1e-5, atol=1e-6)
    out = tmp_path / "projected.pt"
    assert main(["project", str(run / "checkpoints" / "last.ckpt"), str(out)]) == 0
    projected = load_model(out)
    assert not find_paths(projected)
    exported = load_model(run / "checkpoints" / "model.pt")
    for (k, a), (k2, b) in zip(projected.state_dict().items(), exported.state_dict().items(),
                               strict=True):
        assert k == k2 and torch.equal(a, b)


def test_errors_before_training(tmp_path, capsys):
    config = tiny_config(tmp_path)
    runs = ["--runs_dir", str(tmp_path / "runs")]
    assert main(["fit", "--config", str(config), *runs,
                 "--model.model", "relaxgnn.models.NoSuchNet"]) == 2
    assert "NoSuchNet" in capsys.readouterr().err
    assert main(["fit", "--config", str(config), *runs,
                 "--model.model.init_args.widht", "3"]) == 2
    assert "widht" in capsys.readouterr().err
    code = main(["fit", "--config", str(config), *runs, "--data.train.init_args.generate",
                 "false", "--data.train.init_args.root", str(tmp_path / "nowhere")])
    assert code == 2
    assert f"{tmp_path / 'nowhere'}" in capsys.readouterr().err
    assert main(["fit", "--config", str(config), *runs, "--ckpt_path", "last"]) == 2
    assert "no last.ckpt" in capsys.readouterr().err
    assert main(["project", str(tmp_path / "missing.ckpt"), str(tmp_path / "x.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tiny" / "version_0" / "checkpoints").exists()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    config = tiny_config(tmp_path)
    run_cli("fit", "--config", str(config), "--runs_dir", str(tmp_path / "a"))
    # the same run, killed in the middle of epoch 3 (6 batches per epoch), then resumed
    killed = run_cli("fit", "--config", str(config), "--runs_dir", str(tmp_path / "b"),
                     "--trainer.callbacks+=train_helpers.KillAtStep",
                     "--trainer.callbacks.step=15", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    b = tmp_path / "b" / "tiny" / "version_0"
    assert not (b / "checkpoints" / "model.pt").exists()
    resumed = run_cli("fit", "--config", str(config), "--runs_dir", str(tmp_path / "b"),
                      "--ckpt_path", "last")
    assert "Restoring states from the checkpoint" in resumed.stderr + resumed.stdout
    assert not (tmp_path / "b" / "tiny" / "version_1").exists()  # resumed in place
    a = tmp_path / "a" / "tiny" / "version_0"
    model_a, model_b = (load_model(r / "checkpoints" / "model.pt") for r in (a, b))
    for (k, x), (_, y) in zip(model_a.state_dict().items(), model_b.state_dict().items(),
                              strict=True):
        assert torch.allclose(x, y, atol=1e-6, rtol=1e-5), k
    for name in ("val/loss", "train/penalty", "theta"):
        assert last_metric(a, name) == pytest.approx(last_metric(b, name), rel=1e-5, abs=1e-8)
    # the resumed run's log holds the whole history, each step once, as the uninterrupted one
    for name in ("train/loss", "val/loss", "theta"):
        steps_a, steps_b = ([int(r["step"]) for r in rows(run) if r.get(name)] for run in (a, b))
        assert steps_a == steps_b, name
        values_b = [float(r[name]) for r in rows(b) if r.get(name)]
        values_a = [float(r[name]) for r in rows(a) if r.get(name)]
        assert values_a == pytest.approx(values_b, rel=1e-4, abs=1e-7), name


def rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "metrics.csv").open()))


def test_extending_a_finished_run_keeps_its_history_and_its_schedule(tmp_path, caplog):
    config = tiny_config(tmp_path)  # 4 epochs of 6 steps
    runs = ["--runs_dir", str(tmp_path / "runs")]
    assert main(["fit", "--config", str(config), *runs]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    first = rows(run)
    assert main(["fit", "--config", str(config), *runs, "--ckpt_path", "last",
                 "--trainer.max_epochs", "6"]) == 0
    assert not (tmp_path / "runs" / "tiny" / "version_1").exists()
    after = rows(run)

    def entries(table):
        return {(r["step"], m, r[m]) for r in table for m in ("train/loss", "val/loss", "theta")
                if r.get(m)}

    assert entries(first) <= entries(after)  # nothing of the first part is lost
    steps = [int(r["step"]) for r in after if r.get("train/loss")]
    assert sorted(steps) == list(range(36))  # every step once
    later = [float(r["theta"]) for r in after if r.get("theta") and int(r["step"]) >= 24]
    assert later and all(t == 0.0 for t in later)  # the 24-step Triangle stays finished
    assert "keeps its schedule of 24 steps" in caplog.text


def test_ddp_two_cpu_processes_agree(tmp_path):
    config = tiny_config(tmp_path, max_epochs=2)
    run_cli("fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs"),
            "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.callbacks+=train_helpers.DumpState",
            f"--trainer.callbacks.out_dir={tmp_path}")
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["thetas"] == ranks[1]["thetas"] and max(ranks[0]["thetas"]) > 0
    assert len(ranks[0]["thetas"]) == 2 * 3  # 60 samples / 2 ranks / batch 10, two epochs
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_a_run_prints_one_line_per_epoch_and_no_warnings(tmp_path):
    """With the progress bar off: Lightning's own info lines, relaxgnn's, and one line per
    epoch with the epoch's mean training metrics and the validation metrics; no warning that
    relaxgnn's use of Lightning causes (LightningCLI's args, the module's batch hook, the
    pytree deprecation, Lightning's advertising tip)."""
    config = tiny_config(tmp_path, max_epochs=2)
    result = run_cli("fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs"))
    out = result.stdout + result.stderr
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and epochs[1].startswith("epoch 2/2: train/loss ")
    assert " | val/loss " in epochs[0] and epochs[0].endswith(" s)")
    for noise in ("Warning", "warn", "LeafSpec", "args parameter", "on_after_batch_transfer",
                  "Tip"):
        assert noise not in out, noise


@pytest.mark.parametrize("edit, message", [
    (("hidden_channels: 16", "hidden_chanels: 16"),
     "relaxgnn fit: error: model.model: Option 'hidden_chanels' is not accepted"),
    (("lr: 0.003", "lr: fast"),
     "relaxgnn fit: error: model.optimizer.lr: 'fast' is not accepted (Expected a <class "
     "'float'>"),
])
def test_config_errors_are_one_line_with_the_cause_first(tmp_path, capsys, edit, message):
    config = tiny_config(tmp_path)
    config.write_text(config.read_text().replace(*edit))
    assert main(["fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err
    assert err[0].endswith("(`relaxgnn fit --help` lists the options)")


def test_a_force_field_trains_from_a_labelled_file_in_one_command(tmp_path):
    """MACE's ``--train_file x.xyz --valid_fraction``: the shipped MACE config, the frames of an
    extended XYZ file with REF_energy / REF_forces, E0, scale and neighbour count fitted on the
    training split and printed, the split by fractions written to splits.json; the config's
    generated data set is not built."""
    import ase.io
    from ase import Atoms

    from relaxgnn.data import ASEDataset

    db = ASEDataset(TESTS.parent / "datasets" / "md" / "md17_ethanol_20frames.db",
                    energy_unit="kcal/mol")
    frames = []
    for item in (db[i] for i in range(len(db))):
        atoms = Atoms(numbers=item.z.numpy(), positions=item.pos.double().numpy())
        atoms.info["REF_energy"] = float(item.energy)
        atoms.arrays["REF_forces"] = item.forces.double().numpy()
        frames.append(atoms)
    ase.io.write(tmp_path / "mine.xyz", frames, format="extxyz")
    result = run_cli("fit", "--config", str(TESTS.parent / "configs" / "md_ethanol_mace.yaml"),
                     "--data.file", str(tmp_path / "mine.xyz"), "--data.valid_fraction", "0.2",
                     "--data.test_fraction", "0.1", "--trainer.max_epochs", "1",
                     "--data.dataset.init_args.path", str(tmp_path / "never.npz"),
                     "--trainer.enable_progress_bar", "false", "--runs_dir",
                     str(tmp_path / "runs"), timeout=300)
    fitted = next(line for line in (result.stdout + result.stderr).splitlines()
                  if line.startswith("fitted on the training set"))
    assert "reference_energies {1:" in fitted and "energy_scale" in fitted
    assert "avg_num_neighbors 8.0" in fitted  # ethanol: every other atom within 5 Å
    run = tmp_path / "runs" / "md_ethanol_mace" / "version_0"
    splits = json.loads((run / "splits.json").read_text())
    assert [len(splits[k]) for k in ("train", "val", "test")] == [14, 4, 2]
    assert (run / "checkpoints" / "model.pt").is_file()
    assert not (tmp_path / "never.npz").exists()  # the config's xTB trajectory: not generated


def test_ddp_with_a_split_data_set_finishes_and_both_ranks_share_the_split(tmp_path):
    """A config that splits one data set (``dataset:`` + ``split:``, as every MD config): rank
    0 writes splits.json, which asks for the run directory, a collective call under DDP that
    every rank must make as often (it used to hang after "All distributed processes
    registered")."""
    config = yaml.safe_load(tiny_config(tmp_path, max_epochs=1).read_text())
    config["data"] = {"batch_size": 10, "split": [30, 10, 20],
                      "dataset": {**config["data"]["train"]}}
    (tmp_path / "split.yaml").write_text(yaml.safe_dump(config))
    run_cli("fit", "--config", str(tmp_path / "split.yaml"), "--runs_dir", str(tmp_path / "runs"),
            "--trainer.strategy", "ddp", "--trainer.devices", "2",
            "--trainer.callbacks+=train_helpers.DumpState",
            f"--trainer.callbacks.out_dir={tmp_path}", timeout=240)
    splits = [{k: [int(i) for i in v] for k, v in torch.load(tmp_path / f"rank{r}.pt")[
        "splits"].items()} for r in (0, 1)]
    assert splits[0] == splits[1]
    assert [len(splits[0][k]) for k in ("train", "val", "test")] == [30, 10, 20]
    saved = json.loads(next((tmp_path / "runs").glob("*/version_0/splits.json")).read_text())
    assert saved == splits[0]


@pytest.mark.parametrize("config", sorted((TESTS.parent / "configs").glob("*.yaml")),
                         ids=lambda p: p.stem)
def test_every_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(config), "--print_config"])
    assert exit_info.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["model"]["class_path"].startswith("relaxgnn.models.")


def test_short_runs_have_a_best_checkpoint_and_curves(tmp_path):
    """A run shorter than check_val_every_n_epoch still validates at its end (a best
    checkpoint, final val metrics) and logs the equivariance error at more than one step."""
    config = tiny_config(tmp_path, max_epochs=2, check_val_every_n_epoch=5)
    assert main(["fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs")]) == 0
    run = tmp_path / "runs" / "tiny" / "version_0"
    assert any(p.name.startswith("best-") for p in (run / "checkpoints").iterdir())
    table = rows(run)
    assert [r["epoch"] for r in table if r.get("val/loss")] == ["1"]
    assert len([r for r in table if r.get("equivariance/rotation")]) >= 2  # steps 1 and 12


def test_a_run_directory_that_cannot_be_written_is_one_line(tmp_path, capsys, monkeypatch):
    config = tiny_config(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["fit", "--config", str(config), "--runs_dir", str(blocker / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("relaxgnn fit: error: cannot write the run directory")
    import errno

    import relaxgnn.train.checkpoint_io as checkpoint_io

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io, "atomic_torch_save", full_disk)
    assert main(["fit", "--config", str(config), "--runs_dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "relaxgnn fit: error: [Errno 28] No space left on device"

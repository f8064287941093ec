"""Nothing from a file runs: model files and checkpoints are read weights-only, and a model
spec can only name registered classes. Each malicious file would create a marker file if
anything of it were executed."""

from __future__ import annotations

import pathlib

import pytest
import torch
from test_train_cli import tiny_config

from relaxgnn.cli import main
from relaxgnn.models import EGNN, load_model, register_model, save_model
from relaxgnn.models.io import records_init_args
from relaxgnn.train.cli import project_checkpoint


class Payload:
    """Unpickling this object touches ``marker``: code from the file running."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_pickled_object_in_a_model_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"class_path": "relaxgnn.models.egnn.EGNN", "init_args": {},
                "state_dict": {}, "extra": Payload(marker)}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*model\.pt.*never runs code"):
        load_model(path)
    assert not marker.exists()


def test_a_model_spec_cannot_name_an_arbitrary_callable(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    torch.save({"class_path": "os.system", "init_args": {"command": f"touch {marker}"},
                "state_dict": {}}, path)  # plain data only: a weights-only load reads it
    with pytest.raises(ValueError, match=r"model\.pt: refusing to build 'os\.system'"):
        load_model(path)
    assert not marker.exists()
    nested = tmp_path / "nested.pt"  # the same inside an EnergyForceModel's network spec
    torch.save({"class_path": "relaxgnn.models.EnergyForceModel", "format": 2,
                "init_args": {"network": {"class_path": "subprocess.call",
                                          "init_args": {"args": ["touch", str(marker)]}},
                              "atomic_numbers": [1]},
                "state_dict": {}}, nested)
    with pytest.raises(ValueError, match="refusing to build 'subprocess.call'"):
        load_model(nested)
    assert not marker.exists()


def test_a_pickled_object_in_a_checkpoint_is_refused_by_every_command(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "relaxgnn_model": {"class_path": "relaxgnn.models.EGNN"},
                "hyper_parameters": {"task": "node"}, "callbacks": Payload(marker)}, ckpt)
    with pytest.raises(ValueError, match=r"refusing to load .*evil\.ckpt"):
        project_checkpoint(ckpt, tmp_path / "out.pt")
    assert main(["project", str(ckpt), str(tmp_path / "out.pt")]) == 2
    config = tiny_config(tmp_path)
    for command in ("test", "fit"):
        assert main([command, "--config", str(config), "--runs_dir", str(tmp_path / "runs"),
                     "--ckpt_path", str(ckpt)]) == 2
    assert not marker.exists()


def test_genuine_files_still_load_and_user_classes_load_once_registered(tmp_path):
    torch.manual_seed(0)
    model = EGNN(hidden_channels=8, num_layers=2)
    path = save_model(model, tmp_path / "egnn.pt")
    loaded = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                  loaded.state_dict().values(), strict=True))
    # a file written before the format entry (format 1) of an unchanged architecture loads
    payload = torch.load(path, weights_only=True)
    del payload["format"]
    torch.save(payload, tmp_path / "old.pt")
    assert isinstance(load_model(tmp_path / "old.pt"), EGNN)

    @records_init_args
    class Mine(torch.nn.Module):
        def __init__(self, width: int = 3) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(width, 1)

    path = save_model(Mine(4), tmp_path / "mine.pt")
    with pytest.raises(ValueError, match="not a relaxgnn model nor a class registered"):
        load_model(path)
    register_model(Mine)
    assert load_model(path).lin.in_features == 4


def test_old_segnn_files_are_refused_with_the_reason(tmp_path):
    from relaxgnn.models import SEGNN

    model = SEGNN(irreps_hidden="4x0e+2x1o", num_layers=1)
    path = save_model(model, tmp_path / "segnn.pt")
    assert isinstance(load_model(path), SEGNN)
    payload = torch.load(path, weights_only=True)
    del payload["format"]  # as written before 2026-12-01
    torch.save(payload, tmp_path / "old_segnn.pt")
    with pytest.raises(ValueError, match="old_segnn.pt: a SEGNN written before .* retrain"):
        load_model(tmp_path / "old_segnn.pt")
    payload["format"] = 99
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="newer than this relaxgnn"):
        load_model(tmp_path / "future.pt")


def test_a_truncated_model_file_names_the_file(tmp_path):
    path = save_model(EGNN(hidden_channels=4, num_layers=1), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"m\.pt is not a readable model file"):
        load_model(path)

"""The N-body configurations: their models are exactly equivariant on N-body inputs
(velocities rotate with positions, charges are invariant) and start at a sane scale."""

from pathlib import Path

import pytest
import torch
import yaml
from torch_geometric.data import Batch

from relaxgnn.data import NBody
from relaxgnn.dtype import default_dtype
from relaxgnn.models import build_model
from relaxgnn.relax import Constant, Relaxation, find_paths, project
from relaxgnn.symmetry import equivariance_error

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("nbody_*.yaml"))


@pytest.fixture(scope="module")
def nbody_batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbody")
    data = NBody(root, split="val", max_samples=None, num_train=4, num_val=20, num_test=4,
                 n_steps=400, sample_freq=50, frame_in=2, frame_out=5, progress=False)
    return Batch.from_data_list([data[i] for i in range(20)])


def model_of(config: Path):
    spec = yaml.safe_load(config.read_text())["model"]["model"]
    return build_model(spec)


def test_every_arm_has_a_config():
    assert [c.stem for c in CONFIGS] == [f"nbody_{model}{arm}" for model in ("egnn", "segnn")
                                         for arm in ("", "_dual", "_relaxed", "_resilient")]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c.stem)
def test_config_models_on_nbody_inputs(config, nbody_batch):
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        model = model_of(config)
    batch = nbody_batch.clone()
    for key in ("pos", "vel", "charges", "y"):
        batch[key] = batch[key].double()
    assert "vel" in model.signature.irreps_in  # velocities rotate with the positions
    with torch.no_grad():
        displacement = (model(batch) - batch.pos).norm(dim=-1).mean()
    assert displacement < 2.0, f"initial prediction moves particles by {displacement:.3g}"
    errors = equivariance_error(model, batch, trials=2)
    assert max(errors.values()) < 1e-9, errors
    if model.relax is not None:
        relax = Relaxation(model, Constant(1.0, 10))
        with torch.no_grad():
            for path in relax.paths.values():
                for p in path.g.parameters():
                    p.normal_(0, 0.01)
        assert equivariance_error(model, batch)["rotation"] > 1e-6
        assert max(equivariance_error(project(model), batch, trials=2).values()) < 1e-9


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.stem.endswith("_relaxed")],
                         ids=lambda c: c.stem)
def test_relaxed_configs_name_the_default_placement(config):
    """The relaxed configs spell their placement out ({module pattern: path}), and it is the
    model's default placement: the same paths as ``relax="linear"``, reading the same inputs."""
    spec = yaml.safe_load(config.read_text())["model"]["model"]
    relax = spec["init_args"]["relax"]
    assert isinstance(relax, dict) and all(key.startswith("layers.") for key in relax)
    explicit = build_model(spec)
    spec["init_args"]["relax"] = "linear"
    shorthand = build_model(spec)
    paths, default = find_paths(explicit), find_paths(shorthand)
    assert list(paths) == list(default)
    for name, path in paths.items():
        assert path.inputs == default[name].inputs and path.irreps_out == default[name].irreps_out

"""Learned relaxation (ACE): γ per path group under γ = 0 or |γ| ≤ u, the dual ascent on λ,
resume, and projection to an exactly equivariant model."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import molecule_data, point_cloud
from torch_geometric.data import Batch

from relaxgnn.dtype import default_dtype
from relaxgnn.models import EGNN, SEGNN
from relaxgnn.relax import LearnedRelaxation, find_paths, project
from relaxgnn.symmetry import equivariance_error

ACE_PATH = {"kind": "mlp", "hidden": ["2x", "1x"], "activation": "gelu", "init_std": None}


def segnn(relax=ACE_PATH, seed=0):
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return SEGNN({"vel": "1x1o"}, velocity_field="vel", pair_fields=["charges"],
                     irreps_hidden="4x0e+2x1o", num_layers=2, relax=relax)


def data():
    return Batch.from_data_list([molecule_data("H2O"), point_cloud(5, seed=3)])


def constraint_only(relax, steps, lr=1e-2):
    """Optimise γ against the constraint alone (no task loss): primal Adam, dual ascent."""
    params = [p for p in relax.container.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    history = []
    for i in range(steps):
        relax.step(i)
        loss = relax.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        relax.dual_step()
        history.append(relax.values())
    return history


def test_ace_branch_shape_and_one_gamma_per_path():
    model = segnn()
    path = find_paths(model)["layers.0.update_layer_1"]
    widths = [m.out_features for m in path.g if isinstance(m, torch.nn.Linear)]
    d = path.irreps_out.dim
    assert widths == [2 * d, d, d] and isinstance(path.g[1], torch.nn.GELU)
    relax = LearnedRelaxation(model)
    assert relax.groups == list(find_paths(model)) and all(
        v == {"gamma": 1.0, "lambda": 0.0} for v in relax.values().values())
    grouped = LearnedRelaxation(segnn(), groups={"layers.0.*": "first", "layers.1.*": "second"})
    assert grouped.groups == ["first", "second"]
    assert len(list(grouped.container.parameters())) == 2


def test_equality_constraint_pulls_gamma_to_zero_and_lambda_grows_while_it_is_not():
    """Under the constraint alone (no task), λ grows while γ > 0 and its pull brings γ from 1
    down through 0; the bilinear game then oscillates around γ = 0 (the task's loss, absent
    here, is what a real run balances against)."""
    relax = LearnedRelaxation(segnn(), dual_lr=0.05, dual_optimizer="sgd")
    history = constraint_only(relax, 200)
    for group in relax.groups:
        gammas = [1.0] + [h[group]["gamma"] for h in history]
        lambdas = [0.0] + [h[group]["lambda"] for h in history]
        crossing = next(k for k, g in enumerate(gammas) if g <= 0)  # γ reaches 0 ...
        assert 5 < crossing < 200
        for k in range(2, crossing):  # ... having fallen all the way (λ = 0 at step 0)
            assert gammas[k] < gammas[k - 1] and lambdas[k] > lambdas[k - 1]


def test_resilient_lambda_nonnegative_and_gamma_within_its_slack():
    relax = LearnedRelaxation(segnn(), dual_lr=0.05, dual_optimizer="sgd", resilient=True,
                              rho=1.0)
    history = constraint_only(relax, 400)
    for values in history:
        for group in relax.groups:
            assert values[group]["lambda"] >= 0 and values[group]["u"] >= 0
    end = history[-1]
    for group in relax.groups:
        assert abs(end[group]["gamma"]) <= end[group]["u"] + 0.05


def test_adam_dual_moves_lambda_by_about_its_learning_rate():
    relax = LearnedRelaxation(segnn(), dual_lr=1e-3)  # ACE's code: Adam on -γ
    relax.dual_step()
    assert all(v["lambda"] == pytest.approx(1e-3, rel=1e-3) for v in relax.values().values())


def test_relative_constraint_scales_with_the_task_loss():
    """relative: Σ λ·γ (+ ρ‖u‖²) times the detached task loss, so λ's pull on γ does not
    depend on the loss's scale; the task loss itself gets no gradient from it."""
    relax = LearnedRelaxation(segnn(), dual_lr=0.1, dual_optimizer="sgd", resilient=True)
    relax.dual_step()
    absolute = relax.penalty()
    relax.relative = True
    task = torch.tensor(250.0, dtype=torch.float64, requires_grad=True)
    scaled = relax.penalty(task_loss=task)
    torch.testing.assert_close(scaled, 250.0 * absolute.detach())
    scaled.backward()
    assert task.grad is None
    gamma = relax.gamma(relax.groups[0])
    torch.testing.assert_close(gamma.grad, torch.tensor(250.0 * 0.1, dtype=torch.float64))


def test_gamma_lr_gives_gamma_and_slack_a_parameter_group_of_their_own():
    model = segnn()
    relax = LearnedRelaxation(model, resilient=True, gamma_lr=0.05)
    rest, own = relax.parameter_groups(model.parameters())
    assert own["lr"] == 0.05 and "lr" not in rest
    assert {id(p) for p in own["params"]} == {id(p) for p in relax.container.parameters()}
    assert len(rest["params"]) + len(own["params"]) == len(list(model.parameters()))
    optimizer = torch.optim.Adam(relax.parameter_groups(model.parameters()), lr=1e-4)
    relax.step(0)
    relax.dual_step()  # λ > 0: the penalty now pulls γ down
    loss = relax.penalty()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()  # Adam's first step moves each parameter by its group's lr
    gamma = relax.values()[relax.groups[0]]["gamma"]
    assert gamma == pytest.approx(1.0 - 0.05, rel=1e-6)
    plain = LearnedRelaxation(segnn())
    assert plain.parameter_groups(model.parameters()) == list(model.parameters())
    with pytest.raises(ValueError, match="gamma_lr"):
        LearnedRelaxation(segnn(), gamma_lr=-1.0)


def test_resume_restores_gamma_lambda_u_and_the_optimizer_exactly():
    model = segnn()
    relax = LearnedRelaxation(model, resilient=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = data()
    target = torch.randn(batch.num_nodes, 3, dtype=torch.float64)

    def train(model, relax, optimizer, steps, start):
        for i in range(start, start + steps):
            relax.step(i)
            with relax.record():
                out = model(batch)
            loss = (out - target).pow(2).mean() + relax.penalty()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            relax.dual_step()

    train(model, relax, optimizer, 3, 0)
    saved = (copy.deepcopy(model.state_dict()), relax.state_dict(),
             copy.deepcopy(optimizer.state_dict()))
    assert any("relaxation_gammas.gamma" in k for k in saved[0])
    assert any("relaxation_gammas.slack" in k for k in saved[0])
    train(model, relax, optimizer, 3, 3)

    restored = segnn(seed=5)
    restored_relax = LearnedRelaxation(restored, resilient=True)
    restored.load_state_dict(saved[0])
    restored_relax.load_state_dict(saved[1])
    restored_optimizer = torch.optim.Adam(restored.parameters(), lr=1e-2)
    restored_optimizer.load_state_dict(saved[2])
    train(restored, restored_relax, restored_optimizer, 3, 3)
    assert restored_relax.values() == relax.values()
    for (k, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_learned_run_projects_to_an_exact_plain_model():
    model = segnn()
    relax = LearnedRelaxation(model)
    batch = data()
    errors = equivariance_error(model, batch, trials=2)
    assert errors["rotation"] > 1e-4  # γ = 1 with nn.Linear-initialised MLP paths
    projected = project(model)
    assert not find_paths(projected) and not hasattr(projected, "relaxation_gammas")
    assert max(equivariance_error(projected, batch, trials=3).values()) < 1e-9
    plain = segnn(relax=None, seed=3)
    plain.load_state_dict(projected.state_dict(), strict=True)
    with relax.paused():  # evaluation: f_eq only
        torch.testing.assert_close(model(batch), plain(batch), rtol=0, atol=0)


def test_bad_learned_configuration():
    with pytest.raises(ValueError, match="dual_optimizer"):
        LearnedRelaxation(segnn(), dual_optimizer="rmsprop")
    with pytest.raises(ValueError, match="has no relaxation paths"):
        LearnedRelaxation(EGNN())


def test_a_learned_run_logs_saves_resumes_and_exports(tmp_path):
    """Relax(controller=...) in a Lightning run: γ, λ (u) logged per step and in the summary,
    saved in the checkpoint and restored on resume (the resumed run ends where the whole one
    does), the exported model is the plain one, and `relaxgnn project` reads the checkpoint."""
    import csv
    import json

    import lightning as L
    from train_helpers import make_trainer, nbody_like

    from relaxgnn.models import load_model
    from relaxgnn.train import GraphDataModule, Relax, RelaxGNNModule
    from relaxgnn.train.cli import project_checkpoint

    def setup():
        L.seed_everything(0)
        model = EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                     hidden_channels=8, num_layers=2, relax=ACE_PATH)
        items = nbody_like(40)
        return RelaxGNNModule(model, task="node"), GraphDataModule(
            train=items[:20], val=items[20:30], test=items[30:], batch_size=10)

    def run(root, epochs, ckpt=None, controller="resilient"):
        module, data = setup()
        trainer = make_trainer(root, [Relax(controller=controller, dual_lr=1e-2,
                                            gamma_lr=2e-2)], max_epochs=epochs)
        trainer.fit(module, data, ckpt_path=ckpt)
        assert [g["lr"] for g in trainer.optimizers[0].param_groups][1] == 2e-2
        return module, root / "run" / "version_0"

    whole, whole_dir = run(tmp_path / "whole", 4)
    first, first_dir = run(tmp_path / "part", 2)
    ckpt = first_dir / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert any("relaxation_gammas.gamma" in k for k in saved["state_dict"])
    resumed, _ = run(tmp_path / "part", 4, ckpt=ckpt)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)

    summary = json.loads((whole_dir / "summary.json").read_text())
    assert set(summary["last_gammas"]) == set(find_paths(whole.model))
    last = next(iter(summary["last_gammas"].values()))
    assert set(last) == {"gamma", "lambda", "u"} and last["gamma"] != 1.0
    header = (whole_dir / "metrics.csv").read_text().splitlines()[0]
    assert "relax/gamma/layers.0.features" in header and "relax/lambda/layers.0.features" in header
    with (whole_dir / "metrics.csv").open() as f:  # a fresh value every step, epoch 0 included
        gammas = [float(r["relax/gamma/layers.0.features"]) for r in csv.DictReader(f)
                  if r.get("relax/gamma/layers.0.features")]
    assert len(gammas) == 8 and len(set(gammas)) == 8
    assert gammas[-1] == pytest.approx(last["gamma"])
    assert {"gamma.png", "lambda.png"} <= {p.name for p in (whole_dir / "plots").iterdir()}
    exported = load_model(whole_dir / "checkpoints" / "model.pt")
    assert not find_paths(exported) and not hasattr(exported, "relaxation_gammas")
    projected = load_model(project_checkpoint(ckpt, tmp_path / "projected.pt"))
    assert set(projected.state_dict()) == set(exported.state_dict())
    module, data = setup()  # `relaxgnn test --ckpt_path`: no controller, γ not needed
    [metrics] = make_trainer(tmp_path / "test").test(module, data, ckpt_path=ckpt,
                                                     verbose=False)
    assert metrics["test/mse"] > 0


def test_augmented_lagrangian_term_adds_c_times_the_squared_violation():
    """ACE's ``auglag_const``: the loss gains c·Σγ² on top of Σλγ (γ = 1 per path here)."""
    plain, damped = LearnedRelaxation(segnn()), LearnedRelaxation(segnn(), auglag=0.5)
    assert plain.penalty().item() == 0.0  # λ = 0 at the start
    assert damped.penalty().item() == pytest.approx(0.5 * len(damped.groups))
    with pytest.raises(ValueError, match="auglag"):
        LearnedRelaxation(segnn(), auglag=-1.0)


def test_dual_variables_follow_the_model_to_its_device():
    """The Relax callback builds the controller in ``setup``, before the trainer moves the
    model; at the start of fit λ (and the dual optimiser's state) must follow γ to the model's
    device, or the penalty mixes devices (here the ``meta`` device stands in for a GPU)."""
    from types import SimpleNamespace

    from relaxgnn.train import Relax
    from relaxgnn.train.module import RelaxGNNModule

    module = RelaxGNNModule(model=segnn())
    callback = Relax(controller="learned")
    trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    callback.setup(trainer, module, "fit")
    controller = callback.controller
    controller.step(0)
    controller.dual_step()  # some dual optimiser state to move along
    module.to("meta")  # what the trainer does between setup and on_fit_start
    callback.on_fit_start(trainer, module)
    assert controller.lambdas.device.type == "meta"
    moments = [v for state in controller.state_dict()["dual"]["state"].values()
               for v in state.values() if torch.is_tensor(v) and v.dim() > 0]
    assert moments and all(v.device.type == "meta" for v in moments)
    assert controller.penalty().device.type == "meta"
    assert controller.gamma(controller.groups[0]).device.type == "meta"

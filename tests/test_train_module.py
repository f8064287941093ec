"""The LightningModule and callbacks on small generated data: the four tasks, θ = 0 for
evaluation, projection at the end of fit, clear errors, EMA and float64."""

import csv
import json
import warnings

import lightning as L
import pytest
import torch
from torch_geometric.data import Data
from train_helpers import make_trainer, molecules, nbody_like

from relaxgnn.models import EGNN, SEGNN, TPNet, load_model
from relaxgnn.relax import find_paths
from relaxgnn.train import EMA, EquivarianceMonitor, GraphDataModule, Relax, RelaxGNNModule

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def egnn(relax="linear"):
    return EGNN({"charges": "1x0e"}, velocity_field="vel", pair_fields=["charges"],
                hidden_channels=16, num_layers=2, relax=relax)


def nbody_data(batch_size=10):
    items = nbody_like(50)
    return GraphDataModule(train=items[:30], val=items[30:40], test=items[40:],
                           batch_size=batch_size)


def test_node_task_with_relaxation(tmp_path):
    L.seed_everything(0)
    module = RelaxGNNModule(egnn(), task="node", random_rotation=True)
    seen = []

    class Spy(L.Callback):  # θ during training and validation
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append(("train", pl_module.relaxation.theta))

        def on_validation_batch_end(self, trainer, pl_module, *args):
            seen.append(("val", max(p.theta for p in find_paths(pl_module.model).values())))

    trainer = make_trainer(tmp_path, [Relax("Triangle", theta=1.0), EquivarianceMonitor(2),
                                      Spy()], max_epochs=3)
    trainer.fit(module, nbody_data())
    train_thetas = [t for kind, t in seen if kind == "train"]
    assert max(train_thetas) == pytest.approx(1.0, abs=0.2) and train_thetas[0] == 0.0
    assert train_thetas[-1] == 0.0  # the schedule ends at exactly 0 on the last step
    assert all(t == 0.0 for kind, t in seen if kind == "val")
    run = tmp_path / "run" / "version_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["relaxed_during_training"]
    assert max(summary["projected_equivariance_error"].values()) < 1e-5
    projected = load_model(run / "checkpoints" / "model.pt")
    assert not find_paths(projected) and projected.relax is None
    batch = next(iter(nbody_data().test_dataloader()))
    with torch.no_grad():
        assert torch.allclose(projected(batch), module.model(batch), atol=1e-6)
    assert {p.name for p in (run / "plots").iterdir()} >= {"loss.png", "theta.png",
                                                             "penalty.png", "equivariance.png"}
    metrics = (run / "metrics.csv").read_text().splitlines()[0]
    for name in ("train/loss", "train/penalty", "theta", "val/mse", "equivariance/rotation",
                 "relax/layers.0.coords/lie_derivative"):
        assert name in metrics
    assert (run / "checkpoints" / "last.ckpt").is_file()
    result = trainer.test(module, nbody_data(), verbose=False)[0]
    assert result["test/mse"] > 0


@pytest.mark.parametrize("model", ["TPNet", "SEGNN"])
def test_energy_forces_task(tmp_path, model):
    L.seed_everything(0)
    net = TPNet(atomic_numbers=[1, 6, 8], irreps_hidden="8x0e+4x1o", num_layers=2, cutoff=4.0,
                relax="linear") if model == "TPNet" else \
        SEGNN(atomic_numbers=[1, 6, 8], irreps_hidden="4x0e+2x1o", num_layers=1,
              output="graph", relax="linear")
    items = molecules(30)
    data = GraphDataModule(dataset=items, split=[20, 5, 5], batch_size=5)
    module = RelaxGNNModule(net, task="energy_forces", target_unit="eV", random_rotation=True,
                            optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    trainer = make_trainer(tmp_path, [Relax("LinearDecay", theta=0.5)], max_epochs=3)
    before = trainer.validate(module, data, verbose=False)[0]
    trainer.fit(module, data)
    after = trainer.validate(module, data, verbose=False)[0]
    assert set(after) >= {"val/energy_mae_meV", "val/force_mae_meV_per_A", "val/loss"}
    assert after["val/loss"] < before["val/loss"]
    splits = json.loads((tmp_path / "run" / "version_0" / "splits.json").read_text())
    assert sorted(len(v) for v in splits.values()) == [5, 5, 20]


def test_graph_task_normalisation_and_atomref(tmp_path):
    L.seed_everything(0)
    items = molecules(24)
    atomref = {1: -0.5, 6: -37.8, 8: -75.0}
    for item in items:  # a target with large per-element offsets
        item.y[0, 0] += sum(atomref[int(z)] for z in item.z)
    net = EGNN(atomic_numbers=[1, 6, 8], output="graph", hidden_channels=16, num_layers=2)
    module = RelaxGNNModule(net, task="graph", target_index=0, target_unit="eV", atomref=atomref)
    data = GraphDataModule(dataset=items, split=[16, 4, 4], batch_size=4)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(module, data)
    energies = torch.stack([it.y[0, 0] - sum(atomref[int(z)] for z in it.z) for it in items])
    train_idx = data.splits["train"]
    assert module.target_mean.item() == pytest.approx(energies[train_idx].mean().item(), rel=1e-5)
    assert module.target_std.item() == pytest.approx(energies[train_idx].std().item(), rel=1e-5)
    batch = next(iter(data.val_dataloader()))
    pred = module.predict_batch(batch)["y"]
    assert pred.shape == (batch.num_graphs, 1)
    truth = batch.y[:, 0:1]
    assert (pred - truth).abs().max() < 5.0  # within the spread, not off by the atom refs


def test_errors_before_training(tmp_path):
    items = molecules(12)
    data = GraphDataModule(dataset=items, split=[8, 2, 2], batch_size=4)
    net = EGNN(atomic_numbers=[1, 6, 8], output="graph", hidden_channels=8, num_layers=1)
    with pytest.raises(ValueError, match="target_index 7 is out of range: `y` has 3 columns"):
        make_trainer(tmp_path).fit(RelaxGNNModule(net, task="graph", target_index=7), data)
    with pytest.raises(ValueError, match="reads the data field `vel`"):
        make_trainer(tmp_path).fit(RelaxGNNModule(net, task="node", target="vel"), data)
    with pytest.raises(ValueError, match="task must be"):
        RelaxGNNModule(net, task="segmentation")
    with pytest.raises(ValueError, match="label_smoothing"):
        RelaxGNNModule(net, task="classification", label_smoothing=1.0)
    with pytest.raises(ValueError, match="either `dataset`"):
        GraphDataModule()
    with pytest.raises(ValueError, match="need 20 items but the data set has 12"):
        GraphDataModule(dataset=items, split=[10, 5, 5])


def test_non_finite_loss_stops_with_the_step(tmp_path):
    L.seed_everything(0)
    items = nbody_like(20)
    data = GraphDataModule(train=items[:15], val=items[15:], batch_size=5, shuffle_seed=1)
    module = RelaxGNNModule(egnn(None), task="node")

    class Poison(L.Callback):  # weights become NaN at step 4, in the second epoch
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                with torch.no_grad():
                    next(pl_module.parameters()).fill_(float("nan"))

    trainer = make_trainer(tmp_path, [Poison()], max_epochs=3)
    with pytest.raises(FloatingPointError, match=r"non-finite training loss .* global step 4 "
                                                 r"\(epoch 1, batch 1\)"):
        trainer.fit(module, data)
    last = torch.load(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt",
                      weights_only=False)
    assert last["global_step"] == 3  # the end of the first epoch: the last good state
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_checkpoint_from_another_architecture(tmp_path):
    L.seed_everything(0)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(RelaxGNNModule(egnn(), task="node"), nbody_data())
    ckpt = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    other = EGNN({"charges": "1x0e"}, velocity_field="vel", hidden_channels=32, num_layers=2)
    with pytest.raises(ValueError, match="another architecture"):
        make_trainer(tmp_path, max_epochs=2).fit(RelaxGNNModule(other, task="node"),
                                                 nbody_data(), ckpt_path=ckpt)


def test_float64_and_ema(tmp_path):
    L.seed_everything(0)
    module = RelaxGNNModule(egnn(), task="node")
    trainer = make_trainer(tmp_path, [Relax("CosineDecay", theta=0.5), EMA(decay=0.9)],
                           precision="64-true", max_epochs=2, gradient_clip_val=1.0)
    trainer.fit(module, nbody_data())
    assert next(module.parameters()).dtype == torch.float64
    projected = load_model(tmp_path / "run" / "version_0" / "checkpoints" / "model.pt")
    assert next(projected.parameters()).dtype == torch.float64
    summary = json.loads((tmp_path / "run" / "version_0" / "summary.json").read_text())
    assert max(summary["projected_equivariance_error"].values()) < 1e-12


def test_ema_on_an_e3nn_model(tmp_path):
    """EMA of a TPNet (e3nn): validation sees the averaged weights, training the raw ones, and
    the end of fit leaves the averaged ones in the model."""
    L.seed_everything(0)
    net = TPNet(atomic_numbers=[1, 6, 8], irreps_hidden="8x0e+4x1o", num_layers=1, cutoff=4.0)
    module = RelaxGNNModule(net, task="energy_forces", target_unit="eV")
    ema = EMA(decay=0.5)
    raw = {}

    class Spy(L.Callback):  # the raw weights after the last optimizer step
        def on_train_batch_end(self, trainer, pl_module, *args):
            raw.update({n: p.detach().clone() for n, p in pl_module.named_parameters()})

    data = GraphDataModule(dataset=molecules(16), split=[8, 4, 4], batch_size=4)
    make_trainer(tmp_path, [ema, Spy()], max_epochs=2).fit(module, data)
    final = dict(module.named_parameters())
    assert set(ema.shadow) == set(final)
    assert all(torch.equal(final[n], ema.shadow[n]) for n in final)  # averaged weights kept
    assert any(not torch.equal(final[n], raw[n]) for n in final)  # and they are not the raw


def test_an_explicit_schedule_length_changes_it_on_resume(tmp_path):
    """Resuming with Relax(total_steps=...) different from the saved length uses the new length
    and says so; without it the saved length is kept."""
    L.seed_everything(0)
    module = RelaxGNNModule(egnn(), task="node")
    make_trainer(tmp_path, [Relax("LinearDecay", theta=1.0)], max_epochs=2).fit(
        module, nbody_data())
    ckpt = tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt"
    kept, changed = Relax("LinearDecay", theta=1.0), Relax("LinearDecay", theta=1.0,
                                                            total_steps=30)
    for callback, length in ((kept, 6), (changed, 30)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            make_trainer(tmp_path / f"resume{length}", [callback], max_epochs=4).fit(
                RelaxGNNModule(egnn(), task="node"), nbody_data(), ckpt_path=ckpt)
        assert callback.state_dict()["total_steps"] == length
        said = [str(w.message) for w in caught if "schedule length changed" in str(w.message)]
        assert bool(said) == (length == 30)


def stretched_clouds(n: int, seed: int = 0) -> list[Data]:
    """Two classes of randomly rotated 16-point clouds: stretched along one axis (a needle,
    class 0) or along two (a disc, class 1)."""
    from relaxgnn.symmetry import random_rotation

    gen = torch.Generator().manual_seed(seed)
    items = []
    for k in range(n):
        label = k % 2
        scale = torch.tensor([2.0, 0.3, 0.3]) if label == 0 else torch.tensor([2.0, 2.0, 0.3])
        pos = torch.randn(16, 3, generator=gen) * scale @ random_rotation(seed * 1000 + k,
                                                                    dtype=torch.float32).T
        items.append(Data(pos=pos, y=torch.tensor([label])))
    return items


def test_classification_task(tmp_path):
    from relaxgnn.models import VNDGCNN

    L.seed_everything(0)
    model = VNDGCNN(num_classes=2, k=6, channels=(4, 4), embed_channels=8, head=(16,),
                    dropout=0.0, relax="linear")
    module = RelaxGNNModule(model, task="classification", label_smoothing=0.1,
                            optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))
    items = stretched_clouds(80)
    data = GraphDataModule(train=items[:48], val=items[48:64], test=items[64:], batch_size=16)
    # the penalty this short run was calibrated with (a root per path: at the global root's
    # smaller penalty the paths carry more of the task in 8 epochs and the projection is worse)
    relax = Relax("Triangle", theta=1.0, penalty_reduction="per_path")
    trainer = make_trainer(tmp_path, [relax], max_epochs=8)
    trainer.fit(module, data)
    result = trainer.test(module, data, verbose=False)[0]
    assert result["test/accuracy"] >= 0.75, result  # chance is 0.5: needles vs discs
    metrics = (tmp_path / "run" / "version_0" / "metrics.csv").read_text().splitlines()[0]
    assert "val/accuracy" in metrics and "train/accuracy" in metrics
    batch = next(iter(data.test_dataloader()))
    out = module.predict_batch(batch)
    assert out["logits"].shape == (16, 2) and torch.equal(out["label"], out["logits"].argmax(-1))

    # the monitor measures in evaluation mode: a plain invariant network with dropout and batch
    # norm reports errors at rounding level (in training mode, dropout masks differ per call)
    plain = VNDGCNN(num_classes=2, k=6, channels=(4, 4), embed_channels=8, head=(16,),
                    dropout=0.5)
    monitored = make_trainer(tmp_path / "monitor", [EquivarianceMonitor(1)], max_epochs=1)
    monitored.fit(RelaxGNNModule(plain, task="classification"), data)
    rows = list(csv.DictReader((tmp_path / "monitor" / "run" / "version_0" / "metrics.csv")
                               .open()))
    logged = [float(r["equivariance/rotation"]) for r in rows if r.get("equivariance/rotation")]
    assert len(logged) >= 3 and max(logged) < 1e-4, logged

    bad = GraphDataModule(train=[Data(pos=d.pos, y=torch.tensor([5])) for d in items[:16]],
                          val=items[48:64], batch_size=16)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        make_trainer(tmp_path / "bad", max_epochs=1).fit(
            RelaxGNNModule(VNDGCNN(num_classes=2, k=6, channels=(4, 4), embed_channels=8,
                                   head=(16,)), task="classification"), bad)
    with pytest.raises(ValueError, match="one integer class"):
        module.check_sample(Data(pos=items[0].pos, y=torch.tensor([0.5])))


def test_compiled_training_matches_eager(tmp_path):
    """``compile_model=True`` trains a relaxed model through ``torch.compile`` (paths, penalty
    and θ schedule included) to the weights eager training reaches; the state dict is the
    plain model's. (~25 s: inductor builds the training and validation graphs.)"""
    weights = {}
    for compiled in (False, True):
        L.seed_everything(0)
        torch._dynamo.reset()
        module = RelaxGNNModule(egnn(), task="node", random_rotation=True,
                                compile_model=compiled)
        trainer = make_trainer(tmp_path / str(compiled), [Relax("Triangle", theta=1.0)],
                               max_epochs=2)
        trainer.fit(module, nbody_data())
        weights[compiled] = module.state_dict()
        assert not any("_orig_mod" in k for k in weights[compiled])
    assert weights[True].keys() == weights[False].keys()
    for key, value in weights[False].items():
        torch.testing.assert_close(weights[True][key], value, rtol=1e-4, atol=1e-5, msg=key)


def test_compile_model_refuses_a_force_field():
    with pytest.raises(ValueError, match="differentiates the model twice"):
        RelaxGNNModule(egnn(None), task="energy_forces", compile_model=True)


def test_force_field_recipe_fit_statistics_per_atom_loss_and_stage_two(tmp_path):
    """relaxgnn fit resolves 'fit' statistics on the training split; the per-atom energy
    loss is ((E - E_true)/N)²; StageTwo switches the training weights and the learning rate at
    its epoch while validation keeps the module's weights."""
    from relaxgnn.models import EnergyForceModel, fit_reference_energies
    from relaxgnn.train import StageTwo

    L.seed_everything(0)
    net = TPNet(atomic_numbers=[1, 6, 8], irreps_hidden="4x0e+2x1o", num_layers=1, cutoff=4.0,
                output="node")
    model = EnergyForceModel(net, [1, 6, 8], "fit", energy_scale="fit")
    module = RelaxGNNModule(model, task="energy_forces", energy_loss="per_atom",
                            energy_weight=2.0, force_weight=3.0,
                            optimizer=lambda p: torch.optim.Adam(p, lr=5e-3))
    data = GraphDataModule(dataset=molecules(20), split=[12, 4, 4], batch_size=4)
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            seen.append((trainer.current_epoch, pl_module.loss_weights,
                         trainer.optimizers[0].param_groups[0]["lr"]))

    trainer = make_trainer(tmp_path, [StageTwo(start=0.5, energy_weight=7.0, force_weight=1.0,
                                               lr=1e-4), Spy()], max_epochs=4)
    trainer.fit(module, data)
    train = [data.train_set[i] for i in range(len(data.train_set))]
    refs = fit_reference_energies(train, [1, 6, 8])
    assert model.reference_energies.tolist() == pytest.approx([refs[z] for z in (1, 6, 8)])
    rms = torch.cat([d.forces.reshape(-1) for d in train]).double().pow(2).mean().sqrt()
    assert model.energy_scale == pytest.approx(float(rms))
    assert {(e, w, lr) for e, w, lr in seen if e < 2} == {(0, (2.0, 3.0), 5e-3),
                                                        (1, (2.0, 3.0), 5e-3)}
    assert {(e, w) for e, w, _ in seen if e >= 2} == {(2, (7.0, 1.0)), (3, (7.0, 1.0))}
    assert {lr for e, _, lr in seen if e >= 2} == {1e-4}

    batch = next(iter(data.val_dataloader()))
    energy, forces = model.energy_and_forces(batch)
    atoms = torch.bincount(batch.batch).to(energy)
    expected = 2.0 * ((energy - batch.energy.reshape(-1)) / atoms).pow(2).mean() \
        + 3.0 * (forces - batch.forces).pow(2).mean()
    assert module._losses(batch, training=False)["loss"].item() == pytest.approx(
        expected.item(), rel=1e-5)
    # evaluating a checkpoint with a fresh, unfitted model adopts the fitted statistics
    fresh = RelaxGNNModule(EnergyForceModel(TPNet(atomic_numbers=[1, 6, 8],
                                                  irreps_hidden="4x0e+2x1o", num_layers=1,
                                                  cutoff=4.0, output="node"),
                                            [1, 6, 8], "fit", energy_scale="fit"),
                           task="energy_forces", energy_loss="per_atom", energy_weight=2.0,
                           force_weight=3.0)
    ckpt = str(tmp_path / "run" / "version_0" / "checkpoints" / "last.ckpt")
    again = make_trainer(tmp_path).validate(fresh, data, ckpt_path=ckpt, verbose=False)[0]
    assert fresh.model.energy_scale == model.energy_scale and not fresh.model.unfitted
    assert fresh.model.reference_energies.tolist() == model.reference_energies.tolist()
    assert again["val/loss"] > 0
    module.loss_weights = (7.0, 1.0)  # training uses the stage's weights
    expected = 7.0 * ((energy - batch.energy.reshape(-1)) / atoms).pow(2).mean() \
        + 1.0 * (forces - batch.forces).pow(2).mean()
    assert module._losses(batch, training=True)["loss"].item() == pytest.approx(
        expected.item(), rel=1e-5)


@pytest.mark.parametrize("start, max_epochs, first", [
    (None, 10, 6), (None, 20, 15), (None, 4, 3), (None, 3, 1),  # MACE's max(1, max // 4 * 3)
    (0.75, 10, 7), (0.5, 4, 2), (0.1, 5, 1), (4, 10, 4), (4.0, 10, 4)])
def test_stage_two_first_epoch(start, max_epochs, first):
    from types import SimpleNamespace

    from relaxgnn.train import StageTwo
    assert StageTwo(start=start).first_epoch(SimpleNamespace(max_epochs=max_epochs)) == first


@pytest.mark.parametrize("start", [0, -1, 1.5])
def test_stage_two_rejects_a_bad_start(start):
    from relaxgnn.train import StageTwo
    with pytest.raises(ValueError, match="start must be"):
        StageTwo(start=start)


def test_ema_warmup_follows_the_decay_schedule():
    """With warm-up the decay of update t is min(d, (1 + t)/(10 + t)) (torch_ema's, MACE's);
    without it, d. The first update copies the weights; the count survives a checkpoint."""
    w = torch.nn.Parameter(torch.zeros(2))
    module = torch.nn.Module()
    module.w = w
    for warmup in (True, False):
        ema, expected = EMA(decay=0.9, warmup=warmup), None
        for t in range(30):
            with torch.no_grad():
                w.fill_(float(t + 1))
            decay = min(0.9, (1 + t) / (10 + t)) if warmup else 0.9
            expected = w.detach().clone() if expected is None else \
                decay * expected + (1 - decay) * w.detach()
            ema.on_train_batch_end(None, module)
            torch.testing.assert_close(ema.shadow["w"], expected)
        restored = EMA(decay=0.9)
        restored.load_state_dict(ema.state_dict())
        assert (restored.updates, restored.warmup) == (30, warmup)


def test_data_module_splits_a_labelled_file_by_fractions(tmp_path):
    """``file`` (MACE's --train_file): frames with REF_energy / REF_forces, ``valid_fraction``
    and ``test_fraction`` of them (at least one frame each when asked for), the rest for
    training; two-part splits (no test set) are accepted; contradictions are refused."""
    import ase.io
    from ase import Atoms

    rng = torch.Generator().manual_seed(0)
    frames = []
    for _ in range(12):
        atoms = Atoms("H2O", positions=torch.randn(3, 3, generator=rng).double().numpy())
        atoms.info["REF_energy"] = -1.0
        atoms.arrays["REF_forces"] = torch.randn(3, 3, generator=rng).double().numpy()
        frames.append(atoms)
    ase.io.write(tmp_path / "w.xyz", frames, format="extxyz")
    data = GraphDataModule(file=str(tmp_path / "w.xyz"), valid_fraction=0.25, test_fraction=0.1)
    assert [len(data.splits[k]) for k in ("train", "val", "test")] == [8, 3, 1]
    assert torch.allclose(data.train_set[0].forces.double(), torch.as_tensor(
        frames[data.splits["train"][0]].arrays["REF_forces"]), atol=1e-6)
    only_val = GraphDataModule(file=str(tmp_path / "w.xyz"))
    assert [len(only_val.splits[k]) for k in ("train", "val", "test")] == [11, 1, 0]
    two = GraphDataModule(dataset=data.train_set, split=[0.75, 0.25])
    assert [len(two.splits[k]) for k in ("train", "val", "test")] == [6, 2, 0]
    with pytest.raises(ValueError, match="give `file` alone"):
        GraphDataModule(file=str(tmp_path / "w.xyz"), dataset=data.train_set)
    with pytest.raises(ValueError, match="valid_fraction must be in"):
        GraphDataModule(file=str(tmp_path / "w.xyz"), valid_fraction=1.0)
    with pytest.raises(ValueError, match="too few"):
        GraphDataModule(file=str(tmp_path / "w.xyz"), valid_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="no energy|energy"):
        GraphDataModule(file=str(tmp_path / "w.xyz"), energy_key="nope")

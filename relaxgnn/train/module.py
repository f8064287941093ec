r"""One LightningModule for the four tasks of relaxgnn.

- ``task="node"``: node regression (N-body: predict positions ``y``), loss and metric MSE in the
  data's length unit squared.
- ``task="graph"``: graph regression (a QM9 property ``y[:, target_index]``). The model predicts
  the normalised target :math:`(y - \mu)/\sigma` (:math:`\mu, \sigma` from the training set,
  after subtracting per-element reference energies :math:`\sum_i e_{Z_i}` when ``atomref``
  is given); metric MAE in ``target_unit`` (meV when that is eV).
- ``task="energy_forces"``: a potential. The model outputs :math:`E` per graph; forces are
  :math:`F = -\partial E/\partial x` by autograd (``create_graph`` while training);
  loss :math:`w_E\,\mathrm{MSE}(E) + w_F\,\mathrm{MSE}(F)`; metrics energy MAE (meV) and force
  MAE (meV/Å) when energies are in eV.
- ``task="classification"``: graph classification (point clouds: class ``y`` per cloud). The
  model outputs logits ``(num_graphs, num_classes)``; loss the cross entropy with
  ``label_smoothing`` :math:`\varepsilon` (targets :math:`(1-\varepsilon)\,\delta_{cy} +
  \varepsilon/C`; DGCNN's smoothing :math:`\varepsilon'` — :math:`1-\varepsilon'` on the true
  class, :math:`\varepsilon'/(C-1)` on the others — is :math:`\varepsilon = \varepsilon' C/(C-1)`),
  metric the accuracy (a fraction).

Relaxation is driven by :class:`~relaxgnn.train.callbacks.Relax` (it sets :attr:`relaxation`,
whose penalty is added to the training loss); validation and test run at θ = 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch_geometric.data import Batch

from ..models.forces import energy_and_forces
from ..models.io import FORMAT, check_format, model_spec
from ..models.pooling import pool
from ..relax.learned import CONTAINER as GAMMAS
from ..symmetry import apply_orthogonal, random_rotation, representation

Task = Literal["node", "graph", "energy_forces", "classification"]
MILLI = {"eV": ("meV", 1e3), "Hartree": ("mHa", 1e3)}


class RelaxGNNModule(LightningModule):
    r"""Train any relaxgnn model on node, graph or energy-and-force regression, or on graph
    classification.

    Args:
        model: the network (any model of :mod:`relaxgnn.models`; given as ``class_path`` and
            ``init_args`` in a config file).
        task: ``"node"``, ``"graph"``, ``"energy_forces"`` or ``"classification"`` (module
            docstring).
        target: data field of the target (``y`` for node, graph and classification tasks).
        label_smoothing: classification: :math:`\varepsilon` of the cross entropy.
        target_index: column of ``target`` for graph regression (``None``: the whole field).
        target_unit: unit of the target, named in the metrics (``"eV"`` → MAE in meV).
        normalize: graph task: learn the target standardised with training-set mean and std.
        atomref: graph task: per-element reference values ``{Z: e_Z}`` subtracted before
            normalising (QM9's atom references for energies).
        energy_field, forces_field: data fields of the energy-and-force task.
        energy_weight, force_weight: loss weights of the energy-and-force task. Validation and
            test always use these; training uses :attr:`loss_weights`, which the
            :class:`~relaxgnn.train.StageTwo` callback changes late in training.
        energy_loss: ``"total"``: the energy term is the MSE of the molecules' energies;
            ``"per_atom"``: of the energies divided by the number of atoms (MACE's).
        random_rotation: rotate every training batch (inputs and targets) by a random rotation
            drawn from ``(seed, global step)``: deterministic, so resumed runs match.
        seed: seed of the augmentation rotations.
        optimizer, lr_scheduler: callables as in LightningCLI (default Adam, lr 1e-3).
        lr_scheduler_monitor: metric a plateau scheduler watches.
        compile_model: run the model through ``torch.compile`` in the training, validation,
            test and prediction steps (one graph per mode and batch shape, compiled on first
            use: about a minute for SEGNN on a 2-core CPU; then its N-body training step is
            about twice as fast). The module's ``model`` and state dict stay the plain, eager
            model, which callbacks (equivariance checks, export) use. Not for
            ``"energy_forces"``: the force loss differentiates twice, which compiled graphs do
            not support.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task = "node",
        target: str = "y",
        target_index: int | None = None,
        target_unit: str = "",
        normalize: bool = True,
        atomref: dict[int, float] | None = None,
        energy_field: str = "energy",
        forces_field: str = "forces",
        energy_weight: float = 1.0,
        force_weight: float = 100.0,
        energy_loss: Literal["total", "per_atom"] = "total",
        label_smoothing: float = 0.0,
        random_rotation: bool = False,
        seed: int = 0,
        optimizer: OptimizerCallable = lambda p: torch.optim.Adam(p, lr=1e-3),
        lr_scheduler: LRSchedulerCallable | None = None,
        lr_scheduler_monitor: str = "val/loss",
        compile_model: bool = False,
    ) -> None:
        super().__init__()
        if task not in ("node", "graph", "energy_forces", "classification"):
            raise ValueError(f"task must be 'node', 'graph', 'energy_forces' or "
                             f"'classification', got {task!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        if compile_model and task == "energy_forces":
            raise ValueError("compile_model cannot train a force field: the force loss "
                             "differentiates the model twice (create_graph), which "
                             "torch.compile does not support; leave compile_model off")
        if energy_loss not in ("total", "per_atom"):
            raise ValueError(f"energy_loss must be 'total' or 'per_atom', got {energy_loss!r}")
        self.save_hyperparameters(ignore=["model", "optimizer", "lr_scheduler"])
        self.loss_weights = (float(energy_weight), float(force_weight))  # (energy, forces)
        self.model = model
        # the compiled callable shares the model's parameters; kept out of the module tree so
        # that the state dict and the callbacks see only `model`
        self.__dict__["_network"] = torch.compile(model) if compile_model else model
        self.task = task
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.relaxation = None  # set by the Relax callback
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        table = torch.zeros(119)
        for z, value in (atomref or {}).items():
            table[int(z)] = float(value)
        self.register_buffer("atomref_table", table)

    # ------------------------------------------------------------------ setup and checks
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        sample = datamodule.example()
        self.check_sample(sample)
        if stage == "fit" and self.task == "graph" and self.hparams.normalize:
            values = torch.cat([self._graph_target(b, raw=True)
                                for b in datamodule.train_targets()])
            self.target_mean.fill_(float(values.mean()))
            self.target_std.fill_(float(values.std()) if values.numel() > 1 else 1.0)
        if stage == "fit" and getattr(self.model, "unfitted", None):
            fitted = self.model.fit_statistics(datamodule.train_set, self.hparams.energy_field,
                                               self.hparams.forces_field)
            rank_zero_info("fitted on the training set: " + ", ".join(
                f"{k} {v}" for k, v in fitted.items()))

    def check_sample(self, sample: Any) -> None:
        """Fail before training when the data lack what the task reads."""
        hp = self.hparams
        fields = {"node": [hp.target], "graph": [hp.target], "classification": [hp.target],
                  "energy_forces": [hp.energy_field, hp.forces_field]}[self.task]
        for name in fields:
            if getattr(sample, name, None) is None:
                raise ValueError(f"task {self.task!r} reads the data field `{name}`, which the "
                                 f"dataset's samples do not have (they have "
                                 f"{sorted(sample.keys())})")
        if self.task == "classification":
            y = getattr(sample, hp.target)
            if y.is_floating_point() or y.numel() != 1:
                raise ValueError(f"classification reads one integer class per sample from "
                                 f"`{hp.target}`; the samples have a {y.dtype} tensor of shape "
                                 f"{tuple(y.shape)}")
        if self.task == "graph" and self.hparams.target_index is not None:
            y = getattr(sample, self.hparams.target).reshape(1, -1)
            if not 0 <= self.hparams.target_index < y.shape[-1]:
                raise ValueError(f"target_index {self.hparams.target_index} is out of range: "
                                 f"`{self.hparams.target}` has {y.shape[-1]} columns")

    # ------------------------------------------------------------------ forward passes
    def _graph_target(self, batch: Batch, raw: bool = False) -> Tensor:
        y = getattr(batch, self.hparams.target)
        y = y.reshape(batch.num_graphs, -1)
        if self.hparams.target_index is not None:
            y = y[:, self.hparams.target_index]
        y = y.reshape(batch.num_graphs, -1).to(batch.pos.dtype)
        y = y - self._reference(batch, y)
        return y if raw else (y - self.target_mean) / self.target_std

    def _reference(self, batch: Batch, like: Tensor) -> Tensor | float:
        """``(G, 1)`` sums of the per-element reference values, or 0 without ``atomref``."""
        if not bool(self.atomref_table.any()):
            return 0.0
        values = self.atomref_table.to(like)[batch.z].unsqueeze(-1)
        return pool(values, batch.batch, "sum", batch.num_graphs)

    def predict_batch(self, batch: Batch, create_graph: bool = False) -> dict[str, Tensor]:
        """Predictions in the data's units."""
        if self.task == "energy_forces":
            energy, forces = energy_and_forces(self.model, batch, training=create_graph)
            return {"energy": energy, "forces": forces}
        out = self._network(batch)
        if self.task == "classification":
            return {"logits": out, "label": out.argmax(-1)}
        if self.task == "graph":
            out = out.reshape(batch.num_graphs, -1) * self.target_std + self.target_mean
            out = out + self._reference(batch, out)
        return {"y": out}

    def forward(self, batch: Batch) -> Tensor:
        return self.model(batch)

    def _losses(self, batch: Batch, training: bool) -> dict[str, Tensor]:
        """Task loss and metrics (metrics in named units)."""
        hp = self.hparams
        if self.task == "energy_forces":
            with torch.enable_grad():
                energy, forces = energy_and_forces(self.model, batch, training=training)
            e_true = getattr(batch, hp.energy_field).reshape(-1).to(energy)
            f_true = getattr(batch, hp.forces_field).to(forces)
            e_weight, f_weight = self.loss_weights if training else (hp.energy_weight,
                                                                     hp.force_weight)
            e_error = energy - e_true
            if hp.energy_loss == "per_atom":
                index = getattr(batch, "batch", None)
                atoms = (torch.bincount(index, minlength=energy.shape[0]) if index is not None
                         else torch.full_like(energy, batch.num_nodes))
                e_error = e_error / atoms.to(energy)
            loss = e_weight * e_error.pow(2).mean() + f_weight * (forces - f_true).pow(2).mean()
            unit, factor = MILLI.get(hp.target_unit or "eV", (hp.target_unit, 1.0))
            return {"loss": loss,
                    f"energy_mae_{unit}": (energy - e_true).abs().mean() * factor,
                    f"force_mae_{unit}_per_A": (forces - f_true).abs().mean() * factor}
        if self.task == "node":
            pred = self._network(batch)
            target = getattr(batch, hp.target).to(pred)
            if pred.shape != target.shape:
                raise ValueError(f"model output {tuple(pred.shape)} does not match the target "
                                 f"`{hp.target}` {tuple(target.shape)}")
            mse = (pred - target).pow(2).mean()
            return {"loss": mse, "mse": mse}
        if self.task == "classification":
            return self._classification(batch)
        pred = self._network(batch).reshape(batch.num_graphs, -1)
        target = self._graph_target(batch)
        if pred.shape != target.shape:
            raise ValueError(f"model output {tuple(pred.shape)} does not match the target "
                             f"{tuple(target.shape)}")
        loss = (pred - target).pow(2).mean()
        unit, factor = MILLI.get(hp.target_unit, (hp.target_unit, 1.0))
        mae = (pred - target).abs().mean() * self.target_std * factor
        return {"loss": loss, f"mae_{unit}" if unit else "mae": mae}

    def _classification(self, batch: Batch) -> dict[str, Tensor]:
        logits = self._network(batch)
        y = getattr(batch, self.hparams.target).reshape(-1)
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(f"classification needs logits of shape (num_graphs, num_classes) "
                             f"= ({y.shape[0]}, C); the model gave {tuple(logits.shape)}")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
            raise ValueError(f"class labels `{self.hparams.target}` must lie in "
                             f"[0, {logits.shape[1]}) for a model with {logits.shape[1]} "
                             f"outputs; got labels {int(y.min())}..{int(y.max())}")
        loss = torch.nn.functional.cross_entropy(logits, y.long(),
                                                 label_smoothing=self.hparams.label_smoothing)
        accuracy = (logits.argmax(-1) == y).to(logits.dtype).mean()
        return {"loss": loss, "accuracy": accuracy}

    # ------------------------------------------------------------------ Lightning hooks
    def in_model_dtype(self, batch: Batch) -> Batch:
        """Floating fields in the model's dtype (float32 data train a float64 model); every
        step calls it first (a module hook would shadow the data module's)."""
        dtype = next(self.model.parameters()).dtype
        for key, value in batch.items():
            if isinstance(value, Tensor) and value.is_floating_point() and value.dtype != dtype:
                batch[key] = value.to(dtype)
        return batch

    def _rotate(self, batch: Batch) -> Batch:
        """Rotate inputs and targets by a rotation drawn from ``(seed, global_step)``."""
        R = random_rotation(self.hparams.seed * 1_000_003 + self.global_step,
                            dtype=batch.pos.dtype).to(batch.pos.device)
        rotated = apply_orthogonal(batch, R, self.model.signature)
        target_irreps = {"node": {self.hparams.target: self.model.signature.irreps_out},
                         "graph": {}, "classification": {},
                         "energy_forces": {self.hparams.forces_field: "1x1o"}}[self.task]
        for name, irreps in target_irreps.items():
            value = getattr(rotated, name)
            D = representation(irreps, R).to(value)
            rotated[name] = (value.reshape(value.shape[0], -1) @ D.T).reshape(value.shape)
        return rotated

    # validation, test and prediction always run the projected model: the controller pauses
    # (θ = 0, paths skipped); without a controller (test or predict from a checkpoint) θ is 0
    def on_validation_epoch_start(self) -> None:
        if self.relaxation is not None:
            self.relaxation.pause()

    def on_validation_epoch_end(self) -> None:
        if self.relaxation is not None:
            self.relaxation.resume()

    def on_test_epoch_start(self) -> None:
        if self.relaxation is not None:
            self.relaxation.pause()

    def on_predict_epoch_start(self) -> None:
        if self.relaxation is not None:
            self.relaxation.pause()

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        batch = self.in_model_dtype(batch)
        if self.hparams.random_rotation:
            batch = self._rotate(batch)
        if self.relaxation is None:
            terms = self._losses(batch, training=True)
        else:
            with self.relaxation.record():  # the inputs the penalty is evaluated on
                terms = self._losses(batch, training=True)
        loss = terms["loss"]
        if self.relaxation is not None:
            penalty = self.relaxation.penalty(task_loss=loss)
            self.log("train/penalty", penalty.detach(), batch_size=batch.num_graphs)
            loss = loss + penalty
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}); stopping. The last good "
                "checkpoint is kept; lower the learning rate or enable gradient clipping.")
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch.num_graphs)
        for name, value in terms.items():
            if name != "loss":
                self.log(f"train/{name}", value.detach(), batch_size=batch.num_graphs)
        return loss

    def _evaluate(self, batch: Batch, stage: str) -> None:
        terms = self._losses(self.in_model_dtype(batch), training=False)
        for name, value in terms.items():
            self.log(f"{stage}/{name}", value.detach(), prog_bar=name == "loss",
                     batch_size=batch.num_graphs, sync_dist=True)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, Tensor]:
        with torch.inference_mode(False), torch.enable_grad():
            return {k: v.detach()
                    for k, v in self.predict_batch(self.in_model_dtype(batch)).items()}

    def configure_optimizers(self):
        parameters = self.parameters()
        if hasattr(self.relaxation, "parameter_groups"):  # a learned γ with a rate of its own
            parameters = self.relaxation.parameter_groups(parameters)
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        monitor = self.hparams.lr_scheduler_monitor
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": monitor}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the architecture (so that `relaxgnn project` can rebuild the model) and the
        file format; flush the loggers, so that the metrics up to the checkpoint are on disk
        when a run is killed and resumed from it."""
        checkpoint["relaxgnn_model"] = model_spec(self.model)
        checkpoint["relaxgnn_format"] = FORMAT
        for logger in self.trainer.loggers:
            logger.save()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("relaxgnn_model")
        if saved is not None and getattr(self.model, "unfitted", None):
            # statistics fitted in the run that wrote the checkpoint (test/validate from it)
            args = saved["init_args"]
            self.model.set_statistics(args.get("reference_energies"),
                                      args.get("energy_scale", 1.0))
            network = getattr(self.model, "network", None)
            saved_n = args.get("network", {}).get("init_args", {}).get("avg_num_neighbors")
            if getattr(network, "unfitted", None) and isinstance(saved_n, (int, float)):
                network.set_avg_num_neighbors(saved_n)
        if saved is not None:
            ours = model_spec(self.model)
            if saved["class_path"] != ours["class_path"] or _arch(saved) != _arch(ours):
                raise ValueError(
                    "the checkpoint was written by another architecture: "
                    f"{saved['class_path']}({_arch(saved)}) vs {ours['class_path']}({_arch(ours)})")
            check_format(checkpoint, saved, "the checkpoint", key="relaxgnn_format")
        state = checkpoint.get("state_dict", {})
        gammas = [k for k in state if k.startswith(f"model.{GAMMAS}.")]
        if gammas and not hasattr(self.model, GAMMAS) and self._trainer is not None \
                and self.trainer.state.fn != "fit":
            for key in gammas:  # a learned run's γ: evaluation runs f_eq only, without them
                del state[key]
        ours = set(self.state_dict())
        missing, unexpected = sorted(ours - set(state)), sorted(set(state) - ours)
        if missing or unexpected:
            raise ValueError(
                "the checkpoint's weights do not fit this model"
                + (f"; missing {missing[:4]}" if missing else "")
                + (f"; unexpected {unexpected[:4]}" if unexpected else "")
                + " (written by another relaxgnn version or configuration?)")


def _arch(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec["init_args"].items() if k != "relax"} | {
        "relaxed": spec["init_args"].get("relax") is not None}


__all__: Sequence[str] = ["RelaxGNNModule"]

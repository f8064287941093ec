"""Small generated data sets and a trainer factory for the training-engine tests."""

from __future__ import annotations

import lightning as L
import torch
from torch_geometric.data import Data

from relaxgnn.train.checkpoint_io import AtomicCheckpointIO
from relaxgnn.train.cli import trainer_defaults


def nbody_like(n: int, seed: int = 0) -> list[Data]:
    """Five particles; the target moves each along its velocity (an equivariant map)."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        pos, vel = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
        charges = (torch.randint(0, 2, (5, 1), generator=gen) * 2 - 1).float()
        items.append(Data(pos=pos, vel=vel, charges=charges, y=pos + 0.3 * vel))
    return items


def pair_potential(pos: torch.Tensor) -> torch.Tensor:
    """E = Σ_{i<j} exp(-|r_ij|) (eV); a smooth invariant energy."""
    d = torch.cdist(pos, pos)
    return torch.exp(-d).triu(1).sum()


def molecules(n: int, seed: int = 0) -> list[Data]:
    """Random 4-6 atom clusters of H/C/O with energies and forces of :func:`pair_potential`;
    y holds three invariant graph targets (energy, number of atoms, mean distance)."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        k = int(torch.randint(4, 7, (), generator=gen))
        pos = (1.5 * torch.randn(k, 3, generator=gen)).requires_grad_(True)
        energy = pair_potential(pos)
        (grad,) = torch.autograd.grad(energy, pos)
        z = torch.tensor([1, 6, 8])[torch.randint(0, 3, (k,), generator=gen)]
        y = torch.stack([energy.detach(), torch.tensor(float(k)),
                         torch.cdist(pos, pos).mean().detach()]).reshape(1, 3)
        items.append(Data(pos=pos.detach(), z=z, energy=energy.detach().reshape(1),
                          forces=-grad, y=y))
    return items


def make_trainer(tmp_path, callbacks=(), **kwargs) -> L.Trainer:
    defaults = trainer_defaults()
    options = dict(max_epochs=2, logger=L.pytorch.loggers.CSVLogger(str(tmp_path), name="run"),
                   callbacks=defaults["callbacks"] + list(callbacks),
                   plugins=[AtomicCheckpointIO()],
                   use_distributed_sampler=False, enable_progress_bar=False,
                   enable_model_summary=False, log_every_n_steps=1,
                   inference_mode=defaults["inference_mode"])
    options.update(kwargs)
    return L.Trainer(**options)


class KillAtStep(L.Callback):
    """SIGKILL this process once the global step reaches ``step`` (a crash that leaves no
    chance to clean up)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


class DumpState(L.Callback):
    """Record θ before every step and write ``rank<k>.pt`` (weights, θ history) at fit end."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.thetas: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        controller = getattr(pl_module, "relaxation", None)
        self.thetas.append(controller.theta if controller is not None else 0.0)

    def on_fit_end(self, trainer, pl_module) -> None:
        from pathlib import Path

        state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save({"state": state, "thetas": self.thetas, "world_size": trainer.world_size,
                    "splits": getattr(trainer.datamodule, "splits", None)},
                   Path(self.out_dir) / f"rank{trainer.global_rank}.pt")

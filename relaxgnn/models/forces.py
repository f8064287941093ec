"""Forces by autograd, in one helper: :math:`F = -\\partial E/\\partial x`."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch_geometric.data import Data


def energy_and_forces(model: nn.Module, data: Data, training: bool = False
                      ) -> tuple[Tensor, Tensor]:
    """``(E (num_graphs,), F = -∂E/∂pos (N, 3))`` for a model that outputs one energy per graph.

    ``training=True`` keeps the graph of the forces (``create_graph``) so that a force loss can
    be backpropagated, and returns ``E`` attached; otherwise both are detached. Works under
    ``torch.no_grad`` (gradients are enabled inside) but not in inference mode. The caller's
    ``data`` is left as it was (a shallow copy carries positions that require gradients).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("forces need autograd, which inference mode disables: evaluate outside "
                           "torch.inference_mode() (e.g. Trainer(inference_mode=False), as "
                           "relaxgnn's CLI sets)")
    with torch.enable_grad():
        pos = data.pos
        if not pos.requires_grad:
            data = copy.copy(data)
            pos = pos.detach().requires_grad_(True)
            data.pos = pos
        energy = model(data).reshape(-1)
        (grad,) = torch.autograd.grad(energy.sum(), pos, create_graph=training)
    if not training:
        energy, grad = energy.detach(), grad.detach()
    return energy, -grad

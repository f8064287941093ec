"""A small multilayer perceptron with SiLU activations, the building block of invariant maps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """``Linear → SiLU → … → Linear`` with widths ``sizes``; ``act_last`` adds a final SiLU.

    ``last_gain`` scales the Xavier initialisation of the last layer (EGNN initialises its
    coordinate head with gain 1e-3 so that early updates are small).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        act_last: bool = False,
        last_bias: bool = True,
        last_gain: float | None = None,
    ) -> None:
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(sizes)}")
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            last = k == len(sizes) - 2
            layers.append(nn.Linear(a, b, bias=last_bias or not last))
            if not last or act_last:
                layers.append(nn.SiLU())
        super().__init__(*layers)
        self.last_gain = last_gain
        self.reset_parameters()

    def reset_parameters(self) -> None:
        linears = [m for m in self if isinstance(m, nn.Linear)]
        for m in linears:
            m.reset_parameters()
        if self.last_gain is not None:
            nn.init.xavier_uniform_(linears[-1].weight, gain=self.last_gain)
            if linears[-1].bias is not None:
                torch.nn.init.zeros_(linears[-1].bias)

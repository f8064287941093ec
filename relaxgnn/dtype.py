"""Keep e3nn modules exact in float64.

e3nn computes the Wigner-3j (Clebsch–Gordan) coefficients of its tensor products in the
*default* dtype when a module is built and stores them as persistent buffers. So a model built
in float32 and cast with ``.double()``, or a float64 model that loads a float32 checkpoint,
would carry float32-rounded coefficients and be equivariant only to ~1e-9 instead of ~1e-15.
Modules that own e3nn tensor products inherit :class:`ExactWigner3j`, which recomputes those
buffers in their own dtype after every cast and every ``load_state_dict``
(:class:`~relaxgnn.nn.O3TensorProduct` keeps its own Wigner-3j buffers out of the state dict and
refreshes them with :func:`refresh_wigner_3j` after every cast). :func:`default_dtype` builds
modules directly in a given dtype.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from e3nn import o3
from torch import nn

_W3J_BUFFER = re.compile(r"_w3j_(\d+)_(\d+)_(\d+)$")  # e3nn's name for a Wigner-3j buffer


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Temporarily set ``torch``'s default floating dtype (restored on exit, even on error)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def refresh_wigner_3j(module: nn.Module) -> int:
    """Recompute, in place and in each buffer's own dtype, every e3nn Wigner-3j buffer inside
    ``module``. Returns how many buffers were refreshed."""
    count = 0
    with torch.no_grad():
        for name, buf in module.named_buffers():
            match = _W3J_BUFFER.search(name)
            if match and buf.is_floating_point():
                l1, l2, l3 = map(int, match.groups())
                buf.copy_(o3.wigner_3j(l1, l2, l3, dtype=buf.dtype, device=buf.device))
                count += 1
    return count


def _refresh_after_load(module: nn.Module, _incompatible_keys) -> None:
    refresh_wigner_3j(module)


class ExactWigner3j(nn.Module):
    """Mixin for modules that own e3nn tensor products: their Wigner-3j buffers are recomputed
    exactly after ``.to()``/``.double()``/``.float()`` and after ``load_state_dict``. Call
    ``self._keep_wigner_3j_exact()`` at the end of ``__init__``."""

    def _keep_wigner_3j_exact(self) -> None:
        self.register_load_state_dict_post_hook(_refresh_after_load)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        refresh_wigner_3j(self)
        return self

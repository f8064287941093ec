"""Input validation shared by layers and models: errors that name the field and shape at fault.

Shape checks are cheap and always run. The finiteness check reads every value (and synchronises
a GPU), so a model runs it once on its input :class:`~torch_geometric.data.Data` and calls its
layers inside :func:`trusted_inputs`, where layers skip it: intermediate coordinates are then
never reported as if they were the user's ``pos``, and a NaN produced inside the model surfaces
as a non-finite loss (named with its training step) instead.

Under ``torch.compile`` the checks that read values (finiteness, index ranges, sortedness) are
skipped, as PyG skips its own: each would split the compiled graph at a device-to-host read.
Shapes and dtypes are still checked (at trace time). Run a model eagerly to have its inputs'
values checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

_CHECK_VALUES: ContextVar[bool] = ContextVar("relaxgnn_check_values", default=True)


def _check_values() -> bool:
    """Whether value checks run: not while compiling (module docstring), not inside
    :func:`trusted_inputs`."""
    return not torch.compiler.is_compiling() and _CHECK_VALUES.get()


@contextmanager
def trusted_inputs() -> Iterator[None]:
    """Inside this context, layers skip the finiteness check of their inputs."""
    if torch.compiler.is_compiling():  # no value checks to skip (and no ContextVar to trace)
        yield
        return
    token = _CHECK_VALUES.set(False)
    try:
        yield
    finally:
        _CHECK_VALUES.reset(token)


def check_positions(pos: Tensor | None, name: str = "pos") -> Tensor:
    """``pos`` must be a finite floating ``(num_nodes, 3)`` tensor."""
    if pos is None:
        raise ValueError(f"missing node positions `{name}` (expected shape (num_nodes, 3))")
    if not isinstance(pos, Tensor) or pos.dim() != 2 or pos.shape[1] != 3:
        shape = tuple(pos.shape) if isinstance(pos, Tensor) else type(pos).__name__
        raise ValueError(f"`{name}` must have shape (num_nodes, 3), got {shape}")
    if not pos.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor, got {pos.dtype}")
    if _check_values() and not torch.isfinite(pos).all():
        bad = (~torch.isfinite(pos)).any(-1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"`{name}` has non-finite values (NaN or inf) at nodes {bad}")
    return pos


def check_features(
    x: Tensor | None, name: str, rows: int, width: int, what: str = "nodes",
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``x`` must be a ``(rows, width)`` tensor (of ``dtype`` when given, if floating) with
    finite values (the value check is skipped inside :func:`trusted_inputs`)."""
    if x is None:
        raise ValueError(f"missing `{name}` (expected shape ({rows}, {width}))")
    if not isinstance(x, Tensor):
        raise TypeError(f"`{name}` must be a tensor, got {type(x).__name__}")
    if x.dim() == 1 and width == 1:
        x = x.unsqueeze(-1)
    if x.dim() != 2 or x.shape[0] != rows or x.shape[1] != width:
        raise ValueError(
            f"`{name}` must have shape ({rows}, {width}) (one row per {what[:-1]}, "
            f"{width} features), got {tuple(x.shape)}"
        )
    if dtype is not None and x.is_floating_point() and x.dtype != dtype:
        raise TypeError(f"`{name}` is {x.dtype} but the model computes in {dtype}: convert one "
                        f"of them (e.g. the data with `.to({dtype})`)")
    if _check_values() and x.is_floating_point() and not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(-1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"`{name}` has non-finite values (NaN or inf) at {what} {bad}")
    return x


def check_edge_index(edge_index: Tensor | None, num_nodes: int) -> Tensor:
    """``edge_index`` must be an integer ``(2, E)`` tensor with indices in ``[0, num_nodes)``."""
    if edge_index is None:
        raise ValueError("missing `edge_index` (expected shape (2, num_edges))")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(
            f"`edge_index` must have shape (2, num_edges), got {tuple(edge_index.shape)}"
        )
    if edge_index.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"`edge_index` must be an integer tensor, got {edge_index.dtype}")
    if edge_index.numel() and not torch.compiler.is_compiling():
        low, high = int(edge_index.min()), int(edge_index.max())
        if low < 0:
            raise ValueError(f"`edge_index` has negative node indices (the smallest is {low})")
        if high >= num_nodes:
            raise ValueError(
                f"`edge_index` refers to node {high} but there are {num_nodes} nodes")
    return edge_index


def check_batch(batch: Tensor | None, num_nodes: int) -> Tensor | None:
    """``batch`` must be ``(num_nodes,)``, non-negative and sorted (PyG's convention)."""
    if batch is None:
        return None
    if not isinstance(batch, Tensor) or batch.is_floating_point() or batch.is_complex() \
            or batch.dtype == torch.bool:
        kind = batch.dtype if isinstance(batch, Tensor) else type(batch).__name__
        raise TypeError(f"`batch` must be an integer tensor (the graph index of each node), "
                        f"got {kind}")
    if batch.dim() != 1 or batch.shape[0] != num_nodes:
        raise ValueError(
            f"`batch` must have shape ({num_nodes},) to match `pos`, got {tuple(batch.shape)}"
        )
    if batch.numel() and not torch.compiler.is_compiling() \
            and (batch.min() < 0 or (batch[1:] < batch[:-1]).any()):
        raise ValueError("`batch` must be non-negative and sorted (nodes of a graph contiguous)")
    return batch

"""The base of relaxgnn's data sets: PyG's :class:`torch_geometric.data.Dataset` protocol.

A data set implements ``len()`` and ``get(idx)`` (item ``idx`` of the whole data set, as a
``Data``) and passes ``transform`` up; PyG's ``__getitem__`` does the rest:

- ``dataset[i]`` (an int, NumPy integer or 0-d tensor; negative counts from the end) is
  ``transform(get(i))``; an ``IndexError`` beyond either end;
- ``dataset[2:5]``, ``dataset[[0, 3]]``, ``dataset[tensor]`` or ``dataset[mask]`` is a view
  (``index_select``): a shallow copy that shares the storage and lists the items it keeps,
  with its own ``len`` and indexing, transforms applied on access as in the whole set.

:class:`GraphDataset` adds the checks that PyG leaves out (a boolean mask of the wrong length,
a position beyond the end of an index list) and :meth:`GraphDataset.select` for per-item
tensors that a data set exposes whole (``QM9.y``, ``MD17.energy``), so that a view's are its
own. The data sets read and cache their files themselves, so PyG's ``download()`` /
``process()`` machinery is off (``root=None``; ``QM9.download()`` runs only when asked).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data, Dataset

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class GraphDataset(Dataset):
    """A PyG ``Dataset`` of ``Data`` items that a subclass holds in memory (see the module
    docstring): subclasses implement ``len()`` and ``get(idx)``.

    Args:
        transform: applied to each item on access (PyG convention).
    """

    def __init__(self, transform: Callable[[Data], Data] | None = None) -> None:
        super().__init__(root=None, transform=transform)

    @property
    def has_download(self) -> bool:
        return False  # files are read by the subclass; PyG must not call its download()

    @property
    def has_process(self) -> bool:
        return False

    def index_select(self, idx: slice | Tensor | np.ndarray | Sequence) -> GraphDataset:
        """PyG's ``index_select`` (a view of the items ``idx`` selects), with boolean masks
        (tensors, arrays or lists of ``bool``) required to have ``len(self)`` entries and
        positions required to lie in ``[-len(self), len(self))``, each an ``IndexError``
        naming the length; integer tensors and arrays of any integer dtype are positions."""
        n = len(self)
        if isinstance(idx, (Tensor, np.ndarray, Sequence)) and not isinstance(idx, str):
            values = torch.as_tensor(np.asarray(idx) if isinstance(idx, Sequence) else idx)
            if values.dtype == torch.bool:
                if values.numel() != n:
                    raise IndexError(
                        f"boolean mask has {values.numel()} entries, data set has {n} items"
                    )
                return super().index_select(values.flatten())
            if values.dtype in _INTEGER_DTYPES:
                bad = values[(values < -n) | (values >= n)].flatten()
                if bad.numel():
                    raise IndexError(
                        f"index {int(bad[0])} is out of range for a data set of {n} items"
                    )
                return super().index_select(values.flatten().tolist())
        return super().index_select(idx)

    def get_batch(self, indices: Sequence[int]) -> Batch | None:
        """Items ``indices`` (positions in this data set, or in this view) as one ``Batch``
        equal to ``Batch.from_data_list([self[i] for i in indices])``, built without a ``Data``
        per item; ``None`` when the data set has no such shortcut (the default), and then
        loaders collate items. Data sets of systems of one size override it
        (:func:`stack_batch`)."""
        return None

    def rows(self, indices: Sequence[int]) -> Tensor:
        """Item numbers in the whole data set of ``indices`` in this data set or view."""
        if self._indices is None:
            return torch.as_tensor(indices, dtype=torch.long)
        own = self.indices()
        return torch.as_tensor([own[i] for i in indices], dtype=torch.long)

    def select(self, values: Tensor) -> Tensor:
        """The rows of ``values`` (one per item of the whole data set) that belong to this data
        set's items, in its order: all of them, or those of a view."""
        if self._indices is None:
            return values
        return values[torch.as_tensor(list(self._indices), dtype=torch.long)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)})"


__all__ = ["GraphDataset"]


def stack_batch(fields: dict[str, Tensor]) -> Batch:
    """A ``Batch`` of ``B`` graphs of ``n`` nodes each from node fields ``(B, n, d)`` (no
    edges): what ``Batch.from_data_list`` makes of ``B`` items ``Data(**{k: v[b]})``, with its
    ``batch``, ``ptr`` and the slices ``to_data_list`` reads, at the cost of a reshape."""
    B, n = next(iter(fields.values())).shape[:2]
    batch = Batch(_base_cls=Data)
    for key, value in fields.items():
        if value.shape[:2] != (B, n):
            raise ValueError(f"stack_batch: field `{key}` has shape {tuple(value.shape)}, "
                             f"expected ({B}, {n}, ...) like the others")
        batch[key] = value.reshape(B * n, *value.shape[2:])
    batch.batch = torch.arange(B).repeat_interleave(n)
    batch.ptr = torch.arange(B + 1) * n
    batch._num_graphs = B
    batch._slice_dict = {key: batch.ptr.clone() for key in fields}
    batch._inc_dict = {key: torch.zeros(B, dtype=torch.long) for key in fields}
    return batch

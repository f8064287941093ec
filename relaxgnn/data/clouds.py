"""The common base of the point-cloud classification sets (:class:`~relaxgnn.data.ModelNet`,
:class:`~relaxgnn.data.SyntheticShapes`)."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from ..atomic import atomic_write
from .base import GraphDataset
from .point_clouds import Normalize, rotation_transform


class PointCloudDataset(GraphDataset):
    """Labelled clouds held as one ``(S, P, 3)`` array of points and ``(S,)`` class labels;
    item ``i`` is ``Data(pos (P, 3), y (1,))``, centred and scaled to the unit sphere when
    ``normalize``, then ``pre_transform``-ed (once, in memory), then rotated (``rotation``:
    ``"none"``, ``"z"``, ``"so3"``; fresh on every access, or fixed per item with
    ``rotation_seed``), then ``transform``-ed. A subclass reads or generates its arrays, sets
    ``classes`` and calls :meth:`_set_clouds`."""

    classes: list[str]

    def __init__(self, normalize: bool, rotation: str, rotation_seed: int | None,
                 transform: Callable[[Data], Data] | None,
                 pre_transform: Callable[[Data], Data] | None) -> None:
        self._rotation = rotation_transform(rotation, rotation_seed)
        super().__init__(transform=transform)
        self.pre_transform = pre_transform
        self.normalize, self.rotation = bool(normalize), rotation
        self._items: list[Data] | None = None

    def _set_clouds(self, pos: np.ndarray, label: np.ndarray) -> None:
        self._pos, self._y = torch.from_numpy(pos), torch.from_numpy(label)
        if self.pre_transform is not None:
            self._items = [self.pre_transform(self._base(i)) for i in range(len(self._y))]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _base(self, idx: int) -> Data:
        data = Data(pos=self._pos[idx].clone(), y=self._y[idx : idx + 1].clone())
        return Normalize()(data) if self.normalize else data

    def len(self) -> int:
        return len(self._y)

    def get(self, idx: int) -> Data:
        data = self._base(idx) if self._items is None else self._items[idx].clone()
        return data if self._rotation is None else self._rotation(data, index=idx)


def write_recorded_npz(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """``arrays`` and the record ``meta`` (as JSON, key ``meta``) in one ``.npz``, atomically."""
    out = {**arrays, "meta": np.array(json.dumps(meta))}
    atomic_write(path, lambda f: np.savez(f, **out))


def read_recorded_npz(path: Path, meta: dict[str, Any], keys: Sequence[str]
                      ) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of a file :func:`write_recorded_npz` wrote, if its record equals
    ``meta``; ``ValueError`` saying what differs or why it cannot be read otherwise."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = json.loads(str(npz["meta"]))
            if stored != meta:
                changed = sorted(k for k in set(stored) | set(meta)
                                 if stored.get(k) != meta.get(k))
                raise ValueError(f"it was made with other parameters ({changed})")
            return {key: npz[key] for key in keys}
    except (OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise ValueError(f"it cannot be read ({err})") from err

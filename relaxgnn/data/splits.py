"""Random train/val/test splits of a data set's items, saved as JSON.

A split is a ``dict`` ``{"train": [...], "val": [...], "test": [...]}`` of sorted, disjoint lists
of item positions; ``dataset[split["train"]]`` selects them (a view: :mod:`relaxgnn.data.base`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from ..atomic import atomic_write_text

SPLIT_NAMES = ("train", "val", "test")


def _size(value: int | float, n: int, name: str) -> int:
    """A split size given as a count (``int``) or as a fraction of ``n`` (``float`` in [0, 1])."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(
            f"split size `{name}` must be an int count or a float fraction, got {value!r}"
        )
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"split size `{name}` must be non-negative, got {value}")
        return int(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"split fraction `{name}` must lie in [0, 1], got {value}")
    # the small epsilon keeps e.g. 0.29 * 100 = 28.999999999999996 at 29
    return math.floor(value * n + 1e-9)


def split_indices(
    n: int,
    train: int | float,
    val: int | float = 0,
    test: int | float | None = None,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Random disjoint ``train``/``val``/``test`` positions out of ``range(n)``.

    Sizes are counts (``int``) or fractions of ``n`` (``float``, rounded down). With
    ``test=None`` the test split takes everything that is left; otherwise items beyond
    ``train + val + test`` are left out (e.g. 1,000 training frames out of a long trajectory).
    The permutation comes from ``numpy.random.default_rng(seed)``, so a seed gives the same split
    on every machine. Each list is sorted.

    Raises:
        ValueError: for a negative size, a fraction outside [0, 1], or sizes adding up to more
            than ``n``.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"`n` must be a non-negative int, got {n!r}")
    n_train, n_val = _size(train, n, "train"), _size(val, n, "val")
    n_test = n - n_train - n_val if test is None else _size(test, n, "test")
    total = n_train + n_val + n_test
    if n_test < 0 or total > n:
        raise ValueError(
            f"split sizes train={n_train} + val={n_val} + test={max(n_test, 0)} "
            f"need {n_train + n_val + max(n_test, 0)} items but the data set has {n}"
        )
    perm = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, n_train, n_val, n_test])
    return {
        name: sorted(int(i) for i in perm[bounds[k] : bounds[k + 1]])
        for k, name in enumerate(SPLIT_NAMES)
    }


def save_splits(path: str | os.PathLike, splits: Mapping[str, Sequence[int] | Tensor]) -> None:
    """Write ``splits`` (name → positions) as JSON, atomically (temporary file + rename)."""
    path = Path(path)
    payload = {str(name): [int(i) for i in _as_list(idx)] for name, idx in splits.items()}
    atomic_write_text(path, json.dumps(payload))


def load_splits(path: str | os.PathLike) -> dict[str, list[int]]:
    """Read splits written by :func:`save_splits`; errors name the file and the bad entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} does not exist")
    try:
        payload = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"split file {path} is not valid JSON: {err}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"split file {path} must hold a JSON object name → list of ints")
    for name, idx in payload.items():
        if not isinstance(idx, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in idx
        ):
            raise ValueError(f"split file {path}: entry {name!r} must be a list of ints")
    return payload


def _as_list(index) -> list:
    if isinstance(index, (Tensor, np.ndarray)):
        return index.reshape(-1).tolist()
    return list(index)

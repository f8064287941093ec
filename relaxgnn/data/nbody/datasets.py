"""The N-body data sets as PyG data sets of ``Data`` graphs: :class:`NBody` (charged particles)
and :class:`GravityNBody` (gravity, with k-nearest-neighbour graphs), each one split of the
cache under ``root`` (:mod:`.cache`), generated on first use."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Batch, Data

from ..base import GraphDataset, stack_batch
from ..graphs import KNNGraph
from . import cache
from .params import SPLITS, ChargedParams, GravityParams, NBodyParams


def _split_tensors(
    root: str | os.PathLike,
    split: str,
    params: NBodyParams,
    frames: dict[str, int],
    max_samples: int | None,
    generate: bool,
    progress: bool,
) -> dict[str, Tensor]:
    """Check a data set's arguments and read its split: the arrays of the first
    ``max_samples`` trajectories, trajectory arrays at ``frames`` only
    (``(num, len(frames), N, 3)``); the cache is generated or regenerated as
    :func:`~.cache.load_or_generate` says (``regenerate=generate``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    for name, frame in frames.items():
        if not 0 <= frame < params.frames:
            raise ValueError(
                f"{name} must be in [0, {params.frames}) ({params.frames} frames for "
                f"n_steps={params.n_steps}, sample_freq={params.sample_freq}), got {frame}"
            )
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"max_samples must be >= 0 or None, got {max_samples}")
    arrays = cache.load_or_generate(
        root, split, params, list(frames.values()), regenerate=generate, progress=progress
    )
    keep = slice(None if max_samples is None else max_samples)
    return {key: torch.from_numpy(np.ascontiguousarray(a[keep])) for key, a in arrays.items()}


class NBody(GraphDataset):
    r"""The charged N-body data set of EGNN/SEGNN as ``Data`` graphs (no edges: apply e.g.
    :class:`~relaxgnn.data.FullyConnected` as ``transform``).

    Item ``i`` of a split is trajectory ``i``:
    ``Data(pos=loc[frame_in] (N, 3), vel=vel[frame_in] (N, 3), charges (N, 1),
    y=loc[frame_out] (N, 3))``, float32. With the defaults (EGNN's "nbody_small") the input is
    step 3100 and the target step 4100, 1000 steps (time 1.0) later. Indexing, slicing and
    masks follow PyG (:mod:`relaxgnn.data.base`).

    The cache under ``root`` (:func:`~relaxgnn.data.nbody.generate_charged`) is generated when
    missing; when it was generated with other parameters, or a file is corrupt, it is
    regenerated with a warning (``generate=True``) or
    :class:`~relaxgnn.data.nbody.NBodyCacheError` is raised (``generate=False``).

    Args:
        root: cache directory.
        kind: ``"charged"`` (the gravity data set is :class:`GravityNBody`).
        split: ``"train"`` (10,000), ``"val"`` (2,000) or ``"test"`` (2,000 trajectories).
        max_samples: keep the first ``max_samples`` trajectories (EGNN trains on 3,000);
            ``None`` keeps all.
        frame_in, frame_out: frames of the input and the target (0 ≤ frame < 49).
        generate: generate or regenerate the cache when needed.
        transform: applied to each item on access (PyG convention).
        progress: show the generation progress bar.
        generation: the fields of :class:`~relaxgnn.data.nbody.ChargedParams` (``num_train``,
            …, ``clip``) by name, so that a config file can set them; the record is
            :attr:`params`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        kind: str = "charged",
        split: str = "train",
        max_samples: int | None = 3000,
        frame_in: int = 30,
        frame_out: int = 40,
        generate: bool = True,
        transform: Callable[[Data], Data] | None = None,
        progress: bool = True,
        **generation: Any,
    ) -> None:
        if kind != "charged":
            raise ValueError(f"kind must be 'charged', got {kind!r} (gravity: GravityNBody)")
        self.params = ChargedParams.from_keywords(**generation)
        super().__init__(transform)
        arrays = _split_tensors(
            root, split, self.params, {"frame_in": frame_in, "frame_out": frame_out},
            max_samples, generate, progress,
        )  # fmt: skip
        self.root, self.kind, self.split = Path(root), kind, split
        self.frame_in, self.frame_out = frame_in, frame_out
        self._pos = arrays["loc"][:, 0].contiguous()
        self._vel = arrays["vel"][:, 0].contiguous()
        self._y = arrays["loc"][:, 1].contiguous()
        self._charges = arrays["charges"].unsqueeze(-1)

    def len(self) -> int:
        return self._pos.shape[0]

    def get(self, idx: int) -> Data:
        return Data(
            pos=self._pos[idx], vel=self._vel[idx], charges=self._charges[idx], y=self._y[idx]
        )

    def get_batch(self, indices: Sequence[int]) -> Batch | None:
        """The items ``indices`` as one ``Batch`` straight from the arrays (every system has
        the same particles; ``None`` with a ``transform``, which acts per item)."""
        if self.transform is not None:
            return None
        rows = self.rows(indices)
        return stack_batch({"pos": self._pos[rows], "vel": self._vel[rows],
                            "charges": self._charges[rows], "y": self._y[rows]})

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.kind}, split={self.split!r}, {len(self)} "
            f"graphs, frames {self.frame_in}→{self.frame_out})"
        )


class GravityNBody(GraphDataset):
    r"""SEGNN's gravity N-body data set as ``Data`` graphs with k-nearest-neighbour edges.

    Item ``i`` of a split is trajectory ``i`` (float32):
    ``Data(pos=loc[frame_in] (N, 3), vel=vel[frame_in] (N, 3), mass (N, 1) (ones), y (N, 3),
    edge_index (2, N·min(neighbours, N − 1)))``, where ``edge_index`` is
    :class:`~relaxgnn.data.KNNGraph` of ``pos``: an edge ``j → i`` (``edge_index[0] = j``,
    ``edge_index[1] = i``) from each of the ``neighbours`` nodes ``j`` nearest to ``i``
    (SEGNN's gravity setting: 6). With the defaults the input is step 3000 (time 3.0) and the
    target frame step 4000.

    Targets (``target``):

    - ``"pos"``: ``y = loc[frame_out]``, the positions ``frame_out − frame_in`` frames later
      (SEGNN's task; 1000 steps, time 1.0, by default).
    - ``"force"``: ``y = force[frame_in]``, the softened gravitational force
      :math:`m_i a_i` on each body at the input positions (``frame_out`` is then unused but
      must still be a valid frame).

    The cache under ``root`` (:func:`~relaxgnn.data.nbody.generate_gravity`:
    ``gravity_{split}.npz`` and ``gravity.json``) is generated when missing, and regenerated
    with a warning (``generate=True``) or reported by
    :class:`~relaxgnn.data.nbody.NBodyCacheError` (``generate=False``) when it is stale or
    corrupt, as for :class:`NBody`.

    Args:
        root: cache directory.
        split: ``"train"`` (10,000), ``"val"`` (2,000) or ``"test"`` (2,000 trajectories).
        max_samples: keep the first ``max_samples`` trajectories (``None``: all).
        frame_in, frame_out: frames of the input and the target (0 ≤ frame < 50).
        target: ``"pos"`` or ``"force"`` (above).
        neighbours: ``k`` of the k-nearest-neighbour graph.
        generate: generate or regenerate the cache when needed.
        transform: applied to each item on access, after the graph is built (PyG convention).
        progress: show the generation progress bar.
        generation: the fields of :class:`~relaxgnn.data.nbody.GravityParams` (``num_train``,
            …, ``softening``) by name; the record is :attr:`params`.
    """

    TARGETS = ("pos", "force")

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        max_samples: int | None = None,
        frame_in: int = 30,
        frame_out: int = 40,
        target: str = "pos",
        neighbours: int = 6,
        generate: bool = True,
        transform: Callable[[Data], Data] | None = None,
        progress: bool = True,
        **generation: Any,
    ) -> None:
        self.params = GravityParams.from_keywords(**generation)
        if target not in self.TARGETS:
            raise ValueError(f"target must be one of {self.TARGETS}, got {target!r}")
        self._graph = KNNGraph(neighbours)  # checks neighbours
        super().__init__(transform)
        arrays = _split_tensors(
            root, split, self.params, {"frame_in": frame_in, "frame_out": frame_out},
            max_samples, generate, progress,
        )  # fmt: skip
        self.root, self.split, self.target, self.neighbours = Path(root), split, target, neighbours
        self.frame_in, self.frame_out = frame_in, frame_out
        self._pos = arrays["loc"][:, 0].contiguous()
        self._vel = arrays["vel"][:, 0].contiguous()
        self._y = (arrays["loc"][:, 1] if target == "pos" else arrays["force"][:, 0]).contiguous()

    def len(self) -> int:
        return self._pos.shape[0]

    def get(self, idx: int) -> Data:
        pos = self._pos[idx]
        data = Data(pos=pos, vel=self._vel[idx], mass=pos.new_ones(pos.shape[0], 1), y=self._y[idx])
        return self._graph(data)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(split={self.split!r}, {len(self)} graphs, frames "
            f"{self.frame_in}→{self.frame_out}, target={self.target!r}, "
            f"neighbours={self.neighbours})"
        )


__all__ = ["GravityNBody", "NBody"]

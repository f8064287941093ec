"""The N-body cache: generation, its files and their checked reading.

A cache directory holds, per kind, ``<kind>_{split}.npz`` for the three splits and
``<kind>.json``, written by :func:`generate_charged` / :func:`generate_gravity` (both
:func:`generate` with a parameter record) and checked by :func:`load_charged` /
:func:`load_gravity` (:func:`load`). One kind-generic implementation does the per-split seeds,
atomic writes and checked reads; the parameter record (:mod:`.params`) says which kind and
with what parameters, and a small table (``_KINDS``) what differs per kind: initial
conditions, simulator, stored arrays and the JSON's description of the frames.

A split file holds float32 trajectory arrays ``(num, frames, N, 3)``, the per-particle arrays
``(num, N)`` of the kind, and ``meta``, the JSON of the split's format, kind, parameters and
seed; reading compares ``meta`` and ``<kind>.json`` with the parameters asked for, so a cache
made with other parameters (or a mix of two generations) is never read as valid.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...atomic import atomic_write
from .params import SPLITS, ChargedParams, GravityParams, NBodyParams
from .simulation import (
    charged_initial_conditions,
    gravity_initial_conditions,
    simulate_charged,
    simulate_gravity,
)

CACHE_FORMAT = 1


class NBodyCacheError(RuntimeError):
    """The N-body cache is missing (``reason="missing"``), was generated with other parameters
    (``"stale"``) or cannot be read (``"corrupt"``). The message names the file."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def split_seed(seed: int, split: str) -> int:
    """The seed of one split: ``seed`` and the split's index mixed by ``numpy.random.SeedSequence``
    (independent streams for train, val and test; different ``seed`` values never collide)."""
    return int(np.random.SeedSequence([int(seed), SPLITS.index(split)]).generate_state(1)[0])


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class _Kind:
    """What the kind-generic cache code needs to know about one kind of N-body data.

    ``initial(num, seed, params)`` draws the float64 initial state, a dict with ``loc0`` and
    ``vel0`` ``(num, N, 3)`` and any per-particle tensors ``(num, N)``; ``simulate(state,
    params)`` integrates a chunk of it (the same dict, sliced) into the ``trajectory`` arrays,
    each ``(B, frames, N, 3)``. A split file ``<kind>_{split}.npz`` stores the ``trajectory``
    arrays, the ``per_particle`` entries of the initial state and ``meta``. ``chunk`` is the
    default number of trajectories simulated at once."""

    initial: Callable[[int, int, Any], dict[str, Tensor]]
    simulate: Callable[[dict[str, Tensor], Any], dict[str, Tensor]]
    trajectory: tuple[str, ...]
    per_particle: tuple[str, ...]
    frame_steps: str  # for the json; formatted with s = sample_freq and t = sample_freq * dt
    simulator: str
    chunk: int


def _charged_initial(num: int, seed: int, p: ChargedParams) -> dict[str, Tensor]:
    loc0, vel0, charges = charged_initial_conditions(
        num, p.n_particles, seed, p.loc_std, p.vel_norm
    )
    return {"loc0": loc0, "vel0": vel0, "charges": charges}


def _charged_simulate(state: dict[str, Tensor], p: ChargedParams) -> dict[str, Tensor]:
    loc, vel = simulate_charged(
        state["loc0"], state["vel0"], state["charges"], p.n_steps, p.sample_freq, p.dt, p.clip
    )
    return {"loc": loc, "vel": vel}


def _gravity_initial(num: int, seed: int, p: GravityParams) -> dict[str, Tensor]:
    loc0, vel0, masses = gravity_initial_conditions(num, p.n_particles, seed)
    return {"loc0": loc0, "vel0": vel0, "masses": masses}


def _gravity_simulate(state: dict[str, Tensor], p: GravityParams) -> dict[str, Tensor]:
    loc, vel, force = simulate_gravity(
        state["loc0"], state["vel0"], state["masses"],
        p.n_steps, p.sample_freq, p.dt, p.G, p.softening,
    )  # fmt: skip
    return {"loc": loc, "vel": vel, "force": force}


_KINDS: dict[str, _Kind] = {
    ChargedParams.kind: _Kind(
        initial=_charged_initial,
        simulate=_charged_simulate,
        trajectory=("loc", "vel"),
        per_particle=("charges",),
        frame_steps="frame k is integration step {s}*(k+1) (time {t:g}*(k+1)); vel is the "
        "half-step velocity v(t - dt/2)",
        simulator="relaxgnn.data.nbody.simulate_charged",
        chunk=4096,
    ),
    GravityParams.kind: _Kind(
        initial=_gravity_initial,
        simulate=_gravity_simulate,
        trajectory=("loc", "vel", "force"),
        per_particle=(),  # unit masses: not stored
        frame_steps="frame k is integration step {s}*k (time {t:g}*k; frame 0 is the initial "
        "state); vel is the velocity v(t) and force the force m*a(t) at that time (unit masses)",
        simulator="relaxgnn.data.nbody.simulate_gravity",
        chunk=64,
    ),
}


def _kind(params: NBodyParams) -> _Kind:
    if not isinstance(params, NBodyParams):
        raise TypeError(
            f"params must be a ChargedParams or GravityParams record, got {params!r}"
        )
    return _KINDS[params.kind]


def _split_meta(params: NBodyParams, split: str) -> dict[str, Any]:
    """What a split file records about itself (compared on load)."""
    return {
        "format": CACHE_FORMAT,
        "kind": params.kind,
        "split": split,
        "params": params.asdict(),
        "split_seed": split_seed(params.seed, split),
    }


def _shapes(params: NBodyParams, split: str) -> dict[str, tuple[int, ...]]:
    """The float32 arrays of a split file and their shapes."""
    spec = _kind(params)
    num, n, frames = params.num(split), params.n_particles, params.frames
    return {
        **{key: (num, frames, n, 3) for key in spec.trajectory},
        **{key: (num, n) for key in spec.per_particle},
    }


# ----------------------------------------------------------------------------- generation


def _simulate_split(
    params: NBodyParams, split: str, chunk: int, done: Callable[[int], Any]
) -> dict[str, np.ndarray]:
    """The arrays of one split file; ``done(k)`` is called after each chunk of ``k``."""
    spec = _kind(params)
    meta = _split_meta(params, split)
    num = params.num(split)
    state = spec.initial(num, meta["split_seed"], params)
    shapes = _shapes(params, split)
    arrays = {key: np.empty(shape, np.float32) for key, shape in shapes.items()}
    for start in range(0, num, chunk):
        part = slice(start, min(start + chunk, num))
        trajectories = spec.simulate({key: t[part] for key, t in state.items()}, params)
        for key in spec.trajectory:
            arrays[key][part] = trajectories[key].numpy()
        done(part.stop - part.start)
    for key in spec.per_particle:
        arrays[key][:] = state[key].numpy()
    arrays["meta"] = np.array(json.dumps(meta))
    return arrays


def generate(
    root: str | os.PathLike,
    params: NBodyParams,
    progress: bool = True,
    chunk: int | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Simulate the three splits of ``params``' kind and write ``root/<kind>_{split}.npz`` and
    ``root/<kind>.json``, each atomically (see :func:`generate_charged`); ``chunk`` defaults
    to the kind's (4096 charged, 64 gravity trajectories). Returns the contents of the json."""
    spec = _kind(params)
    chunk = spec.chunk if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    from tqdm.auto import tqdm

    kind = params.kind
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    total = sum(params.num(split) for split in SPLITS)
    bar = tqdm(total=total, desc=f"{kind} N-body", unit="traj", disable=not progress)
    with bar, _torch_threads(threads):
        for split in SPLITS:
            arrays = _simulate_split(params, split, chunk, bar.update)
            atomic_write(root / f"{kind}_{split}.npz", lambda f, a=arrays: np.savez(f, **a))
    shapes = {key: len(shape) for key, shape in _shapes(params, "train").items()}
    s, dt = params.sample_freq, params.dt
    info = {
        "format": CACHE_FORMAT,
        "kind": kind,
        "params": params.asdict(),
        "split_seeds": {split: split_seed(params.seed, split) for split in SPLITS},
        "files": {split: f"{kind}_{split}.npz" for split in SPLITS},
        "arrays": {
            **{
                key: ("(num, frames, N, 3)" if rank == 4 else "(num, N)") + " float32"
                for key, rank in shapes.items()
            },
            "meta": "JSON of the split's parameters",
        },
        "frames": params.frames,
        "frame_steps": spec.frame_steps.format(s=s, t=s * dt),
        "simulator": spec.simulator,
    }
    text = json.dumps(info, indent=2).encode()
    atomic_write(root / f"{kind}.json", lambda f: f.write(text))
    return info


def generate_charged(
    root: str | os.PathLike,
    params: ChargedParams | None = None,
    *,
    progress: bool = True,
    chunk: int | None = None,
    threads: int | None = 1,
    **generation: Any,
) -> dict[str, Any]:
    """Simulate the three splits and write ``root/charged_{split}.npz`` and ``root/charged.json``.

    The parameters are ``params`` or the fields of :class:`ChargedParams` as keywords
    (``generate_charged(root, num_train=100)``; the defaults for those not given). Each split
    draws :func:`~relaxgnn.data.nbody.charged_initial_conditions` with its own
    :func:`split_seed` and is simulated ``chunk`` (default 4096) trajectories at a time (the
    result does not depend on ``chunk``). A split file holds float32 ``loc`` and ``vel``
    ``(num, frames, N, 3)``, ``charges (num, N)`` and ``meta``, the JSON of its parameters;
    ``charged.json`` records every parameter, the split seeds and the frame convention. Every
    file is written to a temporary file in ``root`` and renamed, so a crash leaves either the
    old file or the new one, never a partial file.

    ``threads`` is the number of torch intra-op threads while simulating (restored afterwards;
    ``None`` keeps the current setting). One is the default: a step is a few ops on
    ``chunk × 30`` numbers, too small for threads to pay off, and on a busy machine OpenMP
    threads that wait for each other at every op make it up to 100× slower.

    Returns the contents of ``charged.json``.
    """
    params = ChargedParams.build(params, **generation)
    return generate(root, params, progress, chunk, threads)


def generate_gravity(
    root: str | os.PathLike,
    params: GravityParams | None = None,
    *,
    progress: bool = True,
    chunk: int | None = None,
    threads: int | None = 1,
    **generation: Any,
) -> dict[str, Any]:
    """Simulate the three gravity splits and write ``root/gravity_{split}.npz`` and
    ``root/gravity.json``, the way :func:`generate_charged` does (``params`` or the fields of
    :class:`GravityParams` as keywords, own seed per split, atomic writes, result independent
    of ``chunk``), from :func:`~relaxgnn.data.nbody.gravity_initial_conditions` with
    :func:`~relaxgnn.data.nbody.simulate_gravity`.

    A split file holds float32 ``loc``, ``vel`` and ``force`` ``(num, frames, N, 3)`` (frame
    ``k`` is step ``sample_freq·k``, frame 0 the initial state: 50 frames by default; ``vel``
    and ``force`` at the frame's time) and ``meta``; the masses are 1 and not stored.

    ``chunk`` = 64 (the default) keeps memory modest: a step holds a few ``chunk × 3 × N × N``
    float64 tensors (≈ 15 MB each for N = 100), and larger chunks are no faster. One thread
    costs ≈ 0.1 ms per trajectory and step at N = 100 (the default 14,000 trajectories of 5,000
    steps take hours; ``threads`` may help on an idle machine).

    Returns the contents of ``gravity.json``.
    """
    params = GravityParams.build(params, **generation)
    return generate(root, params, progress, chunk, threads)


# ----------------------------------------------------------------------------- reading


def _differences(stored: dict[str, Any], wanted: dict[str, Any]) -> str:
    keys = sorted(set(stored) | set(wanted))
    return ", ".join(
        f"{k}: {stored.get(k)!r} != {wanted.get(k)!r}"
        for k in keys
        if stored.get(k) != wanted.get(k)
    )


# What numpy and zipfile raise on a damaged .npz (found by flipping, zeroing and cutting bytes).
_UNREADABLE = (OSError, ValueError, KeyError, EOFError, NotImplementedError, zipfile.BadZipFile)


def load(
    root: str | os.PathLike,
    split: str,
    params: NBodyParams,
    frames: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Read and check one split of the cache of ``params``' kind (see :func:`load_charged`).
    With ``frames`` the trajectory arrays keep only those frames (each array is checked
    whole, then cut, so that at most one whole array is in memory)."""
    spec = _kind(params)
    params.num(split)  # checks split
    kind, wanted = params.kind, params.asdict()
    root = Path(root)
    info_path, path = root / f"{kind}.json", root / f"{kind}_{split}.npz"
    for file in (info_path, path):
        if not file.is_file():
            raise NBodyCacheError(f"N-body cache file {file} does not exist", "missing")
    try:
        info = json.loads(info_path.read_text())
        stored = info["params"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise NBodyCacheError(
            f"N-body cache file {info_path} is unreadable: {err}", "corrupt"
        ) from err
    if info.get("format") != CACHE_FORMAT or info.get("kind") != kind or stored != wanted:
        detail = _differences(stored, wanted) or (
            f"format {info.get('format')!r}, kind {info.get('kind')!r}"
        )
        raise NBodyCacheError(
            f"N-body cache {info_path} was generated with other parameters ({detail})", "stale"
        )
    shapes = _shapes(params, split)
    trajectory = set(spec.trajectory)
    arrays: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = sorted({*shapes, "meta"} - set(npz.files))
            if missing:
                raise ValueError(f"missing arrays {missing} (has {sorted(npz.files)})")
            file_meta = json.loads(str(npz["meta"]))
            if file_meta != json.loads(json.dumps(_split_meta(params, split))):
                raise NBodyCacheError(
                    f"N-body cache file {path} does not match {info_path} "
                    f"(its parameters: {file_meta})",
                    "stale",
                )
            for key, shape in shapes.items():
                a = npz[key]
                if a.shape != shape or a.dtype != np.float32:
                    raise NBodyCacheError(
                        f"N-body cache file {path}: `{key}` has shape {a.shape} "
                        f"{a.dtype}, expected {shape} float32",
                        "corrupt",
                    )
                if not np.isfinite(a).all():
                    raise NBodyCacheError(
                        f"N-body cache file {path}: `{key}` has non-finite values", "corrupt"
                    )
                arrays[key] = a[:, list(frames)] if frames is not None and key in trajectory else a
    except _UNREADABLE as err:
        raise NBodyCacheError(
            f"N-body cache file {path} is corrupt or truncated: {err}", "corrupt"
        ) from err
    return arrays


def load_charged(
    root: str | os.PathLike, split: str, params: ChargedParams | None = None, **generation: Any
) -> dict[str, np.ndarray]:
    """Read and check one split of the cache under ``root``, generated with ``params`` (or the
    fields of :class:`ChargedParams` as keywords; the defaults for those not given). Returns
    ``loc``, ``vel`` and ``charges``; raises :class:`NBodyCacheError` naming the file when it
    is missing, stale or unreadable (nothing half-read is ever returned)."""
    return load(root, split, ChargedParams.build(params, **generation))


def load_gravity(
    root: str | os.PathLike, split: str, params: GravityParams | None = None, **generation: Any
) -> dict[str, np.ndarray]:
    """Read and check one split of the gravity cache under ``root`` (parameters and errors as
    :func:`load_charged`, the fields of :class:`GravityParams`). Returns ``loc``, ``vel`` and
    ``force``."""
    return load(root, split, GravityParams.build(params, **generation))


def load_or_generate(
    root: str | os.PathLike,
    split: str,
    params: NBodyParams,
    frames: Sequence[int] | None = None,
    regenerate: bool = True,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`load`, generating the cache with :func:`generate` when it is missing and
    regenerating it with a warning when it is stale or corrupt; with ``regenerate=False`` the
    :class:`NBodyCacheError` is raised instead."""
    try:
        return load(root, split, params, frames)
    except NBodyCacheError as err:
        if not regenerate:
            raise
        if err.reason != "missing":
            warnings.warn(f"{err}; regenerating the cache", stacklevel=4)
    generate(root, params, progress=progress)
    return load(root, split, params, frames)


__all__ = [
    "CACHE_FORMAT",
    "NBodyCacheError",
    "generate",
    "generate_charged",
    "generate_gravity",
    "load",
    "load_charged",
    "load_gravity",
    "load_or_generate",
    "split_seed",
]

r"""A synthetic, offline shape-classification set: point clouds sampled on eight primitive
surfaces, randomly stretched, tapered, twisted and noised, in ModelNet's ``Data`` format.

**The primitives** (:data:`SHAPES`, label = position), each in a canonical pose with its axis
along z (so that rotations about z keep a shape upright and rotations in SO(3) do not), are
sampled uniformly (area-weighted) by one function each, which also gives the unit normals:

====================  ===================================================================
``box``               the surface of the cube :math:`[-1, 1]^3`
``cylinder``          :math:`x^2 + y^2 = 1`, :math:`|z| \le 1`, with both end discs
``cone``              apex :math:`(0, 0, 1)`, base disc of radius 1 at :math:`z = -1`
``torus``             major radius 1 about z, tube radius :math:`a \sim U[0.25, 0.5]`
``ellipsoid``         the unit sphere (an ellipsoid once stretched)
``capsule``           a unit-radius cylinder :math:`|z| \le L`, :math:`L \sim U[0.4, 1]`,
                      with hemispherical caps
``pyramid``           square base :math:`[-1, 1]^2` at :math:`z = -1`, apex :math:`(0, 0, 1)`
``bowl``              the open lower hemisphere of the unit sphere (:math:`z \le 0`)
====================  ===================================================================

**A sample** of a class (:func:`generate_shapes`): the canonical surface is stretched by
:math:`A = \operatorname{diag}(s)`, :math:`s_k \sim U[\text{scale\_range}]` independently
per axis, keeping the points uniform on the stretched surface: a canonical point with normal
:math:`n` is kept with probability :math:`\lVert A^{-1} n\rVert \min_k s_k` (the area element
grows by :math:`\det A\,\lVert A^{-\top} n\rVert`), oversampled so that ``num_points`` are
kept. It is then tapered and twisted about z,

.. math::
    (x, y, z) \mapsto \big((1 + t z)\, R_z(b z)\,(x, y),\; z\big), \qquad
    t \sim U[-d, d], \quad b \sim U[-\tfrac{\pi}{2} d, \tfrac{\pi}{2} d],

(``d`` = ``deformation``; these small maps bend the density by at most a factor
:math:`\approx 1 \pm 2 d\, s_{\max}`), and every coordinate gets Gaussian noise
:math:`N(0, \text{noise}^2)`. Items are centred and scaled into the unit ball on access
(``normalize``) and optionally rotated (``rotation``: ``"z"`` or ``"so3"``,
:class:`~relaxgnn.data.point_clouds.RandomRotation`).

The stretch makes cylinders elliptic and spheres ellipsoids, short capsules look like
ellipsoids and flat boxes like flat cylinders, so the classes overlap a little; the canonical
up axis makes a model that is not rotation-invariant, trained with z rotations, fail on SO(3)
rotations (the ModelNet "z/SO3" protocol).

**The cache.** A split is generated once (vectorised: thousands of clouds a second) into
``root/shapes_<split>_n<num_points>_k<samples_per_class>_s<seed>_<hash>.npz`` (``hash``: of
all the parameters), written atomically, with ``pos`` ``(num, num_points, 3)`` float32,
``label``, the per-sample ``scale`` ``(num, 3)``, ``taper`` and ``twist``, and the JSON of the
parameters in ``meta``; on reload the record is checked, and a cache that differs or cannot be
read is regenerated with a warning. Item ``i`` is sample ``i // C`` of class ``i % C``, so
every prefix of a split is balanced. Splits and classes draw from independent streams,
``SeedSequence([seed, split index, class index])``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data

from .clouds import PointCloudDataset, read_recorded_npz, write_recorded_npz

SPLITS = ("train", "val", "test")
CACHE_FORMAT = 1
TORUS_TUBE = (0.25, 0.5)
"""Range of the torus's tube radius (major radius 1)."""
CAPSULE_HALF_LENGTH = (0.4, 1.0)
"""Range of the half-length of the capsule's cylinder (radius 1)."""

Sampler = Callable[[np.random.Generator, int, int], tuple[np.ndarray, np.ndarray]]

__all__ = [
    "SHAPES",
    "SyntheticShapes",
    "generate_shapes",
    "generate_split",
    "sample_bowl",
    "sample_box",
    "sample_capsule",
    "sample_cone",
    "sample_cylinder",
    "sample_ellipsoid",
    "sample_pyramid",
    "sample_torus",
]

# ----------------------------------------------------------------------------- primitives
#
# Each sampler takes (rng, S, M) and returns points and outward unit normals, both (S, M, 3):
# M points uniform on the canonical surface, for each of S shapes.


def _part(rng: np.random.Generator, areas: Sequence[float], shape: tuple[int, int]) -> np.ndarray:
    """Which part of a composite surface each point is on: part ``k`` with probability
    ``areas[k] / sum(areas)``."""
    p = np.asarray(areas, dtype=np.float64)
    return rng.choice(len(p), size=shape, p=p / p.sum())


def _unit_sphere(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Uniform points on the unit sphere (normalised Gaussians)."""
    q = rng.standard_normal((*shape, 3))
    return q / np.linalg.norm(q, axis=-1, keepdims=True)


def _disc(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Uniform ``(x, y)`` in the unit disc (radius :math:`\\sqrt{u}`)."""
    r, phi = np.sqrt(rng.random(shape)), 2 * np.pi * rng.random(shape)
    return r * np.cos(phi), r * np.sin(phi)


def sample_box(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The surface of the cube :math:`[-1, 1]^3`: a face (six of equal area), then a uniform
    point of it."""
    points = rng.uniform(-1.0, 1.0, (S, M, 3))
    axis = rng.integers(0, 3, (S, M))
    sign = rng.choice([-1.0, 1.0], size=(S, M))
    np.put_along_axis(points, axis[..., None], sign[..., None], axis=-1)
    normals = np.zeros((S, M, 3))
    np.put_along_axis(normals, axis[..., None], sign[..., None], axis=-1)
    return points, normals


def sample_cylinder(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The closed cylinder :math:`x^2 + y^2 = 1`, :math:`|z| \le 1` (side, area
    :math:`4\pi`) with its discs :math:`z = \pm 1`, :math:`x^2 + y^2 \le 1` (area
    :math:`\pi` each)."""
    part = _part(rng, [4 * np.pi, np.pi, np.pi], (S, M))
    phi, z = 2 * np.pi * rng.random((S, M)), rng.uniform(-1.0, 1.0, (S, M))
    side = np.stack([np.cos(phi), np.sin(phi), z], -1)
    side_n = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(z)], -1)
    x, y = _disc(rng, (S, M))
    cap_z = np.where(part == 1, 1.0, -1.0)
    cap = np.stack([x, y, cap_z], -1)
    cap_n = np.stack([np.zeros_like(x), np.zeros_like(x), cap_z], -1)
    on_side = (part == 0)[..., None]
    return np.where(on_side, side, cap), np.where(on_side, side_n, cap_n)


def sample_cone(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The closed cone with apex :math:`(0, 0, 1)` and base disc :math:`x^2 + y^2 \le 1` at
    :math:`z = -1`: the side :math:`\sqrt{x^2 + y^2} = (1 - z)/2` (area :math:`\sqrt5\,\pi`;
    the distance from the apex, as a fraction :math:`\sqrt u`, has density :math:`\propto`
    the circle's length) and the base (area :math:`\pi`)."""
    part = _part(rng, [np.sqrt(5) * np.pi, np.pi], (S, M))
    t, phi = np.sqrt(rng.random((S, M))), 2 * np.pi * rng.random((S, M))
    side = np.stack([t * np.cos(phi), t * np.sin(phi), 1 - 2 * t], -1)
    side_n = np.stack([2 * np.cos(phi), 2 * np.sin(phi), np.ones_like(t)], -1) / np.sqrt(5)
    x, y = _disc(rng, (S, M))
    base = np.stack([x, y, -np.ones_like(x)], -1)
    base_n = np.broadcast_to(np.array([0.0, 0.0, -1.0]), base.shape)
    on_side = (part == 0)[..., None]
    return np.where(on_side, side, base), np.where(on_side, side_n, base_n)


def sample_torus(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The torus :math:`\big(\sqrt{x^2 + y^2} - 1\big)^2 + z^2 = a^2` about the z axis, tube
    radius :math:`a \sim U[` :data:`TORUS_TUBE` :math:`]` per shape. With the angles
    :math:`u` (about z) and :math:`v` (about the tube) the area element is
    :math:`a(1 + a\cos v)\,du\,dv`, so :math:`u` is uniform and :math:`v` solves
    :math:`v + a \sin v = 2\pi w`, :math:`w \sim U[0, 1)` (Newton's method)."""
    a = rng.uniform(*TORUS_TUBE, (S, 1))
    u, w = 2 * np.pi * rng.random((S, M)), 2 * np.pi * rng.random((S, M))
    v = w.copy()
    for _ in range(12):  # g(v) = v + a sin v - w is increasing (g' >= 1 - a >= 0.5)
        v -= (v + a * np.sin(v) - w) / (1 + a * np.cos(v))
    ring = 1 + a * np.cos(v)
    points = np.stack([ring * np.cos(u), ring * np.sin(u), a * np.sin(v)], -1)
    normals = np.stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)], -1)
    return points, normals


def sample_ellipsoid(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The unit sphere :math:`x^2 + y^2 + z^2 = 1` (stretched into an ellipsoid by
    :func:`generate_shapes`)."""
    q = _unit_sphere(rng, (S, M))
    return q, q.copy()


def sample_capsule(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""A capsule: the cylinder :math:`x^2 + y^2 = 1`, :math:`|z| \le L` (area
    :math:`4\pi L`), :math:`L \sim U[` :data:`CAPSULE_HALF_LENGTH` :math:`]` per shape, closed
    by the hemispheres :math:`x^2 + y^2 + (z \mp L)^2 = 1`, :math:`\pm z \ge L` (area
    :math:`4\pi` together)."""
    L = rng.uniform(*CAPSULE_HALF_LENGTH, (S, 1))
    on_side = rng.random((S, M)) < L / (L + 1)
    phi, z = 2 * np.pi * rng.random((S, M)), rng.uniform(-1.0, 1.0, (S, M)) * L
    side = np.stack([np.cos(phi), np.sin(phi), z], -1)
    side_n = np.stack([np.cos(phi), np.sin(phi), np.zeros_like(z)], -1)
    q = _unit_sphere(rng, (S, M))
    caps = q + np.stack([np.zeros_like(z), np.zeros_like(z), np.sign(q[..., 2]) * L], -1)
    return np.where(on_side[..., None], side, caps), np.where(on_side[..., None], side_n, q)


def sample_pyramid(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""The square pyramid with base :math:`[-1, 1]^2` at :math:`z = -1` (area 4) and apex
    :math:`(0, 0, 1)`: four triangles of area :math:`\sqrt5` with outward normals
    :math:`(2 d, 1)/\sqrt5`, :math:`d \in \{\pm e_x, \pm e_y\}`, sampled by uniform
    barycentric coordinates."""
    part = _part(rng, [4.0] + [np.sqrt(5)] * 4, (S, M))
    base = np.stack([rng.uniform(-1, 1, (S, M)), rng.uniform(-1, 1, (S, M)),
                     -np.ones((S, M))], -1)
    # side k: outward direction d_k and its base corners d_k ± d_k rotated by 90°
    d = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])[np.maximum(part - 1, 0)]
    perp = np.stack([-d[..., 1], d[..., 0]], -1)
    s, r = np.sqrt(rng.random((S, M, 1))), rng.random((S, M, 1))
    apex = np.array([0.0, 0.0, 1.0])
    corner1 = np.concatenate([d + perp, -np.ones((S, M, 1))], -1)
    corner2 = np.concatenate([d - perp, -np.ones((S, M, 1))], -1)
    side = (1 - s) * apex + s * (1 - r) * corner1 + s * r * corner2
    side_n = np.concatenate([2 * d, np.ones((S, M, 1))], -1) / np.sqrt(5)
    base_n = np.broadcast_to(np.array([0.0, 0.0, -1.0]), base.shape)
    on_side = (part > 0)[..., None]
    return np.where(on_side, side, base), np.where(on_side, side_n, base_n)


def sample_bowl(rng: np.random.Generator, S: int, M: int) -> tuple[np.ndarray, np.ndarray]:
    r"""A bowl: the open lower hemisphere :math:`x^2 + y^2 + z^2 = 1`, :math:`z \le 0`
    (opening upwards)."""
    q = _unit_sphere(rng, (S, M))
    q[..., 2] = -np.abs(q[..., 2])
    return q, q.copy()


SHAPES: dict[str, Sampler] = {
    "box": sample_box,
    "cylinder": sample_cylinder,
    "cone": sample_cone,
    "torus": sample_torus,
    "ellipsoid": sample_ellipsoid,
    "capsule": sample_capsule,
    "pyramid": sample_pyramid,
    "bowl": sample_bowl,
}
"""The primitives, in label order, and their samplers."""

# ----------------------------------------------------------------------------- samples


def generate_shapes(
    name: str,
    num_shapes: int,
    num_points: int,
    rng: np.random.Generator,
    scale_range: tuple[float, float] = (0.6, 1.4),
    deformation: float = 0.2,
    noise: float = 0.02,
) -> dict[str, np.ndarray]:
    """``num_shapes`` random samples of the primitive ``name`` (module docstring): stretched
    (uniformly on the stretched surface), tapered, twisted and noised, float64.

    Returns ``pos`` ``(num_shapes, num_points, 3)`` and the parameters of each sample:
    ``scale`` ``(num_shapes, 3)``, ``taper`` and ``twist`` ``(num_shapes,)``.
    """
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; known: {list(SHAPES)}")
    lo, hi = scale_range
    scale = rng.uniform(lo, hi, (num_shapes, 3))
    taper = rng.uniform(-deformation, deformation, num_shapes)
    twist = rng.uniform(-deformation, deformation, num_shapes) * (np.pi / 2)
    pos = np.empty((num_shapes, num_points, 3))
    # keep a canonical point with probability |A^-1 n| min(s) >= lo / hi: this many suffice
    # but for a tail of probability < 1e-6 (redrawn)
    oversample = math.ceil(num_points * hi / lo * 1.25) + 16
    todo = np.arange(num_shapes)
    while todo.size:
        points, normals = SHAPES[name](rng, todo.size, oversample)
        s = scale[todo][:, None, :]
        keep = rng.random(points.shape[:2]) < np.linalg.norm(normals / s, axis=-1) * s.min(-1)
        done = keep.sum(1) >= num_points
        first = np.argsort(~keep, axis=1, kind="stable")[:, :num_points]
        kept = np.take_along_axis(points, first[..., None], axis=1) * s
        pos[todo[done]] = kept[done]
        todo = todo[~done]
    z = pos[..., 2]
    angle = twist[:, None] * z
    factor = 1 + taper[:, None] * z
    c, s_ = np.cos(angle), np.sin(angle)
    x, y = pos[..., 0], pos[..., 1]
    pos = np.stack([factor * (c * x - s_ * y), factor * (s_ * x + c * y), z], -1)
    if noise:
        pos = pos + noise * rng.standard_normal(pos.shape)
    return {"pos": pos, "scale": scale, "taper": taper, "twist": twist}


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    for key in ("num_points", "samples_per_class", "seed"):
        value = params[key]
        if isinstance(value, bool) or int(value) != value or (key != "seed" and value < 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
        params[key] = int(value)
    lo, hi = (float(v) for v in params["scale_range"])
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
    d, noise = float(params["deformation"]), float(params["noise"])
    reach = 2 * hi  # |z| of a canonical shape is at most 2 (the capsule), times the stretch
    if not 0 <= d * reach < 1:
        raise ValueError(f"deformation must be in [0, {1 / reach:.3g}) for scale_range "
                         f"{(lo, hi)} (the taper 1 + t z must stay positive), got {d}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    classes = list(params["classes"]) if params["classes"] is not None else list(SHAPES)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown or not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct names from {list(SHAPES)}, got {classes}")
    return {**params, "scale_range": [lo, hi], "deformation": d, "noise": noise,
            "classes": classes}


def generate_split(split: str, params: dict[str, Any]) -> dict[str, np.ndarray]:
    """One split of the data set (checked ``params`` of :class:`SyntheticShapes`): ``pos``
    float32 ``(C·k, num_points, 3)``, ``label`` int64, ``scale``, ``taper``, ``twist``, item
    ``i`` being sample ``i // C`` of class ``i % C``."""
    C, k = len(params["classes"]), params["samples_per_class"]
    parts = []
    for name in params["classes"]:
        sequence = np.random.SeedSequence(
            [params["seed"], SPLITS.index(split), list(SHAPES).index(name)]
        )
        parts.append(generate_shapes(
            name, k, params["num_points"], np.random.default_rng(sequence),
            tuple(params["scale_range"]), params["deformation"], params["noise"],
        ))  # fmt: skip
    out = {key: np.stack([p[key] for p in parts], 1).reshape(C * k, *parts[0][key].shape[1:])
           for key in parts[0]}  # (k, C, ...) → item i = sample i // C of class i % C
    out["pos"] = out["pos"].astype(np.float32)
    out["label"] = np.tile(np.arange(C, dtype=np.int64), k)
    return out


def _cache_path(root: Path, split: str, params: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:8]
    return root / (f"shapes_{split}_n{params['num_points']}_k{params['samples_per_class']}"
                   f"_s{params['seed']}_{digest}.npz")


def _read_cache(path: Path, meta: dict[str, Any]) -> dict[str, np.ndarray]:
    keys = ("pos", "label", "scale", "taper", "twist")
    arrays = read_recorded_npz(path, meta, keys)
    p = meta["params"]
    num = len(p["classes"]) * p["samples_per_class"]
    shapes = {"pos": (num, p["num_points"], 3), "label": (num,), "scale": (num, 3),
              "taper": (num,), "twist": (num,)}
    for key, shape in shapes.items():
        if arrays[key].shape != shape:
            raise ValueError(f"`{key}` has shape {arrays[key].shape}, expected {shape}")
    if arrays["pos"].dtype != np.float32 or not np.isfinite(arrays["pos"]).all():
        raise ValueError(f"`pos` must be finite float32, got {arrays['pos'].dtype}")
    if not np.array_equal(arrays["label"], np.tile(np.arange(len(p["classes"])),
                                                   p["samples_per_class"])):
        raise ValueError("`label` is not the class of each item")
    return arrays


class SyntheticShapes(PointCloudDataset):
    r"""The synthetic shape-classification set of the module docstring as
    ``Data(pos (num_points, 3) float32, y (1,) long)``; a
    :class:`~relaxgnn.data.base.GraphDataset` (PyG's ``Dataset`` protocol).

    Args:
        root: cache folder (``None``: generate in memory, no file).
        split: ``"train"``, ``"val"`` or ``"test"`` (independent samples).
        num_points: points per cloud.
        samples_per_class: clouds per class in this split.
        seed: seed of the data set (each split and class has its own stream).
        noise: standard deviation of the Gaussian noise on each coordinate (canonical shapes
            span :math:`[-1, 1]` before the stretch).
        scale_range: range of the independent stretch of each axis.
        deformation: strength ``d`` of the taper and twist about z (0: none).
        classes: a subset of :data:`SHAPES`, in label order (default: all eight).
        normalize: centre each cloud at its centroid and scale it into the unit ball.
        rotation, rotation_seed: rotation augmentation, as for
            :class:`~relaxgnn.data.ModelNet` (``"none"``, ``"z"``, ``"so3"``; ``None``: fresh
            on each access, an int: fixed per item).
        transform: applied to each item on access, after the rotation.
        pre_transform: applied once to each normalised, unrotated item, in memory.
        force_reload: regenerate even when the cache is valid.

    Attributes:
        classes, num_classes: the class names in label order and their number.
        params: the generation parameters (recorded in the cache).
        cache_path: the cache file (``None`` without ``root``).
        scale, taper, twist: the per-item parameters of the stretch and the deformation.
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str = "train",
        num_points: int = 300,
        samples_per_class: int = 100,
        seed: int = 0,
        noise: float = 0.02,
        scale_range: tuple[float, float] = (0.6, 1.4),
        deformation: float = 0.2,
        classes: Sequence[str] | None = None,
        normalize: bool = True,
        rotation: str = "none",
        rotation_seed: int | None = None,
        transform: Callable[[Data], Data] | None = None,
        pre_transform: Callable[[Data], Data] | None = None,
        force_reload: bool = False,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"SyntheticShapes split must be one of {SPLITS}, got {split!r}")
        self.params = _check_params(dict(
            num_points=num_points, samples_per_class=samples_per_class, seed=seed, noise=noise,
            scale_range=scale_range, deformation=deformation, classes=classes,
        ))  # fmt: skip
        super().__init__(normalize, rotation, rotation_seed, transform, pre_transform)
        self.root = None if root is None else str(root)
        self.split = split
        self.classes = list(self.params["classes"])
        meta = {"format": CACHE_FORMAT, "split": split, "params": self.params}
        self.cache_path = None if root is None else _cache_path(Path(root), split, self.params)
        arrays = None
        if self.cache_path is not None and self.cache_path.is_file() and not force_reload:
            try:
                arrays = _read_cache(self.cache_path, meta)
            except ValueError as err:
                warnings.warn(f"SyntheticShapes cache {self.cache_path}: {err}; regenerating",
                              stacklevel=2)
        if arrays is None:
            arrays = generate_split(split, self.params)
            if self.cache_path is not None:
                write_recorded_npz(self.cache_path, arrays, meta)
        self.scale, self.taper, self.twist = (torch.from_numpy(np.asarray(arrays[key]))
                                              for key in ("scale", "taper", "twist"))
        self._set_clouds(arrays["pos"], arrays["label"])

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({len(self)}, split={self.split!r}, "
                f"num_points={self.params['num_points']}, {self.num_classes} classes, "
                f"rotation={self.rotation!r})")

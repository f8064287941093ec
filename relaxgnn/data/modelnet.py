r"""ModelNet40 / ModelNet10 shape classification as point clouds, from either of the two
layouts in use.

**Meshes** (the official Princeton release, and torch_geometric's ``raw/`` folder):
``<root>/<class>/{train,test}/<class>_NNNN.off`` or the same under ``<root>/raw/``. Classes
are the folders that hold a ``train`` or ``test`` folder, labelled in sorted order
(``airplane`` = 0 … ``xbox`` = 39 for ModelNet40). Each mesh is read by :func:`read_off` and
``num_points`` points are drawn uniformly on its surface by :func:`sample_surface`:
a triangle :math:`t` with probability :math:`A_t / \sum_s A_s` (its area over the total), then
a uniform point of it,

.. math::
    p = (1 - \sqrt{r_1})\, a + \sqrt{r_1}(1 - r_2)\, b + \sqrt{r_1}\, r_2\, c,
    \qquad r_1, r_2 \sim U[0, 1),

which is uniform on the triangle :math:`abc` (the density of :math:`\sqrt{r_1}` is
:math:`2s`, the length of the triangle's cross-section at :math:`s`). The seed of a mesh is
``SeedSequence([seed, sha256(relative path)])``, so a mesh's sample depends on ``seed`` and
its own path only. The samples are cached once per split in
``<root>/processed/modelnet_<split>_<num_points>_<seed>.npz`` (float32 positions, labels and
the JSON of the parameters and file list, written atomically); a cache whose record differs
from what is asked and found on disk, or that cannot be read, is resampled with a warning.

**HDF5** (PointNet's ``modelnet40_ply_hdf5_2048``, used by DGCNN and Vector Neurons):
``ply_data_{train,test}<k>.h5`` with datasets ``data`` ``(B, 2048, 3)`` float and ``label``
``(B, 1)`` int, in ``<root>/modelnet40_ply_hdf5_2048/``, ``<root>/raw/modelnet40_ply_hdf5_2048/``,
``<root>`` or ``<root>/raw``. Files are read in the order of their number ``k`` (DGCNN's
``glob`` leaves it to the file system) and an item keeps the **first** ``num_points`` of its
2048 points, as the DGCNN and Vector Neurons loaders do (``pointcloud[:num_points]``); class
names come from ``shape_names.txt`` beside the files when present. Needs h5py (extra ``h5``).

Items are ``Data(pos (num_points, 3) float32, y (1,) long)``. With ``normalize`` (the default)
each cloud is centred at its centroid and scaled into the unit ball
(:class:`~relaxgnn.data.point_clouds.Normalize`; the HDF5 clouds are already about unit size,
``normalize=False`` gives them exactly as stored); ``rotation`` ``"z"`` or ``"so3"`` then
rotates it (:class:`~relaxgnn.data.point_clouds.RandomRotation`).
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch_geometric.data import Data

from .clouds import PointCloudDataset, read_recorded_npz, write_recorded_npz

SPLITS = ("train", "test")
FORMATS = ("off", "h5")
CACHE_FORMAT = 1
H5_FOLDER = "modelnet40_ply_hdf5_2048"

__all__ = ["FORMATS", "ModelNet", "OFFFormatError", "read_off", "sample_surface"]


class OFFFormatError(ValueError):
    """An ``.off`` file that cannot be read; the message names the file and the line."""


# ----------------------------------------------------------------------------- .off meshes


def _content_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of the lines that hold data: comments (``#`` to the end of the
    line) and blank lines dropped; any line ending (LF, CRLF, CR) accepted."""
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            lines.append((number, line))
    return lines


def _counts(path: Path, number: int, tokens: list[str]) -> tuple[int, int]:
    if len(tokens) not in (2, 3):
        raise OFFFormatError(
            f"{path}, line {number}: expected the counts 'vertices faces [edges]', "
            f"got {' '.join(tokens)!r}"
        )
    try:
        counts = [int(t) for t in tokens]
    except ValueError:
        raise OFFFormatError(
            f"{path}, line {number}: the counts must be integers, got {' '.join(tokens)!r}"
        ) from None
    if min(counts) < 0:
        raise OFFFormatError(f"{path}, line {number}: negative count in {' '.join(tokens)!r}")
    return counts[0], counts[1]


def _vertices_slow(path: Path, lines: list[tuple[int, str]]) -> np.ndarray:
    out = np.empty((len(lines), 3))
    for row, (number, line) in enumerate(lines):
        tokens = line.split()
        if len(tokens) < 3:
            raise OFFFormatError(
                f"{path}, line {number}: a vertex needs 3 coordinates, got {line!r}"
            )
        for col, token in enumerate(tokens[:3]):
            try:
                out[row, col] = float(token)
            except ValueError:
                raise OFFFormatError(
                    f"{path}, line {number}: vertex coordinate {token!r} is not a number"
                ) from None
        if not np.isfinite(out[row]).all():
            raise OFFFormatError(f"{path}, line {number}: non-finite vertex {line!r}")
    return out


def _faces_slow(path: Path, lines: list[tuple[int, str]], num_vertices: int) -> np.ndarray:
    triangles = []
    for number, line in lines:
        tokens = line.split()
        try:
            values = [int(t) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not re.fullmatch(r"[+-]?\d+", t))
            raise OFFFormatError(
                f"{path}, line {number}: face entry {bad!r} is not an integer"
            ) from None
        n = values[0]
        if n < 3:
            raise OFFFormatError(f"{path}, line {number}: a face needs at least 3 vertices, "
                                 f"got {n}")
        if len(values) < n + 1:
            raise OFFFormatError(
                f"{path}, line {number}: the face lists {len(values) - 1} vertex indices, "
                f"its count says {n}"
            )
        face = values[1 : n + 1]  # values after the indices (a face colour) are ignored
        for index in face:
            if not 0 <= index < num_vertices:
                raise OFFFormatError(
                    f"{path}, line {number}: vertex index {index} out of range "
                    f"({num_vertices} vertices)"
                )
        triangles.extend((face[0], face[k], face[k + 1]) for k in range(1, n - 1))
    return np.asarray(triangles, dtype=np.int64).reshape(-1, 3)


def read_off(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ASCII ``.off`` mesh: ``(vertices (V, 3) float64, triangles (T, 3) int64)``.

    Accepts the header ``OFF`` with the counts ``V F [E]`` on the next line, or on the same line
    (``OFF490 518 0``: the broken header of some ModelNet files), comments from ``#`` to the
    end of a line, blank lines and LF, CRLF or CR line ends. A face ``n i_1 … i_n`` with
    :math:`n > 3` is triangulated as a fan :math:`(i_1, i_k, i_{k+1})`, ``k = 2 … n − 1``
    (exact for the planar convex polygons of ModelNet); values after a vertex's 3 coordinates
    or a face's indices (colours) are ignored. Raises :class:`OFFFormatError` naming the file
    and line of the first problem: a missing or bad header, a non-number, an index out of
    range, a face of fewer than 3 vertices, a file that ends early.
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8", errors="replace")
    lines = _content_lines(text)
    if not lines:
        raise OFFFormatError(f"{path}: empty file (expected an OFF header)")
    number, first = lines[0]
    if not first.startswith("OFF"):
        raise OFFFormatError(f"{path}, line {number}: expected the header 'OFF', got {first!r}")
    rest = first[3:].split()
    if rest:  # 'OFF490 518 0' or 'OFF 490 518 0'
        num_vertices, num_faces = _counts(path, number, rest)
        body = lines[1:]
    else:
        if len(lines) < 2:
            raise OFFFormatError(f"{path}, line {number}: the file ends after the header")
        num_vertices, num_faces = _counts(path, lines[1][0], lines[1][1].split())
        body = lines[2:]
    if len(body) < num_vertices + num_faces:
        last = body[-1][0] if body else lines[-1][0]
        raise OFFFormatError(
            f"{path}, line {last}: the file ends after {len(body)} vertex and face lines, its "
            f"header says {num_vertices} vertices and {num_faces} faces"
        )
    vertex_lines, face_lines = body[:num_vertices], body[num_vertices : num_vertices + num_faces]
    # fast paths (numpy's C parser), checked; anything unusual goes the line-by-line way,
    # which also finds the line of an error
    try:
        vertices = np.loadtxt([line for _, line in vertex_lines], ndmin=2, dtype=np.float64)
        if vertices.shape != (num_vertices, 3) or not np.isfinite(vertices).all():
            raise ValueError
    except ValueError:
        vertices = _vertices_slow(path, vertex_lines)
    vertices = vertices.reshape(num_vertices, 3)
    try:
        faces = np.loadtxt([line for _, line in face_lines], ndmin=2, dtype=np.int64)
        if faces.shape != (num_faces, 4) or (faces[:, 0] != 3).any():
            raise ValueError
        triangles = faces[:, 1:]
        if triangles.size and (triangles.min() < 0 or triangles.max() >= num_vertices):
            raise ValueError
    except ValueError:
        triangles = _faces_slow(path, face_lines, num_vertices)
    return vertices, np.ascontiguousarray(triangles)


def triangle_areas(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    r"""Areas :math:`\tfrac12\lVert (b - a)\times(c - a)\rVert` of the triangles ``(T, 3)``."""
    a, b, c = (vertices[triangles[:, k]] for k in range(3))
    return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)


def sample_surface(
    vertices: np.ndarray,
    triangles: np.ndarray,
    num_points: int,
    rng: np.random.Generator,
    where: str = "mesh",
) -> np.ndarray:
    r"""``num_points`` points uniform on the surface of a triangle mesh, float64
    ``(num_points, 3)``: triangle :math:`t` with probability :math:`A_t/\sum_s A_s`, then
    :math:`p = (1-\sqrt{r_1})a + \sqrt{r_1}(1-r_2)b + \sqrt{r_1}r_2c` (module docstring).
    Triangles of zero area are never chosen; a mesh of zero total area is an error naming
    ``where``."""
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles, dtype=np.int64)
    areas = triangle_areas(vertices, triangles) if len(triangles) else np.zeros(0)
    cumulative = np.cumsum(areas)
    if not (len(areas) and cumulative[-1] > 0 and np.isfinite(cumulative[-1])):
        raise ValueError(
            f"{where}: no surface to sample ({len(triangles)} triangles, total area "
            f"{cumulative[-1] if len(areas) else 0.0})"
        )
    u = rng.random(num_points) * cumulative[-1]
    chosen = np.minimum(np.searchsorted(cumulative, u, side="right"), len(areas) - 1)
    r1, r2 = rng.random(num_points), rng.random(num_points)
    s = np.sqrt(r1)[:, None]
    r2 = r2[:, None]
    a, b, c = (vertices[triangles[chosen, k]] for k in range(3))
    return (1 - s) * a + s * (1 - r2) * b + s * r2 * c


def _mesh_seed(seed: int, relative: str) -> np.random.SeedSequence:
    digest = np.frombuffer(hashlib.sha256(relative.encode()).digest()[:16], dtype=np.uint32)
    return np.random.SeedSequence([int(seed), *(int(w) for w in digest)])


# ----------------------------------------------------------------------------- layouts


def _is_class_dir(path: Path) -> bool:
    return (path.is_dir() and not path.name.startswith((".", "__"))
            and ((path / "train").is_dir() or (path / "test").is_dir()))


def _class_folders(base: Path) -> list[str]:
    if not base.is_dir():
        return []
    return sorted(d.name for d in base.iterdir() if _is_class_dir(d))


def _h5_number(path: Path) -> tuple[int, str]:
    match = re.search(r"(\d+)\.h5$", path.name)
    return (int(match.group(1)) if match else -1, path.name)


def _h5_files(folder: Path, split: str) -> list[Path]:
    return sorted(folder.glob(f"ply_data_{split}*.h5"), key=_h5_number)


def _find_h5_folder(root: Path) -> Path | None:
    for folder in (root / H5_FOLDER, root / "raw" / H5_FOLDER, root, root / "raw"):
        if folder.is_dir() and any(folder.glob("ply_data_*.h5")):
            return folder
    return None


def _find_off_base(root: Path) -> Path | None:
    for base in (root, root / "raw"):
        if _class_folders(base):
            return base
    return None


def _layout(root: Path, format: str | None) -> tuple[str, Path]:
    """The format and the folder of the data under ``root`` (see the module docstring)."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS} or None (detect), got {format!r}")
    h5, off = _find_h5_folder(root), _find_off_base(root)
    expected = (
        f"expected class folders <class>/{{train,test}}/*.off in {root} or {root / 'raw'}, "
        f"or ply_data_{{train,test}}*.h5 files in {root / H5_FOLDER}, {root} or {root / 'raw'}"
    )
    if format == "off" or (format is None and off is not None and h5 is None):
        if off is None:
            raise FileNotFoundError(f"ModelNet: no .off layout under {root}: {expected}")
        return "off", off
    if format == "h5" or (format is None and h5 is not None and off is None):
        if h5 is None:
            raise FileNotFoundError(f"ModelNet: no HDF5 files under {root}: {expected}")
        return "h5", h5
    if h5 is not None and off is not None:
        raise ValueError(
            f"ModelNet: {root} holds both .off class folders ({off}) and HDF5 files ({h5}); "
            "pass format='off' or format='h5'"
        )
    raise FileNotFoundError(f"ModelNet: nothing to read under {root}: {expected}")


# ----------------------------------------------------------------------------- HDF5


def _import_h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            "reading the ModelNet HDF5 files needs h5py: pip install 'relaxgnn[h5]' "
            "(or pip install h5py)"
        ) from err
    return h5py


def _read_h5(files: Sequence[Path], num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``data[:, :num_points]`` float32 and ``label`` int64 of ``files``, checked."""
    h5py = _import_h5py()
    points, labels = [], []
    for path in files:
        try:
            with h5py.File(path, "r") as f:
                for key in ("data", "label"):
                    if key not in f:
                        raise ValueError(f"{path}: no dataset {key!r} (has {sorted(f.keys())})")
                data, label = f["data"], f["label"]
                if data.ndim != 3 or data.shape[2] != 3:
                    raise ValueError(
                        f"{path}: dataset 'data' must have shape (B, points, 3), got {data.shape}"
                    )
                if data.shape[1] < num_points:
                    raise ValueError(f"{path}: clouds of {data.shape[1]} points, fewer than "
                                     f"num_points={num_points}")
                if label.shape not in ((data.shape[0], 1), (data.shape[0],)):
                    raise ValueError(f"{path}: dataset 'label' must have shape "
                                     f"({data.shape[0]}, 1), got {label.shape}")
                if not (np.issubdtype(label.dtype, np.integer)
                        and np.issubdtype(data.dtype, np.floating)):
                    raise ValueError(f"{path}: 'data' must be floats and 'label' integers, got "
                                     f"{data.dtype} and {label.dtype}")
                pos = np.asarray(data[:, :num_points], dtype=np.float32)
                y = np.asarray(label[()], dtype=np.int64).reshape(-1)
        except OSError as err:
            raise ValueError(f"{path}: not a readable HDF5 file ({err})") from err
        bad = np.argwhere(~np.isfinite(pos))
        if len(bad):
            raise ValueError(f"{path}: non-finite coordinate in cloud {bad[0][0]}")
        if len(y) and y.min() < 0:
            raise ValueError(f"{path}: negative label {y.min()}")
        points.append(pos)
        labels.append(y)
    return np.concatenate(points), np.concatenate(labels)


def _h5_classes(folder: Path) -> list[str]:
    """``shape_names.txt`` beside the files, or ``"0" … "C-1"`` from the largest label of all
    the files (both splits)."""
    names = folder / "shape_names.txt"
    if names.is_file():
        return [line.strip() for line in names.read_text().splitlines() if line.strip()]
    h5py = _import_h5py()
    largest = -1
    for path in _h5_files(folder, ""):
        with h5py.File(path, "r") as f:
            if "label" in f and f["label"].size:
                largest = max(largest, int(np.max(f["label"][()])))
    return [str(i) for i in range(largest + 1)]


# ----------------------------------------------------------------------------- the cache


def _read_cache(path: Path, meta: dict[str, Any], num_classes: int) -> tuple[np.ndarray, ...]:
    """The cached ``(pos, label)`` if the file's record equals ``meta`` and its arrays are
    sound; ``ValueError`` saying what is wrong otherwise."""
    arrays = read_recorded_npz(path, meta, ("pos", "label"))
    pos, label = arrays["pos"], arrays["label"]
    num = len(meta["files"])
    if pos.shape != (num, meta["num_points"], 3) or pos.dtype != np.float32:
        raise ValueError(f"pos has shape {pos.shape} {pos.dtype}, expected "
                         f"({num}, {meta['num_points']}, 3) float32")
    if label.shape != (num,) or not np.isin(label, np.arange(num_classes)).all():
        raise ValueError(f"label has shape {label.shape} or values outside [0, {num_classes})")
    if not np.isfinite(pos).all():
        raise ValueError("pos has non-finite values")
    return pos, label


def _sample_split(base: Path, files: list[str], classes: list[str], num_points: int,
                  seed: int, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    pos = np.empty((len(files), num_points, 3), dtype=np.float32)
    label = np.empty(len(files), dtype=np.int64)
    index = {name: i for i, name in enumerate(classes)}
    for row, relative in enumerate(tqdm(files, desc="sampling ModelNet meshes", unit="mesh",
                                        disable=not progress)):
        path = base / relative
        vertices, triangles = read_off(path)
        rng = np.random.default_rng(_mesh_seed(seed, relative))
        pos[row] = sample_surface(vertices, triangles, num_points, rng, where=str(path))
        label[row] = index[relative.split("/", 1)[0]]
    return pos, label


# ----------------------------------------------------------------------------- the data set


class ModelNet(PointCloudDataset):
    r"""ModelNet40 / ModelNet10 as point clouds ``Data(pos (num_points, 3), y (1,))``, from the
    ``.off`` meshes or PointNet's HDF5 files (module docstring). A
    :class:`~relaxgnn.data.base.GraphDataset`: PyG's ``Dataset`` protocol, so ``data[i]``,
    slices, index lists and masks (views) and ``transform`` work as in PyG.

    Args:
        root: the folder (see the module docstring for the layouts that are recognised).
        split: ``"train"`` or ``"test"``.
        num_points: points per cloud (sampled from the meshes; the first ``num_points`` of the
            HDF5 clouds).
        format: ``"off"``, ``"h5"`` or ``None``: detected from what is under ``root`` (an
            error when both are there).
        seed: seed of the surface sampling (meshes only; part of the cache's name).
        normalize: centre each cloud at its centroid and scale it into the unit ball.
        rotation: ``"none"``, ``"z"`` (about the up axis) or ``"so3"``, applied after
            ``normalize`` on each access.
        rotation_seed: ``None``: a fresh random rotation on every access (augmentation); an
            int: item ``i`` always gets the rotation derived from ``(rotation_seed, i)``.
        transform: applied to each item on access, after the rotation (PyG convention).
        pre_transform: applied once to each (normalised, unrotated) item when the data set is
            built, in memory (not cached): use it for rotation-invariant work such as a kNN
            graph, and ``transform`` for features that must follow the rotation.
        force_reload: resample the meshes even when the cache is valid.
        progress: show a progress bar while sampling meshes.

    Attributes:
        classes: the class names, in label order; ``num_classes`` their number.
        format, source: the format read and the folder it was read from.
        files: the ``.off`` files (relative to ``source``) or HDF5 files of the split, in
            item order (HDF5: each file holds many items).
        cache_path: the cache of the sampled points (``None`` for HDF5).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        num_points: int = 1024,
        format: str | None = None,
        seed: int = 0,
        normalize: bool = True,
        rotation: str = "none",
        rotation_seed: int | None = None,
        transform: Callable[[Data], Data] | None = None,
        pre_transform: Callable[[Data], Data] | None = None,
        force_reload: bool = False,
        progress: bool = True,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"ModelNet split must be one of {SPLITS}, got {split!r}")
        if isinstance(num_points, bool) or int(num_points) != num_points or num_points < 1:
            raise ValueError(f"num_points must be a positive integer, got {num_points!r}")
        super().__init__(normalize, rotation, rotation_seed, transform, pre_transform)
        self.root, self.split, self.num_points = str(root), split, int(num_points)
        self.seed = int(seed)
        self.format, self.source = _layout(Path(root), format)
        if self.format == "off":
            pos, label = self._load_off(force_reload, progress)
        else:
            self.cache_path = None  # the HDF5 clouds are read as they are
            self.files = [str(p) for p in _h5_files(self.source, split)]
            if not self.files:
                raise FileNotFoundError(f"ModelNet: no ply_data_{split}*.h5 in {self.source}")
            self.classes = _h5_classes(self.source)
            pos, label = _read_h5([Path(p) for p in self.files], self.num_points)
            if len(label) and label.max() >= len(self.classes):
                raise ValueError(f"ModelNet: label {label.max()} in {self.source} but only "
                                 f"{len(self.classes)} classes")
        self._set_clouds(pos, label)

    def _load_off(self, force_reload: bool, progress: bool) -> tuple[np.ndarray, np.ndarray]:
        self.classes = _class_folders(self.source)
        self.files = [
            path.relative_to(self.source).as_posix()
            for name in self.classes
            for path in sorted((self.source / name / self.split).glob("*"))
            if path.suffix.lower() == ".off" and not path.name.startswith(".")
        ]
        if not self.files:
            raise FileNotFoundError(f"ModelNet: no .off files in {self.source}/<class>/"
                                    f"{self.split}/ (classes {self.classes})")
        meta = {
            "format": CACHE_FORMAT, "split": self.split, "num_points": self.num_points,
            "seed": self.seed, "classes": self.classes, "files": self.files,
            "sampler": "area-weighted triangles, uniform barycentric, "
                       "SeedSequence([seed, sha256(relative path)]) per mesh",
        }  # fmt: skip
        self.cache_path = (Path(self.root) / "processed"
                           / f"modelnet_{self.split}_{self.num_points}_{self.seed}.npz")
        if self.cache_path.is_file() and not force_reload:
            try:
                return _read_cache(self.cache_path, meta, len(self.classes))
            except ValueError as err:
                warnings.warn(f"ModelNet cache {self.cache_path}: {err}; resampling",
                              stacklevel=3)
        pos, label = _sample_split(self.source, self.files, self.classes, self.num_points,
                                   self.seed, progress)
        write_recorded_npz(self.cache_path, {"pos": pos, "label": label}, meta)
        return pos, label

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}({len(self)}, split={self.split!r}, "
                f"num_points={self.num_points}, {self.num_classes} classes, "
                f"format={self.format!r}, rotation={self.rotation!r})")

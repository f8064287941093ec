"""ModelNet: the .off reader (ModelNet's broken headers, CRLF, comments, quads, errors with
file and line), uniform area-weighted surface sampling, the official layout and its cache,
rotation augmentation and PointNet's HDF5 files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
import yaml

from relaxgnn.data import KNNGraph, ModelNet, OFFFormatError, read_off, sample_surface
from relaxgnn.data import modelnet as modelnet_module
from relaxgnn.data.base import GraphDataset

ROOT = Path(__file__).resolve().parents[1]

CUBE_VERTICES = [(x, y, z) for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)]
CUBE_QUADS = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
TETRA_VERTICES = [(0, 0, 0), (2, 0, 0), (0, 2, 0), (0, 0, 2)]
TETRA_FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def off_text(vertices, faces, header="split", crlf=False, comments=False) -> str:
    """An .off file; header "split" (OFF, then the counts), "broken" (OFF8 6 0: ModelNet's)
    or "same" (OFF 8 6 0)."""
    counts = f"{len(vertices)} {len(faces)} 0"
    lines = {"split": ["OFF", counts], "broken": [f"OFF{counts}"], "same": [f"OFF {counts}"]}
    lines = lines[header]
    if comments:
        lines = ["# made by a test", *lines, "", "# vertices"]
    lines += [" ".join(f"{c:.17g}" for c in v) for v in vertices]
    if comments:
        lines.append("   # faces follow")
    lines += [" ".join(str(i) for i in (len(f), *f)) + (" # a face" if comments else "")
              for f in faces]
    return ("\r\n" if crlf else "\n").join(lines) + "\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode())
    return path


def cube_file(tmp_path, **kwargs) -> Path:
    return write(tmp_path / "cube.off", off_text(CUBE_VERTICES, CUBE_QUADS, **kwargs))


@pytest.mark.parametrize("header", ["split", "broken", "same"])
@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("comments", [False, True])
def test_read_off_variants(tmp_path, header, crlf, comments):
    vertices, triangles = read_off(cube_file(tmp_path, header=header, crlf=crlf,
                                             comments=comments))
    assert vertices.dtype == np.float64 and triangles.dtype == np.int64
    np.testing.assert_array_equal(vertices, np.array(CUBE_VERTICES, dtype=np.float64))
    assert triangles.shape == (12, 3)  # 6 quads, fan-triangulated
    # each quad (a, b, c, d) becomes (a, b, c) and (a, c, d)
    np.testing.assert_array_equal(triangles[:2], [[0, 1, 3], [0, 3, 2]])
    areas = modelnet_module.triangle_areas(vertices, triangles)
    assert abs(areas.sum() - 6.0) < 1e-12 and (areas > 0).all()


def test_read_off_mixed_faces_and_triangles(tmp_path):
    faces = [(0, 1, 2), (0, 1, 2, 3), (0, 1, 2, 3, 4)]
    vertices = [(0, 0, 0), (1, 0, 0), (1, 1, 0), (0, 1, 0), (-1, 0.5, 0)]
    _, triangles = read_off(write(tmp_path / "m.off", off_text(vertices, faces)))
    np.testing.assert_array_equal(
        triangles, [[0, 1, 2], [0, 1, 2], [0, 2, 3], [0, 1, 2], [0, 2, 3], [0, 3, 4]]
    )


# (what to break, the line that is reported, the message)
BAD = [
    ("face 4 7 9 3 2", 12, "vertex index 9 out of range"),
    ("face 3 1 x 2", 12, "'x' is not an integer"),
    ("face 2 1 2", 12, "at least 3 vertices"),
    ("face 4 1 2 3", 12, "lists 3 vertex indices"),
    ("vertex 0.5 abc 0.5", 5, "'abc' is not a number"),
    ("vertex 0.5 0.5", 5, "a vertex needs 3 coordinates"),
    ("vertex 0.5 nan 0.5", 5, "non-finite vertex"),
]


@pytest.mark.parametrize("what, line, message", BAD)
@pytest.mark.parametrize("crlf", [False, True])
def test_read_off_errors_name_file_and_line(tmp_path, what, line, message, crlf):
    kind, replacement = what.split(" ", 1)
    lines = off_text(CUBE_VERTICES, CUBE_QUADS).splitlines()
    # split header: line 1 OFF, line 2 counts, lines 3-10 vertices, lines 11-16 faces
    target = {"face": 12, "vertex": 5}[kind]
    lines[target - 1] = replacement
    path = write(tmp_path / "bad.off", ("\r\n" if crlf else "\n").join(lines))
    with pytest.raises(OFFFormatError, match=rf"bad\.off, line {line}: .*{message}"):
        read_off(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty file"),
        ("# only a comment\n", "empty file"),
        ("PLY\n8 6 0\n", r"line 1: expected the header 'OFF'"),
        ("OFF\n8 six 0\n", r"line 2: the counts must be integers"),
        ("# c\nOFF 8\n", r"line 2: expected the counts"),
        ("OFF\n3 1 0\n0 0 0\n1 0 0\n", r"line 4: the file ends after 2 vertex and face lines"),
    ],
)
def test_read_off_header_errors(tmp_path, text, message):
    with pytest.raises(OFFFormatError, match=rf"h\.off(, )?.*{message}"):
        read_off(write(tmp_path / "h.off", text))


def test_samples_lie_on_the_cube(tmp_path):
    vertices, triangles = read_off(cube_file(tmp_path, header="broken"))
    points = sample_surface(vertices, triangles, 5000, np.random.default_rng(0))
    assert points.shape == (5000, 3) and points.dtype == np.float64
    assert np.abs(np.abs(points).max(1) - 0.5).max() < 1e-12  # on a face
    assert np.abs(points).max() <= 0.5 + 1e-12  # inside the cube
    # all six faces, about equally often (each 1/6 of the area)
    face = np.argmax(np.abs(points), 1) * 2 + (points[np.arange(5000), np.argmax(np.abs(points),
                                                                                   1)] > 0)
    fractions = np.bincount(face, minlength=6) / 5000
    assert np.abs(fractions - 1 / 6).max() < 0.03


def test_sampling_is_area_weighted_and_uniform_in_a_triangle():
    # a big right triangle (area 2) and a small one (area 1/8) far away
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0],
                         [10, 0, 0], [10.5, 0, 0], [10, 0.5, 0]], dtype=np.float64)
    triangles = np.array([[0, 1, 2], [3, 4, 5]])
    n = 40_000
    points = sample_surface(vertices, triangles, n, np.random.default_rng(1))
    big = points[:, 0] < 5
    assert abs(big.mean() - 2 / 2.125) < 0.006  # binomial sd 0.0012
    # uniform inside the big triangle: x + y < 1 is a quarter of its area
    inner = (points[big, 0] + points[big, 1]) < 1
    assert abs(inner.mean() - 0.25) < 0.01
    assert (points[big, 0] + points[big, 1] <= 2 + 1e-12).all() and (points[big] >= 0).all()
    # zero-area triangles are never chosen; a mesh without area is an error
    flat = np.vstack([vertices, [[0, 0, 5]] * 3])
    points = sample_surface(flat, np.array([[0, 1, 2], [6, 7, 8]]), 1000,
                            np.random.default_rng(2))
    assert (points[:, 2] == 0).all()
    with pytest.raises(ValueError, match="thing.off: no surface to sample"):
        sample_surface(flat, np.array([[6, 7, 8]]), 10, np.random.default_rng(0),
                       where="thing.off")


# ----------------------------------------------------------------------------- the layout


def make_layout(base: Path, variants: bool = True) -> dict[str, list[str]]:
    """Three classes written in unsorted order: 'zebra' (cubes), 'apple' (tetrahedra),
    'mango' (cubes scaled by 2); train and test. Returns the class of each file per split."""
    files = {"train": [], "test": []}
    for name, vertices, faces, count in [
        ("zebra", CUBE_VERTICES, CUBE_QUADS, (3, 1)),
        ("apple", TETRA_VERTICES, TETRA_FACES, (2, 2)),
        ("mango", [tuple(2 * c for c in v) for v in CUBE_VERTICES], CUBE_QUADS, (2, 1)),
    ]:
        for split, n in zip(("train", "test"), count, strict=True):
            for k in range(1, n + 1):
                header = ("broken", "split", "same")[k % 3] if variants else "split"
                text = off_text(vertices, faces, header=header, crlf=variants and k % 2 == 0,
                                comments=variants and k == 1)
                write(base / name / split / f"{name}_{k:04d}.off", text)
                files[split].append(name)
    return files


def test_modelnet_reads_the_official_layout(tmp_path, monkeypatch):
    make_layout(tmp_path)
    listing = Path.iterdir
    # the file system may list folders in any order: here, reverse-sorted
    monkeypatch.setattr(Path, "iterdir", lambda self: iter(sorted(listing(self), reverse=True)))
    train = ModelNet(tmp_path, "train", num_points=64, progress=False)
    test = ModelNet(tmp_path, "test", num_points=64, progress=False)
    assert train.classes == test.classes == ["apple", "mango", "zebra"]
    assert train.num_classes == 3 and train.format == "off"
    assert len(train) == 7 and len(test) == 4
    labels = [int(d.y) for d in train]
    assert labels == [0, 0, 1, 1, 2, 2, 2]  # sorted class folders, sorted files
    assert train.files[:3] == ["apple/train/apple_0001.off", "apple/train/apple_0002.off",
                               "mango/train/mango_0001.off"]
    assert [int(d.y) for d in test] == [0, 0, 1, 2]
    item = train[0]
    assert set(item.keys()) == {"pos", "y"}
    assert item.pos.shape == (64, 3) and item.pos.dtype == torch.float32
    assert item.y.shape == (1,) and item.y.dtype == torch.long
    for data in train:  # centred at the centroid, farthest point on the unit sphere
        assert data.pos.mean(0).abs().max() < 1e-6
        assert abs(float(data.pos.norm(dim=1).max()) - 1) < 1e-6
    assert "ModelNet(7, split='train'" in repr(train)


def test_modelnet_points_lie_on_the_meshes(tmp_path):
    make_layout(tmp_path)
    raw = ModelNet(tmp_path, "train", num_points=200, normalize=False, progress=False)
    for data in raw:
        p = data.pos.double()
        name = raw.classes[int(data.y)]
        if name == "zebra":  # the unit cube: one coordinate at ±0.5
            assert (p.abs().amax(1) - 0.5).abs().max() < 1e-6
        elif name == "mango":
            assert (p.abs().amax(1) - 1.0).abs().max() < 1e-6
        else:  # the tetrahedron: on a coordinate plane or on x + y + z = 2
            on_plane = p.abs().amin(1) < 1e-6
            on_slope = (p.sum(1) - 2).abs() < 1e-6
            assert (on_plane | on_slope).all() and (p >= -1e-6).all()


def test_modelnet_under_raw_and_format_detection(tmp_path):
    make_layout(tmp_path / "raw", variants=False)
    data = ModelNet(tmp_path, "test", num_points=16, progress=False)
    assert data.source == tmp_path / "raw" and len(data) == 4
    assert (tmp_path / "processed" / "modelnet_test_16_0.npz").is_file()
    with pytest.raises(FileNotFoundError, match="no HDF5 files"):
        ModelNet(tmp_path, "test", format="h5")
    with pytest.raises(FileNotFoundError, match="nothing to read"):
        ModelNet(tmp_path / "empty", "test")
    with pytest.raises(ValueError, match="split"):
        ModelNet(tmp_path, "val")
    with pytest.raises(ValueError, match="format"):
        ModelNet(tmp_path, "test", format="ply")


def test_modelnet_bad_file_is_reported(tmp_path):
    make_layout(tmp_path, variants=False)
    bad = tmp_path / "mango" / "train" / "mango_0002.off"
    lines = bad.read_text().splitlines()
    lines[11] = "4 0 1 2 99"
    bad.write_text("\n".join(lines))
    with pytest.raises(OFFFormatError, match=r"mango_0002\.off, line 12: vertex index 99"):
        ModelNet(tmp_path, "train", num_points=8, progress=False)


def test_modelnet_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    make_layout(tmp_path)
    first = ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False)
    cache = tmp_path / "processed" / "modelnet_train_32_3.npz"
    assert first.cache_path == cache and cache.is_file()
    mtime = cache.stat().st_mtime_ns

    def no_sampling(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(modelnet_module, "sample_surface", no_sampling)
        again = ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False)
    assert cache.stat().st_mtime_ns == mtime
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.pos, b.pos) and torch.equal(a.y, b.y)
    other = ModelNet(tmp_path, "train", num_points=32, seed=4, progress=False)
    assert not torch.allclose(other[0].pos, first[0].pos)
    assert (tmp_path / "processed" / "modelnet_train_32_4.npz").is_file()
    # a new mesh makes the cache stale: resampled with a warning
    write(tmp_path / "apple" / "train" / "apple_0003.off", off_text(TETRA_VERTICES, TETRA_FACES))
    with pytest.warns(UserWarning, match=r"other parameters \(.*files"):
        grown = ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False)
    assert len(grown) == 8
    # a mesh's sample depends on the seed and its own path only
    assert torch.equal(grown[0].pos, first[0].pos) and torch.equal(grown[3].pos, first[2].pos)
    # a damaged cache is resampled with a warning
    cache.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="resampling"):
        repaired = ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False)
    assert torch.equal(repaired[0].pos, first[0].pos)
    with monkeypatch.context() as m:
        m.setattr(modelnet_module, "sample_surface", no_sampling)
        ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False)
        with pytest.raises(AssertionError, match="cache should"):
            ModelNet(tmp_path, "train", num_points=32, seed=3, progress=False,
                     force_reload=True)


def test_modelnet_rotation_augmentation(tmp_path):
    make_layout(tmp_path)
    plain = ModelNet(tmp_path, "train", num_points=64, progress=False)
    z = ModelNet(tmp_path, "train", num_points=64, rotation="z", rotation_seed=0,
                 progress=False)
    so3 = ModelNet(tmp_path, "train", num_points=64, rotation="so3", rotation_seed=0,
                   progress=False)
    for i in range(len(plain)):
        p, q, r = plain[i].pos, z[i].pos, so3[i].pos
        assert torch.allclose(q[:, 2], p[:, 2], atol=1e-6)  # heights kept
        assert not torch.allclose(q, p, atol=1e-3)
        assert not torch.allclose(r[:, 2], p[:, 2], atol=1e-3)
        assert torch.allclose(r.norm(dim=1), p.norm(dim=1), atol=1e-5)
        assert torch.equal(z[i].pos, q)  # fixed per item
    again = ModelNet(tmp_path, "train", num_points=64, rotation="so3", rotation_seed=0,
                     progress=False)
    assert torch.equal(again[2].pos, so3[2].pos)
    other = ModelNet(tmp_path, "train", num_points=64, rotation="so3", rotation_seed=1,
                     progress=False)
    assert not torch.allclose(other[2].pos, so3[2].pos)
    # a view keeps each item's own rotation; transforms run after it (PyG's __getitem__)
    assert torch.equal(so3[1:][1].pos, so3[2].pos)
    fresh = ModelNet(tmp_path, "train", num_points=64, rotation="so3", progress=False)
    assert not torch.allclose(fresh[0].pos, fresh[0].pos)
    with pytest.raises(ValueError, match="rotation"):
        ModelNet(tmp_path, "train", rotation="x")


def test_modelnet_pyg_protocol(tmp_path):
    make_layout(tmp_path, variants=False)
    data = ModelNet(tmp_path, "train", num_points=20, transform=KNNGraph(4), progress=False)
    assert isinstance(data, GraphDataset) and type(data).__getitem__ is GraphDataset.__getitem__
    with pytest.raises(IndexError, match="index 7 is out of range"):
        data[[0, 7]]
    assert data[0].edge_index.shape == (2, 80)
    view = data[[0, 6]]
    assert len(view) == 2 and [int(d.y) for d in view] == [0, 2]
    assert view[1].edge_index.shape == (2, 80)
    assert len(data[2:5]) == 3 and torch.equal(data[-1].pos, data[6].pos)
    calls = []

    def pre(d):
        calls.append(1)
        d.marker = torch.ones(1)
        return d

    pre_data = ModelNet(tmp_path, "train", num_points=20, pre_transform=pre, progress=False)
    assert len(calls) == 7 and pre_data[3].marker.shape == (1,)
    assert torch.equal(pre_data[3].pos, ModelNet(tmp_path, "train", num_points=20,
                                                 progress=False)[3].pos)
    pre_data[3].pos.add_(1)  # an item is a copy
    assert len(calls) == 7 and pre_data[3].pos.abs().max() <= 1 + 1e-6


# ----------------------------------------------------------------------------- HDF5


def write_h5(path: Path, data: np.ndarray, label: np.ndarray | None, **extra) -> None:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        if label is not None:
            f.create_dataset("label", data=label)
        for key, value in extra.items():
            f.create_dataset(key, data=value)


def h5_layout(root: Path, names: bool = True) -> dict[str, np.ndarray]:
    folder = root / "modelnet40_ply_hdf5_2048"
    rng = np.random.default_rng(0)
    clouds = {}
    for name, size in [("train0", 3), ("train2", 2), ("train10", 4), ("test0", 2)]:
        data = rng.standard_normal((size, 16, 3)).astype(np.float32)
        label = rng.integers(0, 3, (size, 1)).astype(np.uint8)
        write_h5(folder / f"ply_data_{name}.h5", data, label, normal=data)
        clouds[name] = (data, label)
    if names:
        (folder / "shape_names.txt").write_text("airplane\nbathtub\nbed\n")
    return clouds


def test_modelnet_reads_hdf5(tmp_path):
    clouds = h5_layout(tmp_path)
    data = ModelNet(tmp_path, "train", num_points=8, normalize=False)
    assert data.format == "h5" and data.classes == ["airplane", "bathtub", "bed"]
    assert data.cache_path is None and not (tmp_path / "processed").exists()
    order = ["train0", "train2", "train10"]  # by file number, not by name
    assert [Path(f).name for f in data.files] == [f"ply_data_{o}.h5" for o in order]
    points = np.concatenate([clouds[o][0][:, :8] for o in order])
    labels = np.concatenate([clouds[o][1][:, 0] for o in order])
    assert len(data) == 9
    for i, item in enumerate(data):
        assert item.pos.dtype == torch.float32 and item.pos.shape == (8, 3)
        assert torch.equal(item.pos, torch.from_numpy(points[i]))  # the first 8 of 16 points
        assert item.y.tolist() == [int(labels[i])] and item.y.dtype == torch.long
    test = ModelNet(tmp_path, "test", num_points=16)
    assert len(test) == 2 and abs(float(test[0].pos.norm(dim=1).max()) - 1) < 1e-6
    # also found in root itself, and without shape_names.txt classes are numbered
    plain = tmp_path / "plain"
    h5_layout(plain, names=False)
    for f in (plain / "modelnet40_ply_hdf5_2048").iterdir():
        f.rename(plain / f.name)
    unnamed = ModelNet(plain, "train", num_points=4)
    assert unnamed.source == plain and unnamed.classes == ["0", "1", "2"]


def test_modelnet_hdf5_errors(tmp_path):
    h5_layout(tmp_path)
    with pytest.raises(ValueError, match=r"ply_data_train0\.h5: clouds of 16 points, fewer"):
        ModelNet(tmp_path, "train", num_points=17)
    folder = tmp_path / "modelnet40_ply_hdf5_2048"
    write_h5(folder / "ply_data_test1.h5", np.zeros((2, 16, 3), np.float32), None)
    with pytest.raises(ValueError, match=r"ply_data_test1\.h5: no dataset 'label'"):
        ModelNet(tmp_path, "test", num_points=8)
    write_h5(folder / "ply_data_test1.h5", np.zeros((2, 16), np.float32), np.zeros((2, 1)))
    with pytest.raises(ValueError, match=r"ply_data_test1\.h5: dataset 'data' must have shape"):
        ModelNet(tmp_path, "test", num_points=8)
    (folder / "ply_data_test1.h5").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"ply_data_test1\.h5: not a readable HDF5 file"):
        ModelNet(tmp_path, "test", num_points=8)
    # both layouts under one root: the format must be named
    make_layout(tmp_path, variants=False)
    with pytest.raises(ValueError, match="format='off' or format='h5'"):
        ModelNet(tmp_path, "train", num_points=8)
    assert ModelNet(tmp_path, "train", num_points=8, format="off", progress=False).format == "off"
    assert len(ModelNet(tmp_path, "train", num_points=8, format="h5")) == 9


def test_modelnet_hdf5_without_h5py(tmp_path, monkeypatch):
    h5_layout(tmp_path)
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py raises ImportError
    with pytest.raises(ImportError, match=r"needs h5py: pip install 'relaxgnn\[h5\]'"):
        ModelNet(tmp_path, "train", num_points=8)


def test_h5_extra_is_in_pyproject_and_environment():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert [r for r in extras["h5"] if r.startswith("h5py")]
    assert set(extras["h5"]) <= set(pip) and set(extras["h5"]) <= set(extras["dev"])

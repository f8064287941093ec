"""The synthetic shape set: each primitive's sampler is on its surface (float64) and uniform,
the stretch keeps points uniform, the recorded stretch and deformation undo exactly; the data
set is deterministic, balanced, hard enough, canonically oriented, cached once, with
independent splits; ``relaxgnn data shapes`` writes the cache."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from torch_geometric.loader import DataLoader
from torch_geometric.transforms import Compose

from relaxgnn.cli import main
from relaxgnn.data import SHAPES, KNNGraph, PointFeatures, SyntheticShapes
from relaxgnn.data import shapes as shapes_module
from relaxgnn.data.base import GraphDataset
from relaxgnn.data.point_clouds import RandomRotation
from relaxgnn.data.shapes import (
    CAPSULE_HALF_LENGTH,
    TORUS_TUBE,
    generate_shapes,
    sample_cone,
    sample_cylinder,
    sample_pyramid,
)

TOL = 1e-9


def shape_parameter(name: str, p: np.ndarray) -> np.ndarray:
    """The torus's tube radius or the capsule's half-length of each shape ``(S, 1)``, from its
    points ``(S, M, 3)`` (see :func:`residual`)."""
    rho, z = np.hypot(p[..., 0], p[..., 1]), p[..., 2]
    if name == "torus":
        return np.sqrt(np.median((rho - 1) ** 2 + z**2, axis=-1, keepdims=True))
    return (np.abs(z) - np.sqrt(np.maximum(1 - rho**2, 0))).max(-1, keepdims=True)


def residual(name: str, p: np.ndarray, ref: np.ndarray | None = None) -> np.ndarray:
    """How far points ``(S, M, 3)`` are from the canonical surface of ``name`` (0 on it). The
    torus's tube radius and the capsule's half-length (per shape, not recorded) are read from
    the points ``ref`` (default ``p``), exactly: every torus point has the same tube
    distance, and ``|z| - sqrt(1 - rho^2)`` is the half-length on a capsule's caps and less
    on its side."""
    ref = p if ref is None else ref
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    rho = np.hypot(x, y)
    if name == "box":
        return np.abs(np.abs(p).max(-1) - 1)
    if name == "cylinder":
        side = np.abs(rho - 1) + np.maximum(np.abs(z) - 1, 0)
        cap = np.abs(np.abs(z) - 1) + np.maximum(rho - 1, 0)
        return np.minimum(side, cap)
    if name == "cone":
        side = np.abs(rho - (1 - z) / 2) + np.maximum(np.abs(z) - 1, 0)
        base = np.abs(z + 1) + np.maximum(rho - 1, 0)
        return np.minimum(side, base)
    if name == "torus":
        a = shape_parameter(name, ref)
        return np.abs((rho - 1) ** 2 + z**2 - a**2)
    if name == "ellipsoid":
        return np.abs(np.linalg.norm(p, axis=-1) - 1)
    if name == "capsule":
        L = shape_parameter(name, ref)
        dz = np.maximum(np.abs(z) - L, 0)  # distance to the segment |z| <= L of the z axis
        return np.abs(np.hypot(rho, dz) - 1)
    if name == "pyramid":
        base = np.abs(z + 1) + np.maximum(np.maximum(np.abs(x), np.abs(y)) - 1, 0)
        side = np.abs(np.maximum(np.abs(x), np.abs(y)) - (1 - z) / 2) + np.maximum(
            np.abs(z) - 1, 0)
        return np.minimum(base, side)
    if name == "bowl":
        return np.abs(np.linalg.norm(p, axis=-1) - 1) + np.maximum(z, 0)
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(SHAPES))
def test_samplers_are_on_their_surfaces(name):
    points, normals = SHAPES[name](np.random.default_rng(0), 5, 2000)
    assert points.shape == normals.shape == (5, 2000, 3) and points.dtype == np.float64
    assert residual(name, points).max() < TOL
    if name in ("torus", "capsule"):
        low, high = TORUS_TUBE if name == "torus" else CAPSULE_HALF_LENGTH
        parameter = shape_parameter(name, points)
        assert ((parameter >= low) & (parameter <= high)).all() and parameter.std() > 0.01
    assert np.abs(np.linalg.norm(normals, axis=-1) - 1).max() < TOL
    # the normal is orthogonal to the surface: a small step along it leaves the surface,
    # steps across it (tangent) do not (to first order)
    tangent = np.cross(normals, np.random.default_rng(1).standard_normal(normals.shape))
    tangent /= np.linalg.norm(tangent, axis=-1, keepdims=True)
    eps = 1e-6
    assert np.median(residual(name, points + eps * normals, points)) > 0.5 * eps
    assert np.median(residual(name, points + eps * tangent, points)) < 0.05 * eps


def test_samplers_are_area_weighted():
    rng = np.random.default_rng(2)
    p, _ = sample_cylinder(rng, 1, 60_000)
    on_side = np.abs(np.abs(p[0, :, 2]) - 1) > TOL
    assert abs(on_side.mean() - 4 / 6) < 0.006  # side 4π of 6π
    assert abs((p[0, on_side, 2] > 0.5).mean() - 0.25) < 0.01  # uniform height on the side
    p, _ = sample_cone(rng, 1, 60_000)
    on_base = np.abs(p[0, :, 2] + 1) < TOL
    assert abs(on_base.mean() - 1 / (1 + np.sqrt(5))) < 0.006
    # lateral area above height z is ∝ ((1 - z) / 2)^2: a quarter above z = 0
    assert abs((p[0, ~on_base, 2] > 0).mean() - 0.25) < 0.01
    p, _ = sample_pyramid(rng, 1, 60_000)
    on_base = np.abs(p[0, :, 2] + 1) < TOL
    assert abs(on_base.mean() - 4 / (4 + 4 * np.sqrt(5))) < 0.006
    p, _ = SHAPES["torus"](rng, 1, 60_000)
    # area element ∝ 1 + a cos v: more points on the outer half (rho > 1)
    a = np.sqrt(np.median((np.hypot(p[0, :, 0], p[0, :, 1]) - 1) ** 2 + p[0, :, 2] ** 2))
    outer = np.hypot(p[0, :, 0], p[0, :, 1]) > 1
    assert abs(outer.mean() - (0.5 + a / np.pi)) < 0.006  # ∫_{-π/2}^{π/2} (1 + a cos v) / 2π


def test_stretch_keeps_points_uniform():
    """Faces of a stretched box get points in proportion to their stretched areas."""
    out = generate_shapes("box", 1, 60_000, np.random.default_rng(3), scale_range=(0.5, 1.5),
                          deformation=0.0, noise=0.0)
    s, p = out["scale"][0], out["pos"][0] / out["scale"][0]
    assert s.max() / s.min() > 1.5  # a real stretch for this seed
    face_axis = np.argmax(np.abs(p), axis=1)
    areas = np.array([s[1] * s[2], s[0] * s[2], s[0] * s[1]])
    fractions = np.bincount(face_axis, minlength=3) / len(p)
    assert np.abs(fractions - areas / areas.sum()).max() < 0.007


@pytest.mark.parametrize("name", list(SHAPES))
def test_recorded_stretch_and_deformation_undo_to_the_primitive(name):
    out = generate_shapes(name, 6, 400, np.random.default_rng(4), deformation=0.25, noise=0.0)
    p, s, t, b = out["pos"], out["scale"], out["taper"], out["twist"]
    assert p.shape == (6, 400, 3) and s.shape == (6, 3) and t.shape == b.shape == (6,)
    assert ((s >= 0.6) & (s <= 1.4)).all() and (np.abs(t) <= 0.25).all()
    z = p[..., 2]
    angle, factor = -b[:, None] * z, 1 + t[:, None] * z
    x, y = p[..., 0] / factor, p[..., 1] / factor
    c, sn = np.cos(angle), np.sin(angle)
    undone = np.stack([c * x - sn * y, sn * x + c * y, z], -1) / s[:, None, :]
    assert residual(name, undone).max() < TOL
    assert residual(name, p / s[:, None, :]).max() > 1e-3  # the deformation did something
    noisy = generate_shapes(name, 6, 400, np.random.default_rng(4), deformation=0.25,
                            noise=0.01)["pos"]
    assert 0.005 < np.abs(noisy - p).std() < 0.02


def test_dataset_is_deterministic_balanced_and_items_are_clouds():
    a = SyntheticShapes(None, "train", num_points=64, samples_per_class=5, seed=1)
    b = SyntheticShapes(None, "train", num_points=64, samples_per_class=5, seed=1)
    assert a.classes == list(SHAPES) and a.num_classes == 8 and len(a) == 40
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.pos, y.pos) and torch.equal(x.y, y.y)
    labels = torch.cat([d.y for d in a])
    assert torch.equal(labels[:8], torch.arange(8))  # every prefix of C items is balanced
    assert torch.equal(torch.bincount(labels), torch.full((8,), 5))
    item = a[3]
    assert set(item.keys()) == {"pos", "y"} and item.pos.shape == (64, 3)
    assert item.pos.dtype == torch.float32 and item.y.dtype == torch.long
    assert item.pos.mean(0).abs().max() < 1e-6
    assert abs(float(item.pos.norm(dim=1).max()) - 1) < 1e-6
    c = SyntheticShapes(None, "train", num_points=64, samples_per_class=5, seed=2)
    assert not torch.allclose(c[0].pos, a[0].pos)
    raw = SyntheticShapes(None, "train", num_points=64, samples_per_class=5, seed=1,
                          normalize=False)
    assert torch.equal(raw._pos[3], raw[3].pos) and not torch.allclose(raw[3].pos, item.pos)
    subset = SyntheticShapes(None, "val", num_points=16, samples_per_class=2,
                             classes=["torus", "box"])
    assert subset.classes == ["torus", "box"] and len(subset) == 4
    assert [int(d.y) for d in subset] == [0, 1, 0, 1]
    assert "SyntheticShapes(40, split='train'" in repr(a)


def test_splits_are_independent():
    kwargs = dict(num_points=32, samples_per_class=3, seed=0)
    splits = {s: SyntheticShapes(None, s, **kwargs) for s in ("train", "val", "test")}
    for s1, s2 in [("train", "val"), ("train", "test"), ("val", "test")]:
        assert not torch.allclose(splits[s1]._pos, splits[s2]._pos)
        assert not torch.allclose(splits[s1].scale, splits[s2].scale)
    with pytest.raises(ValueError, match="split"):
        SyntheticShapes(None, "dev", **kwargs)


def histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    """Normalised histograms over [0, 1] of each row of ``values``."""
    index = (values * bins).long().clamp(0, bins - 1)
    counts = torch.zeros(values.shape[0], bins, dtype=torch.float64)
    counts.scatter_add_(1, index, torch.ones_like(values))
    return counts / values.shape[1]


def test_classes_are_distinct_but_not_trivially_separable():
    """A nearest-centroid classifier on invariant histograms (pairwise distances, distances to
    the centroid) is far above chance (1/8) and far below 100 %."""

    def features(data):
        P = torch.stack([d.pos for d in data]).double()
        n = P.shape[1]
        iu = torch.triu_indices(n, n, 1)
        pairs = torch.cdist(P, P)[:, iu[0], iu[1]]
        y = torch.cat([d.y for d in data])
        return torch.cat([histogram(pairs / 2, 24), histogram(P.norm(dim=-1), 12)], 1), y

    x_train, y_train = features(SyntheticShapes(None, "train", num_points=128,
                                                samples_per_class=40))
    x_test, y_test = features(SyntheticShapes(None, "test", num_points=128,
                                              samples_per_class=40))
    centroids = torch.stack([x_train[y_train == c].mean(0) for c in range(8)])
    assert torch.cdist(centroids, centroids).fill_diagonal_(1).min() > 0.01  # distinct
    accuracy = float((torch.cdist(x_test, centroids).argmin(1) == y_test).double().mean())
    assert 0.25 < accuracy < 0.9


def test_canonical_orientation_and_rotations():
    """Cones and pyramids stand on their base (z-skewness > 0 for every sample): a z rotation
    keeps that, an SO(3) rotation does not."""
    kwargs = dict(num_points=128, samples_per_class=30, classes=["cone", "pyramid"])

    def skew_signs(data):
        P = torch.stack([d.pos for d in data]).double()
        z = P[..., 2] - P[..., 2].mean(1, keepdim=True)
        return (z**3).mean(1).sign()

    assert (skew_signs(SyntheticShapes(None, "test", **kwargs)) > 0).all()
    z = SyntheticShapes(None, "test", rotation="z", rotation_seed=0, **kwargs)
    plain = SyntheticShapes(None, "test", **kwargs)
    assert torch.allclose(z[5].pos[:, 2], plain[5].pos[:, 2], atol=1e-6)
    assert not torch.allclose(z[5].pos, plain[5].pos, atol=1e-3)
    assert (skew_signs(z) > 0).all()
    so3 = SyntheticShapes(None, "test", rotation="so3", rotation_seed=0, **kwargs)
    assert 0.2 < float((skew_signs(so3) > 0).double().mean()) < 0.8
    assert torch.equal(so3[7].pos, so3[7].pos)  # fixed per item
    again = SyntheticShapes(None, "test", rotation="so3", rotation_seed=0, **kwargs)
    assert torch.equal(again[7].pos, so3[7].pos)
    expected = RandomRotation("so3", seed=0)(plain[7], index=7).pos
    assert torch.allclose(so3[7].pos, expected)  # one implementation of the rotation
    fresh = SyntheticShapes(None, "test", rotation="so3", **kwargs)
    assert not torch.allclose(fresh[7].pos, fresh[7].pos)


def test_cache_is_written_once_reused_and_checked(tmp_path, monkeypatch):
    kwargs = dict(num_points=32, samples_per_class=4, seed=5)
    first = SyntheticShapes(tmp_path, "train", **kwargs)
    path = first.cache_path
    assert path.parent == tmp_path and path.name.startswith("shapes_train_n32_k4_s5_")
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left
    mtime = path.stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("the cache should have been used")

    with monkeypatch.context() as m:
        m.setattr(shapes_module, "generate_split", no_generation)
        again = SyntheticShapes(tmp_path, "train", **kwargs)
        with pytest.raises(AssertionError, match="cache should"):
            SyntheticShapes(tmp_path, "train", force_reload=True, **kwargs)
    assert path.stat().st_mtime_ns == mtime
    assert torch.equal(again._pos, first._pos) and torch.equal(again.scale, first.scale)
    # other parameters: another file
    noisier = SyntheticShapes(tmp_path, "train", noise=0.05, **kwargs)
    assert noisier.cache_path != path and noisier.cache_path.is_file()
    assert not torch.allclose(noisier._pos, first._pos)
    # a file that records other parameters, or is damaged, is regenerated with a warning
    data = dict(np.load(path))
    data["meta"] = np.array(str(data["meta"]).replace('"noise": 0.02', '"noise": 0.5'))
    np.savez(path, **data)
    with pytest.warns(UserWarning, match=r"other parameters \(\['params'\]\)"):
        SyntheticShapes(tmp_path, "train", **kwargs)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.warns(UserWarning, match="regenerating"):
        repaired = SyntheticShapes(tmp_path, "train", **kwargs)
    assert torch.equal(repaired._pos, first._pos)


def test_bad_parameters():
    with pytest.raises(ValueError, match="num_points"):
        SyntheticShapes(None, num_points=0)
    with pytest.raises(ValueError, match="scale_range"):
        SyntheticShapes(None, scale_range=(1.2, 0.8))
    with pytest.raises(ValueError, match="deformation"):
        SyntheticShapes(None, deformation=0.5)
    with pytest.raises(ValueError, match="classes"):
        SyntheticShapes(None, classes=["box", "teapot"])
    with pytest.raises(ValueError, match="rotation"):
        SyntheticShapes(None, rotation="y")


def test_generation_is_fast():
    start = time.perf_counter()
    data = SyntheticShapes(None, "train", num_points=300, samples_per_class=200)
    elapsed = time.perf_counter() - start
    assert len(data) == 1600 and elapsed < 10, f"{elapsed:.1f} s"


def test_cli_writes_the_cache(tmp_path, capsys, monkeypatch):
    root = tmp_path / "shapes"
    args = ["--num-points", "24", "--samples-per-class", "2", "--seed", "3", "--noise", "0.01"]
    assert main(["data", "shapes", "--root", str(root), *args]) == 0
    out = capsys.readouterr().out
    files = sorted(p.name for p in root.iterdir())
    assert len(files) == 3 and all(f"shapes_{s}_n24_k2_s3_" in out for s in ("train", "val"))
    monkeypatch.setattr(shapes_module, "generate_split", None)  # must read the files
    test = SyntheticShapes(root, "test", num_points=24, samples_per_class=2, seed=3, noise=0.01)
    assert len(test) == 16
    assert main(["data", "shapes", "--root", str(root), "--num-points", "0"]) == 2
    assert "num_points" in capsys.readouterr().err


def test_pyg_protocol_batches_with_graphs_and_features():
    data = SyntheticShapes(None, "val", num_points=40, samples_per_class=2, rotation="so3",
                           rotation_seed=1, transform=Compose([KNNGraph(6), PointFeatures()]))
    assert isinstance(data, GraphDataset)
    assert type(data).__getitem__ is GraphDataset.__getitem__  # PyG's, not our own
    view = data[torch.arange(16) % 2 == 1]
    assert len(view) == 8 and torch.equal(view[2].pos, data[5].pos)
    with pytest.raises(IndexError, match="mask has 3 entries"):
        data[[True, False, True]]
    batch = next(iter(DataLoader(data, batch_size=4)))
    assert batch.num_graphs == 4 and batch.y.shape == (4,) and batch.pos.shape == (160, 3)
    assert batch.x.shape == (160, 2) and batch.rel.shape == (160, 3)
    assert batch.edge_index.shape == (2, 160 * 6)
    assert (batch.batch[batch.edge_index[0]] == batch.batch[batch.edge_index[1]]).all()

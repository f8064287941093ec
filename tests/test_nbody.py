"""N-body data: the charged-particle integrator against a one-trajectory-at-a-time reference,
its physics (sign, energy, equivariance), gravity, and the cache behind ``NBody`` and
``GravityNBody`` (the cache tests run for both kinds)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from relaxgnn.data import knn_edges, nbody
from relaxgnn.data.nbody import (
    CHARGED_DEFAULTS,
    GRAVITY_DEFAULTS,
    ChargedParams,
    GravityNBody,
    GravityParams,
    NBody,
    NBodyCacheError,
    cache,
    charged_initial_conditions,
    gravity_initial_conditions,
    simulate_charged,
    simulate_gravity,
    split_seed,
)

DT = 0.001


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops: threads only add overhead (and stall badly on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def reference_trajectory(loc0, vel0, charges, n_steps, sample_freq, dt, clip):
    """The EGNN authors' ``ChargedParticlesSim.sample_trajectory`` loop, written plainly for one
    trajectory in numpy ((N, 3) layout, full force matrix, no box): kick, then for
    i = 1 … n_steps − 1: drift, record at i % sample_freq == 0, kick."""
    x, v = loc0.copy(), vel0.copy()
    qq = np.outer(charges, charges)
    np.fill_diagonal(qq, 0.0)

    def force(x):
        diff = x[:, None, :] - x[None, :, :]  # x_i - x_j
        r2 = (diff**2).sum(-1)
        np.fill_diagonal(r2, 1.0)
        return np.clip(((qq / r2**1.5)[:, :, None] * diff).sum(1), -clip, clip)

    loc, vel = [], []
    v += dt * force(x)
    for i in range(1, n_steps):
        x += dt * v
        if i % sample_freq == 0:
            loc.append(x.copy())
            vel.append(v.copy())
        v += dt * force(x)
    return np.stack(loc), np.stack(vel)


def coulomb(loc, charges):
    """Unclipped forces ``(..., N, 3)`` and potential energy ``Σ_{i<j} q_i q_j / r_ij``."""
    n = loc.shape[-2]
    eye = torch.eye(n, dtype=loc.dtype)
    diff = loc[..., :, None, :] - loc[..., None, :, :]
    r = ((diff**2).sum(-1) + eye).sqrt()
    qq = charges[..., :, None] * charges[..., None, :] * (1 - eye)
    return ((qq / r**3)[..., None] * diff).sum(-2), (qq / r).sum((-1, -2)) / 2


def random_orthogonal(seed: int, reflect: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    Q = Q * torch.sign(torch.diagonal(R))
    Q = Q * torch.sign(torch.det(Q))  # a rotation
    return -Q if reflect else Q


# ----------------------------------------------------------------------------- integrator


def test_matches_one_trajectory_at_a_time_reference():
    """Vectorised = plain numpy loop to 1e-10 over 1000 steps, clipping included (trajectory 0
    starts with two like charges 0.05 apart, so the clip acts). Longer horizons are not
    compared: close encounters amplify rounding differences exponentially."""
    loc0, vel0, charges = charged_initial_conditions(6, seed=1)
    loc0[0, 1] = loc0[0, 0] + torch.tensor([0.05, 0.0, 0.0], dtype=torch.float64)
    charges[0, :2] = 1.0
    loc, vel = simulate_charged(loc0, vel0, charges, n_steps=1000, sample_freq=100)
    assert loc.shape == vel.shape == (6, 9, 5, 3)
    for b in range(6):
        args = (loc0[b].numpy(), vel0[b].numpy(), charges[b].numpy(), 1000, 100, DT)
        ref_loc, ref_vel = reference_trajectory(*args, clip=100.0)
        np.testing.assert_allclose(loc[b].numpy(), ref_loc, rtol=0, atol=1e-10)
        np.testing.assert_allclose(vel[b].numpy(), ref_vel, rtol=0, atol=1e-10)
    first = (loc0[0].numpy(), vel0[0].numpy(), charges[0].numpy(), 1000, 100, DT)
    unclipped, _ = reference_trajectory(*first, clip=math.inf)
    assert np.abs(unclipped - loc[0].numpy()).max() > 1e-3  # the clip did act


def test_frames_are_steps_sample_freq_times_k_plus_one():
    """Frame k is step sample_freq·(k+1); the first step is x1 = x0 + dt (v0 + dt F(x0))
    with v1 = v0 + dt F(x0) stored, before the kick with F(x1)."""
    loc0, vel0, charges = charged_initial_conditions(3, seed=2)
    loc, vel = simulate_charged(loc0, vel0, charges)
    assert loc.shape == vel.shape == (3, 49, 5, 3)  # 5000 // 100 - 1
    assert loc.dtype == vel.dtype == torch.float64
    short, _ = simulate_charged(loc0, vel0, charges, n_steps=1000, sample_freq=100)
    torch.testing.assert_close(short, loc[:, :9], rtol=0, atol=0)
    for k in (0, 3):
        s = 100 * (k + 1)
        one, _ = simulate_charged(loc0, vel0, charges, n_steps=2 * s, sample_freq=s)
        torch.testing.assert_close(one[:, 0], loc[:, k], rtol=0, atol=0)
    step1, vel1 = simulate_charged(loc0, vel0, charges, n_steps=2, sample_freq=1)
    force0 = coulomb(loc0, charges)[0].clamp(-100, 100)
    torch.testing.assert_close(vel1[:, 0], vel0 + DT * force0, rtol=0, atol=1e-15)
    torch.testing.assert_close(step1[:, 0], loc0 + DT * (vel0 + DT * force0), rtol=0, atol=1e-15)
    loc32, _ = simulate_charged(loc0.float(), vel0.float(), charges.float(), 300, 100)
    assert loc32.dtype == torch.float32


@pytest.mark.parametrize("charge, sign", [(1.0, 1.0), (-1.0, -1.0)])
def test_like_charges_repel_opposite_attract(charge, sign):
    """Two particles at rest 1 apart on x: the first kick is ∓dt on particle 0 and ±dt on 1
    (F_0 = q_0 q_1 (x_0 − x_1) / r³), and their distance grows (like) or shrinks (opposite)."""
    loc0 = torch.tensor([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]], dtype=torch.float64)
    charges = torch.tensor([[1.0, charge]], dtype=torch.float64)
    loc, vel = simulate_charged(loc0, torch.zeros_like(loc0), charges, 2, 1)
    expected = sign * DT * torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64)
    torch.testing.assert_close(vel[0, 0], expected, rtol=0, atol=1e-15)
    loc, _ = simulate_charged(loc0, torch.zeros_like(loc0), charges, 400, 100)
    distance = (loc[0, :, 1] - loc[0, :, 0]).norm(dim=-1)
    assert (sign * distance.diff() > 0).all() and sign * (distance[0] - 1.0) > 0


def test_energy_is_conserved_without_clipping():
    """E = Σ ½|ṽ|² + Σ_{i<j} q_i q_j / r_ij with ṽ = v + (dt/2) F(x), the velocity at the
    frame's time (the stored v is half a step behind), changes by less than 1e-6 of
    Σ ½|ṽ|² + Σ |q_i q_j| / r_ij over 5000 steps (dt = 1e-3, clip = inf, particles never closer
    than 0.5). With the stored half-step v instead the error is first order in dt: ≥ 10× larger
    on every trajectory."""
    loc0, vel0, charges = charged_initial_conditions(8, seed=5, loc_std=4.0)
    loc, vel = simulate_charged(loc0, vel0, charges, clip=math.inf)
    pair = (loc[..., :, None, :] - loc[..., None, :, :]).norm(dim=-1) + 10 * torch.eye(5)
    assert pair.min() > 0.5
    force, potential = coulomb(loc, charges[:, None])
    kinetic = 0.5 * ((vel + DT / 2 * force) ** 2).sum((-1, -2))
    energy = kinetic + potential
    scale = kinetic[:, 0] + coulomb(loc, charges[:, None].abs())[1][:, 0]
    drift = (energy - energy[:, :1]).abs().amax(1) / scale
    assert drift.max() < 1e-6, drift
    naive = 0.5 * (vel**2).sum((-1, -2)) + potential
    assert ((naive - naive[:, :1]).abs().amax(1) / scale > 10 * drift).all()


def test_trajectories_are_e3_equivariant_without_clipping():
    """Rotating/reflecting and translating the initial state rotates/reflects and translates
    every frame, float64 to 1e-9: 5000 steps with like charges (no close encounters), 300 steps
    with mixed charges (longer mixed runs have close encounters that amplify rounding)."""
    for like, n_steps, seed in ((True, 5000, 4), (False, 300, 5)):
        loc0, vel0, charges = charged_initial_conditions(8, seed=seed)
        charges = charges.abs() if like else charges
        for reflect in (False, True):
            Q = random_orthogonal(seed, reflect)
            shift = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
            loc, vel = simulate_charged(loc0, vel0, charges, n_steps, clip=math.inf)
            loc_g, vel_g = simulate_charged(loc0 @ Q.T + shift, vel0 @ Q.T, charges, n_steps,
                                            clip=math.inf)
            torch.testing.assert_close(loc_g, loc @ Q.T + shift, rtol=0, atol=1e-9)
            torch.testing.assert_close(vel_g, vel @ Q.T, rtol=0, atol=1e-9)


def test_componentwise_clip_breaks_rotation_equivariance():
    """The reference clips each Cartesian component, so a clipped force depends on the frame:
    two like charges 0.05 apart (|F| = 400) along x get |F_0| = 100, along the diagonal 100·√3."""
    charges = torch.ones(1, 2, dtype=torch.float64)
    magnitudes = []
    for direction in ([1.0, 0.0, 0.0], [1.0, 1.0, 1.0]):
        d = torch.tensor(direction, dtype=torch.float64)
        loc0 = torch.stack([torch.zeros(3, dtype=torch.float64), 0.05 * d / d.norm()])[None]
        _, vel = simulate_charged(loc0, torch.zeros_like(loc0), charges, 2, 1)
        magnitudes.append(vel[0, 0, 0].norm().item() / DT)
    assert magnitudes[0] == pytest.approx(100.0) and magnitudes[1] == pytest.approx(100 * 3**0.5)


def test_bad_inputs_name_the_field():
    loc0, vel0, charges = charged_initial_conditions(2, seed=0)
    with pytest.raises(ValueError, match="charges"):
        simulate_charged(loc0, vel0, charges[:, :3])
    with pytest.raises(ValueError, match="vel0"):
        simulate_charged(loc0, vel0[:, :3], charges)
    with pytest.raises(ValueError, match="multiple of sample_freq"):
        simulate_charged(loc0, vel0, charges, n_steps=250, sample_freq=100)
    with pytest.raises(ValueError, match="at least"):
        simulate_charged(loc0, vel0, charges, n_steps=100, sample_freq=100)


def test_initial_conditions():
    loc0, vel0, charges = charged_initial_conditions(2000, seed=7)
    assert loc0.shape == vel0.shape == (2000, 5, 3) and charges.shape == (2000, 5)
    torch.testing.assert_close(vel0.norm(dim=-1), torch.full((2000, 5), 0.5, dtype=torch.float64))
    assert set(charges.unique().tolist()) == {-1.0, 1.0}
    assert abs(charges.mean().item()) < 0.05 and abs(loc0.std().item() - 1) < 0.05
    assert abs(vel0.mean(dim=(0, 1))).max() < 0.02  # isotropic directions
    again = charged_initial_conditions(2000, seed=7)
    assert all(torch.equal(a, b) for a, b in zip((loc0, vel0, charges), again, strict=True))


# ----------------------------------------------------------------------------- gravity


def test_gravity_momentum_and_energy():
    """Total momentum stays 0 (to 1e-10) and the softened energy
    Σ ½ m|v|² − Σ_{i<j} m_i m_j / sqrt(r² + ε²) changes by less than 1e-3 (relative)."""
    loc0, vel0, masses = gravity_initial_conditions(2, n_particles=20, seed=0)
    torch.testing.assert_close((vel0 * masses[..., None]).sum(1), torch.zeros(2, 3).double())
    loc, vel, force = simulate_gravity(loc0, vel0, masses, n_steps=1000, sample_freq=100)
    assert loc.shape == vel.shape == force.shape == (2, 10, 20, 3)
    torch.testing.assert_close(loc[:, 0], loc0, rtol=0, atol=0)  # frame 0 is t = 0
    assert (vel * masses[:, None, :, None]).sum(2).abs().max() < 1e-10
    assert force.sum(2).abs().max() < 1e-10  # Newton's third law
    iu = torch.triu_indices(20, 20, 1)
    r = ((loc[..., :, None, :] - loc[..., None, :, :]) ** 2).sum(-1).add(0.1**2).sqrt()
    energy = 0.5 * (vel**2).sum((-1, -2)) - (1 / r)[..., iu[0], iu[1]].sum(-1)
    assert ((energy - energy[:, :1]).abs() / energy[:, :1].abs()).max() < 1e-3
    loc, _, _ = simulate_gravity(loc0[:, :3], vel0[:, :3])
    assert loc.shape == (2, 50, 3, 3)  # defaults: 5000 steps, a frame every 100, t = 0 included


# ----------------------------------------------------------------------------- cache + data sets

SMALL = dict(num_train=6, num_val=3, num_test=2, n_steps=300, sample_freq=100)  # 2 frames
SMALL_GRAVITY = {**SMALL, "n_particles": 12}  # 3 frames: t = 0 is stored
KINDS = ("charged", "gravity")
DEFAULTS = {"charged": CHARGED_DEFAULTS, "gravity": GRAVITY_DEFAULTS}


def small(root, split="train", kind="charged", **kwargs) -> NBody | GravityNBody:
    """A small data set of ``kind``: frames 0 → 1 (charged) or 1 → 2 (gravity), all samples."""
    if kind == "charged":
        kwargs = {"frame_in": 0, "frame_out": 1, **SMALL, **kwargs}
        cls = NBody
    else:
        kwargs = {"frame_in": 1, "frame_out": 2, **SMALL_GRAVITY, **kwargs}
        cls = GravityNBody
    return cls(root, split=split, **{"max_samples": None, "progress": False, **kwargs})


def generate(kind, root, **kwargs):
    """``generate_<kind>`` with the small parameters."""
    params = SMALL if kind == "charged" else SMALL_GRAVITY
    return getattr(nbody, f"generate_{kind}")(root, **{**params, "progress": False, **kwargs})


def mtimes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(root.iterdir())}


@pytest.fixture
def count_generations(monkeypatch):
    """The parameter records of the generations run (every kind generates through
    ``cache.generate``)."""
    calls = []
    original = cache.generate
    monkeypatch.setattr(cache, "generate", lambda root, params, *a, **k: calls.append(params)
                        or original(root, params, *a, **k))
    return calls


def test_dataset_items_and_splits(tmp_path):
    data = {split: small(tmp_path, split) for split in ("train", "val", "test")}
    assert [len(d) for d in data.values()] == [6, 3, 2]
    item = data["train"][0]
    assert set(item.keys()) == {"pos", "vel", "charges", "y"}
    assert item.pos.shape == item.vel.shape == item.y.shape == (5, 3)
    assert item.charges.shape == (5, 1)
    assert all(t.dtype == torch.float32 for t in (item.pos, item.vel, item.charges, item.y))
    # items are frames of simulate_charged started from the split's initial conditions
    loc0, vel0, charges = charged_initial_conditions(6, seed=split_seed(43, "train"))
    loc, vel = simulate_charged(loc0, vel0, charges, 300, 100)
    for i in (0, 5):
        torch.testing.assert_close(data["train"][i].pos, loc[i, 0].float())
        torch.testing.assert_close(data["train"][i].vel, vel[i, 0].float())
        torch.testing.assert_close(data["train"][i].y, loc[i, 1].float())
        torch.testing.assert_close(data["train"][i].charges, charges[i, :, None].float())
    assert not torch.equal(data["train"][0].pos, data["val"][0].pos)
    assert len(small(tmp_path, max_samples=4)) == 4
    info = json.loads((tmp_path / "charged.json").read_text())
    assert info["params"] == {**CHARGED_DEFAULTS, **SMALL}
    assert info["split_seeds"] == {s: split_seed(43, s) for s in ("train", "val", "test")}


def direct_forces(loc, G, softening):
    """m_i a_i = G Σ_j m_j m_i (x_j − x_i) / (r² + ε²)^{3/2} with unit masses, one pair at a
    time in float64."""
    loc = loc.double()
    forces = torch.zeros_like(loc)
    for i in range(loc.shape[0]):
        for j in range(loc.shape[0]):
            d = loc[j] - loc[i]
            forces[i] += G * d / (d @ d + softening**2) ** 1.5
    return forces


def test_gravity_items_and_targets(tmp_path):
    data = {split: small(tmp_path, split, "gravity") for split in ("train", "val", "test")}
    assert [len(d) for d in data.values()] == [6, 3, 2]
    item = data["train"][0]
    assert set(item.keys()) == {"pos", "vel", "mass", "y", "edge_index"}
    assert item.pos.shape == item.vel.shape == item.y.shape == (12, 3)
    assert torch.equal(item.mass, torch.ones(12, 1))
    assert all(t.dtype == torch.float32 for t in (item.pos, item.vel, item.mass, item.y))
    # edges j → i from the 6 nearest j of each i (the graph itself: test_graphs.py)
    assert item.edge_index.shape == (2, 72)
    assert torch.equal(item.edge_index, knn_edges(item.pos, 6))
    assert torch.equal(torch.bincount(item.edge_index[1]), torch.full((12,), 6))
    assert torch.equal(small(tmp_path, kind="gravity", neighbours=3)[0].edge_index,
                       knn_edges(item.pos, 3))
    # items are frames of simulate_gravity started from the split's initial conditions
    loc0, vel0, masses = gravity_initial_conditions(6, 12, seed=split_seed(43, "train"))
    loc, vel, force = simulate_gravity(loc0, vel0, masses, 300, 100)
    for i in (0, 5):
        torch.testing.assert_close(data["train"][i].pos, loc[i, 1].float())
        torch.testing.assert_close(data["train"][i].vel, vel[i, 1].float())
        torch.testing.assert_close(data["train"][i].y, loc[i, 2].float())
    assert not torch.equal(data["train"][0].pos, data["val"][0].pos)
    assert len(small(tmp_path, kind="gravity", max_samples=4)) == 4
    # target="force": m·a at the input frame; G and softening reach the simulator
    G, eps = 0.5, 0.2
    forces = small(tmp_path / "force", kind="gravity", target="force", G=G, softening=eps)
    loc0, vel0, masses = gravity_initial_conditions(6, 12, seed=split_seed(43, "train"))
    loc, _, _ = simulate_gravity(loc0, vel0, masses, 300, 100, G=G, softening=eps)
    for i in (0, 5):
        torch.testing.assert_close(forces[i].pos, loc[i, 1].float())
        expected = direct_forces(loc[i, 1], G, eps)
        torch.testing.assert_close(forces[i].y.double(), expected, rtol=1e-5, atol=1e-6)
    info = json.loads((tmp_path / "force" / "gravity.json").read_text())
    assert info["params"] == {**GRAVITY_DEFAULTS, **SMALL_GRAVITY, "G": G, "softening": eps}
    assert info["frames"] == 3 and set(info["arrays"]) == {"loc", "vel", "force", "meta"}


def test_defaults_are_egnn_nbody_small():
    assert {k: CHARGED_DEFAULTS[k] for k in ("num_train", "num_val", "num_test")} == {
        "num_train": 10_000, "num_val": 2_000, "num_test": 2_000}
    defaults = {k: p.default for k, p in inspect.signature(NBody).parameters.items()}
    assert (defaults["max_samples"], defaults["frame_in"], defaults["frame_out"]) == (3000, 30, 40)
    with pytest.raises(ValueError, match="frame_out"):
        small(Path("unused"), frame_out=2)
    with pytest.raises(TypeError, match="n_balls"):
        small(Path("unused"), n_balls=5)
    with pytest.raises(ValueError, match="GravityNBody"):
        NBody(Path("unused"), kind="gravity")


def test_gravity_defaults_are_segnn_and_bad_arguments_are_errors(tmp_path):
    dataset = {k: p.default for k, p in inspect.signature(GravityNBody).parameters.items()}
    assert GravityParams().asdict() == GRAVITY_DEFAULTS
    assert GRAVITY_DEFAULTS["n_particles"] == 100
    assert (GRAVITY_DEFAULTS["n_steps"], GRAVITY_DEFAULTS["sample_freq"]) == (5000, 100)
    assert {k: dataset[k] for k in ("max_samples", "frame_in", "frame_out", "target",
                                    "neighbours")} == {
        "max_samples": None, "frame_in": 30, "frame_out": 40, "target": "pos", "neighbours": 6}
    unused = tmp_path / "unused"
    with pytest.raises(ValueError, match="frame_out"):
        small(unused, kind="gravity", frame_out=3)
    with pytest.raises(ValueError, match="target"):
        small(unused, kind="gravity", target="energy")
    with pytest.raises(ValueError, match="k must be"):
        small(unused, kind="gravity", neighbours=0)
    with pytest.raises(ValueError, match="at least"):
        small(unused, kind="gravity", n_steps=0)
    with pytest.raises(TypeError, match="unknown gravity"):
        nbody.load_gravity(unused, "train", clip=1.0)
    assert not unused.exists()


def test_parameter_records_type_check_and_are_taken_by_everything(tmp_path):
    """One record per kind: typed and checked on construction, built from keywords by the
    data sets, taken as a record or keywords (not both) by the generators and loaders."""
    params = ChargedParams(**{**SMALL, "num_train": 6.0, "dt": 1})
    assert (params.num_train, params.dt, params.frames) == (6, 1.0, 2)
    assert type(params.num_train) is int and type(params.dt) is float
    assert GravityParams(n_steps=300, sample_freq=100).frames == 3  # t = 0 is stored
    assert list(ChargedParams().asdict()) == list(CHARGED_DEFAULTS)  # the json's key order
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.seed = 1
    for bad, error, match in [
        ({"num_train": 1.5}, TypeError, "num_train must be an integer"),
        ({"seed": True}, TypeError, "seed must be an integer"),
        ({"dt": "fast"}, TypeError, "dt must be a number"),
        ({"dt": 0.0}, ValueError, "dt must be positive"),
        ({"n_steps": 150}, ValueError, "multiple of sample_freq"),
        ({"n_steps": 100}, ValueError, "at least 2 \\* sample_freq"),
        ({"num_val": -1}, ValueError, "num_val must be >= 0"),
        ({"clip": 0.0}, ValueError, "clip must be positive"),
    ]:
        with pytest.raises(error, match=match):
            ChargedParams(**bad)
    with pytest.raises(TypeError, match="unknown charged .*'G'.*known"):
        ChargedParams.from_keywords(G=1.0)
    with pytest.raises(TypeError, match="not both"):
        nbody.generate_charged(tmp_path, params, seed=1)
    with pytest.raises(TypeError, match="must be a GravityParams"):
        nbody.load_gravity(tmp_path, "train", params)
    info = nbody.generate_charged(tmp_path / "record", replace(params, dt=0.001), progress=False)
    assert info["params"] == {**CHARGED_DEFAULTS, **SMALL}
    assert small(tmp_path / "record", generate=False).params == replace(params, dt=0.001)
    assert nbody.load_charged(tmp_path / "record", "val", **SMALL)["loc"].shape == (3, 2, 5, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_generation_is_deterministic_and_independent_of_chunk(tmp_path, kind):
    a = generate(kind, tmp_path / "a")
    b = generate(kind, tmp_path / "b", chunk=2)
    assert a == b and a["kind"] == kind
    assert a["params"] == {**DEFAULTS[kind], **(SMALL if kind == "charged" else SMALL_GRAVITY)}
    for split in ("train", "val", "test"):
        with np.load(tmp_path / "a" / f"{kind}_{split}.npz") as x, \
                np.load(tmp_path / "b" / f"{kind}_{split}.npz") as y:
            assert x.files == y.files == [*a["arrays"]]
            assert all(np.array_equal(x[k], y[k]) for k in x.files)


@pytest.mark.parametrize("kind", KINDS)
def test_cache_is_reused_and_regenerated_when_parameters_change(tmp_path, count_generations,
                                                                kind):
    first = small(tmp_path, kind=kind)
    assert len(count_generations) == 1
    before = mtimes(tmp_path)
    again = small(tmp_path, split="val", kind=kind)
    small(tmp_path, kind=kind)
    assert len(count_generations) == 1 and mtimes(tmp_path) == before
    assert len(again) == 3
    with pytest.warns(UserWarning, match=r"seed: 43 != 44.*regenerating"):
        changed = small(tmp_path, kind=kind, seed=44)
    assert len(count_generations) == 2
    assert not torch.equal(changed[0].pos, first[0].pos)
    assert json.loads((tmp_path / f"{kind}.json").read_text())["params"]["seed"] == 44
    with pytest.raises(NBodyCacheError, match="other parameters") as err:
        small(tmp_path, kind=kind, seed=43, generate=False)
    assert err.value.reason == "stale" and f"{kind}.json" in str(err.value)
    with pytest.raises(NBodyCacheError, match="does not exist"):
        small(tmp_path / "empty", kind=kind, generate=False)


def test_kinds_have_separate_caches(tmp_path, count_generations):
    """Both kinds in one directory: neither reads, overwrites or regenerates the other."""
    charged, gravity = small(tmp_path), small(tmp_path, kind="gravity")
    before = mtimes(tmp_path)
    assert sorted(before) == sorted(f"{kind}{suffix}" for kind in KINDS for suffix in (
        ".json", "_train.npz", "_val.npz", "_test.npz"))
    assert torch.equal(small(tmp_path)._pos, charged._pos)
    assert torch.equal(small(tmp_path, kind="gravity")._pos, gravity._pos)
    assert len(count_generations) == 2 and mtimes(tmp_path) == before


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_key", "wrong_shape", "json"])
@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_cache_file_is_an_error_or_regenerated(tmp_path, kind, damage,
                                                       count_generations):
    good = small(tmp_path, kind=kind)
    path = tmp_path / (f"{kind}.json" if damage == "json" else f"{kind}_train.npz")
    blob = path.read_bytes()
    with np.load(tmp_path / f"{kind}_train.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    if damage in ("truncate", "json"):
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "garbage":
        path.write_bytes(blob[:200] + os.urandom(len(blob) - 400) + blob[-200:])
    elif damage == "missing_key":
        np.savez(path, **{k: v for k, v in arrays.items() if k != "vel"})
    else:
        np.savez(path, **{**arrays, "loc": arrays["loc"][:, :1]})
    with pytest.raises(NBodyCacheError, match=path.name) as err:
        small(tmp_path, kind=kind, generate=False)
    assert err.value.reason == "corrupt"
    with pytest.warns(UserWarning, match=path.name):
        fixed = small(tmp_path, kind=kind)
    assert len(count_generations) == 2
    assert torch.equal(fixed._pos, good._pos) and torch.equal(fixed._y, good._y)


@pytest.mark.parametrize("kind", KINDS)
def test_writes_are_atomic(tmp_path, monkeypatch, kind):
    """A crash while writing a split file or the json leaves the old files whole, no temporary
    file behind, and never a mix of old and new data read as valid."""
    small(tmp_path, kind=kind)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_savez = np.savez

    def crash_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        generate(kind, tmp_path, seed=44)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.setattr(np, "savez", real_savez)

    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(OSError, match="power cut"):
        generate(kind, tmp_path, seed=44)
    assert (tmp_path / f"{kind}.json").read_bytes() == before[f"{kind}.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)  # no temp files
    # the old json with new split files: detected as stale, not read as the old data
    with pytest.raises(NBodyCacheError, match="does not match"):
        small(tmp_path, kind=kind, generate=False)

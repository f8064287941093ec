"""Shared fixtures: a real molecule (ASE) and random point clouds, batched, in float64."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch, Data

from relaxgnn.demo import molecule_graph


def molecule_data(name: str = "CH3CH2OH", dtype: torch.dtype = torch.float64, seed: int = 0):
    """A molecule from ``ase.build.molecule`` with random velocities and ±1 charges."""
    return molecule_graph(name, dtype, seed)


def point_cloud(n: int, dtype: torch.dtype = torch.float64, seed: int = 0) -> Data:
    """``n`` points with N(0, 1) positions, random velocities, ±1 charges and H/C/O species."""
    gen = torch.Generator().manual_seed(seed)
    return Data(
        pos=torch.randn(n, 3, generator=gen, dtype=dtype),
        z=torch.tensor([1, 6, 8])[torch.randint(0, 3, (n,), generator=gen)],
        vel=torch.randn(n, 3, generator=gen, dtype=dtype),
        charges=(torch.randint(0, 2, (n,), generator=gen) * 2 - 1).to(dtype),
    )


@pytest.fixture(params=["molecule", "point_cloud"])
def batch64(request) -> Batch:
    """A float64 batch: ethanol + water, or three random clouds (5, 7 and 1 points)."""
    if request.param == "molecule":
        return Batch.from_data_list([molecule_data("CH3CH2OH"), molecule_data("H2O", seed=1)])
    return Batch.from_data_list(
        [point_cloud(5, seed=1), point_cloud(7, seed=2), point_cloud(1, seed=3)]
    )


@pytest.fixture
def batch32() -> Batch:
    return Batch.from_data_list(
        [molecule_data("CH3CH2OH", torch.float32), point_cloud(6, torch.float32, seed=4)]
    )


def finite_difference_forces(energy, data: Data, h: float = 1e-5) -> torch.Tensor:
    """``-∂E/∂pos`` by central differences of ``energy(data)`` (a one-molecule energy),
    ``(N, 3)``."""
    forces = torch.zeros_like(data.pos)
    with torch.no_grad():
        for i in range(data.num_nodes):
            for k in range(3):
                plus, minus = data.clone(), data.clone()
                plus.pos, minus.pos = data.pos.clone(), data.pos.clone()
                plus.pos[i, k] += h
                minus.pos[i, k] -= h
                forces[i, k] = -(energy(plus) - energy(minus)).item() / (2 * h)
    return forces


def check_relaxed_then_projected(relaxed: torch.nn.Module, data: Batch, broken: float = 1e-4
                                 ) -> tuple[dict[str, float], torch.nn.Module]:
    """Drive ``relaxed`` at θ = 1 with paths perturbed to N(0, 0.3²): rotations or reflections
    must then break its equivariance by more than ``broken``; the projection must have no path,
    be exact (float64) and compute what the relaxed model computes at θ = 0. Returns the relaxed
    model's errors and the projection."""
    from relaxgnn.relax import Constant, Relaxation, find_paths, project
    from relaxgnn.symmetry import equivariance_error

    controller = Relaxation(relaxed, Constant(1.0, 10))
    with torch.no_grad():
        for path in find_paths(relaxed).values():
            for p in path.parameters():
                p.normal_(0.0, 0.3)
    errors = equivariance_error(relaxed, data, trials=2)
    assert max(errors["rotation"], errors["reflection"]) > broken, errors
    projected = project(relaxed)
    assert not find_paths(projected)
    assert max(equivariance_error(projected, data, trials=3).values()) < 1e-9
    controller.step(10)
    assert torch.equal(projected(data), relaxed(data))
    return errors, projected

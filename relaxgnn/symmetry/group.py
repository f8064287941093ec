"""Seedable random elements of E(3): rotations, reflections, translations, permutations."""

from __future__ import annotations

import torch

Seed = int | torch.Generator | None


def _generator(seed: Seed) -> torch.Generator | None:
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def random_rotation(seed: Seed = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A rotation matrix drawn uniformly (Haar measure) from SO(3).

    Uses a normalised Gaussian quaternion ``q = (w, x, y, z)``, which is uniform on the
    3-sphere, and its rotation matrix. ``seed`` is an ``int`` or a ``torch.Generator``.
    """
    q = torch.randn(4, generator=_generator(seed), dtype=torch.float64)
    w, x, y, z = q / q.norm()
    R = torch.stack(
        [
            torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)]),
            torch.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)]),
            torch.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]),
        ]
    )
    return R.to(dtype)


def random_reflection(seed: Seed = None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A random improper orthogonal matrix (``det = -1``): a mirror ``I - 2nnᵀ`` composed
    with a random rotation, so that it is uniform on the reflection coset of O(3)."""
    gen = _generator(seed)
    n = torch.randn(3, generator=gen, dtype=torch.float64)
    n = n / n.norm()
    mirror = torch.eye(3, dtype=torch.float64) - 2 * torch.outer(n, n)
    return (random_rotation(gen, torch.float64) @ mirror).to(dtype)


def random_translation(seed: Seed = None, dtype: torch.dtype = torch.float64, scale: float = 3.0):
    """A translation vector with i.i.d. ``N(0, scale²)`` components."""
    return scale * torch.randn(3, generator=_generator(seed), dtype=torch.float64).to(dtype)


def random_permutation_within(batch: torch.Tensor, seed: Seed = None) -> torch.Tensor:
    """A random permutation of nodes that keeps each node inside its graph and keeps graphs
    contiguous (so a permuted ``Batch`` is still a valid PyG batch): ``perm[i]`` is the old
    index of new node ``i``."""
    keys = torch.rand(batch.numel(), generator=_generator(seed), dtype=torch.float64)
    order = torch.argsort(keys)
    # stable sort by graph index restores contiguity while keeping the random order inside
    return order[torch.argsort(batch[order], stable=True)]

"""How a model's inputs and outputs transform: the declaration `equivariance_error` reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from e3nn import o3

from .irreps import IrrepsLike, as_irreps

#: the transformations :func:`~relaxgnn.symmetry.equivariance_error` can apply
CHECKS = ("rotation", "reflection", "translation", "permutation")


@dataclass(frozen=True, init=False)
class Signature:
    """The transformation behaviour of a model that maps a PyG ``Data``/``Batch`` to a tensor.

    Attributes:
        irreps_in: the ``Data`` fields the model reads that carry geometry, with their irreps,
            e.g. ``{"pos": "1x1o", "vel": "1x1o", "charges": "1x0e"}``. Fields are stored
            ``(num_nodes, irreps.dim)`` (a ``1x1o`` field may be ``(num_nodes, 3)``).
        irreps_out: irreps of the output, ``(num_nodes or num_graphs, irreps_out.dim)``.
        level: ``"node"`` (one row per node: permuted with the nodes) or ``"graph"``.
        translated: input fields that a translation shifts (positions).
        output_translates: whether the output is itself a position (shifted by translations).
        symmetries: the transformations the model is equivariant to, which
            :func:`~relaxgnn.symmetry.equivariance_error` checks by default (all of ``CHECKS``;
            a model that reads absolute positions leaves out ``"translation"``).

    Every node-level field of the data is permuted under a node permutation, declared or not.
    """

    irreps_in: dict[str, o3.Irreps]
    irreps_out: o3.Irreps
    level: Literal["node", "graph"] = "node"
    translated: tuple[str, ...] = ("pos",)
    output_translates: bool = False
    symmetries: tuple[str, ...] = CHECKS

    def __init__(
        self,
        irreps_in: dict[str, IrrepsLike],
        irreps_out: IrrepsLike,
        level: Literal["node", "graph"] = "node",
        translated: tuple[str, ...] = ("pos",),
        output_translates: bool = False,
        symmetries: tuple[str, ...] = CHECKS,
    ) -> None:
        if level not in ("node", "graph"):
            raise ValueError(f"level must be 'node' or 'graph', got {level!r}")
        parsed = {name: as_irreps(ir) for name, ir in irreps_in.items()}
        for name in translated:
            if name not in parsed:
                raise ValueError(f"translated field {name!r} is not among irreps_in {list(parsed)}")
            if parsed[name] != o3.Irreps("1x1o"):
                raise ValueError(f"translated field {name!r} must be 1x1o, got {parsed[name]}")
        out = as_irreps(irreps_out)
        if output_translates and out != o3.Irreps("1x1o"):
            raise ValueError(f"an output that translates must be 1x1o, got {out}")
        object.__setattr__(self, "irreps_in", parsed)
        object.__setattr__(self, "irreps_out", out)
        object.__setattr__(self, "level", level)
        object.__setattr__(self, "translated", tuple(translated))
        object.__setattr__(self, "output_translates", output_translates)
        unknown = set(symmetries) - set(CHECKS)
        if unknown:
            raise ValueError(f"unknown symmetries {sorted(unknown)}; choose from {CHECKS}")
        object.__setattr__(self, "symmetries", tuple(symmetries))

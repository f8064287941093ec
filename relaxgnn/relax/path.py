r"""The relaxation path: an unconstrained map added to an equivariant block, scaled by θ.

A relaxed block computes :math:`f(x) = f_{eq}(x) + \theta\, g(x)`, where :math:`g` sees the
block's input as a plain vector (its irreps flattened, plus absolute positions where the block
has them) and may break every symmetry. At :math:`\theta = 0` the path is not evaluated at all,
so the block computes exactly :math:`f_{eq}`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Literal

import torch
from e3nn import o3
from torch import Tensor, nn

from ..symmetry.irreps import IrrepsLike, as_irreps

PathKind = Literal["linear", "mlp"]


@dataclass(frozen=True)
class RelaxConfig:
    """How the blocks of a model are relaxed.

    Attributes:
        kind: ``"linear"`` — a bias-free matrix with weights ``N(0, init_std²)`` (the paper's
            choice) — or ``"mlp"`` — a SiLU MLP with ``layers`` hidden layers of width
            ``hidden`` whose last layer starts at ``N(0, init_std²)`` with zero bias.
        hidden, layers: the MLP's shape (ignored for ``"linear"``).
        init_std: standard deviation of the initial (last-layer) weights.
        targets: which updates of each layer get a path (e.g. EGNN's ``("features",
            "coords")``); ``None`` means all the layer offers.
        positions: whether paths see absolute positions where the block has them.
    """

    kind: PathKind = "linear"
    hidden: int = 64
    layers: int = 1
    init_std: float = 1e-4
    targets: tuple[str, ...] | None = None
    positions: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ValueError(f"unknown relaxation path kind {self.kind!r}: use 'linear' or 'mlp'")
        if self.hidden < 1 or self.layers < 1:
            raise ValueError(f"an mlp path needs hidden >= 1 and layers >= 1, got "
                             f"hidden={self.hidden}, layers={self.layers}")
        if not (math.isfinite(self.init_std) and self.init_std >= 0):
            raise ValueError(f"init_std must be finite and >= 0, got {self.init_std}")
        if self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))

    @classmethod
    def parse(cls, value: RelaxConfig | str | Mapping | bool | None) -> RelaxConfig | None:
        """``None``/``False`` → no relaxation; ``True`` → defaults; ``"linear"``/``"mlp"`` → that
        kind; a mapping → its keys as fields (unknown keys are an error)."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            return cls(kind=value)  # type: ignore[arg-type]
        if isinstance(value, Mapping):
            known = {f.name for f in fields(cls)}
            unknown = set(value) - known
            if unknown:
                raise ValueError(f"unknown relaxation option(s) {sorted(unknown)}; "
                                 f"known: {sorted(known)}")
            return cls(**value)
        raise TypeError(f"relax must be None, a path kind, a mapping or RelaxConfig, got "
                        f"{type(value).__name__}")

    def wants(self, target: str, offered: Sequence[str]) -> bool:
        """Whether a layer offering ``offered`` updates relaxes ``target``."""
        if self.targets is None:
            return True
        unknown = set(self.targets) - set(offered)
        if unknown:
            raise ValueError(f"relaxation targets {sorted(unknown)} are not offered by this layer "
                             f"(it offers {list(offered)})")
        return target in self.targets


class RelaxationPath(nn.Module):
    r"""The path :math:`x \mapsto \theta\, g(x)` from ``irreps_in`` to ``irreps_out``.

    The unscaled map :math:`g` is the submodule ``g``: a bias-free ``nn.Linear`` (so that Lie
    derivatives take their closed form) or an ``nn.Sequential`` MLP.

    ``position_columns`` lists where absolute positions (``1x1o``, translated with the data)
    start in the input, for the translation part of the Lie-derivative penalty. θ is a
    persistent buffer, so it is saved and restored with the model. Every forward pass with
    θ ≠ 0 keeps a detached copy of its input for :meth:`~relaxgnn.relax.Relaxation.penalty`.

    Building or resetting a path draws no numbers from torch's global generator (its weights
    come from a generator seeded by the global state and ``salt``), so a relaxed model built
    with a given seed has the same equivariant weights as the plain model built with it.
    """

    def __init__(
        self,
        irreps_in: IrrepsLike,
        irreps_out: IrrepsLike,
        config: RelaxConfig | None = None,
        position_columns: Sequence[int] = (),
        salt: int = 0,
    ) -> None:
        super().__init__()
        self.config = config or RelaxConfig()
        self.irreps_in: o3.Irreps = as_irreps(irreps_in)
        self.irreps_out: o3.Irreps = as_irreps(irreps_out)
        self.position_columns = tuple(int(c) for c in position_columns)
        for start in self.position_columns:
            if not 0 <= start <= self.irreps_in.dim - 3:
                raise ValueError(f"position column {start} outside input of dimension "
                                 f"{self.irreps_in.dim}")
        self.salt = int(salt)
        d_in, d_out = self.irreps_in.dim, self.irreps_out.dim
        with torch.random.fork_rng(devices=[]):  # nn.Linear initialises itself
            if self.config.kind == "linear":
                self.g: nn.Module = nn.Linear(d_in, d_out, bias=False)
            else:
                sizes = [d_in] + [self.config.hidden] * self.config.layers + [d_out]
                layers: list[nn.Module] = []
                for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                    layers.append(nn.Linear(a, b))
                    if k < len(sizes) - 2:
                        layers.append(nn.SiLU())
                self.g = nn.Sequential(*layers)
        self.register_buffer("theta", torch.zeros(()))
        self._theta = 0.0
        self.last_input: Tensor | None = None
        self.register_load_state_dict_post_hook(_sync_theta)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights ``N(0, init_std²)`` (the MLP's last layer; its other layers as ``nn.Linear``),
        drawn from :func:`_own_generator`."""
        gen = _own_generator(self.salt)
        std = self.config.init_std
        with torch.no_grad():
            if isinstance(self.g, nn.Linear):
                nn.init.normal_(self.g.weight, 0.0, std, generator=gen)
                return
            linears = [m for m in self.g if isinstance(m, nn.Linear)]
            for m in linears[:-1]:  # nn.Linear's own initialisation, with our generator
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                bound = 1 / math.sqrt(m.in_features)
                nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            nn.init.normal_(linears[-1].weight, 0.0, std, generator=gen)
            nn.init.zeros_(linears[-1].bias)

    @property
    def active(self) -> bool:
        """Whether θ ≠ 0 (a Python float: no device synchronisation)."""
        return self._theta != 0.0

    def set_theta(self, theta: float) -> None:
        theta = float(theta)
        if not math.isfinite(theta) or theta < 0:
            raise ValueError(f"theta must be a finite non-negative number, got {theta}")
        self._theta = theta
        self.theta.fill_(theta)
        if theta == 0.0:
            self.last_input = None

    def forward(self, x: Tensor) -> Tensor:
        """:math:`\\theta\\, g(x)`; records ``x`` (detached) for the penalties."""
        if x.shape[-1] != self.irreps_in.dim:
            raise ValueError(f"relaxation path expects {self.irreps_in.dim} input features "
                             f"({self.irreps_in}), got {x.shape[-1]}")
        self.last_input = x.detach()
        return self._theta * self.g(x)

    def extra_repr(self) -> str:
        return (f"{self.irreps_in} -> {self.irreps_out}, kind={self.config.kind}, "
                f"theta={self._theta:g}")


def _own_generator(salt: int) -> torch.Generator:
    """A CPU generator seeded by the global generator's state and ``salt``, which leaves the
    global generator where it was."""
    state = torch.random.get_rng_state().numpy().tobytes()
    digest = hashlib.sha256(state + salt.to_bytes(8, "little", signed=True)).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def _sync_theta(module: RelaxationPath, _incompatible_keys) -> None:
    module._theta = float(module.theta)


def build_paths(
    config: RelaxConfig | None,
    specs: Mapping[str, tuple[IrrepsLike, IrrepsLike, Sequence[int]]],
) -> dict[str, RelaxationPath | None]:
    """Create the paths ``{name: (irreps_in, irreps_out, position_columns)}`` of one layer.

    Building them consumes no global random numbers (see :class:`RelaxationPath`); each gets
    its own ``salt`` so that paths built at the same point differ. Returns ``None`` for every
    name when ``config`` is ``None``.
    """
    if config is None:
        return dict.fromkeys(specs)
    return {name: RelaxationPath(i, o, config, cols, salt=k)
            for k, (name, (i, o, cols)) in enumerate(specs.items())}

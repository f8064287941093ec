r"""The relaxation path: an unconstrained map added to a module's output, scaled by θ.

A relaxed module computes :math:`f(x) = f_{eq}(x) + \theta\, g(u)`, where :math:`u` is the
module's input (the forward arguments the path reads, each flattened to its irreps' numbers,
concatenated) and :math:`g` may break every symmetry. The path is attached from outside by a
forward hook (:func:`~relaxgnn.relax.attach`); the module itself knows nothing of it. At
:math:`\theta = 0` the path is not evaluated at all, so the module computes exactly
:math:`f_{eq}`. θ belongs to the :class:`~relaxgnn.relax.Relaxation` controller that drives the
path; a path without a controller has θ = 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import warnings
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import torch
from e3nn import o3
from torch import Tensor, nn

from ..symmetry.irreps import IrrepsLike, as_irreps

PathKind = Literal["linear", "mlp"]
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU}


class RelaxationWarning(UserWarning):
    """A relaxed model used in a way that makes its relaxation meaningless."""


@dataclass(frozen=True)
class RelaxConfig:
    """What a relaxation path is and what it reads.

    The path:
        kind: ``"linear"`` — a bias-free matrix with weights ``N(0, init_std²)`` (the paper's
            choice; its Lie derivative has a closed form) — or ``"mlp"`` — an MLP with
            ``layers`` hidden layers of width ``hidden`` and ``activation`` whose last layer
            starts at ``N(0, init_std²)`` with zero bias.
        hidden, layers, activation: the MLP's shape (ignored for ``"linear"``). ``hidden`` is
            a width, or a list of widths (one per hidden layer; ``layers`` is then ignored)
            where ``"<k>x"`` means k times the path's output dimension: ACE's branch is
            ``hidden=["2x", "1x"], activation="gelu", init_std=None``.
        init_std: standard deviation of the initial (last-layer) weights; ``None``: the last
            layer starts like the others (``nn.Linear``'s initialisation, as ACE's).

    Where it reads and writes (for :func:`~relaxgnn.relax.attach`):
        inputs: the forward arguments of the module the path reads, by name or position
            (``None``: the first argument). An argument given as a list of parts is
            concatenated (gathered by the module's ``index`` argument when it has one, the
            convention of :class:`~relaxgnn.nn.O3TensorProduct`).
        irreps_in: irreps of the inputs: one irreps for a single input, or a mapping from input
            name to irreps. ``None``: read from the module — ``irreps_<name>`` for the argument
            ``<name>``, else ``irreps_in`` for its first argument and ``irreps_in1``,
            ``irreps_in2``, … by position (e3nn's attributes).
        irreps_out: irreps of what the path adds to (``None``: the module's ``irreps_out``, or
            its element ``output`` when the module declares one irreps per output element).
        output: for a module that returns a tuple, the element the path adds to.
        name: the path's name after the module's (``"<module>.<name>"``; default
            ``output<k>`` for a path on element ``k`` of a tuple output, else none), e.g.
            EGNN's ``layers.0.features`` and ``layers.0.coords``.
        translates: inputs that are absolute positions (``1x1o``, shifted by a translation of
            the data): the penalty then has translation derivatives too.

    Options of the default placements (``relax=`` on relaxgnn's layers and models):
        targets: which of the placement's paths to build (e.g. EGNN's ``["coords"]``);
            ``None``: all.
        positions: whether the placement's paths see absolute positions where the module has
            them (``None``: the placement's default).
    """

    kind: PathKind = "linear"
    hidden: int | tuple[int | str, ...] = 64
    layers: int = 1
    activation: str = "silu"
    init_std: float | None = 1e-4
    inputs: tuple[str | int, ...] | None = None
    irreps_in: str | Mapping[str, str] | None = None
    irreps_out: str | None = None
    output: int | None = None
    name: str | None = None
    translates: tuple[str, ...] = ("pos",)
    targets: tuple[str, ...] | None = None
    positions: bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ValueError(f"unknown relaxation path kind {self.kind!r}: use 'linear' or 'mlp'")
        if isinstance(self.hidden, (list, tuple)):
            object.__setattr__(self, "hidden", tuple(self.hidden))
            for width in self.hidden:
                if not (isinstance(width, int) and width >= 1 or isinstance(width, str)
                        and re.fullmatch(r"\d+(\.\d+)?x", width)):
                    raise ValueError(f"hidden widths are positive integers or '<k>x' "
                                     f"(k times the output dimension), got {width!r}")
        elif self.hidden < 1:
            raise ValueError(f"an mlp path needs hidden >= 1, got hidden={self.hidden}")
        if self.layers < 1:
            raise ValueError(f"an mlp path needs layers >= 1, got layers={self.layers}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from "
                             f"{sorted(ACTIVATIONS)}")
        if self.init_std is not None and not (math.isfinite(self.init_std)
                                              and self.init_std >= 0):
            raise ValueError(f"init_std must be finite and >= 0 (or None), got {self.init_std}")
        for name in ("inputs", "translates", "targets"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, (str, int)):
                    value = (value,)
                object.__setattr__(self, name, tuple(value))
        if isinstance(self.irreps_in, Mapping):
            object.__setattr__(self, "irreps_in", {str(k): str(v)
                                                   for k, v in self.irreps_in.items()})
        if self.output is not None and (isinstance(self.output, bool) or self.output < 0):
            raise ValueError(f"output must be a non-negative index, got {self.output!r}")
        if self.name is not None and not self.name.isidentifier():
            raise ValueError(f"a path's name must be an identifier, got {self.name!r}")

    @property
    def suffix(self) -> str | None:
        """What the path's name adds to its module's name."""
        if self.name is not None:
            return self.name
        return None if self.output is None else f"output{self.output}"

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

    def hidden_widths(self, d_out: int) -> list[int]:
        """The MLP's hidden widths for a path with ``d_out`` outputs."""
        if not isinstance(self.hidden, tuple):
            return [self.hidden] * self.layers
        return [w if isinstance(w, int) else max(1, round(float(w[:-1]) * d_out))
                for w in self.hidden]

    def replace(self, **changes: Any) -> RelaxConfig:
        return dataclasses.replace(self, **changes)

    def wants(self, target: str, offered: Sequence[str]) -> bool:
        """Whether a placement offering ``offered`` paths builds ``target``."""
        if self.targets is None:
            return True
        unknown = set(self.targets) - set(offered)
        if unknown:
            raise ValueError(f"relaxation targets {sorted(unknown)} are not offered here "
                             f"(offered: {list(offered)})")
        return target in self.targets


@dataclass(frozen=True)
class PathInput:
    """One forward argument a path reads: its name, position and irreps."""

    name: str
    position: int
    irreps: o3.Irreps
    dim: int = field(init=False)  # an int for forward: torch.compile cannot guard on an Irrep

    def __post_init__(self) -> None:
        object.__setattr__(self, "dim", self.irreps.dim)


class RelaxationPath(nn.Module):
    r"""The path :math:`u \mapsto \theta\, g(u)` from ``irreps_in`` to ``irreps_out``.

    The unscaled map :math:`g` is the submodule ``g``: a bias-free ``nn.Linear`` (so that Lie
    derivatives take their closed form) or an ``nn.Sequential`` MLP. ``position_columns`` lists
    where absolute positions (``1x1o``, translated with the data) start in :math:`u`, for the
    translation part of the penalty.

    Building or resetting a path draws no numbers from torch's global generator (its weights
    come from a generator seeded by the global state and ``salt``), so a relaxed model built
    with a given seed has the same equivariant weights as the plain model built with it.

    Shapes:
        ``forward``: ``(*, irreps_in.dim) -> (*, irreps_out.dim)``.
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
        self.g_in = d_in  # an int for forward: torch.compile cannot guard on e3nn's Irrep
        with torch.random.fork_rng(devices=[]):  # nn.Linear initialises itself
            if self.config.kind == "linear":
                self.g: nn.Module = nn.Linear(d_in, d_out, bias=False)
            else:
                sizes = [d_in] + self.config.hidden_widths(d_out) + [d_out]
                layers: list[nn.Module] = []
                for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
                    layers.append(nn.Linear(a, b))
                    if k < len(sizes) - 2:
                        layers.append(ACTIVATIONS[self.config.activation]())
                self.g = nn.Sequential(*layers)
        self._theta = 0.0
        self._active = False
        self._learned_theta: Tensor | None = None
        # θ as the forward reads it when a schedule sets it: a tensor updated in place, so that
        # a compiled model reads a new θ without being recompiled for every value
        self.register_buffer("theta_now", torch.zeros(()), persistent=False)
        self._controller: weakref.ReferenceType | None = None
        # set by attach: the module name, the arguments read, and the output element written
        self.target = ""
        self.inputs: tuple[PathInput, ...] = ()
        # forward argument name -> (position or None for keyword-only, default)
        self._arguments: dict[str, tuple[int | None, Any]] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights as ``nn.Linear`` initialises them, then the last (or only) layer
        ``N(0, init_std²)`` with zero bias unless ``init_std`` is ``None``; drawn from
        :func:`_own_generator`."""
        gen = _own_generator(self.salt)
        std = self.config.init_std
        with torch.no_grad():
            linears = [m for m in self.g.modules() if isinstance(m, nn.Linear)]
            for m in linears[:-1] if std is not None else linears:  # nn.Linear's own init
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=gen)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.in_features)
                    nn.init.uniform_(m.bias, -bound, bound, generator=gen)
            if std is not None:  # the last layer near zero
                nn.init.normal_(linears[-1].weight, 0.0, std, generator=gen)
                if linears[-1].bias is not None:
                    nn.init.zeros_(linears[-1].bias)

    # ------------------------------------------------------------------ θ (the controller's)
    @property
    def theta(self) -> float:
        """θ as the controller last set it (0 without a controller), as a number."""
        return float(self._theta.detach()) if isinstance(self._theta, Tensor) else self._theta

    @property
    def active(self) -> bool:
        """Whether the path is evaluated: θ ≠ 0, or θ is a learned scalar (a tensor: the path
        must run for θ to get its gradient). No device synchronisation."""
        return self._active

    @property
    def controller(self):
        """The :class:`~relaxgnn.relax.Relaxation` that drives this path, or ``None``."""
        return self._controller() if self._controller is not None else None

    def _set_theta(self, theta: float | Tensor) -> None:  # only a controller calls this
        # a learned θ is the controller's parameter: held here, never registered on the path
        self.__dict__["_theta"] = theta if isinstance(theta, Tensor) else float(theta)
        # a bool, so that a compiled model guards on "θ ≠ 0", not on θ's value
        self.__dict__["_active"] = isinstance(theta, Tensor) or float(theta) != 0.0
        self.__dict__["_learned_theta"] = theta if isinstance(theta, Tensor) else None
        if not isinstance(theta, Tensor):
            with torch.no_grad():
                self.theta_now.fill_(float(theta))

    # ------------------------------------------------------------------ evaluation
    def forward(self, x: Tensor) -> Tensor:
        """:math:`\\theta\\, g(x)`."""
        if x.shape[-1] != self.g_in:
            raise ValueError(f"relaxation path{self._where()} expects {self.irreps_in.dim} input "
                             f"features ({self.irreps_in}), got {x.shape[-1]}")
        theta = self.theta_now if self._learned_theta is None else self._learned_theta
        return theta * self.g(x)

    def _where(self) -> str:
        return f" on `{self.target}`" if self.target else ""

    def gather_input(self, module: nn.Module, args: tuple, kwargs: dict) -> Tensor:
        """:math:`u`: the arguments this path reads from a call ``module(*args, **kwargs)``,
        flattened and concatenated, ``(rows, irreps_in.dim)``.

        Arguments are read by the position and name :func:`~relaxgnn.relax.attach` found in
        the module's signature (no ``Signature.bind`` per call: ``torch.compile`` cannot trace
        it)."""
        index = self._argument("index", args, kwargs)
        parts = []
        for spec in self.inputs:
            value = self._argument(spec.name, args, kwargs)
            if isinstance(value, (list, tuple)) and all(isinstance(v, Tensor) for v in value):
                idx = list(index) if isinstance(index, (list, tuple)) else [None] * len(value)
                value = torch.cat([v if i is None else v.index_select(0, i)
                                   for v, i in zip(value, idx, strict=True)], -1)
            if not isinstance(value, Tensor):
                raise ValueError(f"the relaxation path on `{self.target}` reads the argument "
                                 f"`{spec.name}`, which this call gave as "
                                 f"{type(value).__name__}, not a tensor")
            if value.dim() == 1 and spec.dim == 1:
                value = value.unsqueeze(-1)
            if value.dim() != 2 or value.shape[-1] != spec.dim:
                raise ValueError(f"the relaxation path on `{self.target}` reads `{spec.name}` as "
                                 f"{spec.irreps} ({spec.dim} features per row), got shape "
                                 f"{tuple(value.shape)}")
            parts.append(value)
        rows = {p.shape[0] for p in parts}
        if len(rows) > 1:
            raise ValueError(f"the inputs {[s.name for s in self.inputs]} of the relaxation path "
                             f"on `{self.target}` have different numbers of rows: "
                             f"{[p.shape[0] for p in parts]}")
        return parts[0] if len(parts) == 1 else torch.cat(parts, -1)

    def _argument(self, name: str, args: tuple, kwargs: dict) -> Any:
        """The value of the module's forward argument ``name`` in a call (its default when not
        given; ``None`` for a name the forward does not take)."""
        position, default = self._arguments.get(name, (None, None))
        if position is not None and position < len(args):
            return args[position]
        return kwargs.get(name, default)

    def hook(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        """The forward hook :func:`~relaxgnn.relax.attach` registers: adds
        :math:`\\theta\\, g(u)` to the module's output (or to its element ``config.output``)."""
        controller = self.controller
        if controller is None and module.training:
            _warn_if_trained(output)
        if not self.active:
            return output
        u = self.gather_input(module, args, kwargs)
        if controller is not None:
            controller._record(self, u)
        k = self.config.output
        target = output if k is None else output[k]
        delta = self(u)
        if delta.shape != target.shape:
            raise ValueError(f"the relaxation path on `{self.target}` gives shape "
                             f"{tuple(delta.shape)} but the output it adds to has shape "
                             f"{tuple(target.shape)}: check its irreps_out ({self.irreps_out}) "
                             "and output index")
        if k is None:
            return target + delta
        return (*output[:k], target + delta, *output[k + 1:])

    def extra_repr(self) -> str:
        reads = ", ".join(s.name for s in self.inputs)
        return (f"{self.irreps_in} -> {self.irreps_out}, kind={self.config.kind}"
                + (f", reads=[{reads}]" if reads else "") + f", theta={self.theta:g}")


_warned = [False]  # the training-without-controller warning is given once per process


def _warn_if_trained(output: Any) -> None:
    """Warn (once) when a backward pass goes through a relaxed module in training mode that no
    controller drives: the model is being trained, and its paths never take part. (Forces by
    autograd in evaluation mode are no training.)"""
    if _warned[0] or not torch.is_grad_enabled():
        return
    tensors = [output] if isinstance(output, Tensor) else \
        [t for t in output if isinstance(t, Tensor)] if isinstance(output, tuple) else []
    tensor = next((t for t in tensors if t.requires_grad), None)
    if tensor is None:
        return

    def warn(grad: Tensor) -> None:
        if not _warned[0]:
            _warned[0] = True
            warnings.warn(
                "a relaxed model is being trained without a relaxation controller: θ stays 0, "
                "so its relaxation paths are never used. Drive them with "
                "relaxgnn.relax.Relaxation (the Relax callback in a training config), or build "
                "the model without relaxation.", RelaxationWarning, stacklevel=2)

    tensor.register_hook(warn)


def _own_generator(salt: int) -> torch.Generator:
    """A CPU generator seeded by the global generator's state and ``salt``, which leaves the
    global generator where it was."""
    state = torch.random.get_rng_state().numpy().tobytes()
    digest = hashlib.sha256(state + salt.to_bytes(8, "little", signed=True)).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def name_salt(name: str) -> int:
    """A stable salt for the path of the module ``name`` (paths built together differ)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "little")

r"""Putting relaxation paths on any module of a model, finding them, and removing them.

:func:`attach` matches submodule names (glob patterns on ``model.named_modules()``, level by
level: ``layers.*`` are the layers, not their submodules; ``**`` spans levels) and gives each
match a :class:`~relaxgnn.relax.RelaxationPath`: a forward hook reads the module's input and adds
:math:`\theta\, g(u)` to its output, so any module can be relaxed — relaxgnn's layers, e3nn's
``o3.Linear``, ``FullyConnectedTensorProduct`` or ``Gate``, or a user's own block — without
changing its code. The paths live in a :class:`RelaxationPaths` container on the model given to
:func:`attach` (state-dict keys ``relaxation_paths.<module name with ":" for ".">.g.…``).

Under ``torch.compile`` the paths are part of the compiled graph. Because ``torch.compile``
by default does not check module hooks before reusing a graph (it would run a graph traced from
the plain model for the relaxed one, paths left out), :func:`attach` turns that check on for the
process (``torch._dynamo.config.skip_nnmodule_hook_guards = False``).

:func:`project` returns a copy with every path and hook removed: the plain, exactly equivariant
model, whose ``state_dict`` loads (``strict=True``) into the model never relaxed.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from e3nn import o3
from torch import nn

from ..dtype import default_dtype
from ..symmetry.irreps import as_irreps
from .path import PathInput, RelaxationPath, RelaxConfig, name_salt

CONTAINER = "relaxation_paths"

PathSpec = RelaxConfig | str | Mapping[str, Any] | None
Placement = Mapping[str, PathSpec | Sequence[PathSpec]]


_FIELDS = {f.name for f in dataclasses.fields(RelaxConfig)}


class RelaxationState(nn.Module):
    """Base of the containers relaxation adds to a model (paths, learned scales); every one of
    them is removed by :func:`project`."""


class RelaxationPaths(nn.ModuleDict, RelaxationState):
    """The paths :func:`attach` put on a model, keyed by their names (``.`` → ``:``). Never
    called: the hooks evaluate the paths."""

    def forward(self, *args, **kwargs):  # pragma: no cover - a container
        raise RuntimeError("RelaxationPaths is a container; its paths run inside forward hooks")


def _path_name(module_name: str, config: RelaxConfig) -> str:
    suffix = config.suffix
    return ".".join(p for p in (module_name, suffix) if p)


def _key(name: str) -> str:
    return name.replace(".", ":") or "<root>"


def _name(key: str) -> str:
    return "" if key == "<root>" else key.replace(":", ".")


def attach(model: nn.Module, placement: Placement) -> dict[str, RelaxationPath]:
    r"""Relax the submodules of ``model`` named by ``placement``: ``{glob pattern: config}``.

    Patterns match module names level by level: ``*``, ``?`` and ``[...]`` as in ``fnmatch``
    within one level (``layers.*`` are the layers themselves, ``layers.*.update_layer_1`` one
    submodule of each), ``**`` any number of levels (``**.lin`` every module named ``lin``).
    Each module whose name (in ``model.named_modules()``) matches a pattern gets one path
    (``config`` as for :meth:`RelaxConfig.parse`: a kind, a mapping of fields or a
    :class:`RelaxConfig`; ``None`` skips the pattern), or one per config of a list (paths on
    different elements of a tuple output). The pattern ``""`` names ``model`` itself. A
    pattern that matches nothing, a module matched twice, a module already relaxed, or irreps
    that can be found neither on the module nor in the config are errors that name the module.

    The path reads the module's forward arguments (``config.inputs``, default the first) and
    adds :math:`\theta\, g(u)` to what the module returns, in a forward hook (it runs on
    ``module(...)`` calls, not on other methods).

    Returns ``{name: path}`` of the new paths (the names :class:`~relaxgnn.relax.Relaxation`
    and its per-block schedules use: the module's name, plus the config's ``name`` — by
    default ``output<k>`` for a path on element ``k`` of a tuple output).
    """
    if not isinstance(placement, Mapping):
        raise TypeError(f"placement must be a mapping {{glob pattern: config}}, got "
                        f"{type(placement).__name__}")
    modules = [(n, m) for n, m in model.named_modules()
               if not isinstance(m, (RelaxationPath, RelaxationState))
               and not any(isinstance(owner, RelaxationState) for owner in _owners(model, n))]
    taken = set(find_paths(model))
    plan: dict[str, tuple[str, nn.Module, RelaxConfig, str]] = {}
    for pattern, config in _configs(placement):
        matched = [(n, m) for n, m in modules
                   if (n == pattern if pattern == "" else n and matches(n, pattern))]
        if not matched:
            names = [n for n, _ in modules if n][:12]
            raise ValueError(f"relaxation pattern {pattern!r} matches no module of "
                             f"{type(model).__name__} (its modules include {names})")
        for name, module in matched:
            full = _path_name(name, config)
            if full in plan:
                raise ValueError(f"the relaxation path `{full}` is placed by both "
                                 f"{plan[full][3]!r} and {pattern!r}")
            if full in taken:
                raise ValueError(f"{type(model).__name__} already has the relaxation path "
                                 f"`{full}`")
            plan[full] = (name, module, config, pattern)
    # dynamo does not guard on module hooks by default, and would run a graph traced from a
    # model without paths for one with paths (same code): make it guard on them
    torch._dynamo.config.skip_nnmodule_hook_guards = False
    container = getattr(model, CONTAINER, None)
    if container is None:
        container = RelaxationPaths()
        model.add_module(CONTAINER, container)
    order = {name: k for k, (name, _) in enumerate(modules)}  # paths in the model's order
    paths = {}
    for full, (name, module, config, _) in sorted(plan.items(),
                                                  key=lambda item: order[item[1][0]]):
        like = _floating_tensor(module)
        like = _floating_tensor(model) if like is None else like
        if like is None:
            path = _build_path(name, module, config)
        else:  # in the dtype and on the device of the module (or of the model)
            with default_dtype(like.dtype):
                path = _build_path(name, module, config).to(like.device)
        container[_key(full)] = path
        module.register_forward_hook(path.hook, with_kwargs=True)
        paths[full] = path
    return paths


def _owners(model: nn.Module, name: str) -> list[nn.Module]:
    """The modules above ``name`` in ``model``."""
    parts, owners, module = name.split(".") if name else [], [], model
    for part in parts[:-1]:
        module = getattr(module, part)
        owners.append(module)
    return owners


def matches(name: str, pattern: str) -> bool:
    """Whether the dotted module ``name`` matches ``pattern`` level by level (see
    :func:`attach`)."""
    def match(parts: list[str], pats: list[str]) -> bool:
        if not pats:
            return not parts
        if pats[0] == "**":
            return any(match(parts[k:], pats[1:]) for k in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pats[0]) \
            and match(parts[1:], pats[1:])

    return match(name.split("."), pattern.split("."))


def _floating_tensor(module: nn.Module):
    tensors = [*module.parameters(), *module.buffers()]
    return next((t for t in tensors if t.is_floating_point()), None)


def resolve_placement(
    relax: PathSpec | Placement,
    default: Callable[[RelaxConfig], Placement],
) -> Placement | None:
    """What a model's or layer's ``relax=`` argument means: ``None`` → no paths; a path kind, a
    :class:`RelaxConfig` or a mapping of its fields → ``default(config)`` (the default
    placement); a mapping from module patterns to configs → that placement itself."""
    if isinstance(relax, Mapping) and relax and not set(relax) & _FIELDS:
        return relax  # no key is a RelaxConfig field: module patterns
    config = RelaxConfig.parse(relax)
    return None if config is None else default(config)


def nested(prefix: str, placement: Placement) -> dict[str, Any]:
    """``placement`` of a submodule ``prefix``, as patterns of its parent."""
    return {prefix + ("." + k if k else ""): v for k, v in placement.items()}


def relax_layers(model: nn.Module, relax: PathSpec | Placement, layers: str = "layers"
                 ) -> dict[str, RelaxationPath]:
    """A model's ``relax=``: :func:`attach` its default placement — the
    ``relaxation_placement`` of each layer in the ``nn.ModuleList`` ``model.<layers>`` — or the
    explicit placement given (:func:`resolve_placement`). ``{}`` for ``relax=None``."""
    def default(config: RelaxConfig) -> dict[str, Any]:
        return {k: v for i, layer in enumerate(getattr(model, layers))
                for k, v in nested(f"{layers}.{i}", layer.relaxation_placement(config)).items()}

    placement = resolve_placement(relax, default)
    return attach(model, placement) if placement else {}


def _configs(placement: Placement) -> list[tuple[str, RelaxConfig]]:
    out = []
    for pattern, value in placement.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        out += [(pattern, c) for c in map(RelaxConfig.parse, values) if c is not None]
    return out


def _build_path(name: str, module: nn.Module, config: RelaxConfig) -> RelaxationPath:
    where = f"`{name or '<root>'}` ({type(module).__name__})"
    signature = inspect.signature(module.forward)
    params = [p for p in signature.parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not params:
        raise ValueError(f"cannot relax {where}: its forward takes no named arguments")
    wanted = config.inputs if config.inputs is not None else (params[0].name,)
    inputs = []
    for item in wanted:
        param = _parameter(params, item, where)
        position = params.index(param)
        inputs.append(PathInput(param.name, position, _input_irreps(module, config, param.name,
                                                                    position, where)))
    irreps_out = config.irreps_out
    if irreps_out is None:
        declared = getattr(module, "irreps_out", None)
        per_element = isinstance(declared, (list, tuple)) and not isinstance(declared, o3.Irreps)
        if per_element and config.output is not None and config.output < len(declared):
            irreps_out = declared[config.output]  # one irreps per element of a tuple output
        elif declared is not None and not per_element:
            irreps_out = declared
    if irreps_out is None:
        raise ValueError(f"cannot relax {where}: the irreps of what the path adds to are unknown "
                         "(no `irreps_out` on the module for it); give irreps_out in its config")
    irreps_in, columns = o3.Irreps(""), []
    for spec in inputs:
        if spec.name in config.translates:
            if spec.irreps != o3.Irreps("1x1o"):
                raise ValueError(f"`{spec.name}` of {where} is declared to translate (absolute "
                                 f"positions) but its irreps are {spec.irreps}, not 1x1o")
            columns.append(irreps_in.dim)
        irreps_in = irreps_in + spec.irreps
    path = RelaxationPath(irreps_in, irreps_out, config, columns, salt=name_salt(name))
    path.target = name
    path.inputs = tuple(inputs)
    path._arguments = _arguments(signature)
    return path


def _arguments(signature: inspect.Signature) -> dict[str, tuple[int | None, Any]]:
    """``{name: (position or None, default or None)}`` of a forward's named arguments."""
    out, position = {}, 0
    for p in signature.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        positional = p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        out[p.name] = (position if positional else None,
                       None if p.default is p.empty else p.default)
        position += positional
    return out


def _parameter(params: list[inspect.Parameter], item: str | int, where: str
               ) -> inspect.Parameter:
    if isinstance(item, int):
        if not 0 <= item < len(params):
            raise ValueError(f"{where}'s forward has no argument at position {item} (it takes "
                             f"{[p.name for p in params]})")
        return params[item]
    match = [p for p in params if p.name == item]
    if not match:
        raise ValueError(f"{where}'s forward has no argument `{item}` (it takes "
                         f"{[p.name for p in params]})")
    return match[0]


def _input_irreps(module: nn.Module, config: RelaxConfig, name: str, position: int,
                  where: str) -> o3.Irreps:
    given = config.irreps_in
    if isinstance(given, Mapping):
        if name in given:
            return as_irreps(given[name])
    elif given is not None:
        if len(config.inputs or (None,)) != 1:
            raise ValueError(f"the relaxation path on {where} reads {len(config.inputs)} "
                             "inputs: give irreps_in as a mapping {input: irreps}")
        return as_irreps(given)
    attributes = [f"irreps_{name}"] + (["irreps_in"] if position == 0 else []) + \
        [f"irreps_in{position + 1}"]
    for attribute in attributes:
        value = getattr(module, attribute, None)
        if value is not None:
            return as_irreps(value)
    raise ValueError(f"cannot relax {where}: the irreps of its argument `{name}` are unknown "
                     f"(no {' or '.join(attributes)} on the module); give irreps_in in the "
                     "path's config")


def find_paths(model: nn.Module) -> dict[str, RelaxationPath]:
    """Every relaxation path inside ``model``, by name (the module it relaxes, relative to
    ``model``, plus the path's own name if it has one)."""
    paths = {}
    for owner, module in model.named_modules():
        if isinstance(module, RelaxationPaths):
            prefix = owner.removesuffix(CONTAINER).removesuffix(".")
            for key, path in module.items():
                paths[".".join(p for p in (prefix, _name(key)) if p)] = path
    return paths


def project(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every relaxation path and its hook removed: exactly equivariant,
    with no extra parameters or cost. Its ``state_dict`` has the keys of the same architecture
    built without relaxation and loads into it with ``strict=True``; its outputs equal
    ``model``'s at θ = 0. Modules' ``relax`` attributes (the shorthand a relaxgnn model was
    built with) become ``None``."""
    keys = set(plain_state(model.state_dict()))
    projected = copy.deepcopy(model)
    for module in projected.modules():
        hooks = module._forward_hooks
        for handle_id, hook in list(hooks.items()):
            if isinstance(getattr(hook, "__self__", None), RelaxationPath):
                del hooks[handle_id]
                module._forward_hooks_with_kwargs.pop(handle_id, None)
        for name, child in list(module.named_children()):
            if isinstance(child, RelaxationState):
                delattr(module, name)
        if hasattr(module, "relax"):
            module.relax = None
    _keep_state_keys(projected, keys)
    return projected


def plain_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` without the entries of relaxation containers (paths, learned scales): the
    state dict of the model never relaxed."""
    return {k: v for k, v in state.items()
            if not any(part in ("relaxation_paths", "relaxation_gammas")
                       for part in k.split("."))}


def _keep_state_keys(model: nn.Module, keys: set[str]) -> None:
    """Make buffers that a deep copy created (e3nn's fx-compiled products turn their constant
    tensors into buffers when copied) non-persistent, so the copy's state dict has ``keys``."""
    for prefix, module in model.named_modules():
        for name in list(module._buffers):
            key = f"{prefix}.{name}" if prefix else name
            if key not in keys and name not in module._non_persistent_buffers_set:
                module._non_persistent_buffers_set.add(name)

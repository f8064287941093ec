"""Model files: how a model was built (class and constructor arguments) plus its weights.

A model file is a ``torch.save``-d dict of plain data and tensors only::

    {"format": 2, "class_path": "relaxgnn.models.segnn.SEGNN", "init_args": {...},
     "state_dict": {name: tensor}, "relaxgnn_version": "0.1.0", ...extra entries}

:func:`load_model` reads it with ``torch.load(weights_only=True)`` — no object of the file is
unpickled, so no code from it runs — and rebuilds the architecture only from classes in the
registry: relaxgnn's own models and the ones a user adds with :func:`register_model`. A name
read from a file is never imported. Files are written atomically (temporary file, then rename).

Formats: 2 since the SEGNN parameterisation of issue 10 (2026-12-01); files without a
``format`` entry are format 1 and load, except SEGNN ones, whose weights meant something else
then (they are refused with that reason).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_torch_save
from ..relax.attach import find_paths

FORMAT = 2
_REGISTRY: dict[str, type[nn.Module]] = {}


def register_model(cls: type[nn.Module], *aliases: str) -> type[nn.Module]:
    """Allow model files, checkpoints and specs to name ``cls``: under
    ``"<module>.<qualname>"`` (what :func:`model_spec` writes) and each alias. Returns ``cls``,
    so it also works as a class decorator. Only registered classes are ever built from a
    file."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_model takes an nn.Module subclass, got {cls!r}")
    for name in (f"{cls.__module__}.{cls.__qualname__}", *aliases):
        known = _REGISTRY.get(name)
        if known is not None and known is not cls:
            raise ValueError(f"model name {name!r} is already registered for {known!r}")
        _REGISTRY[name] = cls
    return cls


def registered_models() -> dict[str, type[nn.Module]]:
    """The classes model files may name, by name."""
    return dict(_REGISTRY)


def records_init_args(cls: type[nn.Module]) -> type[nn.Module]:
    """Class decorator: after ``__init__``, ``self.init_args`` holds every constructor argument
    (defaults filled in), so the architecture can be rebuilt from a file."""
    original = cls.__init__
    signature = inspect.signature(original)

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        original(self, *args, **kwargs)
        self.init_args = {k: _plain(v) for k, v in bound.arguments.items() if k != "self"}

    cls.__init__ = init
    return cls


def _plain(value: Any) -> Any:
    """Constructor arguments as plain Python data (dataclasses → dicts, tuples → lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # e.g. an e3nn Irreps: its string parses back


def model_spec(model: nn.Module) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a model built by a ``@records_init_args`` class; a
    model without relaxation paths (e.g. projected) is recorded with ``relax=None``."""
    init_args = getattr(model, "init_args", None)
    if init_args is None:
        raise TypeError(f"{type(model).__name__} does not record its constructor arguments "
                        "(decorate the class with @records_init_args)")
    init_args = dict(init_args)
    if "relax" in init_args and not find_paths(model):
        init_args["relax"] = None
    return {"class_path": f"{type(model).__module__}.{type(model).__qualname__}",
            "init_args": init_args}


def plain_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with every ``relax`` argument (nested specs too) set to ``None``: the
    architecture never relaxed."""
    def plain(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: (None if k == "relax" else plain(v)) for k, v in value.items()}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return plain(dict(spec))


def build_model(spec: Mapping[str, Any], source: str | os.PathLike | None = None) -> nn.Module:
    """Instantiate ``spec["class_path"](**spec["init_args"])`` for a registered class (see
    :func:`register_model`); ``source`` (a file) is named in the errors."""
    where = f"{source}: " if source is not None else ""
    class_path = spec.get("class_path") if isinstance(spec, Mapping) else None
    if not isinstance(class_path, str):
        raise ValueError(f"{where}a model spec needs a `class_path` string, got {class_path!r}")
    cls = _REGISTRY.get(class_path)
    if cls is None:
        raise ValueError(
            f"{where}refusing to build {class_path!r}: it is not a relaxgnn model nor a class "
            "registered with relaxgnn.models.register_model (names read from files are never "
            "imported)")
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ValueError(f"{where}`init_args` of {class_path} must be a mapping, got "
                         f"{type(init_args).__name__}")
    return cls(**init_args)


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write a model file (atomically); ``extra`` entries (plain data: e.g. metrics) are stored
    alongside."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({**model_spec(model), "state_dict": state, "format": FORMAT,
                              "relaxgnn_version": __version__, **extra}, path)


def load_weights_only(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                      what: str = "file") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file: a file holding
    anything but tensors and plain data is refused (nothing of it is unpickled or run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()
        detail = next((line for line in reason if "GLOBAL" in line or "Unsupported" in line),
                      reason[0] if reason else "")
        raise ValueError(
            f"refusing to load {path}: it holds Python objects other than tensors and plain "
            f"data, and relaxgnn never runs code from a file ({detail.strip()})") from None
    except Exception as err:  # truncated, not a torch file, ...
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {err})") \
            from err


def check_format(payload: Mapping[str, Any], spec: Mapping[str, Any], source: Any,
                 key: str = "format") -> None:
    """Refuse files whose weights this relaxgnn would misread: a newer format, or a format-1
    (pre-2026-12-01) file of a SEGNN, whose steerable layers were parameterised differently."""
    fmt = payload.get(key, 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise ValueError(f"{source}: written in model-file format {fmt!r}, newer than this "
                         f"relaxgnn's ({FORMAT}); upgrade relaxgnn")
    if fmt < 2 and any(path.endswith(".SEGNN") for path in _class_paths(spec)):
        raise ValueError(
            f"{source}: a SEGNN written before relaxgnn changed SEGNN's parameterisation and "
            "attributes (issue 10, 2026-12-01); its weights would compute another function "
            "here, so it is not loaded: retrain the model")


def _class_paths(spec: Any) -> list[str]:
    """Every ``class_path`` in a (nested) spec."""
    if isinstance(spec, Mapping):
        own = [spec["class_path"]] if isinstance(spec.get("class_path"), str) else []
        return own + [p for v in spec.values() for p in _class_paths(v)]
    if isinstance(spec, list):
        return [p for v in spec for p in _class_paths(v)]
    return []


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model file written by :func:`save_model` (weights-only: see the module
    docstring)."""
    payload = load_weights_only(path, map_location, what="model file")
    if not isinstance(payload, dict) or not {"class_path", "state_dict"} <= set(payload):
        raise ValueError(f"{path} is not a relaxgnn model file (no class_path/state_dict)")
    state = payload["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor)
                                                 for v in state.values()):
        raise ValueError(f"{path}: `state_dict` must map names to tensors")
    check_format(payload, payload, path)
    model = build_model(payload, source=path)
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    if dtype is not None:
        model = model.to(dtype)
    load_state(model, state, path)
    return model


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: Any) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that names the file and the
    mismatched keys."""
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    if missing or unexpected:
        raise ValueError(
            f"{source}: its weights do not fit {type(model).__name__} as specified"
            + (f"; missing {_some(missing)}" if missing else "")
            + (f"; unexpected {_some(unexpected)}" if unexpected else "")
            + " (was it written by another relaxgnn version?)")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{source}: its weights do not fit {type(model).__name__}: {err}") \
            from None


def _some(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")

"""Model files: how a model was built (class and constructor arguments) plus its weights.

A model file is a ``torch.save``-d dict ``{"class_path", "init_args", "state_dict",
"relaxgnn_version"}``; :func:`load_model` rebuilds the architecture and loads the weights with
``strict=True``. Files are written atomically (temporary file, then rename).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..atomic import atomic_torch_save
from ..relax.controller import find_paths


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


def build_model(spec: Mapping[str, Any]) -> nn.Module:
    """Instantiate ``spec["class_path"](**spec["init_args"])``."""
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"unknown model class {spec['class_path']!r}") from err
    return cls(**spec.get("init_args", {}))


def save_model(model: nn.Module, path: str | os.PathLike, **extra: Any) -> Path:
    """Write a model file (atomically); ``extra`` entries (e.g. metrics) are stored alongside."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return atomic_torch_save({**model_spec(model), "state_dict": state,
                              "relaxgnn_version": __version__, **extra}, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a model file written by :func:`save_model`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"{path} is not a readable model file ({err})") from err
    if not isinstance(payload, dict) or not {"class_path", "state_dict"} <= set(payload):
        raise ValueError(f"{path} is not a relaxgnn model file (no class_path/state_dict)")
    model = build_model(payload)
    state = payload["state_dict"]
    dtype = next((v.dtype for v in state.values() if v.is_floating_point()), None)
    if dtype is not None:
        model = model.to(dtype)
    model.load_state_dict(state, strict=True)
    return model

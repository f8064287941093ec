"""The configs relaxgnn ships (``configs/*.yaml``), usable by name from a checkout or an
installed relaxgnn: ``relaxgnn fit --config md_ethanol_mace`` is
``--config <where they are>/md_ethanol_mace.yaml``. A wheel installs them under
``<prefix>/share/relaxgnn/configs``; a checkout (an editable install) has them beside the
package."""

from __future__ import annotations

import sys
from pathlib import Path


def config_dirs() -> list[Path]:
    """Where shipped configs are looked for, in order: the checkout's, then the installed."""
    return [Path(__file__).resolve().parents[1] / "configs",
            Path(sys.prefix) / "share" / "relaxgnn" / "configs"]


def shipped_configs() -> dict[str, Path]:
    """``{name: path}`` of every shipped config (the first found of each name)."""
    found: dict[str, Path] = {}
    for folder in config_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def resolve_config(value: str) -> str:
    """``value`` itself when it is a file (or not a plain name), else the shipped config of
    that name (with or without ``.yaml``); raises ``FileNotFoundError`` naming the shipped
    configs when it is neither."""
    if Path(value).is_file():
        return value
    name = value.removesuffix(".yaml")
    shipped = shipped_configs()
    if name in shipped:
        return str(shipped[name])
    if "/" in value or "\\" in value:
        raise FileNotFoundError(f"config file {value} does not exist")
    raise FileNotFoundError(f"config {value!r} is neither a file nor a shipped config (shipped: "
                            f"{', '.join(shipped) or 'none found'})")


def resolve_config_arguments(argv: list[str]) -> list[str]:
    """``argv`` with the value of every ``--config``/``-c`` resolved by
    :func:`resolve_config`."""
    out, take = [], False
    for arg in argv:
        if take:
            out.append(resolve_config(arg))
            take = False
        elif arg in ("--config", "-c"):
            out.append(arg)
            take = True
        elif arg.startswith("--config="):
            out.append("--config=" + resolve_config(arg.split("=", 1)[1]))
        else:
            out.append(arg)
    return out


__all__ = ["config_dirs", "resolve_config", "resolve_config_arguments", "shipped_configs"]

"""The package metadata: pyproject.toml and environment.yml agree, the CLI is installed."""

import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pip_requirements_of_environment() -> list[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [r for r in pip if not r.startswith("-e")]


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    expected = project["dependencies"] + extras["train"] + extras["md"] + extras["dev"]
    listed = _pip_requirements_of_environment()
    assert sorted(set(listed)) == sorted(set(expected)), (
        "environment.yml's pip list must equal pyproject's dependencies + [train, md, dev]"
    )
    python = next(
        d
        for d in yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
        if isinstance(d, str) and d.startswith("python")
    )
    assert python.removeprefix("python") == project["requires-python"]


def test_required_extras_and_script():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["optional-dependencies"]) >= {"train", "md", "notebooks", "dev"}
    # no extra that does nothing: torch-scatter is never called (benchmarks/README.md)
    assert "scatter" not in project["optional-dependencies"]
    names = {r.split(">")[0].split("<")[0].split("=")[0] for r in project["dependencies"]}
    assert {"torch", "torch-geometric", "e3nn", "ase", "numpy", "vesin-torch"} <= names
    assert "torch-scatter" not in names
    assert project["scripts"]["relaxgnn"] == "relaxgnn.cli:main"


def test_library_imports_without_training_stack():
    """`import relaxgnn.models` must not pull Lightning or matplotlib (layers-only users)."""
    code = (
        "import sys, relaxgnn.models, relaxgnn.nn, relaxgnn.symmetry, relaxgnn.data;"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'matplotlib') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layers_and_models_do_not_import_the_data_sets():
    """The arrows point down: `nn` and `models` use `geometry` (neighbour lists, attributes),
    never `data`."""
    code = (
        "import sys, relaxgnn.nn, relaxgnn.models, relaxgnn.geometry;"
        "bad = sorted(m for m in sys.modules if m.startswith('relaxgnn.data'));"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cli_version():
    out = subprocess.run(
        [sys.executable, "-m", "relaxgnn.cli", "--version"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.startswith("relaxgnn ")


def test_training_commands_without_the_train_extra_say_what_to_install():
    """Without Lightning (the ``train`` extra), ``relaxgnn fit`` and ``project`` print one line
    naming the extra, not a traceback."""
    code = ("import sys; sys.modules['lightning'] = None\n"
            "from relaxgnn.cli import main\n"
            "sys.exit(main(sys.argv[1:]))")
    for args in (["fit", "--config", "x.yaml"], ["project", "a.ckpt", "b.pt"]):
        result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                                text=True)
        assert result.returncode == 2
        assert result.stderr.strip().splitlines() == [
            f"relaxgnn {args[0]}: error: it needs lightning, of the training extra: "
            "pip install 'relaxgnn[train]'"]


def test_license_and_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and "MIT License" in (ROOT / "LICENSE").read_text()
    assert project["authors"] and project["keywords"]
    classifiers = set(project["classifiers"])
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)

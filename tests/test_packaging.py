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


def test_shipped_configs_resolve_by_name(tmp_path, monkeypatch):
    """``--config md_ethanol_mace`` (with or without .yaml) is the shipped file; a file that
    exists wins; an unknown name is an error naming the shipped configs; an installed relaxgnn
    finds them under <prefix>/share/relaxgnn/configs."""
    from relaxgnn.config_files import resolve_config, resolve_config_arguments, shipped_configs

    shipped = shipped_configs()
    assert set(shipped) == {p.stem for p in (ROOT / "configs").glob("*.yaml")}
    assert resolve_config("md_ethanol_mace") == str(ROOT / "configs" / "md_ethanol_mace.yaml")
    assert resolve_config("nbody_segnn.yaml") == str(ROOT / "configs" / "nbody_segnn.yaml")
    mine = tmp_path / "nbody_segnn.yaml"
    mine.write_text("seed_everything: 1\n")
    assert resolve_config(str(mine)) == str(mine)
    assert resolve_config_arguments(["fit", "-c", "qm9_egnn", "--config=nbody_egnn"]) == [
        "fit", "-c", str(ROOT / "configs" / "qm9_egnn.yaml"),
        f"--config={ROOT / 'configs' / 'nbody_egnn.yaml'}"]
    try:
        resolve_config("no_such_config")
    except FileNotFoundError as err:
        assert "md_ethanol_mace" in str(err)
    else:
        raise AssertionError("an unknown name must be refused")
    import relaxgnn.config_files as config_files

    installed = tmp_path / "prefix" / "share" / "relaxgnn" / "configs"
    installed.mkdir(parents=True)
    (installed / "only_installed.yaml").write_text("seed_everything: 2\n")
    monkeypatch.setattr(config_files.sys, "prefix", str(tmp_path / "prefix"))
    assert resolve_config("only_installed") == str(installed / "only_installed.yaml")


def test_the_wheel_installs_the_configs(tmp_path):
    """A pip-installed relaxgnn (not a checkout) has the configs: the wheel carries them as
    data files under share/relaxgnn/configs, where relaxgnn.config_files looks."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("relaxgnn-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    configs = {Path(n).name for n in names if "/data/share/relaxgnn/configs/" in n}
    assert configs == {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert any(n.endswith("LICENSE") for n in names)

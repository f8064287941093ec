"""The notebooks in notebooks/: each runs top to bottom here and draws at least one picture; the
committed copies carry their outputs (so the pictures show without running them), scale from a
variable in their first code cell, use only relaxgnn's public names, and are linked from the
README.

The test executes them at the reduced settings in ``TEST_SETTINGS`` (fewer steps, epochs and
training sizes, put in place of the values in their first cell, as papermill parameters are), so
that every cell runs on every code path in about a minute instead of five; the committed outputs
are from the full settings. Two run at a time; the ``notebooks`` marker (``-m 'not notebooks'``)
skips them while developing; CI runs everything. They run in place, with notebooks/ as the
working directory, so their generated data (``datasets/``) and runs (``runs/notebooks/``) land
where a user's would.
"""

from __future__ import annotations

import ast
import importlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import accumulate
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_layer_library", "02_relaxation_effects", "03_force_field", "04_point_clouds"]
LONGEST_FIRST = ["02_relaxation_effects", "04_point_clouds", "03_force_field", "01_layer_library"]
#: what the executed copies use instead of the first cell's values (the full settings take ~5 min)
TEST_SETTINGS: dict[str, dict[str, object]] = {
    "01_layer_library": {},
    "02_relaxation_effects": {"STEPS": 40, "TRAIN_SIZES": [25, 100], "VAL_SIZE": 100},
    "03_force_field": {"EPOCHS": 2, "NVE_STEPS": 100},
    "04_point_clouds": {"PER_CLASS": 8, "EPOCHS": 2, "EVAL_EVERY": 1},
}


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _code(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for out in _outputs(nb))


def test_the_notebooks_are_there():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == NAMES == sorted(LONGEST_FIRST)
    assert sorted(TEST_SETTINGS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_carries_its_outputs(name):
    nb = _read(name)
    counts = [cell.execution_count for cell in nb.cells if cell.cell_type == "code"]
    assert None not in counts, f"{name}: some code cells were never run"
    assert counts == sorted(counts), f"{name}: cells were run out of order"
    assert not [o for o in _outputs(nb) if o.output_type == "error"], f"{name} has an error"
    assert _images(nb) >= 1, f"{name} has no picture"
    markdown = [cell for cell in nb.cells if cell.cell_type == "markdown"]
    assert len(markdown) >= 4, f"{name} explains too little as it goes"
    stderr = "".join(o.text for o in _outputs(nb) if o.get("name") == "stderr")
    assert "Warning" not in stderr, f"{name} shows warnings:\n{stderr[:2000]}"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_scales_from_a_variable_at_the_top(name):
    first = ast.parse(_code(_read(name))[0])
    assigned = [t.id for node in first.body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    assert assigned and assigned[0].isupper(), (
        f"{name}: the first code cell should start with the settings (UPPER_CASE names)")


#: relaxgnn's public modules: its subpackages and the two top-level modules meant for users
#: (the files inside a subpackage, e.g. ``relaxgnn.relax.attach``, are not the API)
PUBLIC_MODULES = {"relaxgnn.symmetry", "relaxgnn.geometry", "relaxgnn.relax", "relaxgnn.nn",
                  "relaxgnn.models", "relaxgnn.data", "relaxgnn.train", "relaxgnn.dtype",
                  "relaxgnn.calculator"}


def _public(module: str) -> set[str]:
    mod = importlib.import_module(module)
    return set(getattr(mod, "__all__", [n for n in vars(mod) if not n.startswith("_")]))


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_public_names_only(name):
    """Every relaxgnn name a notebook imports comes from a public module (and its ``__all__``
    where it has one), and no code touches an ``_attribute``."""
    for source in _code(_read(name)):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("relaxgnn"):
                assert node.module in PUBLIC_MODULES, (
                    f"{name} imports from {node.module}, not one of {sorted(PUBLIC_MODULES)}")
                private = [a.name for a in node.names if a.name not in _public(node.module)]
                assert not private, f"{name} imports non-public {private} from {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("relaxgnn.") or \
                        alias.name in PUBLIC_MODULES, f"{name} imports {alias.name}"
            elif isinstance(node, ast.Attribute):
                attr = node.attr
                assert not (attr.startswith("_") and not attr.startswith("__")), (
                    f"{name} uses the private attribute .{attr}")


def test_readme_links_every_notebook():
    readme = (ROOT / "README.md").read_text()
    for name in NAMES:
        assert f"(notebooks/{name}.ipynb)" in readme, f"README does not link {name}"


def with_settings(source: str, settings: dict[str, object]) -> str:
    """``source`` with the value of each top-level ``NAME = ...`` in ``settings`` replaced by
    ``repr`` of the new value (the rest of the cell, e.g. ``EVAL_EVERY = max(STEPS // 10, 1)``,
    then follows from it); a name the cell does not assign is an error, so that renaming a
    setting cannot quietly leave the test at full scale."""
    found = {t.id: node.value for node in ast.parse(source).body if isinstance(node, ast.Assign)
             for t in node.targets if isinstance(t, ast.Name) and t.id in settings}
    missing = sorted(set(settings) - set(found))
    assert not missing, f"the first cell assigns no {missing}"
    data = source.encode()   # ast offsets are in UTF-8 bytes, lines split as bytes split them
    starts = [0, *accumulate(len(line) for line in data.splitlines(keepends=True))]
    for name in sorted(found, key=lambda n: found[n].lineno, reverse=True):
        value = found[name]
        begin = starts[value.lineno - 1] + value.col_offset
        end = starts[value.end_lineno - 1] + value.end_col_offset
        data = data[:begin] + repr(settings[name]).encode() + data[end:]
    return data.decode()


def test_with_settings_replaces_values_and_refuses_unknown_names():
    source = "A = 1  # α\nB = [1,\n     2]\nC = A * 2\n"
    changed = with_settings(source, {"B": [3], "A": 5})
    assert changed == "A = 5  # α\nB = [3]\nC = A * 2\n"
    namespace: dict = {}
    exec(changed, namespace)
    assert namespace["C"] == 10
    with pytest.raises(AssertionError, match="assigns no"):
        with_settings(source, {"D": 1})


def _execute(name: str) -> nbformat.NotebookNode:
    """Run a clean copy of the notebook (nothing of the committed outputs counts), with
    ``TEST_SETTINGS[name]`` in its first cell, in a kernel of one thread, with notebooks/ as its
    working directory; raises CellExecutionError, naming the cell, on any error."""
    from nbclient import NotebookClient

    nb = _read(name)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    code[0].source = with_settings(code[0].source, TEST_SETTINGS[name])
    for cell in code:
        cell.outputs, cell.execution_count = [], None
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute(env={**os.environ, "OMP_NUM_THREADS": "1"})
    return nb


@pytest.fixture(scope="module")
def executed(request: pytest.FixtureRequest) -> Iterator[dict[str, Future]]:
    """The selected notebooks run two at a time, one thread each (on a 2-core machine, two
    one-thread runs beside each other finish sooner than one after the other on two threads),
    longest first."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if item.originalname == "test_notebook_runs_top_to_bottom_and_draws"}
    with ThreadPoolExecutor(max_workers=2) as pool:
        yield {name: pool.submit(_execute, name) for name in LONGEST_FIRST if name in selected}


@pytest.mark.notebooks
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_and_draws(name, executed):
    nb = executed[name].result()
    assert _images(nb) >= 1, f"{name} drew no picture"

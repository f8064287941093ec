"""Every python code block of the README runs as written."""

import re
from pathlib import Path


def test_readme_layer_example_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "torch.Size([5, 3])" in out and "'rotation'" in out


def test_readme_attach_example_runs(capsys):
    """The `attach` example of the relaxation section: a user's e3nn block relaxed, penalised
    and projected."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, flags=re.S)
              if "attach(" in b]
    assert blocks, "README has no attach example"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert "['lin', 'tp']" in capsys.readouterr().out
    assert not any("relaxation_paths" in key for key in namespace["plain"].state_dict())


def test_every_python_block_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 3
    for k, block in enumerate(blocks):
        exec(compile(block, f"README.md, python block {k}", "exec"), {})
    assert "'theta'" in capsys.readouterr().out  # the training loop printed its metrics

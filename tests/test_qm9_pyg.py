"""Our QM9 reader agrees with torch_geometric's own QM9 processing (which needs RDKit, a dev
dependency) on the genuine 2-molecule SDF sample."""

import shutil
from pathlib import Path

import torch
from torch_geometric import datasets as pyg_datasets

from relaxgnn.data import QM9

SAMPLE = Path(__file__).resolve().parents[1] / "datasets" / "qm9"


def _raw(root: Path, header_lines: int) -> None:
    raw = root / "raw"
    raw.mkdir(parents=True)
    shutil.copy(SAMPLE / "sdf" / "gdb9_n2.sdf", raw / "gdb9.sdf")
    shutil.copy(SAMPLE / "sdf" / "gdb9_n2.sdf.csv", raw / "gdb9.sdf.csv")
    lines = (SAMPLE / "uncharacterized.txt").read_text().split("\n")
    # the original file has 9 header lines, which torch_geometric assumes; this copy has 12
    (raw / "uncharacterized.txt").write_text("\n".join(lines[12 - header_lines:]))


def test_matches_torch_geometric_on_the_sdf_sample(tmp_path):
    import rdkit  # noqa: F401  (torch_geometric processes the SDF with RDKit)

    _raw(tmp_path / "pyg", header_lines=9)
    _raw(tmp_path / "ours", header_lines=12)
    theirs = pyg_datasets.QM9(str(tmp_path / "pyg"))
    ours = QM9(tmp_path / "ours")
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.z, b.z)
        assert torch.allclose(a.pos, b.pos, atol=1e-6)
        assert torch.allclose(a.y, b.y, rtol=1e-6, atol=1e-6), (a.y - b.y).abs().max()

"""The `relaxgnn` command line: the demo (the main job for now) and its errors."""

import re

from relaxgnn.cli import main


def test_demo_reports_equivariance(capsys):
    assert main(["demo", "--molecule", "H2O", "--trials", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"(EGNN|SEGNN|TPNet) ", line)]
    assert len(rows) == 12
    for row in rows:
        rotation, reflection, translation, permutation = (
            float(x) for x in re.findall(r"\d\.\d\de[-+]\d\d", row))
        if "relaxed" in row:  # paths break rotations, reflections, translations; not S_n
            assert min(rotation, reflection, translation) > 1e-4, row
            assert permutation < 1e-12, row
        else:
            tolerance = 1e-5 if "float32" in row else 1e-12
            assert max(rotation, reflection, translation, permutation) < tolerance, row


def test_demo_unknown_molecule(capsys):
    assert main(["demo", "--molecule", "unobtainium"]) == 2
    assert "unknown molecule 'unobtainium'" in capsys.readouterr().err

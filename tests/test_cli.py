"""The `relaxgnn` command line: the demo (the main job for now) and its errors."""

import re

from relaxgnn.cli import main


def test_demo_reports_exact_equivariance(capsys):
    assert main(["demo", "--molecule", "H2O", "--trials", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if re.match(r"(EGNN|SEGNN|TPNet) ", line)]
    assert len(rows) == 6
    for row in rows:
        errors = [float(x) for x in re.findall(r"\d\.\d\de[-+]\d\d", row)]
        assert len(errors) == 4
        assert max(errors) < (1e-12 if "float64" in row else 1e-5), row


def test_demo_unknown_molecule(capsys):
    assert main(["demo", "--molecule", "unobtainium"]) == 2
    assert "unknown molecule 'unobtainium'" in capsys.readouterr().err

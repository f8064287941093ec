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
            assert min(rotation, reflection) > 1e-4, row
            # SEGNN's paths (the paper's placement, in the update layers) see no positions
            assert (translation < 1e-12) if row.startswith("SEGNN") else (translation > 1e-4)
            assert permutation < 1e-12, row
        else:
            tolerance = 1e-5 if "float32" in row else 1e-12
            assert max(rotation, reflection, translation, permutation) < tolerance, row


def test_demo_unknown_molecule(capsys):
    assert main(["demo", "--molecule", "unobtainium"]) == 2
    assert "unknown molecule 'unobtainium'" in capsys.readouterr().err


def test_data_nbody_writes_a_cache_that_nbody_reads(tmp_path, capsys):
    out = tmp_path / "nbody"
    args = ["--num-train", "6", "--num-val", "2", "--num-test", "2", "--n-steps", "300",
            "--sample-freq", "50", "--seed", "7"]
    assert main(["data", "nbody", "--out", str(out), *args]) == 0
    assert "5 frames" in capsys.readouterr().out
    stamp = (out / "charged_train.npz").stat().st_mtime_ns
    from relaxgnn.data import NBody

    data = NBody(out, split="train", max_samples=None, num_train=6, num_val=2, num_test=2,
                 n_steps=300, sample_freq=50, seed=7, frame_in=1, frame_out=3, generate=False)
    assert len(data) == 6 and data[0].pos.shape == (5, 3)
    assert (out / "charged_train.npz").stat().st_mtime_ns == stamp  # reused, not regenerated


def test_data_md_writes_an_rmd17_file(tmp_path, capsys):
    out = tmp_path / "ethanol.npz"
    assert main(["data", "md", "--molecule", "ethanol", "--steps", "4", "--sample-every", "2",
                 "--equilibration-steps", "2", "--out", str(out)]) == 0
    assert "2 frames" in capsys.readouterr().out
    from relaxgnn.data import MD17

    data = MD17(out)
    assert len(data) == 2 and data[0].forces.shape == (9, 3)
    assert main(["data", "md", "--molecule", "unobtainium", "--steps", "20",
                 "--out", str(tmp_path / "x.npz")]) == 2
    assert "unobtainium" in capsys.readouterr().err

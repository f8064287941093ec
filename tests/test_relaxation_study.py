"""The paper-scale relaxation study (benchmarks/paper_grid.py, paper_report.py): every arm's
config trains with the papers' protocol, the best-validation rule picks the papers' epoch, and
the result files round-trip into the report's tables and plots."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import paper_grid  # noqa: E402
import paper_report  # noqa: E402
from grid import run_grid  # noqa: E402

SMALL_NBODY = {"max_samples": "null", "num_train": 40, "num_val": 20, "num_test": 20,
               "n_steps": 400, "sample_freq": 50, "frame_in": 2, "frame_out": 5,
               "progress": "false"}


def test_best_validation_is_the_first_strictly_lowest_epoch():
    """As ``if val_loss < best_val_loss`` in the CR and ACE codes: a later tie does not move
    the best epoch, overfitting after the minimum does not either."""
    curve = {4: 0.9, 9: 0.5, 14: 0.3, 19: 0.3, 24: 0.31, 29: 0.4, 34: 0.35}
    assert paper_grid.best_validation(curve) == (14, 0.3)
    assert paper_grid.best_validation({9: 0.2, 4: 0.3}) == (9, 0.2)  # order of the dict
    with pytest.raises(ValueError, match="never validated"):
        paper_grid.best_validation({})


def test_paper_keys_cover_every_cell_seed_by_seed():
    keys = paper_grid.paper_keys(seeds=3)
    assert len(keys) == 3 * (4 + 4 + 4 + 1) + 2 * 2 + 3 * 2  # ACE's protocol: two seeds
    first = list(keys.values())[:5]
    assert [k[:2] for k in first[:4]] == [(3000, arm) for arm in paper_grid.MAIN_ARMS]
    assert first[4] == (3000, "plain", 1)  # seed 1 starts only when seed 0 has every arm
    assert all(k.startswith("paper_n") and " " not in k and "|" not in k for k in keys)


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory) -> tuple[argparse.Namespace, dict[str, dict]]:
    """Every arm of the paper grid, two epochs on a small generated N-body set, through the
    grid runner (result files written and read back)."""
    tmp = tmp_path_factory.mktemp("paper")
    args = argparse.Namespace(epochs=2, data=str(tmp / "nbody"), configs=str(REPO / "configs"),
                              out=str(tmp / "runs"), results=str(tmp / "results"),
                              accelerator="cpu", threads=1, jobs=1, compile=False, only=None)
    extra = [f"--data.{split}.init_args.{key}={value}" for split in ("train", "val", "test")
             for key, value in SMALL_NBODY.items()] + ["--trainer.log_every_n_steps=1"]
    keys = {f"k_{paper_grid.slug(arm)}": arm for arm in paper_grid.PAPER_ARMS}
    done = run_grid(list(keys),
                    lambda key: paper_grid.run_record(8, keys[key], 0, args, extra), args)
    return args, {keys[key]: record for key, record in done.items()}


def test_every_arm_trains_with_its_own_settings_and_records_the_protocol(paper_runs):
    args, runs = paper_runs
    assert set(runs) == set(paper_grid.PAPER_ARMS)
    for arm, r in runs.items():
        epochs = 2 * paper_grid.EPOCH_FACTOR.get(arm, 1)  # ACE's protocol: twice the epochs
        assert r["arm"] == arm and r["epochs"] == epochs and r["steps"] == epochs  # one batch
        assert r["best_epoch"] in r["val"] and r["final_epoch"] == epochs - 1
        assert r["best_val_mse"] == min(r["val"].values())
        assert 0 < r["test_mse_best"] < 10 and 0 < r["test_mse_final"] < 10
        assert r["projected_equivariance"] < 1e-4
        assert "--trainer.check_val_every_n_epoch=5" in r["overrides"]
        assert "--data.val.init_args.max_samples=null" in r["overrides"]
        assert len(r["commit"]) == 40 and r["machine"]["threads"] == 1
    config = {arm: yaml.safe_load((Path(args.out) / f"paper_n8_{paper_grid.slug(arm)}_s0"
                                   / "version_0" / "config.yaml").read_text())
              for arm in runs}
    lr = {arm: c["model"]["optimizer"]["init_args"]["lr"] for arm, c in config.items()}
    assert lr["plain"] == lr["CR"] == 5e-4 and lr["ACE"] == lr["plain, ACE's optimizer"] == 9e-4
    assert config["plain, ACE's optimizer"]["model"]["optimizer"]["init_args"][
        "weight_decay"] == 0.0
    speed = {arm: c["model"]["model"]["init_args"]["speed_input"] for arm, c in config.items()}
    assert speed == {arm: arm != "plain, no |v|" for arm in runs}
    relax = {arm: [cb for cb in c["trainer"]["callbacks"]
                   if cb["class_path"] == "relaxgnn.train.Relax"] for arm, c in config.items()}
    assert relax["CR"][0]["init_args"]["penalty_reduction"] == "global"
    assert relax["CR, θmax 10"][0]["init_args"]["theta"] == 10.0
    assert relax["CR"][0]["init_args"]["theta"] == 1.0
    assert relax["ACE, damped"][0]["init_args"]["auglag"] == 1.0
    assert relax["ACE"][0]["init_args"]["auglag"] == 0.0
    assert relax["ACE"][0]["init_args"]["controller"] == "learned"
    assert not relax["plain"] and not relax["plain, ACE's optimizer"]
    for arm, c in config.items():  # ACE's protocol: no rotations, absolute positions
        own = "ACE's protocol" in arm
        assert c["model"]["random_rotation"] is not own
        assert c["model"]["model"]["init_args"]["position_input"] == (
            "absolute" if own else "centred")
    assert set(runs["ACE"]["curves"]) >= {"gamma", "abs_gamma", "lambda", "train_mse"}
    assert "theta" in runs["CR"]["curves"]


def test_result_files_round_trip_into_the_report(paper_runs, tmp_path):
    args, runs = paper_runs
    results = paper_report.load_results(Path(args.results))
    assert {r["arm"]: r for r in results} == json.loads(json.dumps(
        {arm: r for arm, r in runs.items()}), object_hook=_int_keys)
    text = paper_report.markdown(results)
    for arm, r in runs.items():
        assert f"| {arm} | 1 | {r['test_mse_best'] * 1e3:.2f} |" in text
    for plot in (paper_report.plot_validation, paper_report.plot_samples,
                 paper_report.plot_dynamics):
        plot(results, tmp_path / "p.png")
        assert (tmp_path / "p.png").stat().st_size > 10_000
    paper_report.plot_dynamics(results, tmp_path / "d.png", n=8)


def test_curves_are_recomputed_from_the_runs_metrics(paper_runs):
    """A result file whose curves were lost (or computed by an older ``run_curves``) gets them
    back from its run's metrics.csv."""
    args, runs = paper_runs
    path = Path(args.results) / f"k_{paper_grid.slug('ACE')}.json"
    record = json.loads(path.read_text())
    original, record["curves"] = record["curves"], {}
    path.write_text(json.dumps(record))
    assert "paper_n8_ACE_s0" in paper_grid.refresh_curves(Path(args.results), Path(args.out))
    refreshed = json.loads(path.read_text())
    assert refreshed["curves"] == original and len(refreshed["curves_recomputed_by"]) == 40


def _int_keys(d: dict) -> dict:
    return {int(k) if k.isdigit() else k: v for k, v in d.items()}


def _record(arm: str, seed: int, test: float, n: int = 3000) -> dict:
    return {"arm": arm, "seed": seed, "trajectories": n, "steps": 30000, "epochs": 1000,
            "test_mse_best": test, "test_mse_final": test * 1.2, "best_epoch": 150,
            "seconds": 1800.0, "val": {4: 0.01, 9: test}, "curves": {},
            "machine": {"cpu": "cpu", "threads": 1, "jobs": 2}, "date": "2026-12-07",
            "commit": "0" * 40}


def test_cell_table_pairs_seeds_and_gives_a_verdict():
    """Plain 5, 6, 7 (×1e-3); CR lower by 0.5, 0.6, 0.4 on the same seeds: −0.50 ± 0.10,
    beyond the spread; ACE higher on one seed and lower on another: within it."""
    results = [_record("plain", s, v) for s, v in enumerate([5e-3, 6e-3, 7e-3])]
    results += [_record("CR", s, v) for s, v in enumerate([4.5e-3, 5.4e-3, 6.6e-3])]
    results += [_record("ACE", s, v) for s, v in enumerate([5.5e-3, 5.6e-3, 7.1e-3])]
    lines = "\n".join(paper_report.cell_table(3000, paper_report.cells(results)[3000]))
    assert "| plain | 3 | 6.00 ± 1.00 | 5.00, 6.00, 7.00 |  |" in lines
    assert "| CR | 3 | 5.50 ± 1.05 | 4.50, 5.40, 6.60 | -0.50 ± 0.10 (-8.3 %) * |" in lines
    assert "CR is better than plain (-8.3 %, beyond the seed spread)" in lines
    assert "ACE does not differ from plain" in lines
    assert "| 150, 150, 150 | 30, 30, 30 |" in lines
    own = [_record("plain, ACE's protocol", s, v) for s, v in enumerate([4e-3, 5e-3])]
    own += [_record("ACE, ACE's protocol", s, v) for s, v in enumerate([4.2e-3, 4.9e-3])]
    lines = "\n".join(paper_report.cell_table(3000, paper_report.cells(results + own)[3000]))
    assert "(+1.1 %) vs plain, ACE's protocol |" in lines  # its own reference, not plain
    assert "ACE, ACE's protocol does not differ from plain, ACE's protocol" in lines

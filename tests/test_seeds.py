"""`mmpref seeds`: one run per seed, then the spread of the headline numbers and the claims' verdicts."""

from __future__ import annotations

import pandas as pd
import pytest

from mmpref import cli, runner, seeds
from mmpref.config import load_params
from mmpref.evaluate import registry


def _fake_run(mt_bench: dict[int, float], verdicts: dict[int, str], calls: list):
    headline = registry.headlines()

    def run(params_path, stages=None, force=(), overrides=None, retry_failed=False):
        params = load_params(params_path, overrides)
        seed = params.run.seed
        calls.append((params.run.name, seed, stages))
        out = params.run_dir
        (out / "eval").mkdir(parents=True, exist_ok=True)
        (out / "tables").mkdir(parents=True, exist_ok=True)
        pd.DataFrame([{"model": "vit", "benchmark": "mt_bench", "metric": headline["mt_bench"],
                       "value": mt_bench[seed]},
                      {"model": "vit", "benchmark": "pope", "metric": headline["pope"], "value": 0.9},
                      {"model": "vit", "benchmark": "pope", "metric": "yes_ratio", "value": 0.5}]
                     ).to_csv(out / "eval" / "results.csv", index=False)
        pd.DataFrame([{"claim": "C1", "evidence": "", "difference": mt_bench[seed] - 7, "lo": 0, "hi": 1,
                       "verdict": verdicts[seed]}]).to_csv(out / "tables" / "claims.csv", index=False)
        return []
    return run


def test_each_seed_is_its_own_run_and_the_spread_is_over_them(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(runner, "run", _fake_run({0: 6.0, 1: 7.0, 5: 8.0},
                                                 {0: "reproduced", 1: "reproduced", 5: "inconclusive"}, calls))
    done = seeds.run_seeds("params/tiny.yaml", [0, 1, 5], overrides={"run": {"run_dir": str(tmp_path / "{name}")}},
                           stages="09-")
    assert [c[:2] for c in calls] == [("tiny-seed0", 0), ("tiny-seed1", 1), ("tiny-seed5", 5)]
    assert all(c[2] == "09-" for c in calls)
    spread = done["spread"].set_index(["model", "benchmark"])
    mt = spread.loc[("vit", "mt_bench")]
    assert (mt["seeds"], mt["mean"], mt["min"], mt["max"]) == (3, 7.0, 6.0, 8.0)
    assert mt["sd"] == pytest.approx(1.0)
    assert spread.loc[("vit", "pope"), "sd"] == 0                  # headline metrics only: yes_ratio is not one
    assert len(done["headlines"]) == 6
    claims = done["claims"].set_index("claim")
    assert claims.loc["C1", "verdicts"] == "reproduced x2, inconclusive x1"
    assert claims.loc["C1", "difference seed 5"] == 1.0
    assert (done["dir"] / "spread.csv").is_file() and done["dir"].name == "tiny-seeds"


def test_seeds_command_prints_the_spread_and_refuses_bad_seeds(tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr(runner, "run", _fake_run({0: 6.0, 2: 6.5}, {0: "reproduced", 2: "reproduced"}, calls))
    rc = cli.main(["seeds", "params/tiny.yaml", "--seeds", "0,2", "--set", f"run.run_dir={tmp_path}/{{name}}"])
    out = capsys.readouterr().out
    assert rc == 0 and "mt_bench" in out and "6.250" in out and "tiny-seeds" in out
    assert cli.main(["seeds", "params/tiny.yaml", "--seeds", "0"]) == 2
    assert "at least two distinct seeds" in capsys.readouterr().err
    assert cli.main(["seeds", "params/tiny.yaml", "--seeds", "0,x"]) == 2
    assert "comma-separated integers" in capsys.readouterr().err

"""Stage 09 applies the judge failure threshold 03 applies (issue 9): results.csv is written, then the stage fails
when a (model, benchmark) has more failed gradings than evaluate.judge.max_failed_fraction; --retry-failed re-grades
pairs whose rows were already written but hold failures."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmpref import methods
from mmpref.annotate import TooManyFailures
from mmpref.config import load_params
from mmpref.evaluate import suite
from mmpref.evaluate.protocol import FAILURES


def rows(failed: int, n: int = 20) -> list[dict]:
    base = {"model": methods.POLICY, "benchmark": "mmvet", "judge": "j", "sd": math.nan, "judge_runs": 1}
    return [{**base, "metric": "score", "value": 0.5, "n": n}, {**base, "metric": FAILURES, "value": failed, "n": n}]


def test_threshold_per_model_and_benchmark(capsys):
    ok = pd.DataFrame(rows(1))
    assert "20 judge gradings, 1 failed" in suite.check_judge_failures(ok, 0.05)
    with pytest.raises(TooManyFailures, match=r"vit/mmvet: 2 of 20"):
        suite.check_judge_failures(pd.DataFrame(rows(2)), 0.05)
    assert "2 failed" in capsys.readouterr().out  # the summary comes before the error


@pytest.fixture()
def fake_eval(tmp_path, monkeypatch):
    """evaluate_all over one model and one judged benchmark whose grading fails `state['failed']` of 20 items."""
    state = {"failed": 3, "graded": 0}
    monkeypatch.setattr(suite, "plan", lambda params, run_dir: [(methods.POLICY, None, ["mmvet"])])
    monkeypatch.setattr(suite, "_checkpoint_id", lambda params, name, adapter: "ckpt")
    import mmpref.sampling

    monkeypatch.setattr(mmpref.sampling.Policy, "from_params", classmethod(lambda cls, *a, **k: object()))

    def score_runs(score, judged, judge_runs):
        state["graded"] += 1
        return rows(state["failed"])

    monkeypatch.setattr(suite, "score_runs", score_runs)
    run_dir = tmp_path / "run"
    (run_dir / "eval" / methods.POLICY).mkdir(parents=True)

    def params(**judge):
        return load_params("params/tiny.yaml", {"run": {"run_dir": str(run_dir)}, "evaluate": {"judge": judge}})
    return state, run_dir, params


def test_evaluate_all_fails_past_the_threshold_after_writing_results(fake_eval):
    state, run_dir, params = fake_eval
    with pytest.raises(TooManyFailures, match="evaluate.judge.max_failed_fraction = 0.05"):
        suite.evaluate_all(params(max_failed_fraction=0.05), run_dir)
    written = pd.read_csv(run_dir / "eval" / "results.csv")
    assert int(written.loc[written.metric == FAILURES, "value"].sum()) == 3  # everything written first
    # a looser threshold passes, from the rows already computed (no re-grading)
    assert len(suite.evaluate_all(params(max_failed_fraction=0.2), run_dir)) == 2 and state["graded"] == 1
    # --retry-failed re-grades the pair whose rows hold failures, even though its rows are current
    state["failed"] = 0
    suite.evaluate_all(params(max_failed_fraction=0.05, retry_failed=True), run_dir)
    assert state["graded"] == 2
    suite.evaluate_all(params(max_failed_fraction=0.05, retry_failed=True), run_dir)  # nothing failed: reused
    assert state["graded"] == 2

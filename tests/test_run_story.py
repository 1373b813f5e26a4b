"""What 09 and 10 show a student beyond the scores: the models' answers side by side, and the run's story computed
from its claims (mmpref.analysis)."""

from __future__ import annotations

import pandas as pd

from mmpref import analysis
from mmpref.config import load_params
from mmpref.io import write_jsonl


def _claims(rows):
    return pd.DataFrame([{"claim": c, "evidence": "", "difference": 0.0, "lo": 0.0, "hi": 0.0, "verdict": v}
                         for c, v in rows])


def test_the_story_follows_the_claims_table():
    claims = _claims([("C1 (MT-Bench overall): x", "reproduced"), ("C1 (AlpacaEval win rate): x", "reproduced"),
                      ("C2 (MT-Bench overall): a", "inconclusive"), ("C2 (MT-Bench overall): b", "not reproduced"),
                      ("C3 (MT-Bench overall): a", "reproduced"), ("C3 (MT-Bench overall): b", "inconclusive"),
                      ("C4 (MMBench circular accuracy): x", "not measured"),
                      ("C2 (decision): y", "cannot test")])
    story = analysis.run_story(claims, "no behavioural deficit.")
    assert story == ("In this run C1 reproduced; C3 (1 of 2 comparisons) reproduced in part; C2 (1 of 2 comparisons) "
                     "did not reproduce; C4 were not measured (a model or benchmark missing). C2 as a decision: no "
                     "behavioural deficit.")
    flipped = claims.assign(verdict=["not reproduced"] * 7 + ["cannot test"])
    assert analysis.run_story(flipped).startswith("In this run C1, C2, C3, C4 did not reproduce.")


def test_answers_side_by_side_pick_the_items_where_models_differ(tmp_path):
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(tmp_path)}})

    def rec(model, key, answers, scores):
        return {"key": key, "model": model, "benchmark": "mt_bench", "signature": "s", "question_id": int(key),
                "category": "math", "turns": [f"q{key}a", f"q{key}b"], "answers": answers, "judge": "rubric-v4",
                "grading": "fastchat@0e6d3e4", "scores": scores, "failed": [False, False], "scored": True}

    same = ["same", "same"]
    for model, spread in (("vit", 0.0), ("dpo", 4.0)):
        write_jsonl(tmp_path / "eval" / model / "mt_bench.jsonl",
                    [rec(model, "1", same, [5.0, 5.0]),
                     rec(model, "2", ["dpo fixed it", "ok"] if model == "dpo" else same, [5.0 + spread, 5.0]),
                     rec(model, "3", same, [6.0, 6.0])])
    table = analysis.answers_side_by_side(params, tmp_path, "mt_bench", ["base-lm", "vit", "dpo"], n=1)
    assert list(table.columns) == analysis.SIDE_BY_SIDE_COLUMNS
    assert list(table["item"]) == ["2", "2"] and list(table["question"]) == ["q2a / q2b"] * 2
    assert list(table["answer"]) == ["same / same", "dpo fixed it / ok"]
    assert list(table["score"]) == [5.0, 7.0]  # MT-Bench's item score: the mean of its two turns
    assert list(table["changed vs tuned"]) == ["", "changed"]

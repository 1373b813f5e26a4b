"""Metrics against hand-computed numbers (each as the official script defines it)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mmpref.evaluate import metrics as m


# ---- POPE -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("Yes, there is a dog in the image.", "yes"),
    ("No, there is no dog.", "no"),
    ("No", "no"),
    ("no", "no"),
    ("There is not a cat in the image.", "no"),
    ("Yes. There is no other dog.", "yes"),   # only the first sentence counts
    ("NO", "yes"),                            # eval_pope is case-sensitive
    ("Not at all", "yes"),                    # "Not" is not in the word list
    ("Nope", "yes"),
    ("There is a dog, no doubt", "no"),       # commas are dropped before splitting
    ("", "yes"),
])
def test_pope_parse_follows_eval_pope(text, expected):
    assert m.pope_parse_yes_no(text) == expected


def test_pope_split_metrics_hand_computed():
    # TP: 0, 4   FP: 1   TN: 2   FN: 3
    got = m.pope_split_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert got == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                 "yes_ratio": 0.6})


def test_pope_scores_per_split_and_mean_f1():
    scores = m.pope_scores({
        "random": (["Yes.", "Yes, it is.", "No.", "There is no cat.", "Yes"], ["yes", "no", "no", "yes", "yes"]),
        "adversarial": (["No, there is not.", "no"], ["yes", "no"]),  # nothing predicted yes: precision 0, f1 0
    })
    assert scores["f1_random"].value == pytest.approx(2 / 3)
    assert scores["precision_adversarial"].value == 0.0
    assert scores["accuracy_adversarial"].value == 0.5
    assert scores["yes_ratio_adversarial"].value == 0.0
    assert scores["f1"].value == pytest.approx((2 / 3 + 0.0) / 2)
    assert scores["f1"].n == 7 and scores["f1_random"].n == 5
    assert set(scores) == {f"{k}_{s}" for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")
                           for s in ("random", "adversarial")} | {"f1"}


def test_pope_rejects_bad_labels_and_lengths():
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        m.pope_split_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 predictions for 2 labels"):
        m.pope_split_metrics(["yes"], ["yes", "no"])


# ---- MMBench --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("answer,expected", [
    ("B", "B"),
    ("B.", "B"),
    ("(C) blue", "C"),
    ("The answer is B.", "B"),
    ("A", "A"),
    ("A red circle is shown", "A"),     # letter rule refuses the article "A"; text "red" decides
    ("It is red", "A"),                 # by option text
    ("B or C", None),                   # two letters, no option text
    ("red or blue", None),              # two option texts
    ("green", None),
])
def test_mmbench_match_letter_then_text(answer, expected):
    assert m.mmbench_match(answer, {"A": "red", "B": "blue", "C": "yellow"}) == expected


def test_mmbench_rotations_shift_options_and_answer():
    rots = m.mmbench_rotations(["x", "y", "z"], 1)
    assert rots == [({"A": "x", "B": "y", "C": "z"}, "B"),
                    ({"A": "y", "B": "z", "C": "x"}, "A"),
                    ({"A": "z", "B": "x", "C": "y"}, "C")]
    with pytest.raises(ValueError, match="at least 2 options"):
        m.mmbench_rotations(["x"], 0)


def test_mmbench_circular_and_vanilla():
    s = m.mmbench_scores([[True, True, True], [True, False], [False, True, True], [False, False]])
    assert s["circular_accuracy"] == (25.0, 4)
    assert s["vanilla_accuracy"] == (50.0, 4)


# ---- MM-Vet, LLaVA-Bench ----------------------------------------------------------------------------------------

def test_mmvet_total_and_capabilities():
    s = m.mmvet_scores([1.0, 0.5, 0.0, 0.8], [["rec"], ["rec", "math"], ["ocr"], ["math"]])
    assert s["total"].value == pytest.approx(57.5) and s["total"].n == 4
    assert s["cap_rec"].value == pytest.approx(75.0) and s["cap_rec"].n == 2
    assert s["cap_math"].value == pytest.approx(65.0)
    assert s["cap_ocr"].value == 0.0
    assert set(s) == {"total", "cap_rec", "cap_math", "cap_ocr"}


def test_llava_bench_relative_scores():
    s = m.llava_bench_scores([(8, 6), (10, 9), (6, 3)], ["conv", "conv", "detail"])
    assert s["relative_score"].value == pytest.approx(75.0)
    assert s["model_score"].value == pytest.approx(6.0)
    assert s["reference_score"].value == pytest.approx(8.0)
    assert s["relative_score_conv"].value == pytest.approx(7.5 / 9 * 100) and s["relative_score_conv"].n == 2
    assert s["relative_score_detail"].value == pytest.approx(50.0)


def test_llava_bench_keeps_unparsed_reviews_like_summarize_gpt_review():
    s = m.llava_bench_scores([(8, 6), (-1, -1)], ["conv", "conv"])
    assert s["relative_score"].value == pytest.approx(2.5 / 3.5 * 100)


# ---- MT-Bench ---------------------------------------------------------------------------------------------------

def test_mt_bench_drops_minus_one_like_show_result():
    s = m.mt_bench_scores([8, -1, 6], [4, 5, -1])
    assert s["turn1"] == (7.0, 2)
    assert s["turn2"] == (4.5, 2)
    assert s["overall"] == (5.75, 4)
    with pytest.raises(ValueError, match="no valid ratings"):
        m.mt_bench_scores([-1], [-1])


# ---- AlpacaEval -------------------------------------------------------------------------------------------------

def test_alpaca_win_rate_ties_half_and_sem():
    prefs = [2, 1, 1.5, 2, 0, float("nan"), 3]
    s = m.alpaca_win_rate(prefs)
    # kept: 2, 1, 1.5, 2, 1.5 (0 is a draw) -> minus 1: 1, 0, .5, 1, .5
    assert s["win_rate"].value == pytest.approx(60.0) and s["win_rate"].n == 5
    assert s["standard_error"].value == pytest.approx(math.sqrt(0.7 / 4 / 5) * 100)
    assert s["standard_error"].value == pytest.approx(pd.Series([1, 0, 0.5, 1, 0.5]).sem() * 100)


def test_alpaca_unswitch():
    assert m.alpaca_unswitch(1.0, True) == 2.0
    assert m.alpaca_unswitch(2.0, True) == 1.0
    assert m.alpaca_unswitch(1.5, True) == 1.5
    assert m.alpaca_unswitch(2.0, False) == 2.0
    assert math.isnan(m.alpaca_unswitch(float("nan"), True))

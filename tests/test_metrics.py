"""Metrics against hand-computed numbers (each as the official script defines it)."""

from __future__ import annotations

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, llava_bench as ev_llava_bench, mmbench as ev_mmbench, mmvet as ev_mmvet, mt_bench as ev_mt_bench, pope as ev_pope
import math

import pandas as pd
import pytest



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
    assert ev_pope.pope_parse_yes_no(text) == expected


def test_pope_split_metrics_hand_computed():
    # TP: 0, 4   FP: 1   TN: 2   FN: 3
    got = ev_pope.pope_split_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    assert got == pytest.approx({"accuracy": 0.6, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3,
                                 "yes_ratio": 0.6})


def test_pope_scores_per_split_and_mean_f1():
    scores = ev_pope.pope_scores({
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
        ev_pope.pope_split_metrics(["yes"], ["maybe"])
    with pytest.raises(ValueError, match="1 predictions for 2 labels"):
        ev_pope.pope_split_metrics(["yes"], ["yes", "no"])


# ---- MMBench (VLMEvalKit can_infer, commit c6bdffd3, VERBOSE unset) ------------------------------------------------

OPTS = {"A": "red", "B": "blue", "C": "yellow"}


@pytest.mark.parametrize("answer,expected", [
    ("B", "B"),
    ("B.", "B"),
    ("(C) blue", "C"),                  # the letter decides before the text
    ("The answer is B.", "B"),
    ("A", "A"),
    ("A blue square is shown", "A"),    # "A" is read as the letter: the article rejection is verbose mode only
    ("a blue square is shown", "B"),    # lower-case "a" is no letter; the text "blue" decides
    ("It is red", "A"),                 # by option text
    ("B or C", None),                   # two letters, no option text
    ("I think B, not A", None),         # two letters
    ("red or blue", None),              # two option texts
    ("green", None),
    ("Z", "Z"),                         # no option letter, but "Z"
    ("Cannot determine the answer, but it looks red", "Z"),  # a refusal is Z, never matched by text
    ("I'm sorry, but without the image provided I would say B", "Z"),
    ("Failed to obtain answer via API: red", "A"),  # no letter rule at all; the text still matches
])
def test_mmbench_match_as_vlmevalkit_can_infer(answer, expected):
    assert ev_mmbench.mmbench_match(answer, dict(OPTS)) == expected


def test_mmbench_refusal_fails_every_rotation_it_is_in():
    rots = ev_mmbench.mmbench_rotations(["red", "blue"], 0)
    answers = ["A", "Cannot determine the answer. Maybe red."]  # the text would match the right option "red" (B)
    passes = [ev_mmbench.mmbench_match(a, opts) == letter for a, (opts, letter) in zip(answers, rots)]
    assert passes == [True, False]
    assert ev_mmbench.mmbench_scores([passes])["circular_accuracy"] == (0.0, 1)


def test_mmbench_rotations_shift_options_and_answer():
    rots = ev_mmbench.mmbench_rotations(["x", "y", "z"], 1)
    assert rots == [({"A": "x", "B": "y", "C": "z"}, "B"),
                    ({"A": "y", "B": "z", "C": "x"}, "A"),
                    ({"A": "z", "B": "x", "C": "y"}, "C")]
    with pytest.raises(ValueError, match="at least 2 options"):
        ev_mmbench.mmbench_rotations(["x"], 0)


def test_mmbench_circular_and_vanilla():
    s = ev_mmbench.mmbench_scores([[True, True, True], [True, False], [False, True, True], [False, False]])
    assert s["circular_accuracy"] == (25.0, 4)
    assert s["vanilla_accuracy"] == (50.0, 4)


# ---- MM-Vet (mm-vet_evaluator.py export_result, one decimal) -----------------------------------------------------

def test_mmvet_total_capabilities_and_integrations():
    s = ev_mmvet.mmvet_scores([1.0, 0.5, 0.0, 0.8], [["rec"], ["rec", "math"], ["ocr"], ["math"]])
    assert s["total"] == (57.5, 4)
    assert s["cap_rec"] == (75.0, 2) and s["cap_math"] == (65.0, 2) and s["cap_ocr"] == (0.0, 1)
    # capability integrations: the items whose capability set is exactly that set
    assert s["capint_rec"] == (100.0, 1) and s["capint_math_rec"] == (50.0, 1) and s["capint_math"] == (80.0, 1)
    assert set(s) == {"total", "cap_rec", "cap_math", "cap_ocr", "capint_rec", "capint_math_rec", "capint_ocr",
                      "capint_math"}


def test_mmvet_rounds_to_one_decimal_like_the_evaluator():
    s = ev_mmvet.mmvet_scores([0.1, 0.2, 0.2], [["rec"], ["rec"], ["ocr", "rec"]])
    assert s["total"].value == 16.7  # 0.5 / 3 x 100 = 16.666...
    assert s["cap_ocr"].value == 20.0 and s["capint_ocr_rec"].value == 20.0
    assert ev_mmvet.mmvet_scores([0.1, 0.2], [["rec"], ["rec"]])["total"].value == 15.0  # 0.30000000000000004 / 2


def test_mmvet_failed_gradings_are_left_out_not_zero():
    s = ev_mmvet.mmvet_scores([1.0, None, 0.0], [["rec"], ["rec"], ["ocr"]])
    assert s["total"] == (50.0, 2)  # the evaluator's 0.0 for the failed item would give 33.3
    assert s["cap_rec"] == (100.0, 1)
    with pytest.raises(ValueError, match="no graded items"):
        ev_mmvet.mmvet_scores([None], [["rec"]])


# ---- LLaVA-Bench (summarize_gpt_review.py as printed) -------------------------------------------------------------

def test_llava_bench_relative_scores():
    s = ev_llava_bench.llava_bench_scores([(8, 6), (10, 9), (6, 3)], ["conv", "conv", "detail"])
    assert s["relative_score"] == (75.0, 3)
    assert s["reference_score"] == (80.0, 3) and s["model_score"] == (60.0, 3)  # means x 10, as printed
    assert s["relative_score_conv"] == (83.3, 2)  # 7.5 / 9 x 100 = 83.33...
    assert s["reference_score_conv"] == (90.0, 2) and s["model_score_conv"] == (75.0, 2)
    assert s["relative_score_detail"] == (50.0, 1)


def test_llava_bench_rounds_the_means_to_three_decimals_first():
    s = ev_llava_bench.llava_bench_scores([(1, 6), (1, 7), (2, 7)], ["conv"] * 3)
    # means 1.333.. and 6.666.. -> 1.333 and 6.667 -> 6.667 / 1.333 x 100 = 500.15 -> 500.2 (unrounded means: 500.0)
    assert s["relative_score"].value == 500.2
    assert s["reference_score"].value == 13.3 and s["model_score"].value == 66.7


def test_llava_bench_failed_reviews_are_left_out_not_averaged_as_minus_one():
    s = ev_llava_bench.llava_bench_scores([(8, 6), None], ["conv", "conv"])
    assert s["relative_score"] == (75.0, 1)  # summarize_gpt_review would average [-1, -1] in: 2.5 / 3.5
    assert math.isnan(ev_llava_bench.llava_bench_scores([(0, 5)], ["conv"])["relative_score"].value)  # the script divides by 0
    with pytest.raises(ValueError, match="no reviewed items"):
        ev_llava_bench.llava_bench_scores([None], ["conv"])


# ---- MT-Bench ---------------------------------------------------------------------------------------------------

def test_mt_bench_drops_minus_one_like_show_result():
    s = ev_mt_bench.mt_bench_scores([8, -1, 6], [4, 5, -1])
    assert s["turn1"] == (7.0, 2)
    assert s["turn2"] == (4.5, 2)
    assert s["overall"] == (5.75, 4)
    with pytest.raises(ValueError, match="no valid ratings"):
        ev_mt_bench.mt_bench_scores([-1], [-1])


# ---- AlpacaEval (pairwise_to_winrate, commit cd543a1) --------------------------------------------------------------

def test_alpaca_win_rate_ties_half_and_sem():
    prefs = [2, 1, 1.5, 2, 0, float("nan"), 3, None, 1.25]
    s = ev_alpaca_eval.alpaca_win_rate(prefs)
    # kept (1 <= x <= 2 after 0 -> 1.5): 2, 1, 1.5, 2, 1.5, 1.25 -> minus 1: 1, 0, .5, 1, .5, .25 ; NaN, None, 3 dropped
    assert s["win_rate"].value == pytest.approx(325 / 6) and s["win_rate"].n == 6
    x = [1, 0, 0.5, 1, 0.5, 0.25]
    mean = sum(x) / 6
    assert s["standard_error"].value == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in x) / 5 / 6) * 100)
    assert s["standard_error"].value == pytest.approx(pd.Series(x).sem() * 100)
    assert math.isnan(ev_alpaca_eval.alpaca_win_rate([2.0])["standard_error"].value)  # pandas sem of one value
    with pytest.raises(ValueError, match="no valid preferences"):
        ev_alpaca_eval.alpaca_win_rate([None, float("nan")])


def test_alpaca_unswitch():
    assert ev_alpaca_eval.alpaca_unswitch(1.0, True) == 2.0
    assert ev_alpaca_eval.alpaca_unswitch(2.0, True) == 1.0
    assert ev_alpaca_eval.alpaca_unswitch(1.5, True) == 1.5
    assert ev_alpaca_eval.alpaca_unswitch(1.25, True) == 1.75  # alpaca_eval's 3 - x applies to every value
    assert ev_alpaca_eval.alpaca_unswitch(2.0, False) == 2.0
    assert math.isnan(ev_alpaca_eval.alpaca_unswitch(float("nan"), True))
    assert ev_alpaca_eval.alpaca_unswitch(None, True) is None

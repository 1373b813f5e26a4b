"""Benchmark metrics, computed the way the official scripts compute them.

Every function is pure (lists in, numbers out) so it can be checked by hand. Functions that produce several metrics
return ``{metric name: Score(value, n)}`` where ``n`` is the number of items (or turns) the value is averaged over.
Each section names the official repository, file and commit it follows. One rule holds everywhere: a judge grading
that failed (no parsable reply) is passed in as None (MT-Bench: FastChat's own -1) and is left out of every metric,
never filled in with a default score; the callers count those failures (``judge_failures`` rows).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd


class Score(NamedTuple):
    value: float
    n: int


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def sum_in_order(xs: Sequence[float]) -> float:
    """Left-to-right float sum starting at 0.0 (`total += x`, as the official loops add; the builtin `sum` rounds
    differently from Python 3.12 on)."""
    total = 0.0
    for x in xs:
        total += x
    return total


# --------------------------------------------------------------------------------------------------------------
# POPE: haotian-liu/LLaVA llava/eval/eval_pope.py, commit c121f0432da27facab705978f83c4ada465e46fd.
# Where eval_pope.py crashes (ZeroDivisionError when nothing is predicted "yes", nothing is labelled "yes", or
# precision + recall is 0), precision, recall and F1 are 0.0 here, so a model that answers "no" to everything scores
# F1 0 on that split instead of stopping the run.

POPE_SPLITS = ("random", "popular", "adversarial")


def pope_parse_yes_no(text: str) -> str:
    """LLaVA's eval_pope rule: keep the text before the first '.', drop commas, split on spaces; the answer is "no"
    when one of the words is exactly "No", "not" or "no", otherwise "yes"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_split_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (yes = positive class) and the share of "yes" predictions.

    `predictions` are already parsed ("yes"/"no"); `labels` are the file's "yes"/"no". Precision (recall) is 0 when
    nothing is predicted (labelled) yes, where eval_pope.py would divide by zero."""
    if len(predictions) != len(labels):
        raise ValueError(f"POPE: {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("POPE: no items to score")
    bad = sorted({x for x in list(labels) + list(predictions) if x not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE: labels and predictions must be 'yes' or 'no', got {bad}")
    tp = sum(p == "yes" and lab == "yes" for p, lab in zip(predictions, labels))
    fp = sum(p == "yes" and lab == "no" for p, lab in zip(predictions, labels))
    tn = sum(p == "no" and lab == "no" for p, lab in zip(predictions, labels))
    fn = sum(p == "no" and lab == "yes" for p, lab in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(labels)}


def pope_scores(by_split: dict[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, Score]:
    """Per split "<metric>_<split>" (accuracy, precision, recall, f1, yes_ratio) and the headline "f1", the mean F1
    of the splits. `by_split` maps split -> (raw answer texts, labels); answers are parsed with pope_parse_yes_no."""
    if not by_split:
        raise ValueError("POPE: no splits to score")
    out: dict[str, Score] = {}
    f1s, total = [], 0
    for split, (answers, labels) in by_split.items():
        m = pope_split_metrics([pope_parse_yes_no(a) for a in answers], labels)
        for name, value in m.items():
            out[f"{name}_{split}"] = Score(value, len(labels))
        f1s.append(m["f1"])
        total += len(labels)
    out["f1"] = Score(_mean(f1s), total)
    return out


# --------------------------------------------------------------------------------------------------------------
# MMBench: open-compass/VLMEvalKit vlmeval/utils/matching_util.py (can_infer_option, can_infer_text, can_infer) and
# vlmeval/evaluate/multiple_choice.py (circular groups: prefetch_sub_data / eval_data_groups), commit
# c6bdffd3a3f2772ce9eaa157d7d31ec741b245b0 (March 2024; these functions were unchanged from January 2024 to August
# 2025, the period of the paper and of LLaVA-1.5's numbers). Default settings: the environment variable VERBOSE unset
# (so the "A may be an article" rejection is off) and the `exact_matching` judge (no GPT matching: an answer that
# neither rule decides counts as wrong, as VLMEvalKit scores it without a GPT key). Later commits (c3371551 and
# a67ace50, 2025-2026) add a position rule for the letter, a length limit for text matching and an "answer is X"
# regex; they are not followed.

LETTERS = "ABCDEFGHI"
_OPTION_PUNCT = ".()[],:;!*#{}"
MMBENCH_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")


def mmbench_infer_letter(answer: str, choices: Sequence[str]) -> str | None:
    """VLMEvalKit `can_infer_option` (VERBOSE unset): "Z" for a refusal (one of MMBENCH_REFUSALS in the answer);
    else punctuation -> spaces, split on whitespace: exactly one option letter among the words gives that letter;
    no option letter but the word "Z" gives "Z"; otherwise None (VLMEvalKit's False). An answer holding
    "Failed to obtain answer via API" gives None before the refusal check, as in VLMEvalKit."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(err in answer for err in MMBENCH_REFUSALS):
        return "Z"
    text = answer
    for ch in _OPTION_PUNCT:
        text = text.replace(ch, " ")
    words = [w.strip() for w in text.split()]
    hits = [c for c in choices if c in words]
    if len(hits) == 1:
        return hits[0]
    if not hits and "Z" in words:
        return "Z"
    return None


def mmbench_infer_text(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the option whose text (lower-cased) occurs in the lower-cased answer, if exactly
    one does."""
    low = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def mmbench_match(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer`: by letter first (a refusal gives "Z", which is never right), then by option text;
    None when neither decides."""
    answer = str(answer)
    return mmbench_infer_letter(answer, list(options)) or mmbench_infer_text(answer, options)


def mmbench_rotations(options: Sequence[str], answer_index: int) -> list[tuple[dict[str, str], str]]:
    """Circular evaluation: for n options, n passes; pass k shifts the options left by k (LLaVA's
    `options[1:] + options[:1]` applied k times). Returns [(letter -> text, correct letter)] with pass 0 the original."""
    n = len(options)
    if n < 2:
        raise ValueError(f"MMBench: a question needs at least 2 options, got {n}")
    if not 0 <= answer_index < n:
        raise ValueError(f"MMBench: answer index {answer_index} outside the {n} options")
    out = []
    for k in range(n):
        rotated = list(options[k:]) + list(options[:k])
        out.append((dict(zip(LETTERS, rotated)), LETTERS[(answer_index - k) % n]))
    return out


def mmbench_scores(passes: Sequence[Sequence[bool]]) -> dict[str, Score]:
    """`passes[q]` = correctness of every rotation of question q (pass 0 = original order).
    circular_accuracy: % of questions right in every pass (VLMEvalKit's circular group: hit 1 only when every
    rotation's can_infer answer equals its correct letter; under exact matching an undecided rotation is a miss);
    vanilla_accuracy: % right in pass 0 (mmpref's addition, not a VLMEvalKit number)."""
    if not passes or any(len(p) == 0 for p in passes):
        raise ValueError("MMBench: every question needs at least one scored pass")
    n = len(passes)
    return {"circular_accuracy": Score(100.0 * sum(all(p) for p in passes) / n, n),
            "vanilla_accuracy": Score(100.0 * sum(bool(p[0]) for p in passes) / n, n)}


# --------------------------------------------------------------------------------------------------------------
# MM-Vet: yuweihao/MM-Vet mm-vet_evaluator.py `export_result` (num_run 1, decimal_places 1), commit
# acde843e02dae30047bb456ee4a8ab28dee7e0ae. The evaluator scores an item whose grading failed five times as 0.0;
# here it is left out (None) and counted, and the counts it divides by are those of the graded items.

def _mmvet_percent(total: float, count: int) -> float:
    """`round((np.array([total]) / count * 100).mean(), 1)`: MM-Vet's arithmetic, numpy's rounding included."""
    if not count:
        return float("nan")
    return float(round((np.array([total]) / count * 100).mean(), 1))


def mmvet_scores(grades: Sequence[float | None], capabilities: Sequence[Sequence[str]]) -> dict[str, Score]:
    """total = sum of grades / items x 100; "cap_<cap>" = the same over the items having capability <cap>;
    "capint_<caps>" = the same over the items whose capability set is exactly <caps> (MM-Vet's capability
    integrations; the names joined by "_" in sorted order, where MM-Vet uses Python's set order). Every value
    rounded to one decimal as the evaluator's table shows it. Failed gradings (None) are left out."""
    if len(grades) != len(capabilities):
        raise ValueError(f"MM-Vet: {len(grades)} grades for {len(capabilities)} items")
    kept = [(float(g), set(caps)) for g, caps in zip(grades, capabilities) if g is not None]
    if not kept:
        raise ValueError("MM-Vet: no graded items to score")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for grade, caps in kept:  # the evaluator's accumulation order: item by item
        for key in [f"cap_{c}" for c in caps] + ["capint_" + "_".join(sorted(caps))]:
            sums[key] = sums.get(key, 0.0) + grade
            counts[key] = counts.get(key, 0) + 1
    out = {"total": Score(_mmvet_percent(sum_in_order([g for g, _ in kept]), len(kept)), len(kept))}
    for key in sorted(sums, key=lambda k: (k.startswith("capint_"), k)):
        out[key] = Score(_mmvet_percent(sums[key], counts[key]), counts[key])
    return out


# --------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (in the wild): haotian-liu/LLaVA llava/eval/summarize_gpt_review.py, commit
# c121f0432da27facab705978f83c4ada465e46fd, as it prints each line: `k, round(s[1]/s[0]*100, 1), round(s[0]*10, 1),
# round(s[1]*10, 1)` with s = the mean (reference, model) pair rounded to 3 decimals. Two differences, both
# deliberate: a review without two scores (eval_gpt_review_bench.parse_score's [-1, -1]) is left out and counted
# instead of averaged in as -1; a mean reference score of 0, where the script raises ZeroDivisionError, gives NaN.

def _llava_line(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(relative score, reference x 10, model x 10) of one printed line of summarize_gpt_review."""
    stats = np.asarray(pairs).mean(0).tolist()
    stats = [round(x, 3) for x in stats]
    rel = round(stats[1] / stats[0] * 100, 1) if stats[0] else float("nan")
    return rel, round(stats[0] * 10, 1), round(stats[1] * 10, 1)


def llava_bench_scores(pairs: Sequence[tuple[float, float] | None], categories: Sequence[str]) -> dict[str, Score]:
    """`pairs` = (reference score, model score) per question, None for a failed review. relative_score (%),
    reference_score and model_score (mean x 10, as printed), each also per category ("<metric>_<category>")."""
    if len(pairs) != len(categories):
        raise ValueError(f"LLaVA-Bench: {len(pairs)} score pairs for {len(categories)} questions")
    kept = [((float(p[0]), float(p[1])), c) for p, c in zip(pairs, categories) if p is not None]
    if not kept:
        raise ValueError("LLaVA-Bench: no reviewed items to score")
    out: dict[str, Score] = {}
    groups = [("", [p for p, _ in kept])] + [(f"_{cat}", [p for p, c in kept if c == cat])
                                               for cat in sorted({c for _, c in kept})]
    for suffix, sel in groups:
        rel, ref, model = _llava_line(sel)
        out[f"relative_score{suffix}"] = Score(rel, len(sel))
        out[f"reference_score{suffix}"] = Score(ref, len(sel))
        out[f"model_score{suffix}"] = Score(model, len(sel))
    return out


# --------------------------------------------------------------------------------------------------------------
# MT-Bench: lm-sys/FastChat fastchat/llm_judge/show_result.py display_result_single, commit
# 0e6d3e4beaab66f4d3f93db72541a4abab8af28d (ratings of -1, the judge's unparsable replies, are dropped).

def mt_bench_scores(turn1: Sequence[float], turn2: Sequence[float]) -> dict[str, Score]:
    """FastChat show_result (single): drop ratings of -1, then turn1 / turn2 means and the overall mean of all
    remaining turn ratings."""
    t1 = [float(s) for s in turn1 if s != -1]
    t2 = [float(s) for s in turn2 if s != -1]
    if not t1 and not t2:
        raise ValueError("MT-Bench: no valid ratings to score")
    return {"turn1": Score(_mean(t1), len(t1)), "turn2": Score(_mean(t2), len(t2)),
            "overall": Score(_mean(t1 + t2), len(t1) + len(t2))}


# --------------------------------------------------------------------------------------------------------------
# AlpacaEval (v1): tatsu-lab/alpaca_eval, commit cd543a149df89434d8a54582c0151c0b945c3d20:
# src/alpaca_eval/metrics/winrate.py `pairwise_to_winrate` (AbsoluteScoringRule.describe_head2head in
# metrics/helpers.py) and the switch-back of annotators/pairwise_evaluator.py (`3 - x`).

def alpaca_unswitch(preference: float | None, switched: bool) -> float | None:
    """Map a judge preference back to the unswitched order (output_1 = reference, output_2 = model): AlpacaEval's
    `_fn_replace_if_switch` applies 3 - x to every preference when the outputs were switched (1 <-> 2, 1.5 stays);
    a failed preference (None or NaN) stays as it is."""
    if preference is None or (isinstance(preference, float) and math.isnan(preference)):
        return preference
    return 3.0 - preference if switched else preference


def alpaca_win_rate(preferences: Sequence[float | None]) -> dict[str, Score]:
    """AlpacaEval's pairwise_to_winrate: 0 -> 1.5 (draw), keep the preferences with 1 <= x <= 2 (failed ones, None or
    NaN, and anything else are dropped), win_rate = mean(x - 1) x 100, standard_error = pandas sem (ddof 1) x 100
    (NaN for a single preference, as pandas gives)."""
    prefs = pd.Series([math.nan if p is None else p for p in preferences], dtype=float).replace({0.0: 1.5})
    kept = prefs[(prefs >= 1) & (prefs <= 2)] - 1
    if kept.empty:
        raise ValueError("AlpacaEval: no valid preferences to score")
    return {"win_rate": Score(float(kept.mean() * 100), len(kept)),
            "standard_error": Score(float(kept.sem() * 100), len(kept))}

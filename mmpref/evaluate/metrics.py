"""Benchmark metrics, computed the way the official scripts compute them.

Every function is pure (lists in, numbers out) so it can be checked by hand. Functions that produce several metrics
return ``{metric name: Score(value, n)}`` where ``n`` is the number of items (or turns) the value is averaged over.

Sources followed:
- POPE: LLaVA ``llava/eval/eval_pope.py`` (first sentence; "No"/"not"/"no" word -> no; yes is the positive class).
- MMBench: circular evaluation (every rotation of the options must be answered right); answers are matched to an
  option by letter first, then by option text, with VLMEvalKit's rules (``can_infer_option`` / ``can_infer_text``).
  VLMEvalKit's last resort (asking GPT to match free text) is not used: an unmatched answer counts as wrong.
- MM-Vet: total = mean grade x 100; per-capability = mean grade of the items having that capability x 100.
- LLaVA-Bench: LLaVA ``summarize_gpt_review.py``: relative score = mean model score / mean reference score x 100
  (unparsable reviews, stored as (-1, -1), are averaged in, as the script does).
- MT-Bench: FastChat ``show_result.py`` (single mode): ratings of -1 are dropped, then turn-1 mean, turn-2 mean and the
  mean over all turn ratings.
- AlpacaEval (v1): ``alpaca_eval.metrics.pairwise_to_winrate``: preferences 1 (reference wins), 2 (model wins),
  0 or 1.5 (draw, counts half); anything else is dropped; win rate = mean(preference - 1) x 100, standard error =
  standard error of that mean (sample std, ddof 1) x 100.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence


class Score(NamedTuple):
    value: float
    n: int


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


# --------------------------------------------------------------------------------------------------------------
# POPE

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
# MMBench

LETTERS = "ABCDEFGHI"
_OPTION_PUNCT = ".()[],:;!*#{}"


def mmbench_infer_letter(answer: str, letters: Sequence[str]) -> str | None:
    """VLMEvalKit `can_infer_option`: punctuation -> spaces, split on whitespace; exactly one option letter among the
    words gives that letter, except when "A" is one of more than three words (then "A" may be the article)."""
    text = answer
    for ch in _OPTION_PUNCT:
        text = text.replace(ch, " ")
    words = text.split()
    hits = [c for c in letters if c in words]
    if len(hits) != 1:
        return None
    if "A" in words and len(words) > 3:
        return None
    return hits[0]


def mmbench_infer_text(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the option whose text (case-insensitive) occurs in the answer, if exactly one."""
    low = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def mmbench_match(answer: str, options: dict[str, str]) -> str | None:
    """The option letter an answer picks: by letter first, then by option text; None when neither decides."""
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
    circular_accuracy: % of questions right in every pass; vanilla_accuracy: % right in pass 0."""
    if not passes or any(len(p) == 0 for p in passes):
        raise ValueError("MMBench: every question needs at least one scored pass")
    n = len(passes)
    return {"circular_accuracy": Score(100.0 * sum(all(p) for p in passes) / n, n),
            "vanilla_accuracy": Score(100.0 * sum(bool(p[0]) for p in passes) / n, n)}


# --------------------------------------------------------------------------------------------------------------
# MM-Vet

def mmvet_scores(grades: Sequence[float], capabilities: Sequence[Sequence[str]]) -> dict[str, Score]:
    """total = mean grade x 100; "cap_<cap>" = mean grade of the items with that capability x 100."""
    if len(grades) != len(capabilities):
        raise ValueError(f"MM-Vet: {len(grades)} grades for {len(capabilities)} items")
    if not grades:
        raise ValueError("MM-Vet: no items to score")
    out = {"total": Score(100.0 * _mean(grades), len(grades))}
    for cap in sorted({c for caps in capabilities for c in caps}):
        sel = [g for g, caps in zip(grades, capabilities) if cap in caps]
        out[f"cap_{cap}"] = Score(100.0 * _mean(sel), len(sel))
    return out


# --------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (in the wild)

def llava_bench_scores(pairs: Sequence[tuple[float, float]], categories: Sequence[str]) -> dict[str, Score]:
    """`pairs` = (reference score, model score) per question. relative_score = mean model / mean reference x 100,
    model_score and reference_score = the means (1..10), and "relative_score_<category>" per category."""
    if len(pairs) != len(categories):
        raise ValueError(f"LLaVA-Bench: {len(pairs)} score pairs for {len(categories)} questions")
    if not pairs:
        raise ValueError("LLaVA-Bench: no items to score")

    def rel(sel: list[tuple[float, float]]) -> float:
        ref = _mean([p[0] for p in sel])
        return 100.0 * _mean([p[1] for p in sel]) / ref if ref else float("nan")

    pairs = [(float(a), float(b)) for a, b in pairs]
    out = {"relative_score": Score(rel(pairs), len(pairs)),
           "model_score": Score(_mean([p[1] for p in pairs]), len(pairs)),
           "reference_score": Score(_mean([p[0] for p in pairs]), len(pairs))}
    for cat in sorted(set(categories)):
        sel = [p for p, c in zip(pairs, categories) if c == cat]
        out[f"relative_score_{cat}"] = Score(rel(sel), len(sel))
    return out


# --------------------------------------------------------------------------------------------------------------
# MT-Bench

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
# AlpacaEval (v1)

def alpaca_unswitch(preference: float, switched: bool) -> float:
    """Map a judge preference back to the unswitched order (output_1 = reference, output_2 = model):
    when the outputs were switched, 1 <-> 2; draws and NaN stay."""
    if switched and preference in (1.0, 2.0):
        return 3.0 - preference
    return preference


def alpaca_win_rate(preferences: Sequence[float]) -> dict[str, Score]:
    """AlpacaEval's pairwise_to_winrate: 2 = model wins, 1 = reference wins, 0 or 1.5 = draw (half a win);
    other values (NaN: the judge never gave a ranking) are dropped. win_rate and standard_error in percent."""
    kept = [1.5 if p == 0 else float(p) for p in preferences if p in (0, 1, 1.5, 2)]
    if not kept:
        raise ValueError("AlpacaEval: no valid preferences to score")
    x = [p - 1.0 for p in kept]
    n = len(x)
    mean = sum(x) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1) / n) if n > 1 else float("nan")
    return {"win_rate": Score(100.0 * mean, n), "standard_error": Score(100.0 * sem, n)}

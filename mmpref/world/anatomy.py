"""The anatomy of the text regression in the miniature world: how each model's MT-Bench answers go wrong.

Every answer (each turn) is sorted into one kind by the rubric's own reading of it (`judges.rubric.assess`, against
the item's key answer and reference sentence), checked in this order:

- ``empty``: no words at all;
- ``not stopped``: it loops, repeats itself or is garbled, usually until cut off (`fluency_score` below 3; an
  answer that only contradicts itself or its question is sorted by its correctness below) — it did not stop cleanly;
- ``wrong``: the key answer is not in it (correctness);
- ``over-long``: right, but far longer than asked (verbosity 4: e.g. a sentence where one word was asked for);
- ``terse``: right, but less complete than the reference (word overlap under 0.4: "8." for "3 plus 5 is 8.");
- ``full``: right and as complete as the reference.

``terse`` and ``over-long`` are response behaviour (format, completeness) that preference data on visual prompts can
reach; ``wrong`` is mostly lost knowledge, which it cannot.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from mmpref import stats
from mmpref.evaluate.protocol import scored_records
from mmpref.evaluate.mt_bench import load_mt_bench
from mmpref.io import read_json, read_jsonl
from mmpref.evaluate.mmbench import MMBENCH_PROMPT_SUFFIX
from mmpref.judges.rubric import assess, fluency_score
from mmpref.world.mix import VQA_PROMPT
from mmpref.world.text_tasks import FORMAT_INSTRUCTIONS

KINDS = ["full", "terse", "over-long", "wrong", "not stopped", "empty"]
RIGHT_KINDS = ("full", "terse", "over-long")
BEHAVIOUR_KINDS = ("terse", "over-long", "not stopped", "empty")  # response behaviour, not knowledge
PARTS = ("correctness", "form", "same kind")  # the parts of an MT-Bench change (transition_part)
# the benchmarks whose items carry key answers in the miniature: two text ones, one held-out visual one
TEXT_BENCHMARKS = ("mt_bench", "alpaca_eval")
FORM_BENCHMARKS = (*TEXT_BENCHMARKS, "llava_bench")
# words by which an answer talks about a picture (the world's pictures are charts and shapes; shape and colour names
# alone are not counted: the text tasks' lists name them too)
PICTURE_WORDS = frozenset({"image", "images", "picture", "pictures", "photo", "chart", "bar", "bars", "shown"})
ANSWER_COLUMNS = ["model", "benchmark", "unit", "turn", "category", "kind", "n_words", "pictures", "asked",
                  "adheres", "score"]
SHORT_WORDS = 2   # an answer of at most this many words is a bare answer ("12.", "Paris.", "Mexico City.")


def asked_format(prompt: str) -> str:
    """The form a prompt asks for: "short" where it carries a format instruction (the text tasks' FORMAT_INSTRUCTIONS,
    LLaVA-1.5's VQA prompt, MMBench's letter prompt), else "sentence" (the house style answers in a sentence)."""
    short = (*FORMAT_INSTRUCTIONS, VQA_PROMPT.strip(), MMBENCH_PROMPT_SUFFIX.strip())
    return "short" if any(s in prompt for s in short) else "sentence"


def adheres(answer: str, asked: str) -> bool:
    """Whether an answer takes the form its prompt asks for, right or wrong: at most SHORT_WORDS words where a short
    answer is asked, a sentence (more words) elsewhere."""
    n = len(answer.split())
    return 0 < n <= SHORT_WORDS if asked == "short" else n > SHORT_WORDS


def answer_kind(answer: str, key: str, reference: str | None) -> str:
    a = assess(answer, key, reference)
    if a.n_words == 0:
        return "empty"
    if fluency_score(answer)[0] < 3:
        return "not stopped"
    if not a.correct:
        return "wrong"
    if a.verbosity == 4:
        return "over-long"
    return "terse" if a.form < 0.4 else "full"


def mentions_pictures(answer: str) -> bool:
    """Whether an answer talks about a picture (on a text prompt there is none): a word of PICTURE_WORDS."""
    return any(w.strip(".,;:!?\"'()").lower() in PICTURE_WORDS for w in answer.split())


def _truth(benchmark: str, path: str | Path) -> dict[str, tuple[str, list[tuple[str, str | None, str]]]]:
    """unit -> (category, [(key answer, reference, prompt) per turn]) of a benchmark's items that carry key
    answers."""
    if benchmark == "mt_bench":
        return {str(it.question_id): (it.category, list(zip(it.answer_keys, it.references_all or
                                                                [None] * len(it.answer_keys), it.turns)))
                for it in load_mt_bench(path) if it.answer_keys}
    if benchmark == "alpaca_eval":
        from mmpref.evaluate.alpaca_eval import load_alpaca_eval
        return {it.instruction: (it.dataset, [(it.answer_key, it.reference, it.instruction)])
                for it in load_alpaca_eval(path) if it.answer_key}
    if benchmark == "llava_bench":
        from mmpref.evaluate.llava_bench import load_llava_bench
        return {str(it.question_id): (it.category, [(it.answer_key, it.reference, it.text)])
                for it in load_llava_bench(path) if it.answer_key}
    raise ValueError(f"no anatomy for benchmark {benchmark!r}; known: {', '.join(FORM_BENCHMARKS)}")


def _unit(benchmark: str, rec: dict) -> str:
    return str(rec.get("instruction") if benchmark == "alpaca_eval" else rec.get("question_id"))


def _turn_score(benchmark: str, rec: dict, turn: int) -> float:
    """MT-Bench: the judge's rating of this turn (NaN when it failed, -1); other benchmarks: NaN (not per turn)."""
    scores = rec.get("scores") or []
    if benchmark != "mt_bench" or len(scores) < turn or scores[turn - 1] is None or scores[turn - 1] < 0:
        return math.nan
    return float(scores[turn - 1])


def answer_rows(run_dir: str | Path, benchmarks: dict[str, str | Path], models: list[str]) -> pd.DataFrame:
    """One row per answer (ANSWER_COLUMNS) of each model on each benchmark of `benchmarks` (name -> item file, of
    FORM_BENCHMARKS) whose items carry key answers: its kind, words, whether it talks about pictures, and (MT-Bench)
    the judge's rating of the turn. Models without records on a benchmark are left out of it."""
    rows = []
    for bench, path in benchmarks.items():
        truth = _truth(bench, path)
        for model in models:
            for rec in scored_records(Path(run_dir) / "eval" / model / f"{bench}.jsonl", model, bench):
                unit = _unit(bench, rec)
                if unit not in truth:
                    continue
                category, turns = truth[unit]
                for turn, answer in enumerate((rec.get("answers") or [])[:len(turns)], 1):
                    key, ref, prompt = turns[turn - 1]
                    asked = asked_format(prompt)
                    rows.append({"model": model, "benchmark": bench, "unit": unit, "turn": turn,
                                 "category": category, "kind": answer_kind(answer, key, ref),
                                 "n_words": len(answer.split()), "pictures": mentions_pictures(answer),
                                 "asked": asked, "adheres": adheres(answer, asked),
                                 "score": _turn_score(bench, rec, turn)})
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


def behaviour_failure(rows: pd.DataFrame) -> pd.Series:
    """Per answer: a failure of response behaviour, not of knowledge: a kind of BEHAVIOUR_KINDS, or (on a text
    benchmark) an answer that talks about pictures."""
    return rows["kind"].isin(BEHAVIOUR_KINDS) | (rows["pictures"] & rows["benchmark"].isin(TEXT_BENCHMARKS))


def mt_bench_anatomy(run_dir: str | Path, questions: str | Path, models: list[str]) -> pd.DataFrame:
    """Tidy frame (model, turn, category, kind, n, share) of the kinds of the models' MT-Bench answers; share is
    within (model, turn). Models without MT-Bench records are left out."""
    frame = answer_rows(run_dir, {"mt_bench": questions}, models)
    counts = frame.groupby(["model", "turn", "category", "kind"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(["model", "turn"])["n"].transform("sum")
    return counts


def form_table(rows: pd.DataFrame, by: tuple[str, ...] = ("model", "benchmark")) -> pd.DataFrame:
    """Response form per (model, benchmark) from :func:`answer_rows`: the share (%) of each kind, of answers that
    talk about pictures, of behaviour failures (:func:`behaviour_failure`), format adherence (% of answers in the
    form their prompt asks, :func:`adheres`; overall, where a short answer is asked and where a sentence is), the
    mean and 90th percentile of the answers' words, and the number of answers. ``by``: the grouping, e.g. with
    "category" and "turn" added for the per-category, per-turn view."""
    if rows.empty:
        return pd.DataFrame()
    rows = rows.assign(behaviour=behaviour_failure(rows))
    g = rows.groupby(list(by))
    kinds = 100 * g["kind"].value_counts(normalize=True).unstack("kind").reindex(columns=KINDS).fillna(0)
    by_asked = (100 * rows.groupby([*by, "asked"])["adheres"].mean()).unstack("asked")
    by_asked = by_asked.reindex(columns=["short", "sentence"]).rename(
        columns={"short": "adherence, short asked", "sentence": "adherence, sentence asked"})
    return pd.concat([kinds, (100 * g["pictures"].mean()).rename("pictures"),
                      (100 * g["adheres"].mean()).rename("format adherence"), by_asked,
                      (100 * g["behaviour"].mean()).rename("behaviour failures"),
                      g["n_words"].mean().rename("mean words"), g["n_words"].quantile(0.9).rename("p90 words"),
                      g.size().rename("answers")], axis=1).round(1)


# ----------------------------------------------------------------------------------------------- paired intervals
def unit_interval(units, a, b=None, n_resamples: int = stats.N_RESAMPLES, seed: int = stats.SEED,
                  level: float = stats.LEVEL) -> dict:
    """mean(a) - mean(b) over rows (mean(a) without b) with its percentile bootstrap interval, resampling `units`
    (each row's item: the turns of one MT-Bench question go together) with replacement; a and b are aligned row
    by row (the same answers of two models), so the difference is paired. Returns {value, lo, hi, n_units}."""
    a = np.asarray(a, dtype=float)
    v = a if b is None else a - np.asarray(b, dtype=float)
    if len(v) != len(units) or not len(v):
        raise ValueError(f"unit_interval needs one unit per row and at least one row ({len(units)} units, "
                         f"{len(v)} rows)")
    if np.isnan(v).any():
        raise ValueError("unit_interval: NaN values; drop the rows without a value first")
    codes, uniq = pd.factorize(pd.Series(list(units)))
    sums, counts = np.bincount(codes, weights=v), np.bincount(codes)
    idx = np.random.default_rng(seed).integers(0, len(uniq), size=(n_resamples, len(uniq)))
    lo, hi, _ = stats.percentile_interval(sums[idx].sum(1) / counts[idx].sum(1), level)
    return {"value": float(v.mean()), "lo": lo, "hi": hi, "n_units": len(uniq)}


def _paired(rows: pd.DataFrame, a: str, b: str, benchmark: str) -> pd.DataFrame:
    """The answers of models a and b to the same (unit, turn) of one benchmark, side by side (suffixes _a, _b)."""
    r = rows[rows["benchmark"] == benchmark]
    return r[r["model"] == a].merge(r[r["model"] == b], on=["unit", "turn", "category"], suffixes=("_a", "_b"))


def behaviour_change(rows: pd.DataFrame, a: str, b: str, benchmark: str) -> dict:
    """Share of behaviour failures (:func:`behaviour_failure`) of model a minus model b on the same answers of one
    benchmark, with its paired bootstrap interval: {value, lo, hi, n_units}; NaNs when they share no answers."""
    p = _paired(rows, a, b, benchmark)
    if p.empty:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n_units": 0}
    fa = behaviour_failure(p.rename(columns={"kind_a": "kind", "pictures_a": "pictures", "benchmark_a": "benchmark"}))
    fb = behaviour_failure(p.rename(columns={"kind_b": "kind", "pictures_b": "pictures", "benchmark_b": "benchmark"}))
    return unit_interval(p["unit"], fa.astype(float), fb.astype(float))


def transition_part(kind_from: str, kind_to: str) -> str:
    """Which part of an MT-Bench change an answer's move between kinds belongs to: "correctness" (wrong <-> right),
    "form" (any other change of kind: terse, over-long, not stopped, empty), "same kind" (the rating moved within
    one kind, or not at all)."""
    if kind_from == kind_to:
        return "same kind"
    if {kind_from, kind_to} <= {"wrong", *RIGHT_KINDS} and "wrong" in (kind_from, kind_to):
        return "correctness"
    return "form"


def transitions(rows: pd.DataFrame, against: str = "vit") -> pd.DataFrame:
    """Per-item transitions on MT-Bench: for each model and each (kind under `against`, kind under the model), the
    number of answers and their mean change of rating."""
    out = []
    for model in [m for m in rows["model"].unique() if m != against]:
        p = _paired(rows, model, against, "mt_bench").dropna(subset=["score_a", "score_b"])
        if p.empty:
            continue
        g = p.assign(change=p["score_a"] - p["score_b"]).groupby(["kind_b", "kind_a"])["change"]
        t = pd.concat([g.size().rename("answers"), g.mean().rename("mean rating change")], axis=1).reset_index()
        out.append(t.rename(columns={"kind_b": f"kind ({against})", "kind_a": "kind (model)"}).assign(model=model))
    cols = ["model", f"kind ({against})", "kind (model)", "answers", "mean rating change"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


def decomposition(rows: pd.DataFrame, against: str = "vit") -> pd.DataFrame:
    """Each model's MT-Bench change against `against` (mean rating change over the turns both rated) split into the
    parts of :func:`transition_part`: each part's contribution is the mean over all paired turns of the rating change
    of the turns in that part, so the parts add up to the total; each with its paired bootstrap interval over
    questions. Columns: model, part, contribution, lo, hi, answers (turns in the part)."""
    out = []
    for model in [m for m in rows["model"].unique() if m != against]:
        p = _paired(rows, model, against, "mt_bench").dropna(subset=["score_a", "score_b"])
        if p.empty:
            continue
        change = (p["score_a"] - p["score_b"]).to_numpy()
        part = np.array([transition_part(f, t) for f, t in zip(p["kind_b"], p["kind_a"])])
        for name in [*PARTS, "total"]:
            mask = np.ones(len(p), bool) if name == "total" else part == name
            d = unit_interval(p["unit"], change * mask)
            out.append({"model": model, "part": name, "contribution": d["value"], "lo": d["lo"], "hi": d["hi"],
                        "answers": int(mask.sum())})
    return pd.DataFrame(out, columns=["model", "part", "contribution", "lo", "hi", "answers"])


def anatomy_table(anatomy: pd.DataFrame) -> pd.DataFrame:
    """Share (in %) of each kind per model, both turns together: the regression at a glance."""
    t = anatomy.groupby(["model", "kind"])["n"].sum().unstack("kind").reindex(columns=KINDS).fillna(0)
    return (100 * t.div(t.sum(axis=1), axis=0)).round(1)


def pair_anatomy(run_dir: str | Path) -> pd.DataFrame:
    """What DPO's preference pairs teach: counts of (kind of chosen, kind of rejected) over datasets/dpo.jsonl,
    each response read against its prompt's key answer and reference. Chosen answers that are *full* against
    rejected ones that are *wrong* teach correctness on pictures; *full* against *terse* teaches completeness, which
    is what could carry over to text prompts."""
    run_dir = Path(run_dir)
    truth = {p["id"]: p for p in read_jsonl(run_dir / "prompts.jsonl")}
    rows = []
    for pair in read_jsonl(run_dir / "datasets" / "dpo.jsonl"):
        p = truth.get(pair["prompt_id"])
        if p is None or p.get("answer") is None:
            continue
        rows.append({side: answer_kind(pair[side], p["answer"], p.get("reference")) for side in ("chosen", "rejected")})
    frame = pd.DataFrame(rows, columns=["chosen", "rejected"])
    return pd.crosstab(frame["chosen"], frame["rejected"]).reindex(index=KINDS, columns=KINDS).fillna(0).astype(int)


def dpo_diagnosis(run_dir: str | Path, adapter: str = "dpo", against: str = "vit") -> pd.DataFrame:
    """Did DPO move, and did it reach text answers? One row per check: the implicit reward margin and accuracy at the
    first and last logged step (adapters/<adapter>/trainer_state.json), and the share of MT-Bench answers (per turn)
    that differ between `adapter` and `against`."""
    run_dir = Path(run_dir)
    rows = []
    state = run_dir / "adapters" / adapter / "trainer_state.json"
    if state.exists():
        logged = [h for h in read_json(state) if "rewards/margins" in h]
        for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
            if logged:
                rows.append({"check": f"{key} (first → last logged step)", "first": logged[0][key],
                             "last": logged[-1][key]})
    answers = {}
    for model in (adapter, against):
        recs = scored_records(run_dir / "eval" / model / "mt_bench.jsonl", model, "mt_bench")
        if recs:
            answers[model] = {str(r["question_id"]): r["answers"] for r in recs}
    if len(answers) == 2:
        common = sorted(set(answers[adapter]) & set(answers[against]))
        for turn in (0, 1):
            pairs = [(answers[adapter][q], answers[against][q]) for q in common]
            pairs = [(a[turn], b[turn]) for a, b in pairs if len(a) > turn and len(b) > turn]
            if pairs:
                rows.append({"check": f"MT-Bench turn {turn + 1} answers that differ from {against}",
                             "first": None, "last": sum(a != b for a, b in pairs) / len(pairs)})
    return pd.DataFrame(rows, columns=["check", "first", "last"])


# ----------------------------------------------------------------------------------------------- claim C2 as a decision
C2_INPUTS = {  # name -> what it measures (a - b, paired bootstrap interval)
    "deficit": "behaviour failures on MT-Bench, vit - base-lm",
    "remaining": "behaviour failures on MT-Bench, dpo - base-lm",
    "text_change": "behaviour failures on MT-Bench, dpo - vit",
    "visual_change": "behaviour failures on held-out visual prompts (LLaVA-Bench), dpo - vit",
    "mt_bench_change": "MT-Bench overall, dpo - vit",
    "probe_change": "knowledge probe accuracy (MT-Bench and AlpacaEval), dpo - vit",
}
C2_VERDICTS = ("reproduced", "refuted", "cannot test")


def _iv(d: dict) -> str:
    return f"{d['value']:.3g} [{d['lo']:.3g}, {d['hi']:.3g}]"


def c2_decision(inputs: dict[str, dict]) -> tuple[str, str]:
    """Claim C2 (DPO on visual preference pairs remedies the text regression of visual instruction tuning) as a
    decision on the run's measurements; `inputs` maps each name of C2_INPUTS to {value, lo, hi} (a 95 % interval of
    a - b). Returns (verdict, the verdict in a sentence):

    - C2 is testable only if the tuned model shows a behavioural deficit on text against the base LM (`deficit`'s
      interval above 0);
    - "reproduced": DPO removes it (`text_change` below 0 and `remaining` not above 0) while MT-Bench rises
      (`mt_bench_change` above 0) and the knowledge probe does not move (`probe_change` contains 0);
    - "refuted": DPO fixes the behaviour on held-out visual prompts (`visual_change` below 0) but not on text
      (`text_change` not below 0);
    - otherwise "cannot test": the miniature cannot test C2.
    An interval with a NaN end decides nothing (it is neither above nor below 0)."""
    missing = [k for k in C2_INPUTS if k not in inputs or not {"value", "lo", "hi"} <= set(inputs[k])]
    if missing:
        raise ValueError(f"c2_decision: missing inputs {', '.join(missing)} (each needs value, lo, hi)")
    above = {k: bool(d["lo"] > 0) for k, d in inputs.items()}   # NaN compares False
    below = {k: bool(d["hi"] < 0) for k, d in inputs.items()}
    i = inputs
    if not above["deficit"]:
        visual = (f"; DPO did change behaviour on held-out visual prompts ({_iv(i['visual_change'])})"
                  if below["visual_change"] else "")
        return "cannot test", (f"The miniature cannot test C2: the tuned model shows no behavioural deficit on text "
                               f"against the base LM (share of behaviour failures, vit - base-lm = "
                               f"{_iv(i['deficit'])}), so there is no behaviour for DPO to repair{visual}.")
    removed = below["text_change"] and not above["remaining"]
    probe_still = i["probe_change"]["lo"] <= 0 <= i["probe_change"]["hi"]
    if removed and above["mt_bench_change"] and probe_still:
        return "reproduced", (f"C2 reproduced: DPO removes the tuned model's behavioural deficit on text "
                              f"(dpo - vit = {_iv(i['text_change'])}; against the base LM {_iv(i['remaining'])}), "
                              f"MT-Bench rises ({_iv(i['mt_bench_change'])}) and the knowledge probe does not move "
                              f"({_iv(i['probe_change'])}).")
    if below["visual_change"] and not below["text_change"]:
        return "refuted", (f"C2 refuted: DPO fixes the behaviour on held-out visual prompts "
                           f"({_iv(i['visual_change'])}) but not on text ({_iv(i['text_change'])}), where the tuned "
                           f"model's deficit ({_iv(i['deficit'])}) stays.")
    why = [] if removed else [f"DPO does not remove the text deficit (dpo - vit = {_iv(i['text_change'])})"]
    why += [] if above["mt_bench_change"] else [f"MT-Bench does not rise ({_iv(i['mt_bench_change'])})"]
    why += [] if probe_still else [f"the knowledge probe moves ({_iv(i['probe_change'])})"]
    return "cannot test", (f"The miniature cannot test C2: the tuned model has a behavioural deficit on text "
                           f"({_iv(i['deficit'])}), but " + "; ".join(why) + ".")


def c2_inputs(run_dir: str | Path, rows: pd.DataFrame, probe: pd.DataFrame | None) -> dict[str, dict]:
    """The measurements :func:`c2_decision` reads, from this run: behaviour failures (:func:`answer_rows` rows) on
    MT-Bench and LLaVA-Bench, MT-Bench overall from the per-item records (:func:`mmpref.stats.paired_difference`) and
    the knowledge probe (:func:`mmpref.world.probe.run_probe` rows; None: not measured). An input that cannot be
    measured (a model or benchmark missing) is NaN, and decides nothing."""
    from mmpref.world.probe import probe_change

    nan = {"value": math.nan, "lo": math.nan, "hi": math.nan, "n_units": 0}
    recs = {m: stats.records(run_dir, m, "mt_bench") for m in ("dpo", "vit")}
    mt = stats.paired_difference("mt_bench", recs["dpo"], recs["vit"]) if all(recs.values()) else nan
    return {"deficit": behaviour_change(rows, "vit", "base-lm", "mt_bench"),
            "remaining": behaviour_change(rows, "dpo", "base-lm", "mt_bench"),
            "text_change": behaviour_change(rows, "dpo", "vit", "mt_bench"),
            "visual_change": behaviour_change(rows, "dpo", "vit", "llava_bench"),
            "mt_bench_change": {k: mt[k] for k in nan},
            "probe_change": probe_change(probe, "dpo", "vit") if probe is not None else nan}


def c2_table(inputs: dict[str, dict]) -> pd.DataFrame:
    """The inputs of the C2 decision, one row each: what it measures, the difference and its 95 % interval."""
    return pd.DataFrame([{"input": k, "measures": C2_INPUTS[k], "difference": inputs[k]["value"],
                          "lo": inputs[k]["lo"], "hi": inputs[k]["hi"], "units": inputs[k].get("n_units")}
                         for k in C2_INPUTS])

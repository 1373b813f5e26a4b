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

from pathlib import Path

import pandas as pd

from mmpref.evaluate.protocol import scored_records
from mmpref.evaluate.mt_bench import load_mt_bench
from mmpref.io import read_json, read_jsonl
from mmpref.judges.rubric import assess, fluency_score

KINDS = ["full", "terse", "over-long", "wrong", "not stopped", "empty"]


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


def mt_bench_anatomy(run_dir: str | Path, questions: str | Path, models: list[str]) -> pd.DataFrame:
    """Tidy frame (model, turn, category, kind, n, share) of the kinds of the models' MT-Bench answers; share is
    within (model, turn). Models without MT-Bench records are left out."""
    items = {str(it.question_id): it for it in load_mt_bench(questions)}
    rows = []
    for model in models:
        for rec in scored_records(Path(run_dir) / "eval" / model / "mt_bench.jsonl", model, "mt_bench"):
            it = items.get(str(rec.get("question_id")))
            if it is None or not it.answer_keys:
                continue
            for turn, answer in enumerate(rec.get("answers") or [], 1):
                ref = it.references_all[turn - 1] if it.references_all else None
                rows.append({"model": model, "turn": turn, "category": it.category,
                             "kind": answer_kind(answer, it.answer_keys[turn - 1], ref)})
    frame = pd.DataFrame(rows, columns=["model", "turn", "category", "kind"])
    counts = frame.groupby(["model", "turn", "category", "kind"]).size().rename("n").reset_index()
    counts["share"] = counts["n"] / counts.groupby(["model", "turn"])["n"].transform("sum")
    return counts


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

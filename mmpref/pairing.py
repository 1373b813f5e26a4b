"""Turn granular judge annotations into the four training datasets (paper section 3.2).

- quality = helpfulness + correctness + coherence (0..12).
- DPO: skip a prompt whose max - min quality is below ``min_gap`` (2 in the paper). Chosen = the highest-quality
  response; ties for the top go to the LOWEST response index (the first sampled), so the choice never depends on
  chance. Rejected = one response drawn at random among those with quality <= max - min_gap, with a
  ``random.Random`` seeded from (run seed, prompt id): the draw does not depend on the order of the input files.
- Rejection sampling: (image, question, top-quality response), same tie rule as DPO's chosen.
- SteerLM: every response of an ok annotation, with its own five ratings appended to the question
  (:data:`STEERLM_SUFFIX`); at inference the question asks for `train.steerlm.inference_condition`
  (:func:`steerlm_condition`: all ratings 4 as the authors and NeMo do, or the ratings of the top-quality rows).
- SFT-gold: the judge's own answers (gold.jsonl).

Records that cannot be used (failed annotation, missing samples/annotation/gold, response count mismatch, ...) are
left out with a reason; the reasons and their counts go into the summary and the dataset card.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from mmpref import methods
from mmpref.io import read_jsonl, sha256_json, write_jsonl

log = logging.getLogger(__name__)

ATTRIBUTES = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
DATASETS = list(dict.fromkeys(m.dataset for m in methods.METHODS))  # the files stage 04 writes, one per dataset

STEERLM_SUFFIX = (
    "\nPlease answer the question such that your response is in the following attributes in 5-point Likert scale:\n"
    "Helpfulness:{helpfulness},Correctness:{correctness},Coherence:{coherence},"
    "Complexity:{complexity},Verbosity:{verbosity}"
)

# Reasons a prompt (or response) is left out of a dataset.
MISSING_SAMPLES = "missing_samples"
MISSING_ANNOTATION = "missing_annotation"
ANNOTATION_FAILED = "annotation_failed"
INVALID_SCORES = "invalid_scores"
COUNT_MISMATCH = "response_count_mismatch"
MISSING_GOLD = "missing_gold"
EMPTY_GOLD = "empty_gold"
GAP_BELOW_MIN = "quality_gap_below_min_gap"
UNKNOWN_PROMPT = "unknown_prompt_id"


def _score(scores: Any, attr: str) -> int:
    value = scores[attr] if isinstance(scores, Mapping) else getattr(scores, attr)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise ValueError(f"attribute {attr!r} must be an integer 0..4, got {value!r}")
    return value


def quality(scores: Any) -> int:
    """helpfulness + correctness + coherence of one response's ratings (a dict or an AttributeScores)."""
    try:
        return methods.quality({a: _score(scores, a) for a in methods.QUALITY_ATTRIBUTES})
    except (KeyError, AttributeError) as exc:
        raise ValueError(f"ratings lack attribute {exc}: {scores!r}") from None


def attributes(scores: Any) -> dict[str, int]:
    """The five ratings of one response as a plain dict (validated 0..4)."""
    try:
        return {a: _score(scores, a) for a in ATTRIBUTES}
    except (KeyError, AttributeError) as exc:
        raise ValueError(f"ratings lack attribute {exc}: {scores!r}") from None


def prompt_seed(seed: int, prompt_id: str) -> int:
    """A per-prompt RNG seed derived from the run seed and the prompt id (independent of record order)."""
    return int(sha256_json({"seed": seed, "prompt_id": prompt_id})[:16], 16)


def top_index(scores: Sequence[Any]) -> int:
    """Index of the highest-quality response; ties go to the lowest index."""
    if not scores:
        raise ValueError("no responses to choose from")
    qualities = [quality(s) for s in scores]
    return qualities.index(max(qualities))


def dpo_pair(scores: Sequence[Any], rng_seed: int, min_gap: int = 2) -> tuple[int, int] | None:
    """(chosen index, rejected index) for one prompt, or None when max - min quality < min_gap.

    Chosen is the top-quality response (lowest index among ties); rejected is drawn with ``random.Random(rng_seed)``
    among the responses whose quality is at most max - min_gap.
    """
    if min_gap < 1:
        raise ValueError(f"min_gap must be >= 1, got {min_gap}")
    if len(scores) < 2:
        return None
    qualities = [quality(s) for s in scores]
    best = max(qualities)
    if best - min(qualities) < min_gap:
        return None
    chosen = qualities.index(best)
    candidates = [i for i, q in enumerate(qualities) if q <= best - min_gap]
    rejected = random.Random(rng_seed).choice(candidates)
    return chosen, rejected


def steerlm_question(question: str, attrs: Mapping[str, int]) -> str:
    """The question with the SteerLM attribute condition appended."""
    return question + STEERLM_SUFFIX.format(**{a: int(attrs[a]) for a in ATTRIBUTES})


# SteerLM's inference condition (`train.steerlm.inference_condition`), by name:
# - "all_4": every attribute asked at 4, as the authors evaluate (findalexli/mllm-dpo llava/eval/gen_model_answer.py
#   and the *-prompted-all4 question files of scripts/v1_5/eval/{mmvet_steer_all4,pope_steer}.sh:
#   "Helpfulness:4,Correctness:4,Coherence:4,Complexity:4,Verbosity:4") and NVIDIA NeMo's SteerLM prompts do
#   ("helpfulness:4,correctness:4,coherence:4,complexity:4,verbosity:4");
# - "top_quality": the condition the model saw with its best training targets -- the five ratings carried by most of
#   the training rows of the highest quality (helpfulness + correctness + coherence; ties: the higher ratings). SteerLM
#   learns responses conditioned on the ratings its data show; a condition no training row carries asks it to
#   extrapolate (the authors also tried a moderate one: llava-mm-vet-helpfulsteer-promptedcomplex2verbo2.jsonl in
#   scripts/v1_5/eval/mmvet_steer.sh).
STEERLM_CONDITIONS = ("all_4", "top_quality")


def steerlm_condition(setting: str | Mapping[str, int], rows: Sequence[dict] | None = None) -> dict[str, int]:
    """The five ratings SteerLM is asked for at inference: a name of :data:`STEERLM_CONDITIONS` (``top_quality``
    reads `rows`, the SteerLM training rows with their ``attributes``) or an explicit {attribute: 0..4} mapping."""
    if isinstance(setting, Mapping):
        if set(setting) != set(ATTRIBUTES):
            raise ValueError(f"a SteerLM condition names exactly the attributes {ATTRIBUTES}, got {sorted(setting)}")
        return attributes(setting)
    if setting == "all_4":
        return {a: 4 for a in ATTRIBUTES}
    if setting != "top_quality":
        raise ValueError(f"unknown SteerLM condition {setting!r}; use one of {list(STEERLM_CONDITIONS)} or a mapping "
                         f"of the five attributes {ATTRIBUTES} to 0..4")
    if not rows:
        raise ValueError("the 'top_quality' SteerLM condition needs the SteerLM training rows (datasets/steerlm.jsonl)"
                         "; none were given")
    conds = [attributes(r["attributes"]) for r in rows]
    best = max(quality(c) for c in conds)
    counts = Counter(tuple(c[a] for a in ATTRIBUTES) for c in conds if quality(c) == best)
    top = max(counts, key=lambda k: (counts[k], k))
    return dict(zip(ATTRIBUTES, top))


def steerlm_run_condition(params) -> dict[str, int]:
    """This run's SteerLM inference condition: `train.steerlm.inference_condition` resolved against the run's SteerLM
    training rows (<run_dir>/datasets/steerlm.jsonl, read only for ``top_quality``)."""
    setting = params.train.steerlm.inference_condition
    if setting != "top_quality":
        return steerlm_condition(setting)
    path = params.run_dir / "datasets" / f"{methods.get('steerlm').dataset}.jsonl"
    if not path.is_file():
        raise ValueError(f"train.steerlm.inference_condition 'top_quality' reads the SteerLM training rows, but {path} "
                         f"does not exist; run stage 04_pair first")
    return steerlm_condition(setting, read_jsonl(path))


def steerlm_inference_question(question: str, condition: Mapping[str, int] | None = None) -> str:
    """The question as SteerLM sees it at inference: asking for `condition` (None: every attribute at 4)."""
    return steerlm_question(question, steerlm_condition("all_4") if condition is None else condition)


def condition_share(rows: Sequence[dict], condition: Mapping[str, int]) -> dict[str, Any]:
    """How many SteerLM training rows carry `condition`: ``rows``, ``exact`` (all five ratings equal) and
    ``per_attribute`` ({attribute: rows with that rating})."""
    attrs = [attributes(r["attributes"]) for r in rows]
    return {"rows": len(attrs),
            "exact": sum(all(at[a] == condition[a] for a in ATTRIBUTES) for at in attrs),
            "per_attribute": {a: sum(at[a] == condition[a] for at in attrs) for a in ATTRIBUTES}}


def subsample(rows: Sequence[dict], fraction: float, seed: int) -> list[dict]:
    """A deterministic fraction of rows, nested across fractions (the 25% subset lies inside the 50% one).

    Rows are ranked by a hash of (seed, prompt_id) -- or (seed, position) for rows without a prompt id -- and the
    first round(fraction * n) are kept, in their original order.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    keys = [str(r.get("prompt_id", f"#{i}")) for i, r in enumerate(rows)]
    if len(set(keys)) != len(keys):
        keys = [f"{k}#{i}" for i, k in enumerate(keys)]  # duplicate ids: the position keeps the ranking total
    ranked = sorted(range(len(rows)), key=lambda i: sha256_json({"seed": seed, "key": keys[i]}))
    n_keep = int(math.floor(fraction * len(rows) + 0.5))
    keep = sorted(ranked[:n_keep])
    return [rows[i] for i in keep]


def _load(records: str | Path | Iterable[dict]) -> list[dict]:
    if isinstance(records, (str, Path)):
        return read_jsonl(records)
    return list(records)


def _index_by_prompt(rows: list[dict], what: str, unknown: Counter, known: set[str]) -> dict[str, dict]:
    """Map prompt_id -> record; later records replace earlier ones (an ok annotation is never replaced by a failed)."""
    out: dict[str, dict] = {}
    for n, row in enumerate(rows, 1):
        pid = row.get("prompt_id")
        if pid is None:
            raise ValueError(f"{what} record {n} has no 'prompt_id': {str(row)[:200]}")
        if pid not in known:
            unknown[what] += 1
            continue
        old = out.get(pid)
        if old is not None and old.get("status") == "ok" and row.get("status") == "failed":
            continue
        out[pid] = row
    return out


def build_datasets(
    prompts: str | Path | Iterable[dict],
    samples: str | Path | Iterable[dict],
    annotations: str | Path | Iterable[dict],
    gold: str | Path | Iterable[dict],
    out_dir: str | Path,
    seed: int,
    min_gap: int = 2,
) -> dict:
    """Build and write the four datasets plus ``card.md`` into ``out_dir`` (normally ``<run_dir>/datasets``).

    Inputs are the run's record lists or paths to their JSON-lines files. Returns a summary dict with
    ``counts`` (rows per dataset), ``counts_by_source``, ``filtered`` ({dataset: {reason: count}}), ``unknown``
    (records whose prompt id is not in prompts), ``quality_gaps`` (histogram), ``attribute_histograms`` and
    ``paths``.
    """
    prompts, samples, annotations, gold = (_load(x) for x in (prompts, samples, annotations, gold))
    out_dir = Path(out_dir)
    ids = [p.get("id") for p in prompts]
    if any(i is None for i in ids):
        raise ValueError("every prompt needs an 'id'")
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    if dupes:
        raise ValueError(f"duplicate prompt ids in prompts: {dupes[:5]}")
    known = set(ids)
    unknown: Counter = Counter()
    samples_by = _index_by_prompt(samples, "samples", unknown, known)
    ann_by = _index_by_prompt(annotations, "annotations", unknown, known)
    gold_by = _index_by_prompt(gold, "gold", unknown, known)

    rows: dict[str, list[dict]] = {d: [] for d in DATASETS}
    by_source: dict[str, Counter] = {d: Counter() for d in DATASETS}
    filtered: dict[str, Counter] = {d: Counter() for d in DATASETS}
    attr_hist: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
    gap_hist: Counter = Counter()

    def skip(datasets: Iterable[str], reason: str, pid: str) -> None:
        for d in datasets:
            filtered[d][reason] += 1
        log.debug("prompt %s left out of %s: %s", pid, list(datasets), reason)

    for p in prompts:
        pid, source = p["id"], p.get("source", "unknown")
        base = {"prompt_id": pid, "image": p.get("image"), "question": p["question"]}

        g = gold_by.get(pid)
        if g is None:
            skip(["sft_gold"], MISSING_GOLD, pid)
        elif not str(g.get("answer") or "").strip():
            skip(["sft_gold"], EMPTY_GOLD, pid)
        else:
            rows["sft_gold"].append({**base, "response": g["answer"]})
            by_source["sft_gold"][source] += 1

        annotated = ["steerlm", "rejection_sampling", "dpo"]
        s, a = samples_by.get(pid), ann_by.get(pid)
        if s is None:
            skip(annotated, MISSING_SAMPLES, pid)
            continue
        if a is None:
            skip(annotated, MISSING_ANNOTATION, pid)
            continue
        if a.get("status") != "ok" or a.get("scores") is None:
            skip(annotated, ANNOTATION_FAILED, pid)
            continue
        responses, scores = s.get("responses") or [], a["scores"]
        if len(scores) != len(responses):
            skip(annotated, COUNT_MISMATCH, pid)
            continue
        try:
            attrs = [attributes(sc) for sc in scores]
        except (ValueError, TypeError) as exc:
            log.warning("prompt %s: invalid scores left out (%s)", pid, exc)
            skip(annotated, INVALID_SCORES, pid)
            continue
        if not responses:
            skip(annotated, COUNT_MISMATCH, pid)
            continue
        for at in attrs:
            for name in ATTRIBUTES:
                attr_hist[name][at[name]] += 1
        qualities = [quality(at) for at in attrs]
        gap_hist[max(qualities) - min(qualities)] += 1

        for resp, at in zip(responses, attrs):
            rows["steerlm"].append({**base, "question": steerlm_question(p["question"], at), "response": resp,
                                    "attributes": at})
            by_source["steerlm"][source] += 1

        best = top_index(attrs)
        rows["rejection_sampling"].append({**base, "response": responses[best]})
        by_source["rejection_sampling"][source] += 1

        pair = dpo_pair(attrs, prompt_seed(seed, pid), min_gap)
        if pair is None:
            skip(["dpo"], GAP_BELOW_MIN, pid)
            continue
        c, r = pair
        rows["dpo"].append({**base, "chosen": responses[c], "rejected": responses[r],
                            "chosen_quality": qualities[c], "rejected_quality": qualities[r],
                            "chosen_index": c, "rejected_index": r})
        by_source["dpo"][source] += 1

    paths = {}
    for d in DATASETS:
        paths[d] = str(out_dir / f"{d}.jsonl")
        write_jsonl(paths[d], rows[d])
    summary = {
        "counts": {d: len(rows[d]) for d in DATASETS},
        "counts_by_source": {d: dict(sorted(by_source[d].items())) for d in DATASETS},
        "filtered": {d: dict(sorted(filtered[d].items())) for d in DATASETS},
        "unknown": {UNKNOWN_PROMPT: dict(unknown)} if unknown else {},
        "quality_gaps": dict(sorted(gap_hist.items())),
        "attribute_histograms": {a: dict(sorted(attr_hist[a].items())) for a in ATTRIBUTES},
        "n_prompts": len(prompts),
        "seed": seed,
        "min_gap": min_gap,
        "paths": paths,
    }
    card = out_dir / "card.md"
    card.write_text(dataset_card(summary), encoding="utf-8")
    summary["paths"]["card"] = str(card)
    log.info("datasets written to %s: %s", out_dir, summary["counts"])
    return summary


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_card(summary: dict) -> str:
    """Markdown dataset card from a :func:`build_datasets` summary."""
    sources = sorted({s for d in DATASETS for s in summary["counts_by_source"][d]})
    reasons = sorted({r for d in DATASETS for r in summary["filtered"][d]})
    parts = [
        "# Dataset card",
        "",
        f"Built from {summary['n_prompts']} prompts; seed {summary['seed']}; DPO minimum quality gap "
        f"{summary['min_gap']} (quality = helpfulness + correctness + coherence). DPO chosen = top quality "
        "(ties -> lowest response index); rejected = seeded random draw among responses with quality <= max - gap.",
        "",
        "## Rows per dataset and source",
        "",
        _md_table(["dataset", "rows", *sources],
                  [[d, summary["counts"][d], *[summary["counts_by_source"][d].get(s, 0) for s in sources]]
                   for d in DATASETS]),
        "",
        "## Score histograms (all responses of ok annotations)",
        "",
        _md_table(["score", *ATTRIBUTES],
                  [[v, *[summary["attribute_histograms"][a].get(v, 0) for a in ATTRIBUTES]] for v in range(5)]),
        "",
        "## Quality gap (max - min quality per annotated prompt)",
        "",
        _md_table(["gap", "prompts"], [[g, n] for g, n in summary["quality_gaps"].items()])
        if summary["quality_gaps"] else "_no annotated prompts_",
        "",
        "## Filtered out",
        "",
        _md_table(["reason", *DATASETS], [[r, *[summary["filtered"][d].get(r, 0) for d in DATASETS]]
                                          for r in reasons]) if reasons else "_nothing filtered_",
        "",
    ]
    if summary.get("unknown"):
        parts += [f"Records whose prompt id is not in prompts (ignored): {summary['unknown'][UNKNOWN_PROMPT]}", ""]
    return "\n".join(parts)

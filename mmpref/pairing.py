"""Turn granular judge annotations into the methods' training datasets (paper section 3.2).

Each method's dataset is made by its row builder, registered with the method in `mmpref.methods` (one home per
method); this module holds the builders of the paper's four methods and the loop that feeds them one prompt at a time
(`build_datasets`). The pairing quality is `mmpref.ratings.quality` (helpfulness + correctness + coherence, 0..12).

- DPO: skip a prompt whose max - min quality is below ``min_gap`` (2 in the paper). Chosen = the highest-quality
  response; ties for the top go to the LOWEST response index (the first sampled), so the choice never depends on
  chance. Rejected = one response drawn at random among those with quality <= max - min_gap, with a
  ``random.Random`` seeded from (run seed, prompt id): the draw does not depend on the order of the input files.
- Rejection sampling: (image, question, top-quality response), same tie rule as DPO's chosen.
- SteerLM: every response of an ok annotation, with its own five ratings appended to the question
  (`mmpref.ratings.STEERLM_SUFFIX`); at inference the question asks for `train.steerlm.inference_condition`
  (:func:`steerlm_condition`: all ratings 4 as the authors and NeMo do, or the ratings of the top-quality rows).
- SFT-gold: the judge's own answers (gold.jsonl).

Records that cannot be used (failed annotation, missing samples/annotation/gold, response count mismatch, ...) are
left out with a reason (a builder raises `LeftOut`); the reasons and their counts go into the summary and the card.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mmpref.io import read_jsonl, sha256_json, write_jsonl
from mmpref.ratings import ATTRIBUTES, attributes, quality, steerlm_question

log = logging.getLogger(__name__)

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


class LeftOut(Exception):
    """A row builder's answer for a prompt that gives its dataset no row: `reason` is one of the reasons above."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PromptRecords:
    """One prompt with what stages 02-03 made of it: the input of every dataset's row builder.

    `row` is the start of every row ({prompt_id, image, question}); `gold` the judge's own answer record (or None);
    `responses` and `ratings` the sampled responses and their validated five ratings, or None with `problem` saying
    why they cannot be used (missing samples or annotation, a failed or invalid annotation, a count mismatch)."""

    row: dict
    gold: dict | None
    responses: list[str] | None
    ratings: list[dict[str, int]] | None
    problem: str | None
    seed: int
    min_gap: int

    def rated(self) -> tuple[list[str], list[dict[str, int]]]:
        """(responses, ratings), or LeftOut with the reason they cannot be used."""
        if self.problem is not None:
            raise LeftOut(self.problem)
        return self.responses, self.ratings

    @property
    def qualities(self) -> list[int]:
        return [quality(r) for r in self.rated()[1]]


RowBuilder = Callable[[PromptRecords], list[dict]]


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


def sft_gold_rows(p: PromptRecords) -> list[dict]:
    """SFT-gold: the judge's own answer to the prompt."""
    if p.gold is None:
        raise LeftOut(MISSING_GOLD)
    if not str(p.gold.get("answer") or "").strip():
        raise LeftOut(EMPTY_GOLD)
    return [{**p.row, "response": p.gold["answer"]}]


def steerlm_rows(p: PromptRecords) -> list[dict]:
    """SteerLM: every response, its own five ratings appended to the question."""
    responses, ratings = p.rated()
    return [{**p.row, "question": steerlm_question(p.row["question"], at), "response": resp, "attributes": at}
            for resp, at in zip(responses, ratings)]


def rejection_sampling_rows(p: PromptRecords) -> list[dict]:
    """Rejection sampling: the top-quality response (ties: the lowest index)."""
    responses, ratings = p.rated()
    return [{**p.row, "response": responses[top_index(ratings)]}]


def dpo_rows(p: PromptRecords) -> list[dict]:
    """DPO: (chosen, rejected) by `dpo_pair`, with both qualities (the pair's margin, MM-DPO's scaling)."""
    responses, ratings = p.rated()
    pair = dpo_pair(ratings, prompt_seed(p.seed, p.row["prompt_id"]), p.min_gap)
    if pair is None:
        raise LeftOut(GAP_BELOW_MIN)
    c, r = pair
    qualities = p.qualities
    return [{**p.row, "chosen": responses[c], "rejected": responses[r], "chosen_quality": qualities[c],
             "rejected_quality": qualities[r], "chosen_index": c, "rejected_index": r}]


def _prompt_records(p: dict, s: dict | None, a: dict | None, g: dict | None, seed: int,
                    min_gap: int) -> PromptRecords:
    row = {"prompt_id": p["id"], "image": p.get("image"), "question": p["question"]}
    problem, responses, ratings = None, None, None
    if s is None:
        problem = MISSING_SAMPLES
    elif a is None:
        problem = MISSING_ANNOTATION
    elif a.get("status") != "ok" or a.get("scores") is None:
        problem = ANNOTATION_FAILED
    elif len(a["scores"]) != len(s.get("responses") or []) or not a["scores"]:
        problem = COUNT_MISMATCH
    else:
        try:
            ratings = [attributes(sc) for sc in a["scores"]]
            responses = list(s["responses"])
        except (ValueError, TypeError) as exc:
            log.warning("prompt %s: invalid scores left out (%s)", p["id"], exc)
            problem = INVALID_SCORES
    return PromptRecords(row, g, responses, ratings, problem, seed, min_gap)


def build_datasets(
    prompts: str | Path | Iterable[dict],
    samples: str | Path | Iterable[dict],
    annotations: str | Path | Iterable[dict],
    gold: str | Path | Iterable[dict],
    out_dir: str | Path,
    seed: int,
    min_gap: int = 2,
    *,
    builders: Mapping[str, RowBuilder],
) -> dict:
    """Build and write one dataset per entry of `builders` ({dataset: row builder}, `mmpref.methods.datasets()`)
    plus ``card.md`` into ``out_dir`` (normally ``<run_dir>/datasets``).

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

    datasets = list(builders)
    rows: dict[str, list[dict]] = {d: [] for d in datasets}
    by_source: dict[str, Counter] = {d: Counter() for d in datasets}
    filtered: dict[str, Counter] = {d: Counter() for d in datasets}
    attr_hist: dict[str, Counter] = {a: Counter() for a in ATTRIBUTES}
    gap_hist: Counter = Counter()

    for p in prompts:
        pid, source = p["id"], p.get("source", "unknown")
        records = _prompt_records(p, samples_by.get(pid), ann_by.get(pid), gold_by.get(pid), seed, min_gap)
        if records.problem is None:
            for at in records.ratings:
                for name in ATTRIBUTES:
                    attr_hist[name][at[name]] += 1
            gap_hist[max(records.qualities) - min(records.qualities)] += 1
        for d, build in builders.items():
            try:
                made = build(records)
            except LeftOut as out:
                filtered[d][out.reason] += 1
                log.debug("prompt %s left out of %s: %s", pid, d, out.reason)
                continue
            rows[d] += made
            by_source[d][source] += len(made)

    paths = {}
    for d in datasets:
        paths[d] = str(out_dir / f"{d}.jsonl")
        write_jsonl(paths[d], rows[d])
    summary = {
        "counts": {d: len(rows[d]) for d in datasets},
        "counts_by_source": {d: dict(sorted(by_source[d].items())) for d in datasets},
        "filtered": {d: dict(sorted(filtered[d].items())) for d in datasets},
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
    datasets = list(summary["counts"])
    sources = sorted({s for d in datasets for s in summary["counts_by_source"][d]})
    reasons = sorted({r for d in datasets for r in summary["filtered"][d]})
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
                   for d in datasets]),
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
        _md_table(["reason", *datasets], [[r, *[summary["filtered"][d].get(r, 0) for d in datasets]]
                                          for r in reasons]) if reasons else "_nothing filtered_",
        "",
    ]
    if summary.get("unknown"):
        parts += [f"Records whose prompt id is not in prompts (ignored): {summary['unknown'][UNKNOWN_PROMPT]}", ""]
    return "\n".join(parts)

"""A critique-based reward model: the policy family, LoRA-tuned on the annotation judge's own outputs, writes a
critique of one response and then its five ratings, so new samples can be annotated locally.

MM-RLHF (Zhang et al. 2025, arXiv 2502.10391, section 4.1, "Critique-Based Reward Model Training") trains its reward
model to write a critique before it scores: the critique makes the score explainable and, the paper reports, more
accurate than a bare scalar head. Here the critique and the scores both come from stage 03's judge:

- `response_critiques` cuts the judge's step-by-step reasoning for one prompt into its part about each response
  (the annotation prompt numbers them "[Response i]" and judges refer to them so); a prompt whose reasoning does
  not name every response gives no rows (counted, never guessed).
- A training row (`training_rows`) is an SFT row of the project's form {prompt_id, image, question, response}: the
  question is `RM_QUESTION` (the prompt's question and one response), the response the critique (its first
  `critique_words` words, whole sentences) and the ratings line (`mmpref.ratings.ratings_line`).
- Prompts are split by a hash of their id (`split_of`): `held_out` of them never train the model and measure its
  agreement with the judge (`agreement`: per-attribute Pearson r and pairwise accuracy on quality, each with a
  percentile bootstrap interval over prompts).
- The trained adapter answers stage 03's annotation requests as the judge backend "reward_model"
  (mmpref.judges.reward_model), so the same stage, cache and resume run on it.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mmpref.ratings import ATTRIBUTES, RATINGS_LINE, attributes, parse_ratings_line, quality, ratings_line

log = logging.getLogger(__name__)

RM_QUESTION = "Critique the answer, then rate it.\nQuestion: {question}\nAnswer: {answer}"
TRAIN, HELD_OUT = "train", "held_out"
# why a prompt or a response gives no training row
ANNOTATION_NOT_OK, NO_CRITIQUE, COUNT_MISMATCH, TOO_LONG = ("annotation_not_ok", "reasoning_names_no_response",
                                                           "response_count_mismatch", "longer_than_max_length")
_HEADER = re.compile(r"^[\W_]*\[?Response\s+(\d+)\]?[\s*:.\-)]*", re.IGNORECASE | re.MULTILINE)
_MENTION = re.compile(r"\bResponse\s+(\d+)\b[\s*:]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def rm_question(question: str, answer: str) -> str:
    """What the reward model is asked about one response."""
    return RM_QUESTION.format(question=question, answer=answer)


def _cut(reasoning: str, header: re.Pattern, n: int) -> list[str] | None:
    parts: dict[int, str] = {}
    heads = list(header.finditer(reasoning))
    for head, nxt in zip(heads, heads[1:] + [None]):
        i = int(head.group(1))
        text = reasoning[head.end(): nxt.start() if nxt else len(reasoning)].strip(" \n;,")
        if 1 <= i <= n and text:
            parts[i] = f"{parts[i]} {text}" if i in parts else text
    if sorted(parts) != list(range(1, n + 1)):
        return None
    return [" ".join(parts[i].split()) for i in range(1, n + 1)]


def response_critiques(reasoning: str, n: int) -> list[str] | None:
    """The judge's reasoning about each of `n` responses: the text after a line starting "Response i" up to the next
    such line; where not every response has such a line (a judge writing one paragraph), the text after each mention
    "response i" up to the next mention (a response mentioned twice gets both parts). None when some response is
    never mentioned, or only with nothing after it."""
    for header in (_HEADER, _MENTION):
        parts = _cut(reasoning or "", header, n)
        if parts is not None:
            return parts
    return None


def shorten(critique: str, max_words: int) -> str:
    """The critique's leading whole sentences within `max_words` words (the first sentence cut at `max_words` when it
    alone is longer)."""
    out: list[str] = []
    for sentence in _SENTENCE_END.split(critique.strip()):
        if len(" ".join(out + [sentence]).split()) > max_words:
            break
        out.append(sentence)
    return " ".join(out) if out else " ".join(critique.split()[:max_words])


def target(critique: str, scores) -> str:
    """The reward model's reply for one response: the critique, then the ratings line."""
    return f"{critique}\n{ratings_line(attributes(scores))}"


def parse_reply(text: str) -> tuple[str, dict[str, int]]:
    """(critique, ratings) of a reward-model reply; ValueError when it holds no complete ratings line."""
    scores = parse_ratings_line(text)
    head = RATINGS_LINE.split(":")[0]  # "Helpfulness"
    critique = text[: text.rfind(head)].strip()
    return critique, scores


def _draw(prompt_id: str, seed: int) -> float:
    return int(hashlib.sha256(f"{seed}:{prompt_id}".encode()).hexdigest()[:12], 16) / 16 ** 12


def split_of(prompt_id: str, held_out: float, seed: int) -> str:
    """TRAIN or HELD_OUT for one prompt: a hash of the run seed and the prompt id against `held_out` (a share in
    [0, 1)), so the split does not depend on record order and stays put when prompts are added."""
    return HELD_OUT if _draw(prompt_id, seed) < held_out else TRAIN


def held_out_ids(prompt_ids: Sequence[str], held_out: float, seed: int) -> set[str]:
    """The held-out prompts (`split_of`); where the hash holds none out of two or more prompts (a handful of prompts:
    a rehearsal), the one with the smallest draw, so there is always something to compare on."""
    ids = list(prompt_ids)
    held = {i for i in ids if split_of(i, held_out, seed) == HELD_OUT}
    if not held and len(ids) >= 2:
        held = {min(ids, key=lambda i: _draw(i, seed))}
    return held


def training_rows(prompts: Sequence[dict], samples: Sequence[dict], annotations: Sequence[dict], held_out: float,
                  seed: int, critique_words: int) -> tuple[list[dict], dict]:
    """SFT rows of the train split (one per rated response) and a summary: prompts per split and the reasons rows
    were left out."""
    by_sample = {s["prompt_id"]: s["responses"] for s in samples}
    by_annotation = {a["prompt_id"]: a for a in annotations}
    rows, left_out, splits = [], Counter(), Counter()
    held = held_out_ids([p["id"] for p in prompts], held_out, seed)
    for p in prompts:
        split = HELD_OUT if p["id"] in held else TRAIN
        splits[split] += 1
        if split != TRAIN or p["id"] not in by_sample:
            continue
        a, responses = by_annotation.get(p["id"]), by_sample[p["id"]]
        if a is None or a.get("status") != "ok" or not a.get("scores"):
            left_out[ANNOTATION_NOT_OK] += 1
            continue
        if len(a["scores"]) != len(responses):
            left_out[COUNT_MISMATCH] += 1
            continue
        critiques = response_critiques(a.get("reasoning") or "", len(responses))
        if critiques is None:
            left_out[NO_CRITIQUE] += 1
            continue
        for i, (response, critique, scores) in enumerate(zip(responses, critiques, a["scores"])):
            rows.append({"prompt_id": p["id"], "response_index": i, "image": p.get("image"),
                         "question": rm_question(p["question"], response),
                         "response": target(shorten(critique, critique_words), scores)})
    return rows, {"prompts": dict(splits), "rows": len(rows), "prompts_left_out": dict(left_out)}


def held_out_samples(prompts: Sequence[dict], samples: Sequence[dict], held_out: float, seed: int) -> list[dict]:
    """The samples of the held-out prompts (what the reward model annotates to be compared with the judge)."""
    keep = held_out_ids([p["id"] for p in prompts], held_out, seed)
    return [s for s in samples if s["prompt_id"] in keep]


def samples_to_annotate(prompts: Sequence[dict], samples: Sequence[dict], params) -> list[dict]:
    """What stage 03b annotates with the reward model: the held-out samples, or all (`reward_model.annotate`)."""
    rp = params.reward_model
    return list(samples) if rp.annotate == "all" else held_out_samples(prompts, samples, rp.held_out, params.run.seed)


# --------------------------------------------------------------------------------------------- agreement
def paired_scores(judge: Sequence[dict], model: Sequence[dict]) -> pd.DataFrame:
    """One row per response both annotated ok: prompt_id, response index, and each attribute by judge ("judge_*")
    and reward model ("rm_*")."""
    mine = {a["prompt_id"]: a for a in model if a.get("status") == "ok" and a.get("scores")}
    rows = []
    for a in judge:
        b = mine.get(a["prompt_id"])
        if a.get("status") != "ok" or not a.get("scores") or b is None or len(b["scores"]) != len(a["scores"]):
            continue
        for i, (sj, sm) in enumerate(zip(a["scores"], b["scores"])):
            rows.append({"prompt_id": a["prompt_id"], "response": i,
                         **{f"judge_{k}": v for k, v in attributes(sj).items()},
                         **{f"rm_{k}": v for k, v in attributes(sm).items()},
                         "judge_quality": quality(sj), "rm_quality": quality(sm)})
    return pd.DataFrame(rows)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """Within each prompt, every two responses the judge rates apart on quality: does the model order them alike?
    agree 1, tie 0.5 (the model rates them equal), 0 reversed."""
    rows = []
    for pid, g in frame.groupby("prompt_id", sort=False):
        j, m = g["judge_quality"].to_numpy(), g["rm_quality"].to_numpy()
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                if j[a] != j[b]:
                    rows.append({"prompt_id": pid, "hit": 0.5 if m[a] == m[b] else float((m[a] - m[b]) * (j[a] - j[b]) > 0)})
    return pd.DataFrame(rows, columns=["prompt_id", "hit"])


def agreement(frame: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Tidy agreement of the reward model with the judge: per attribute (and quality) Pearson r over responses, and
    pairwise accuracy on quality; each with a percentile bootstrap interval that resamples prompts (a prompt's
    responses move together). Columns: metric, attribute, value, lo, hi, n (responses or pairs), prompts."""
    from mmpref.stats import percentile_interval

    if frame.empty:  # nothing to compare (every reward-model annotation failed): said as n = 0, not guessed
        return pd.DataFrame([{"metric": m, "attribute": a, "value": float("nan"), "lo": float("nan"),
                              "hi": float("nan"), "n": 0, "prompts": 0}
                             for m, a in [*(("pearson_r", a) for a in [*ATTRIBUTES, "quality"]),
                                          ("pairwise_accuracy", "quality")]])
    ids = frame["prompt_id"].unique()
    groups = {pid: idx for pid, idx in frame.groupby("prompt_id", sort=False).indices.items()}
    pairs = _pairs(frame)
    pair_groups = {pid: idx for pid, idx in pairs.groupby("prompt_id", sort=False).indices.items()}
    rng = np.random.default_rng(seed)
    draws = [rng.choice(ids, size=len(ids)) for _ in range(n_resamples)]
    out = []
    for attr in [*ATTRIBUTES, "quality"]:
        x, y = frame[f"judge_{attr}"].to_numpy(float), frame[f"rm_{attr}"].to_numpy(float)
        stats = []
        for d in draws:
            idx = np.concatenate([groups[p] for p in d])
            stats.append(_pearson(x[idx], y[idx]))
        lo, hi, _ = percentile_interval(stats, level)
        out.append({"metric": "pearson_r", "attribute": attr, "value": _pearson(x, y), "lo": lo, "hi": hi,
                    "n": len(frame), "prompts": len(ids)})
    hits = pairs["hit"].to_numpy(float)
    stats = []
    for d in draws:
        idx = [pair_groups[p] for p in d if p in pair_groups]
        stats.append(float(hits[np.concatenate(idx)].mean()) if idx else float("nan"))
    lo, hi, _ = percentile_interval(stats, level)
    out.append({"metric": "pairwise_accuracy", "attribute": "quality",
                "value": float(hits.mean()) if len(hits) else float("nan"), "lo": lo, "hi": hi, "n": len(hits),
                "prompts": pairs["prompt_id"].nunique()})
    return pd.DataFrame(out)


# --------------------------------------------------------------------------------------------- cost
def cost_table(judge_spend: dict, judge_prompts: int, rm_seconds: float, rm_prompts: int, train_seconds: float,
               rm_tokens: tuple[int, int]) -> pd.DataFrame:
    """What one annotated prompt costs by the judge (its recorded spend over the prompts it annotated) and by the
    reward model (its generation seconds; its one-off training seconds apart)."""
    usd = judge_spend.get("cost_usd")
    calls = judge_spend.get("calls") or 0
    rows = [
        {"annotator": "judge", "prompts": judge_prompts, "calls": calls,
         "input_tokens_per_prompt": (judge_spend.get("input_tokens") or 0) / max(judge_prompts, 1),
         "output_tokens_per_prompt": (judge_spend.get("output_tokens") or 0) / max(judge_prompts, 1),
         "usd_per_prompt": (usd / max(judge_prompts, 1)) if usd is not None else float("nan"),
         "seconds_per_prompt": float("nan"), "one_off_training_seconds": 0.0},
        {"annotator": "reward model", "prompts": rm_prompts, "calls": rm_prompts,
         "input_tokens_per_prompt": rm_tokens[0] / max(rm_prompts, 1),
         "output_tokens_per_prompt": rm_tokens[1] / max(rm_prompts, 1),
         "usd_per_prompt": 0.0, "seconds_per_prompt": rm_seconds / max(rm_prompts, 1),
         "one_off_training_seconds": train_seconds},
    ]
    return pd.DataFrame(rows)


def annotations_path(run_dir: Path) -> Path:
    """The reward model's annotations (stage 03b): of the held-out prompts, or of all (`reward_model.annotate`)."""
    return Path(run_dir) / "reward_model" / "annotations.jsonl"


def adapter_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "reward_model" / "adapter"

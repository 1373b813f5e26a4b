"""Figure 3 from real human labels: LLaVA-RLHF's human preference pairs (LLaVA-Human-Preference-10K) scored by the
annotation judge, so a paper run redraws Figure 3 (n = 500 in the paper) from crowd labels instead of the miniature
world's simulated ones (mmpref.world.truth).

A record: {"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...], "output_1": {"from", "value"},
"output_2": {...}, "preference": 1|2}; the conversation ends with the human turn both outputs answer. Earlier turns
are given to the judge as context. The pairs are scored as annotation is (mmpref.annotate: durable, resumable,
cached, failures recorded), and `figures.attribute_diff_frame` turns the scores and labels into Figure 3's frame.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from mmpref.annotate import annotate_samples
from mmpref.figures import attribute_diff_frame
from mmpref.judges.base import Judge

IMAGE_TOKEN = "<image>"


def _text(turn, where: str) -> str:
    value = turn.get("value") if isinstance(turn, dict) else turn
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: no text")
    return value.replace(IMAGE_TOKEN, "").strip()


def _question(conversations: list, where: str) -> str:
    if not isinstance(conversations, list) or not conversations:
        raise ValueError(f"{where}: `conversations` must be a non-empty list")
    if conversations[-1].get("from") != "human":
        raise ValueError(f"{where}: the conversation must end with the human turn the outputs answer")
    *context, last = conversations
    lines = [f"{'User' if t.get('from') == 'human' else 'Assistant'}: {_text(t, where)}" for t in context]
    question = _text(last, where)
    if not lines:
        return question
    return "Conversation so far:\n" + "\n".join(lines) + f"\n\nThe user now asks: {question}"


def load_llava_rlhf_preferences(path: str | Path, n: int | None = None, seed: int = 0) -> list[dict]:
    """Records of a LLaVA-Human-Preference-10K file (JSON list or JSONL) as {"id", "image", "question",
    "responses": [output_1, output_2], "preferred": 0 (output_1) or 1 (output_2)}; `n` of them drawn with `seed`
    (None: all, in file order)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(raw, list):
        raise ValueError(f"{path}: expected a list of records")
    out, seen = [], set()
    for i, rec in enumerate(raw):
        where = f"{path} record {i}"
        missing = [k for k in ("conversations", "output_1", "output_2", "preference", "image") if k not in rec]
        if missing:
            raise ValueError(f"{where}: lacks {missing} (LLaVA-Human-Preference-10K records have conversations, "
                             f"output_1, output_2, preference, image)")
        if rec["preference"] not in (1, 2):
            raise ValueError(f"{where}: preference must be 1 or 2, got {rec['preference']!r}")
        rid = str(rec.get("id", i))
        if rid in seen:  # the file repeats ids across outputs of one question: keep records apart
            rid = f"{rid}#{i}"
        seen.add(rid)
        out.append({"id": rid, "image": rec["image"], "question": _question(rec["conversations"], where),
                    "responses": [_text(rec["output_1"], where), _text(rec["output_2"], where)],
                    "preferred": rec["preference"] - 1})
    if n is not None and n < len(out):
        keep = set(random.Random(seed).sample(range(len(out)), n))
        out = [r for i, r in enumerate(out) if i in keep]
    return out


def score_human_pairs(judge: Judge, records: list[dict], images_dir: str | Path, out_path: str | Path,
                      max_workers: int = 4, max_retries: int = 2, retry_failed: bool = False,
                      max_failed_fraction: float | None = None) -> pd.DataFrame:
    """Rate both outputs of every pair with the annotation judge (records appended to `out_path` as they finish;
    a rerun reuses them) and return Figure 3's frame: attribute differences (output_1 - output_2) and the human
    label (1 when output_1 was preferred)."""
    prompts = [{"id": r["id"], "image": r["image"], "question": r["question"]} for r in records]
    samples = [{"prompt_id": r["id"], "responses": r["responses"]} for r in records]
    annotations = annotate_samples(judge, prompts, samples, Path(images_dir), Path(out_path), max_workers=max_workers,
                                   max_retries=max_retries, retry_failed=retry_failed,
                                   max_failed_fraction=max_failed_fraction,
                                   batch_dir=Path(out_path).parent / "batch_jobs")
    return attribute_diff_frame(annotations, [{"prompt_id": r["id"], "preferred": r["preferred"]} for r in records])

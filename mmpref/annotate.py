"""Stage 03 (annotation) and the gold-answer half of stage 02: resumable, concurrent judge calls.

Both stages append one JSON line per finished prompt, so an interrupted run picks up where it stopped: prompt ids
already present in the output file are skipped.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from mmpref.io import append_jsonl, read_jsonl
from mmpref.judges.base import Judge
from mmpref.judges.tasks import annotate_responses, gold_answer

log = logging.getLogger(__name__)


def _truth(prompt: dict) -> dict:
    return {k: prompt[k] for k in ("answer", "reference") if prompt.get(k) is not None}


def _image_path(prompt: dict, run_dir: Path) -> str | None:
    image = prompt.get("image")
    if not image:
        return None
    path = Path(run_dir) / image
    if not path.is_file():
        raise ValueError(f"prompt {prompt.get('id')!r}: image {image!r} not found under {run_dir}")
    return str(path)


def _index_prompts(prompts: list[dict]) -> dict[str, dict]:
    by_id: dict[str, dict] = {}
    for i, p in enumerate(prompts):
        for key in ("id", "question"):
            if key not in p:
                raise ValueError(f"prompts[{i}] lacks {key!r} (keys: {sorted(p)})")
        by_id[p["id"]] = p
    return by_id


def _done_ids(out_path: Path) -> dict[str, dict]:
    """Records already written (last one per prompt id wins)."""
    if not Path(out_path).exists():
        return {}
    done = {}
    for row in read_jsonl(out_path):
        if "prompt_id" not in row:
            raise ValueError(f"{out_path}: a record lacks 'prompt_id'")
        done[row["prompt_id"]] = row
    return done


def _run_resumable(todo: list[str], work: Callable[[str], dict], out_path: Path, max_workers: int,
                   desc: str) -> list[dict]:
    lock = threading.Lock()
    new: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool, tqdm(total=len(todo), desc=desc) as bar:
        futures = {pool.submit(work, pid): pid for pid in todo}
        for fut in as_completed(futures):
            record = fut.result()  # a judge error (auth, retries exhausted) stops the stage; finished rows are kept
            with lock:
                append_jsonl(out_path, record)
                new.append(record)
            bar.update(1)
    return new


def annotate_samples(
    judge: Judge,
    prompts: list[dict],
    samples: list[dict],
    run_dir: Path,
    out_path: Path,
    max_workers: int = 4,
    max_retries: int = 2,
) -> list[dict]:
    """Annotate every sample's k responses; append each record to `out_path` (annotations.jsonl) as it finishes.

    Returns the records for all samples (earlier runs' included), in the order of `samples`.
    """
    run_dir, out_path = Path(run_dir), Path(out_path)
    by_id = _index_prompts(prompts)
    sample_by_id: dict[str, dict] = {}
    for i, s in enumerate(samples):
        if "prompt_id" not in s or "responses" not in s:
            raise ValueError(f"samples[{i}] needs 'prompt_id' and 'responses' (keys: {sorted(s)})")
        if s["prompt_id"] not in by_id:
            raise ValueError(f"samples[{i}]: prompt_id {s['prompt_id']!r} is not in prompts")
        sample_by_id[s["prompt_id"]] = s
    done = _done_ids(out_path)
    todo = [pid for pid in sample_by_id if pid not in done]
    log.info("annotate: %d samples, %d already annotated, %d to do (judge %s)",
             len(sample_by_id), len(sample_by_id) - len(todo), len(todo), judge.judge_id)

    def work(pid: str) -> dict:
        p, s = by_id[pid], sample_by_id[pid]
        ann = annotate_responses(judge, p["question"], _image_path(p, run_dir), s["responses"], truth=_truth(p),
                                 max_retries=max_retries)
        return {"prompt_id": pid, "judge": ann.judge, "status": ann.status, "reasoning": ann.reasoning,
                "raw": ann.raw, "scores": [sc.model_dump() for sc in ann.scores] if ann.scores else None,
                "error": ann.error}

    for rec in _run_resumable(todo, work, out_path, max_workers, "annotate"):
        done[rec["prompt_id"]] = rec
    records = [done[pid] for pid in sample_by_id]
    failed = sum(r["status"] == "failed" for r in records)
    log.info("annotate: %d records (%d ok, %d failed); judge usage %s", len(records), len(records) - failed, failed,
             judge.usage())
    return records


def collect_gold(
    judge: Judge,
    prompts: list[dict],
    run_dir: Path,
    out_path: Path,
    max_workers: int = 4,
) -> list[dict]:
    """Ask the judge to answer every prompt itself; append {"prompt_id","answer","judge"} rows to gold.jsonl."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    by_id = _index_prompts(prompts)
    done = _done_ids(out_path)
    todo = [pid for pid in by_id if pid not in done]
    log.info("gold: %d prompts, %d already answered, %d to do (judge %s)",
             len(by_id), len(by_id) - len(todo), len(todo), judge.judge_id)

    def work(pid: str) -> dict:
        p = by_id[pid]
        answer = gold_answer(judge, p["question"], _image_path(p, run_dir), truth=_truth(p))
        return {"prompt_id": pid, "answer": answer, "judge": judge.judge_id}

    for rec in _run_resumable(todo, work, out_path, max_workers, "gold answers"):
        done[rec["prompt_id"]] = rec
    log.info("gold: %d answers; judge usage %s", len(by_id), judge.usage())
    return [done[pid] for pid in by_id]

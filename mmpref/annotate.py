"""Stage 03 (annotation) and the gold-answer half of stage 02: durable, resumable, concurrent judge calls.

Every finished prompt is appended to the output file the moment it arrives, so an interruption loses nothing, and a
restarted stage skips the prompts already there, when the same judge (its `judge_id`: backend and model) made them:
another judge's records are asked again of the current one. A prompt the judge gives up on (network retries exhausted, a refused
request, an unparsable reply after its re-asks) is recorded as failed with the reason and never stops the others;
`retry_failed=True` re-asks exactly those (failed replies are never cached, so they are asked again for real).
At the end the file is rewritten with one record per current prompt, in input order: records of prompts no longer in
the input are dropped, so a resumed or reconciled stage writes the same file as an uninterrupted one. Only then, when
more than `max_failed_fraction` of the prompts failed, `TooManyFailures` is raised (the stage fails, nothing lost).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

from mmpref.console import bar

from mmpref.io import append_jsonl, read_jsonl, sha256_json, write_jsonl
from mmpref.judges.base import Judge, JudgeError, JudgeStopped
from mmpref.judges.parsing import ParseError, parse_annotation
from mmpref.judges.tasks import _non_empty, annotate_responses, annotation_request, gold_answer, gold_request

log = logging.getLogger(__name__)


class TooManyFailures(RuntimeError):
    """More items failed than the params allow (`judge.max_failed_fraction`); every result is already written."""


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
    for row in read_jsonl(out_path, appended=True):
        if "prompt_id" not in row:
            raise ValueError(f"{out_path}: a record lacks 'prompt_id'")
        done[row["prompt_id"]] = row
    return done


def is_failed(record: dict) -> bool:
    return record.get("status") == "failed"


def failed_count(out_path: Path) -> int:
    """The prompts an annotation or gold-answer file records as failed (the last record of each prompt counts)."""
    return sum(is_failed(r) for r in _done_ids(out_path).values())


def _run_resumable(todo: list[str], work: Callable[[str], dict], on_error: Callable[[str, Exception], dict],
                   out_path: Path, max_workers: int, desc: str) -> list[dict]:
    """Run `work(pid)` for every pid concurrently and append each record the moment it is ready; a judge that gives
    up on one pid (JudgeError, ParseError) yields `on_error(pid, exc)`, a failed record, and the others go on. A judge
    that stopped (JudgeStopped: too many calls failed in a row) stops the work: the queued pids are not started, the
    ones in flight are written as they end, and JudgeStopped is raised."""
    new: list[dict] = []

    def outcome(fut, pid: str) -> dict:
        try:
            return fut.result()
        except (JudgeError, ParseError) as exc:
            log.warning("%s: %s failed: %s", desc, pid, exc)
            return on_error(pid, exc)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool, bar(total=len(todo), desc=desc) as progress:
        futures = {pool.submit(work, pid): pid for pid in todo}
        written = set()
        try:
            for fut in as_completed(futures):
                record = outcome(fut, futures[fut])
                append_jsonl(out_path, record)  # durable now (only this thread writes)
                written.add(fut)
                new.append(record)
                progress.update(1)
        except BaseException as exc:  # interrupted: do not start (and pay for) the queued items
            for fut in futures:
                fut.cancel()
            if isinstance(exc, JudgeStopped):  # keep what the items in flight finish
                for fut, pid in futures.items():
                    if fut in written or fut.cancelled():
                        continue
                    try:
                        record = outcome(fut, pid)
                    except JudgeStopped:
                        continue
                    append_jsonl(out_path, record)
                    new.append(record)
            raise
    return new


def finish(kind: str, order: list[str], done: dict[str, dict], n_new: int, out_path: Path,
           max_failed_fraction: float | None, judge: Judge) -> list[dict]:
    """Rewrite `out_path` with one record per current prompt in input order, report done / reused / failed, and
    raise TooManyFailures past the threshold."""
    records = [done[pid] for pid in order]
    write_jsonl(out_path, records)
    failed = [r for r in records if is_failed(r)]
    usage = judge.usage()
    line = (f"{kind}: {len(records)} prompts: {n_new} done now, {len(records) - n_new} reused from earlier runs, "
            f"{len(failed)} failed; judge calls {usage['calls']}, cache hits {usage['cache_hits']}, "
            f"network retries {usage['retries']}")
    log.info(line)
    print(line)
    if failed:
        reasons: dict[str, int] = {}
        for r in failed:
            reason = str(r.get("error") or "")[:120]
            reasons[reason] = reasons.get(reason, 0) + 1
        log.warning("%s: failed prompts by reason: %s (re-ask them with `mmpref run ... --retry-failed`)", kind,
                    reasons)
    if max_failed_fraction is not None and records and len(failed) > max_failed_fraction * len(records):
        raise TooManyFailures(
            f"{kind}: {len(failed)} of {len(records)} prompts failed (more than judge.max_failed_fraction = "
            f"{max_failed_fraction}); every finished result is in {out_path}. Fix the cause, then re-ask the failed "
            f"ones with `mmpref run PARAMS --retry-failed`.")
    return records


def _annotation_check(n: int):
    return lambda text: parse_annotation(text, n)


def responses_hash(responses: list[str]) -> str:
    return sha256_json(list(responses))[:16]


def annotate_samples(
    judge: Judge,
    prompts: list[dict],
    samples: list[dict],
    run_dir: Path,
    out_path: Path,
    max_workers: int = 4,
    max_retries: int = 2,
    retry_failed: bool = False,
    max_failed_fraction: float | None = None,
    batch_dir: Path | None = None,
) -> list[dict]:
    """Annotate every sample's k responses; append each record to `out_path` (annotations.jsonl) as it finishes.

    A record is reused only for the same responses (`responses_hash`) and the same judge (`judge_id`); records of
    samples no longer present are dropped. Returns the records for all samples (earlier runs' included), in the order of `samples`. Images are
    read from `run_dir`; a batch judge keeps its jobs in `batch_dir` (default run_dir/batch_jobs/annotate).
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

    def current(rec: dict | None, pid: str) -> bool:
        if rec is None or rec.get("judge") != judge.judge_id or (retry_failed and is_failed(rec)):
            return False
        return rec.get("responses_hash", responses_hash(sample_by_id[pid]["responses"])) == \
            responses_hash(sample_by_id[pid]["responses"])

    old = _done_ids(out_path)
    done = {pid: old[pid] for pid in sample_by_id if current(old.get(pid), pid)}
    todo = [pid for pid in sample_by_id if pid not in done]
    images = {pid: _image_path(by_id[pid], run_dir) for pid in todo}  # bad input fails before any call
    log.info("annotate: %d samples, %d already annotated, %d to do (judge %s)",
             len(sample_by_id), len(done), len(todo), judge.judge_id)
    job_dir = Path(batch_dir) if batch_dir else run_dir / "batch_jobs" / "annotate"
    batch = bool(todo) and getattr(judge, "batch", False)
    if batch:
        judge.prefetch([annotation_request(by_id[pid]["question"], images[pid], sample_by_id[pid]["responses"],
                                           _truth(by_id[pid])) for pid in todo], job_dir,
                       checks=[_annotation_check(len(sample_by_id[pid]["responses"])) for pid in todo])

    def record(pid: str, **fields) -> dict:
        return {"prompt_id": pid, "judge": judge.judge_id, "status": "ok", "reasoning": "", "raw": "", "scores": None,
                "error": None, **fields, "responses_hash": responses_hash(sample_by_id[pid]["responses"])}

    def work(pid: str) -> dict:
        p, s = by_id[pid], sample_by_id[pid]
        ann = annotate_responses(judge, p["question"], images[pid], s["responses"], truth=_truth(p),
                                 max_retries=max_retries)
        return record(pid, judge=ann.judge, status=ann.status, reasoning=ann.reasoning, raw=ann.raw,
                      scores=[sc.model_dump() for sc in ann.scores] if ann.scores else None, error=ann.error)

    def on_error(pid: str, exc: Exception) -> dict:
        return record(pid, status="failed", error=f"judge error: {exc}")

    new = _run_resumable(todo, work, on_error, out_path, max_workers, "annotate")
    if batch:
        judge.batch_finished(job_dir)
    for rec in new:
        done[rec["prompt_id"]] = rec
    return finish("annotate", list(sample_by_id), done, len(new), out_path, max_failed_fraction, judge)


def collect_gold(
    judge: Judge,
    prompts: list[dict],
    run_dir: Path,
    out_path: Path,
    max_workers: int = 4,
    retry_failed: bool = False,
    max_failed_fraction: float | None = None,
) -> list[dict]:
    """Ask the judge to answer every prompt itself: {"prompt_id","answer","judge"} rows in gold.jsonl, or
    {"prompt_id","answer": None,"judge","status": "failed","error"} for a prompt the judge gave no answer to. A row is
    reused only when the same judge (`judge_id`) wrote it."""
    run_dir, out_path = Path(run_dir), Path(out_path)
    by_id = _index_prompts(prompts)
    old = _done_ids(out_path)
    done = {pid: old[pid] for pid in by_id if pid in old and old[pid].get("judge") == judge.judge_id
            and not (retry_failed and is_failed(old[pid]))}
    todo = [pid for pid in by_id if pid not in done]
    images = {pid: _image_path(by_id[pid], run_dir) for pid in todo}
    log.info("gold: %d prompts, %d already answered, %d to do (judge %s)",
             len(by_id), len(done), len(todo), judge.judge_id)
    job_dir, batch = run_dir / "batch_jobs" / "gold", bool(todo) and getattr(judge, "batch", False)
    if batch:
        judge.prefetch([gold_request(by_id[pid]["question"], images[pid], _truth(by_id[pid])) for pid in todo],
                       job_dir, checks=[_non_empty] * len(todo))

    def work(pid: str) -> dict:
        p = by_id[pid]
        answer = gold_answer(judge, p["question"], images[pid], truth=_truth(p))
        return {"prompt_id": pid, "answer": answer, "judge": judge.judge_id}

    def on_error(pid: str, exc: Exception) -> dict:
        return {"prompt_id": pid, "answer": None, "judge": judge.judge_id, "status": "failed",
                "error": f"{type(exc).__name__}: {exc}"}

    new = _run_resumable(todo, work, on_error, out_path, max_workers, "gold answers")
    if batch:
        judge.batch_finished(job_dir)
    for rec in new:
        done[rec["prompt_id"]] = rec
    return finish("gold", list(by_id), done, len(new), out_path, max_failed_fraction, judge)

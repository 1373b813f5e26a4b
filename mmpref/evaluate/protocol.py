"""What every benchmark shares: the protocol (loaded items -> answers -> judge or rule scores -> tidy rows), the
official-format loading helpers, item-level scoring through the registry, repeated judge runs, and `run_benchmark`.

Each benchmark lives in its own module (mmpref/evaluate/<name>.py: loader, prompt and generation settings, judge
prompt and reply parser, metric, `run_*`) and is listed by mmpref.evaluate.registry. Every run_* function writes one
record per item to `out_jsonl` (question id, the model's answer(s), the judge's raw text and score) and returns rows
{"model", "benchmark", "metric", "value", "n", "judge"}.

Item-level scoring: `score_records(benchmark, records)` is the one place that turns a benchmark's records into its
metric function's inputs; the run_* functions score through it, and so does the bootstrap (mmpref.stats). Records
the latest scoring used carry "scored": true (`scored_records` reads them back).

Judge failures: a grading whose reply the official parser rejects is recorded with "failed": true and no score
(MT-Bench: FastChat's own -1 rating per turn), left out of every metric, never filled in with a default score, and
counted: every judge-graded benchmark's rows include the metric "judge_failures" (value = failed gradings, n = gradings;
MT-Bench counts turns).

Resume: records already in `out_jsonl` for the same model, the same request and the same answering model identity are
reused: `run_benchmark(..., answered_by=ID)` (stage 09's `suite.answer_identity`: checkpoint and adapter content,
decoding settings) is recorded with every answer, and an answer given under another identity (a retrained adapter
under the same model name) is answered again, its grading with it. An answer graded by a different judge, or under an
older grading protocol (the benchmark's `grading` tag), is graded again (the answer is kept). Work is appended chunk by
chunk, so an interrupted run loses at most one chunk. Judge calls of a chunk run in parallel (up to the judge's
`max_concurrency`).

Batch judging (`evaluate.judge.batch`, a gemini judge): every answer is generated and written first (ungraded, so a
restart keeps it), then every grading's judge requests are answered through the Gemini Batch API into the judge cache
(`Judge.batch_calls`: jobs recorded in `<out dir>/batch_jobs/<out stem>/pending.json` when submitted, polled again
after a restart, never submitted twice; a re-ask such as MM-Vet's next try at a higher temperature goes into the next
round's job with the content, attempt and temperature the official protocol sends), then every item is graded from
the cache with the same grading code as one by one: the same records and scores, at the batch price.

Judge runs: `run_benchmark(..., judge_run=r)` with r >= 2 grades run 1's answers again with distinct judge calls
(`JudgeRequest.judge_run` enters the judge's cache key from run 2 on, so run 1 keeps today's cache) into
`<out stem>.judge<r>.jsonl`; `judge_run_rows` reports the mean and standard deviation over runs.
"""

from __future__ import annotations

import ast
import functools
import json
import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from mmpref.console import bar
from mmpref.evaluate import registry
from mmpref.evaluate.benchmark import Score
from mmpref.io import append_jsonl, read_jsonl, sha256_json, write_jsonl
from mmpref.judges.base import JudgeError
from mmpref.sampling import ChatRequest, GenerateFn

log = logging.getLogger(__name__)

RULE_JUDGE = "rule"  # the "judge" of rows scored by rule (POPE, MMBench)
# Bump when a metric or a parser changes: stage 09 then rescores every (model, benchmark) (answers reused).
SCORING_VERSION = 2
FAILURES = "judge_failures"  # the metric counting failed gradings of a judge-graded benchmark
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEFAULT_CHUNK = 64
_AST_LOCK = threading.Lock()


def optional_template(load: Callable[[Path], Any], path: Path | None, notes: list[str]) -> Any:
    """For cost estimates: the official judge template read by `load`, or None (mmpref's fallback prompt) when no
    path is given or the file is absent or unreadable, which `notes` then records."""
    try:
        value = load(path) if path is not None else None
    except Exception:  # noqa: BLE001 - absent or unreadable: estimate with the fallback prompt
        value = None
    if value is None:
        notes.append("fallback judge prompt (official template absent)")
    return value


def literal_eval(text: str):
    """`ast.literal_eval`, one call at a time: the official parsers read judge replies with it, and CPython 3.11's
    parser is not safe across threads (grading runs in a thread pool: concurrent calls raised "SystemError: AST
    constructor recursion depth mismatch" in a tiny run, python/cpython#106905)."""
    with _AST_LOCK:
        return ast.literal_eval(text)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def sum_in_order(xs: Sequence[float]) -> float:
    """Left-to-right float sum starting at 0.0 (`total += x`, as the official loops add; the builtin `sum` rounds
    differently from Python 3.12 on)."""
    total = 0.0
    for x in xs:
        total += x
    return total


# --------------------------------------------------------------------------------------------------------------
# answering and grading

def _judge_id(judge: Any) -> str:
    return str(getattr(judge, "judge_id", type(judge).__name__))


def need_judge(judge: Any, benchmark: str) -> str:
    if judge is None:
        raise ValueError(f"{benchmark} is judge-graded: pass a judge (mmpref.judges.make_judge)")
    return _judge_id(judge)


def request_signature(requests: Sequence[ChatRequest], extra: Any = None) -> str:
    """Hash of what the model is asked (turns, the image's file name and the turns it goes with), so a changed item
    is not reused."""
    def one(r: ChatRequest) -> dict:
        out = {"turns": r.turns, "answers": r.answers, "temperature": r.temperature,
               "image": Path(r.image).name if r.image else None}
        if r.image_every_turn:  # only when set, so the signatures of earlier records stay valid
            out["image_every_turn"] = True
        return out

    return sha256_json({"requests": [one(r) for r in requests], "extra": extra})


def answering_as(generate: GenerateFn, answered_by: str | None) -> GenerateFn:
    """`generate` marked with the content identity of the model that answers through it: run_items records it with
    every answer and reuses only answers given under it (None: unmarked, as a bare function)."""
    if answered_by is None:
        return generate

    def answer(requests: list[ChatRequest]) -> list[str]:
        return generate(requests)

    answer.answered_by = answered_by
    return answer


def _generate(generate: GenerateFn, requests: list[ChatRequest]) -> list[str]:
    if not requests:
        return []
    out = list(generate(requests))
    if len(out) != len(requests):
        raise ValueError(f"generate returned {len(out)} answers for {len(requests)} requests")
    return [str(a) for a in out]


class _Records:
    """The per-item records of one (model, benchmark) in out_jsonl, for resuming."""

    def __init__(self, path: str | Path, model: str, benchmark: str):
        self.path, self.model, self.benchmark = Path(path), model, benchmark
        self.old: dict[str, dict] = {}
        self.others: list[dict] = []
        if self.path.exists():
            for rec in read_jsonl(self.path, appended=True):
                if rec.get("model") == model and rec.get("benchmark") == benchmark and "key" in rec:
                    self.old[rec["key"]] = rec
                else:
                    self.others.append(rec)
        self.new: dict[str, dict] = {}

    def reusable(self, key: str, signature: str, answered_by: str | None = None) -> dict | None:
        """The record of `key` for the same request answered by the same model identity, else None."""
        rec = self.old.get(key)
        ok = rec is not None and rec.get("signature") == signature and rec.get("answered_by") == answered_by
        return rec if ok else None

    def add(self, rec: dict) -> None:
        self.new[rec["key"]] = rec
        append_jsonl(self.path, rec)

    def finish(self, keys: list[str]) -> list[dict]:
        """Rewrite the file (current items in order, then untouched records) and return the current records.
        Current records are marked "scored": true, the untouched ones of this model and benchmark false."""
        current = [self.new.get(k) or self.old[k] for k in keys]
        rest = [r for k, r in self.old.items() if k not in set(keys)]
        for rec in current:
            rec["scored"] = True
        for rec in rest:
            rec["scored"] = False
        write_jsonl(self.path, current + rest + self.others)
        return current


def _failed(rec: dict) -> bool:
    """A record with a failed grading (a judge that gave up, or a reply the official parser rejected)."""
    failed = rec.get("failed")
    return bool(any(failed) if isinstance(failed, list) else failed) or bool(rec.get("judge_error"))


def _parallel(fn: Callable[[Any], Any], args: list[Any], judge: Any) -> list[Any]:
    if not args:
        return []
    workers = max(1, min(len(args), int(getattr(judge, "max_concurrency", 1) or 1)))
    if workers == 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, args))


@dataclass(frozen=True)
class ItemProtocol:
    """How a benchmark asks and grades its items: built once by its run function, read by `run_items`.

    `key(item)` is the item's id in the per-item file; `requests(item)` gives the item's first-stage requests (one
    answer each); `describe(item)` the fields recorded with it (hashed into the request signature);
    `second_turn(item, first_answer)` adds a dependent second request (MT-Bench); `grade(item, answers)` returns the
    judge fields of the record (None: scored by rule); `derive(item, answers)` returns fields scored by rule,
    recomputed for every current record (not hashed); `grading` is the grading protocol tag (records graded under
    another one are graded again)."""

    benchmark: str
    key: Callable[[Any], str]
    requests: Callable[[Any], list[ChatRequest]]
    describe: Callable[[Any], dict]
    grade: Callable[[Any, list[str]], dict] | None = None
    second_turn: Callable[[Any, str], ChatRequest] | None = None
    derive: Callable[[Any, list[str]], dict] | None = None
    grading: str | None = None


def _todo(protocol: ItemProtocol, items: Sequence[Any], keys: list[str], store: _Records, first: _Records | None,
          judge_id: str | None, answered_by: str | None, retry_failed: bool) -> tuple[list, list, dict[str, str]]:
    """What is left to do: the items to answer [(item, key, requests)], the answered items to grade
    [(item, key, answers)] (answers of `first`, or records graded by another judge or protocol, or failed ones
    under `retry_failed`), and every item's request signature {key: signature}."""
    todo_answer, todo_grade = [], []
    sigs = {}
    other_model = 0
    for item, key in zip(items, keys):
        reqs = protocol.requests(item)
        sigs[key] = request_signature(reqs, protocol.describe(item))
        rec = store.reusable(key, sigs[key], answered_by)
        before = store.old.get(key)
        other_model += rec is None and before is not None and before.get("signature") == sigs[key]
        answered = first.reusable(key, sigs[key], answered_by) if first is not None and rec is None else None
        if answered is not None:
            todo_grade.append((item, key, answered["answers"]))
        elif rec is None:
            todo_answer.append((item, key, reqs))
        elif protocol.grade is not None and (rec.get("judge") != judge_id or rec.get("grading") != protocol.grading
                                             or (retry_failed and _failed(rec))):
            todo_grade.append((item, key, rec["answers"]))
    log.info("%s / %s: %d items, %d to answer (%d of them answered before by another checkpoint or settings), "
             "%d to re-grade, %d reused", store.model, protocol.benchmark, len(items), len(todo_answer), other_model,
             len(todo_grade), len(items) - len(todo_answer) - len(todo_grade))
    return todo_answer, todo_grade, sigs


def _answer(second_turn: Callable[[Any, str], ChatRequest] | None, generate: GenerateFn,
            chunk: list[tuple[Any, str, list[ChatRequest]]]) -> list[tuple[Any, str, list[str]]]:
    """The answers of a chunk of (item, key, requests): every first-stage request in one call, then every dependent
    second turn in another."""
    outs = iter(_generate(generate, [r for _, _, reqs in chunk for r in reqs]))
    answered = [(item, key, [next(outs) for _ in reqs]) for item, key, reqs in chunk]
    if second_turn is not None:
        follow = [second_turn(item, answers[0]) for item, _, answers in answered]
        for (_, _, answers), a2 in zip(answered, _generate(generate, follow)):
            answers.append(a2)
    return answered


def run_items(
    protocol: ItemProtocol,
    items: Sequence[Any],
    generate: GenerateFn,
    out_jsonl: str | Path,
    model: str,
    judge: Any = None,
    chunk_size: int = DEFAULT_CHUNK,
    answers_from: str | Path | None = None,
) -> list[dict]:
    """Answer and grade every item by `protocol` (reusing finished records); returns the records in item order.

    `judge` grades (a protocol with `grade` needs one) and sets how many gradings run at once. `answers_from`: another
    per-item file of the same model and benchmark whose answers are reused and only graded (a repeated judge run grades
    the answers of run 1). A `generate` marked by `answering_as` reuses only answers given under its identity."""
    benchmark, grade, describe = protocol.benchmark, protocol.grade, protocol.describe
    second_turn, derive, grading = protocol.second_turn, protocol.derive, protocol.grading
    judge_id = need_judge(judge, benchmark) if grade is not None else None
    keys = [protocol.key(item) for item in items]
    retry_failed = bool(getattr(judge, "retry_failed", False))
    answered_by = getattr(generate, "answered_by", None)
    by = {"answered_by": answered_by} if answered_by is not None else {}  # recorded with every answer
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"{benchmark}: duplicate item ids {dup}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    store = _Records(out_jsonl, model, benchmark)
    first = _Records(answers_from, model, benchmark) if answers_from is not None else None
    todo_answer, todo_grade, sigs = _todo(protocol, items, keys, store, first, judge_id, answered_by, retry_failed)

    def grade_or_fail(b: tuple[Any, str, list[str]]) -> dict:
        try:
            return grade(b[0], b[2])
        except JudgeError as exc:  # the judge gave up on this item: recorded as failed, the others go on
            log.warning("%s / %s: item %s: %s", model, benchmark, b[1], exc)
            return {"failed": True, "judge_error": str(exc)}

    write_lock = threading.Lock()

    def one(b: tuple[Any, str, list[str]]) -> None:
        item, key, answers = b
        fields = grade_or_fail(b) if grade is not None else {}
        tag = {"grading": grading} if grade is not None else {}
        with write_lock:  # each record is durable the moment its grading arrives
            store.add({"key": key, "model": model, "benchmark": benchmark, "signature": sigs[key], **by,
                       **describe(item), "answers": answers, "judge": judge_id, **tag, **fields})

    def finish(batch: list[tuple[Any, str, list[str]]]) -> None:
        _parallel(one, batch, judge)

    # a batch judge (judge.batch) grades everything at once through the Batch API: first every answer (each written
    # the moment it is generated, ungraded, so that a restart keeps it), then the gradings' requests as batch jobs
    # (Judge.batch_calls; a restart polls the jobs it recorded), then the gradings themselves from the judge cache
    batch = grade is not None and bool(getattr(judge, "batch", False))
    steps = range(0, len(todo_answer), chunk_size)
    for start in bar(steps, desc=f"{model}/{benchmark}", disable=len(steps) < 2, leave=False):
        answered = _answer(second_turn, generate, todo_answer[start:start + chunk_size])
        if not batch:
            finish(answered)
            continue
        for item, key, answers in answered:  # ungraded (judge None): graded below, or again after a restart
            store.add({"key": key, "model": model, "benchmark": benchmark, "signature": sigs[key], **by,
                       **describe(item), "answers": answers, "judge": None})
        todo_grade += answered
    job_dir = Path(out_jsonl).parent / "batch_jobs" / Path(out_jsonl).stem
    if batch and todo_grade:
        rounds = judge.batch_calls([functools.partial(grade, item, answers) for item, _, answers in todo_grade],
                                   job_dir)
        log.info("%s / %s: %d gradings answered by batch jobs in %d round(s)", model, benchmark, len(todo_grade),
                 rounds)
    for start in range(0, len(todo_grade), chunk_size):
        finish(todo_grade[start:start + chunk_size])
    if batch and todo_grade:
        judge.batch_finished(job_dir)
    if derive is not None:
        for item, key in zip(items, keys):
            rec = store.new.get(key) or store.old[key]
            rec.update(derive(item, rec["answers"]))
    return store.finish(keys)


def tidy_rows(model: str, benchmark: str, scores: dict[str, Score], judge: str) -> list[dict]:
    return [{"model": model, "benchmark": benchmark, "metric": name, "value": float(s.value), "n": int(s.n),
             "judge": judge} for name, s in scores.items()]



# --------------------------------------------------------------------------------------------------------------
# official-format loading helpers: a malformed file raises ValueError naming the file (and line or key) and the
# problem; `limit` keeps the first `limit` items. Miniature-only fields ("answer_key", "answer_keys", "reference")
# are kept as rubric truth; real files without them load the same way.

def need_keys(rec: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing} (has {sorted(rec)})")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what}: {path} does not exist")
    return path


def in_dir(path: Path, names: tuple[str, ...], what: str) -> Path:
    """`path` itself when it is a file, else the first of `names` inside it."""
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{what}: none of {list(names)} in {path}")


def images_folder(base: Path, folder: str | Path | None) -> Path:
    if folder is not None:
        return existing(folder, "image folder")
    return base / "images" if (base / "images").is_dir() else base


def image_file(img_dir: Path, name: Any, where: str) -> str:
    path = img_dir / str(name)
    if not path.is_file():
        raise ValueError(f"{where}: image {path} not found")
    return str(path)


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items, got {limit}")


# --------------------------------------------------------------------------------------------------------------
# item-level scoring

def score_records(benchmark: str, recs: Sequence[dict]) -> dict[str, Score]:
    """A benchmark's scores from its per-item records (any subset or resample of them), through its module's metric
    function: the run_* functions and the bootstrap both score this way. Judge-graded benchmarks add FAILURES, the
    number of failed gradings (left out of the other metrics)."""
    spec = registry.get(benchmark)
    scores = dict(spec.score(recs))
    if spec.judged:
        scores[FAILURES] = spec.failures(recs)
    return scores


def scored_records(path: str | Path, model: str, benchmark: str) -> list[dict]:
    """The records of (model, benchmark) in a per-item file that its latest scoring used (in item order); files
    written before records were marked give all of that model's and benchmark's records. [] when there is no file."""
    path = Path(path)
    if not path.exists():
        return []
    recs = [r for r in read_jsonl(path) if r.get("model") == model and r.get("benchmark") == benchmark]
    if any("scored" in r for r in recs):
        recs = [r for r in recs if r.get("scored")]
    return recs


# --------------------------------------------------------------------------------------------------------------
# repeated judge runs

class JudgeRun:
    """A judge whose every request carries `judge_run` (distinct calls, distinct cache entries from run 2 on); all
    else (judge_id, max_concurrency, usage) is the wrapped judge's."""

    def __init__(self, judge: Any, run: int):
        self.judge, self.run = judge, run

    def complete(self, req, check=None):
        return self.judge.complete(req.model_copy(update={"judge_run": self.run}), check=check)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.judge, name)


def judge_run_path(out_jsonl: str | Path, run: int) -> Path:
    """Per-item records of judge run `run`: run 1 is `out_jsonl` itself, run r >= 2 `<stem>.judge<r>.jsonl`."""
    out_jsonl = Path(out_jsonl)
    return out_jsonl if run == 1 else out_jsonl.with_name(f"{out_jsonl.stem}.judge{run}{out_jsonl.suffix}")


def judge_run_rows(runs: Sequence[Sequence[dict]]) -> list[dict]:
    """One row per metric from the rows of N judge runs of one (model, benchmark): value = mean over runs and
    sd = standard deviation over runs (numpy's population sd, ddof 0, as MM-Vet's `export_result` reports the std of
    its runs' totals: yuweihao/MM-Vet mm-vet_evaluator.py, commit 7d717c2f54a584b7ed363d66e6481ce1bf648538; NaN for
    one run), n = mean n (rounded), judge_runs = N. FAILURES rows add up instead: failed gradings and gradings of all
    runs (sd NaN)."""
    if not runs:
        raise ValueError("judge_run_rows: no runs")
    by_metric: dict[str, list[dict]] = {}
    for rows in runs:
        for row in rows:
            by_metric.setdefault(row["metric"], []).append(row)
    out = []
    for metric, rows in by_metric.items():
        values = [float(r["value"]) for r in rows]
        ns = [int(r["n"]) for r in rows]
        if metric == FAILURES:
            value, n, sd = float(sum(values)), sum(ns), math.nan
        else:
            value, n = mean(values), int(round(mean(ns)))
            m = value
            sd = math.sqrt(sum((v - m) ** 2 for v in values) / len(values)) if len(values) > 1 else math.nan
        out.append({**rows[0], "value": value, "n": n, "sd": sd, "judge_runs": len(rows)})
    return out


# --------------------------------------------------------------------------------------------------------------
# entry point

def run_benchmark(
    name: str,
    data_path: str | Path,
    generate: GenerateFn,
    judge: Any,
    out_jsonl: str | Path,
    model: str,
    judge_templates: dict[str, str | Path] | None = None,
    noise_images_dir: str | Path | None = None,
    limit: int | None = None,
    judge_run: int = 1,
    answered_by: str | None = None,
    **options: Any,
) -> list[dict]:
    """Load benchmark `name` (a name in mmpref.evaluate.registry) from `data_path` (file or folder, official format),
    answer it with `generate`, score it (judge-graded benchmarks need `judge`) and return tidy rows; per-item records
    go to `out_jsonl`. `judge_templates` maps a benchmark's `judge_template` key ("mt_bench", "alpaca_eval",
    "llava_bench", "mmvet") to the official judge prompt file; without it the module's fallback prompt is used.
    `judge_run` r >= 2 grades run 1's answers again with distinct judge calls (see the module docstring).
    `answered_by`: the content identity of the model behind `generate` (stage 09: `suite.answer_identity`); saved
    answers given under another are answered again.
    `options` go to the benchmark's run_* function (e.g. prompt_suffix, chunk_size, seed, decoding)."""
    spec = registry.get(name)
    if judge_run < 1:
        raise ValueError(f"judge_run counts from 1, got {judge_run}")
    generate = answering_as(generate, answered_by)
    answers_from = None
    if judge_run > 1:
        if not spec.judged:
            raise ValueError(f"{name} is scored by rule: there is no judge run {judge_run}")
        judge, answers_from = JudgeRun(judge, judge_run), out_jsonl
        out_jsonl = judge_run_path(out_jsonl, judge_run)
    template = (judge_templates or {}).get(spec.judge_template) if spec.judge_template else None
    if spec.uses_noise_images and noise_images_dir is None:
        raise ValueError(f"{name} needs noise_images_dir (a folder of irrelevant images)")
    if answers_from is not None:
        options["answers_from"] = answers_from
    return spec.run(data_path, generate, judge, out_jsonl, model, template=template, limit=limit,
                    noise_images_dir=noise_images_dir, **options)

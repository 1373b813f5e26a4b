"""The benchmark protocol: loaded items -> greedy answers -> scores -> tidy rows.

One function per benchmark (`run_pope`, `run_mmbench`, `run_mmvet`, `run_llava_bench`, `run_mt_bench`,
`run_alpaca_eval`) and the entry point `run_benchmark`. Every function writes one record per item to `out_jsonl`
(question id, the model's answer(s), the judge's raw text and score) and returns rows
{"model", "benchmark", "metric", "value", "n", "judge"}.

Item-level scoring: `score_records(benchmark, records)` is the one place that turns a benchmark's records into the
metric functions' inputs; the run_* functions score through it, and so does the bootstrap (mmpref.stats). Records
the latest scoring used carry "scored": true (`scored_records` reads them back); MMBench records also carry "passes",
the correctness of each rotation.

Judge failures: a grading whose reply the official parser rejects is recorded with "failed": true and no score
(MT-Bench: FastChat's own -1 rating per turn), left out of every metric, never filled in with a default score, and
counted: every judge-graded benchmark's rows include the metric "judge_failures" (value = failed gradings, n = gradings;
MT-Bench counts turns).

Resume: records already in `out_jsonl` for the same model and the same request are reused; an answer graded by a
different judge, or under an older grading protocol (GRADING), is graded again (the answer is kept). Work is appended
chunk by chunk, so an interrupted run loses at most one chunk. Judge calls of a chunk run in parallel (up to the
judge's `max_concurrency`).
"""

from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from mmpref.evaluate import loaders, metrics
from mmpref.evaluate.metrics import Score
from mmpref.io import append_jsonl, read_jsonl, sha256_json, write_jsonl
from mmpref.sampling import ChatRequest, GenerateFn

log = logging.getLogger(__name__)

BENCHMARKS = ["pope", "mmbench", "mmvet", "llava_bench", "mt_bench", "alpaca_eval", "mt_bench_noisy"]
HEADLINE = {"mmvet": "total", "llava_bench": "relative_score", "pope": "f1", "mmbench": "circular_accuracy",
            "mt_bench": "overall", "alpaca_eval": "win_rate", "mt_bench_noisy": "overall"}
RULE_JUDGE = "rule"  # the "judge" of rows scored by rule (POPE, MMBench)
# Bump when a metric or a parser changes: stage 09 then rescores every (model, benchmark) (answers reused).
SCORING_VERSION = 2
FAILURES = "judge_failures"  # the metric counting failed gradings of a judge-graded benchmark
# Grading protocol of each judge-graded benchmark: records graded under another one are graded again (answers kept).
GRADING = {"mmvet": "mm-vet@acde843", "llava_bench": "llava@c121f04", "alpaca_eval": "alpaca_eval@cd543a1",
           "mt_bench": "fastchat@0e6d3e4", "mt_bench_noisy": "fastchat@0e6d3e4"}

# Prompt suffixes of LLaVA-1.5's evaluation question files (llava_pope_test.jsonl, model_vqa_mmbench.py).
POPE_PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."
MMBENCH_PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# FastChat llm_judge/common.py temperature_config (lm-sys/FastChat commit 81785d7e), used by its gen_model_answer.py
# and by the authors' LLaVA port (findalexli/mllm-dpo llava/eval/gen_model_answer.py); other categories get 0.7.
MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
MT_BENCH_DEFAULT_TEMPERATURE = 0.7
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEFAULT_CHUNK = 64


# --------------------------------------------------------------------------------------------------------------
# shared machinery

def _judge_id(judge: Any) -> str:
    return str(getattr(judge, "judge_id", type(judge).__name__))


def _need_judge(judge: Any, benchmark: str) -> str:
    if judge is None:
        raise ValueError(f"{benchmark} is judge-graded: pass a judge (mmpref.judges.make_judge)")
    return _judge_id(judge)


def _signature(requests: Sequence[ChatRequest], extra: Any = None) -> str:
    """Hash of what the model is asked (turns, the image's file name and the turns it goes with), so a changed item
    is not reused."""
    def one(r: ChatRequest) -> dict:
        out = {"turns": r.turns, "answers": r.answers, "temperature": r.temperature,
               "image": Path(r.image).name if r.image else None}
        if r.image_every_turn:  # only when set, so the signatures of earlier records stay valid
            out["image_every_turn"] = True
        return out

    return sha256_json({"requests": [one(r) for r in requests], "extra": extra})


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
            for rec in read_jsonl(self.path):
                if rec.get("model") == model and rec.get("benchmark") == benchmark and "key" in rec:
                    self.old[rec["key"]] = rec
                else:
                    self.others.append(rec)
        self.new: dict[str, dict] = {}

    def reusable(self, key: str, signature: str) -> dict | None:
        rec = self.old.get(key)
        return rec if rec is not None and rec.get("signature") == signature else None

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


def _parallel(fn: Callable[[Any], Any], args: list[Any], judge: Any) -> list[Any]:
    if not args:
        return []
    workers = max(1, min(len(args), int(getattr(judge, "max_concurrency", 1) or 1)))
    if workers == 1:
        return [fn(a) for a in args]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, args))


def _run(
    benchmark: str,
    items: Sequence[Any],
    keys: list[str],
    requests: Callable[[Any], list[ChatRequest]],
    generate: GenerateFn,
    out_jsonl: str | Path,
    model: str,
    judge_id: str | None,
    grade: Callable[[Any, list[str]], dict] | None,
    describe: Callable[[Any], dict],
    second_turn: Callable[[Any, str], ChatRequest] | None = None,
    chunk_size: int = DEFAULT_CHUNK,
    judge: Any = None,
    derive: Callable[[Any, list[str]], dict] | None = None,
) -> list[dict]:
    """Answer and grade every item (reusing finished records); returns the records in item order.

    `requests(item)` gives the item's first-stage requests (one answer each); `second_turn(item, first_answer)` adds
    a dependent second request (MT-Bench); `grade(item, answers)` returns the judge fields of the record;
    `derive(item, answers)` returns fields scored by rule, recomputed for every current record (not hashed)."""
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})[:5]
        raise ValueError(f"{benchmark}: duplicate item ids {dup}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    store = _Records(out_jsonl, model, benchmark)
    todo_answer, todo_grade = [], []
    sigs = {}
    for item, key in zip(items, keys):
        reqs = requests(item)
        sigs[key] = _signature(reqs, describe(item))
        rec = store.reusable(key, sigs[key])
        if rec is None:
            todo_answer.append((item, key, reqs))
        elif grade is not None and (rec.get("judge") != judge_id or rec.get("grading") != GRADING.get(benchmark)):
            todo_grade.append((item, key, rec["answers"]))
    log.info("%s / %s: %d items, %d to answer, %d to re-grade, %d reused", model, benchmark, len(items),
             len(todo_answer), len(todo_grade), len(items) - len(todo_answer) - len(todo_grade))

    def finish(batch: list[tuple[Any, str, list[str]]]) -> None:
        graded = _parallel(lambda b: grade(b[0], b[2]), batch, judge) if grade is not None else [{}] * len(batch)
        for (item, key, answers), fields in zip(batch, graded):
            tag = {"grading": GRADING.get(benchmark)} if grade is not None else {}
            store.add({"key": key, "model": model, "benchmark": benchmark, "signature": sigs[key], **describe(item),
                       "answers": answers, "judge": judge_id, **tag, **fields})

    steps = range(0, len(todo_answer), chunk_size)
    for start in tqdm(steps, desc=f"{model}/{benchmark}", disable=len(steps) < 2):
        chunk = todo_answer[start:start + chunk_size]
        flat = [r for _, _, reqs in chunk for r in reqs]
        outs = iter(_generate(generate, flat))
        answered = [(item, key, [next(outs) for _ in reqs]) for item, key, reqs in chunk]
        if second_turn is not None:
            follow = [second_turn(item, answers[0]) for item, _, answers in answered]
            for (_, _, answers), a2 in zip(answered, _generate(generate, follow)):
                answers.append(a2)
        finish(answered)
    for start in range(0, len(todo_grade), chunk_size):
        finish(todo_grade[start:start + chunk_size])
    if derive is not None:
        for item, key in zip(items, keys):
            rec = store.new.get(key) or store.old[key]
            rec.update(derive(item, rec["answers"]))
    return store.finish(keys)


def _rows(model: str, benchmark: str, scores: dict[str, Score], judge: str) -> list[dict]:
    return [{"model": model, "benchmark": benchmark, "metric": name, "value": float(s.value), "n": int(s.n),
             "judge": judge} for name, s in scores.items()]


# --------------------------------------------------------------------------------------------------------------
# POPE

def run_pope(items: Sequence[loaders.PopeItem], generate: GenerateFn, out_jsonl: str | Path, model: str,
             prompt_suffix: str = POPE_PROMPT_SUFFIX, chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """POPE: one yes/no question per item; scored by LLaVA's eval_pope rule per split (no judge)."""
    recs = _run("pope", items, [f"{it.split}/{it.question_id}" for it in items],
                lambda it: [ChatRequest(turns=[it.text + prompt_suffix], image=it.image)], generate, out_jsonl,
                model, None, None,
                lambda it: {"question_id": it.question_id, "split": it.split, "label": it.label},
                chunk_size=chunk_size)
    return _rows(model, "pope", score_records("pope", recs), RULE_JUDGE)


# --------------------------------------------------------------------------------------------------------------
# MMBench

def mmbench_prompt(question: str, hint: str | None, options: dict[str, str], suffix: str = MMBENCH_PROMPT_SUFFIX) -> str:
    """LLaVA's model_vqa_mmbench layout: [hint\\n]question, one line "X. option" per option, then the suffix."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return text + suffix


def run_mmbench(items: Sequence[loaders.MMBenchItem], generate: GenerateFn, out_jsonl: str | Path, model: str,
                prompt_suffix: str = MMBENCH_PROMPT_SUFFIX, chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """MMBench circular evaluation: every rotation of the options is asked; a question counts for
    circular_accuracy only when every rotation is answered right (matched by letter, then by option text)."""

    def requests(it: loaders.MMBenchItem) -> list[ChatRequest]:
        return [ChatRequest(turns=[mmbench_prompt(it.question, it.hint, opts, prompt_suffix)], image=it.image)
                for opts, _ in metrics.mmbench_rotations(it.options, it.answer_index)]

    def describe(it: loaders.MMBenchItem) -> dict:
        return {"question_id": it.index, "category": it.category,
                "correct": [letter for _, letter in metrics.mmbench_rotations(it.options, it.answer_index)]}

    recs = _run("mmbench", items, [str(it.index) for it in items], requests, generate, out_jsonl, model, None,
                None, describe, chunk_size=chunk_size, derive=lambda it, answers: {"passes": mmbench_passes(it, answers)})
    return _rows(model, "mmbench", score_records("mmbench", recs), RULE_JUDGE)


def mmbench_passes(item: loaders.MMBenchItem, answers: Sequence[str]) -> list[bool]:
    """Correctness of each rotation's answer (matched by letter, then by option text)."""
    rots = metrics.mmbench_rotations(item.options, item.answer_index)
    return [metrics.mmbench_match(a, opts) == letter for a, (opts, letter) in zip(answers, rots)]


def add_mmbench_passes(records: Sequence[dict], items: Sequence[loaders.MMBenchItem]) -> list[dict]:
    """Records written before "passes" was stored, with "passes" computed from the benchmark's items (by key)."""
    by_key = {str(it.index): it for it in items}
    missing = sorted({r["key"] for r in records if "passes" not in r and r["key"] not in by_key})
    if missing:
        raise ValueError(f"mmbench: records {missing[:5]} have no item in the benchmark data")
    return [r if "passes" in r else {**r, "passes": mmbench_passes(by_key[r["key"]], r["answers"])}
            for r in records]


# --------------------------------------------------------------------------------------------------------------
# MM-Vet

def run_mmvet(items: Sequence[loaders.MMVetItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
              model: str, prompt_path: str | Path | None = None, chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """MM-Vet: the judge grades each answer 0.0..1.0 against the ground truth with MM-Vet's few-shot prompt, read from
    the official mm-vet_evaluator.py at `prompt_path` (mmpref's fallback prompt when None); total, per capability
    and per capability integration x 100."""
    judge_id = _need_judge(judge, "mmvet")
    import mmpref.judges as judges
    from mmpref.judges import prompts

    header = prompts.load_mmvet_prompt(prompt_path) if prompt_path is not None else None

    def grade(it: loaders.MMVetItem, answers: list[str]) -> dict:
        truth = {"answer": it.answer_key} if it.answer_key else {}
        score, raw = judges.grade_mmvet(judge, it.question, it.answer, answers[0], truth=truth, header=header)
        return {"score": score, "failed": score is None, "judge_raw": raw}

    recs = _run("mmvet", items, [it.id for it in items],
                lambda it: [ChatRequest(turns=[it.question], image=it.image)], generate, out_jsonl, model, judge_id,
                grade, lambda it: {"question_id": it.id, "capability": it.capabilities}, chunk_size=chunk_size,
                judge=judge)
    return _rows(model, "mmvet", score_records("mmvet", recs), judge_id)


# --------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (in the wild)

def run_llava_bench(items: Sequence[loaders.LlavaBenchItem], generate: GenerateFn, judge: Any,
                    out_jsonl: str | Path, model: str, rule_path: str | Path | None = None,
                    chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """LLaVA-Bench: the judge scores the GPT-4 reference (Assistant 1) and the model (Assistant 2) 1..10 with the
    category's rule from rule.json (`rule_path`; the judges' fallback rule when None)."""
    judge_id = _need_judge(judge, "llava_bench")
    import mmpref.judges as judges
    from mmpref.judges import prompts

    rules = prompts.load_llava_rules(rule_path) if rule_path is not None else None
    if rules is not None:
        for cat in sorted({it.category for it in items}):
            prompts.llava_rule_for(rules, cat)  # fail before any generation when a category has no rule

    def grade(it: loaders.LlavaBenchItem, answers: list[str]) -> dict:
        rule = prompts.llava_rule_for(rules, it.category) if rules is not None else None
        truth = {"answer": it.answer_key, "reference": it.reference} if it.answer_key else {}
        s_ref, s_model, raw = judges.grade_llava_bench(judge, it.text, it.context, it.reference, answers[0],
                                                       rule=rule, truth=truth)
        failed = s_ref is None or s_model is None
        return {"scores": None if failed else [s_ref, s_model], "failed": failed, "judge_raw": raw}

    recs = _run("llava_bench", items, [str(it.question_id) for it in items],
                lambda it: [ChatRequest(turns=[it.text], image=it.image)], generate, out_jsonl, model, judge_id, grade,
                lambda it: {"question_id": it.question_id, "category": it.category}, chunk_size=chunk_size,
                judge=judge)
    unparsed = sum(bool(r.get("failed")) for r in recs)
    if unparsed:
        log.warning("llava_bench: %d reviews without two scores on the first line (failed: left out and counted)",
                    unparsed)
    return _rows(model, "llava_bench", score_records("llava_bench", recs), judge_id)


# --------------------------------------------------------------------------------------------------------------
# MT-Bench (+ noisy image)

def noise_images(folder: str | Path) -> list[Path]:
    """The image files of a noise-image folder, sorted by name; ValueError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"noise image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"noise image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def noise_image_for(question_id: Any, images: Sequence[Path]) -> Path:
    """The irrelevant image for a question: chosen by a hash of the question id (same on every run and machine)."""
    digest = hashlib.sha256(f"mt_bench_noisy:{question_id}".encode("utf-8")).hexdigest()
    return Path(images[int(digest, 16) % len(images)])


def run_mt_bench(items: Sequence[loaders.MTBenchItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
                 model: str, templates_path: str | Path | None = None, noise_images_dir: str | Path | None = None,
                 chunk_size: int = DEFAULT_CHUNK, decoding: str = "fastchat") -> list[dict]:
    """MT-Bench: two turns (turn 2 sees turn 1 and the model's answer), FastChat single-answer grading of each turn
    (single-v1 / single-math-v1 with the reference for math, reasoning, coding; the multi-turn templates for turn 2).
    With `noise_images_dir` it is the noisy-image MT-Bench: an irrelevant image chosen by the question id goes with
    every user turn (the design's "prepended to every turn"); the judge sees text only. `decoding="fastchat"` answers
    with FastChat's per-category temperatures (MT_BENCH_TEMPERATURES), "greedy" greedily."""
    if decoding not in ("fastchat", "greedy"):
        raise ValueError(f"MT-Bench decoding must be 'fastchat' or 'greedy', got {decoding!r}")
    benchmark = "mt_bench_noisy" if noise_images_dir is not None else "mt_bench"
    judge_id = _need_judge(judge, benchmark)
    import mmpref.judges as judges
    from mmpref.judges import prompts

    templates = prompts.load_fastchat_judge_prompts(templates_path) if templates_path is not None else None
    pool = noise_images(noise_images_dir) if noise_images_dir is not None else None
    bad = [it.question_id for it in items if len(it.turns) < 2]
    if bad:
        raise ValueError(f"{benchmark}: questions {bad[:5]} have fewer than two turns")

    def image(it: loaders.MTBenchItem) -> str | None:
        return str(noise_image_for(it.question_id, pool)) if pool is not None else None

    def temperature(it: loaders.MTBenchItem) -> float:
        if decoding == "greedy":
            return 0.0
        return MT_BENCH_TEMPERATURES.get(it.category, MT_BENCH_DEFAULT_TEMPERATURE)

    def truth(it: loaders.MTBenchItem, t: int) -> dict:
        out = {}
        if it.answer_keys:
            out["answer"] = it.answer_keys[t]
        if it.references_all:
            out["reference"] = it.references_all[t]
        return out

    def grade(it: loaders.MTBenchItem, answers: list[str]) -> dict:
        s1, j1 = judges.grade_single(judge, it.turns[:1], answers[:1], reference=it.reference, truth=truth(it, 0),
                                     templates=templates, multi_turn=False)
        s2, j2 = judges.grade_single(judge, it.turns[:2], answers[:2], reference=it.reference, truth=truth(it, 1),
                                     templates=templates, multi_turn=True)
        return {"scores": [s1, s2], "failed": [s1 == -1, s2 == -1], "judge_raw": [j1, j2]}

    recs = _run(benchmark, items, [str(it.question_id) for it in items],
                lambda it: [ChatRequest(turns=[it.turns[0]], image=image(it), image_every_turn=pool is not None,
                                        temperature=temperature(it))], generate,
                out_jsonl, model, judge_id,
                grade, lambda it: {"question_id": it.question_id, "category": it.category,
                                   "image": Path(image(it)).name if pool is not None else None,
                                   "turns": it.turns[:2]},
                second_turn=lambda it, a1: ChatRequest(turns=it.turns[:2], answers=[a1], image=image(it),
                                                       image_every_turn=pool is not None,
                                                       temperature=temperature(it)),
                chunk_size=chunk_size, judge=judge)
    return _rows(model, benchmark, score_records(benchmark, recs), judge_id)


# --------------------------------------------------------------------------------------------------------------
# AlpacaEval (v1)

def alpaca_switch(instruction: str, seed: int = 0) -> bool:
    """AlpacaEval's seeded coin (seeded by the instruction): True puts the model's output first (output_1)."""
    return int(hashlib.sha256(f"{seed}:{instruction}".encode("utf-8")).hexdigest(), 16) % 2 == 1


def run_alpaca_eval(items: Sequence[loaders.AlpacaItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
                    model: str, template_path: str | Path | None = None, seed: int = 0,
                    chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """AlpacaEval v1: the judge ranks the reference output against the model's; the order is switched by a seeded coin
    per instruction and the preference mapped back (2.0 = the model wins). win_rate and standard_error in percent."""
    judge_id = _need_judge(judge, "alpaca_eval")
    import mmpref.judges as judges
    from mmpref.judges import prompts

    template = prompts.load_alpaca_template(template_path) if template_path is not None else None

    def grade(it: loaders.AlpacaItem, answers: list[str]) -> dict:
        switched = alpaca_switch(it.instruction, seed)
        first, second = (answers[0], it.output) if switched else (it.output, answers[0])
        truth = {k: v for k, v in (("answer", it.answer_key), ("reference", it.reference)) if v}
        raw_pref, raw = judges.grade_pairwise_alpaca(judge, it.instruction, first, second, truth=truth,
                                                     template=template)
        return {"switched": switched, "raw_preference": raw_pref,
                "preference": metrics.alpaca_unswitch(raw_pref, switched), "failed": raw_pref is None,
                "judge_raw": raw}

    keys = [hashlib.sha256(it.instruction.encode("utf-8")).hexdigest()[:16] for it in items]
    recs = _run("alpaca_eval", items, keys, lambda it: [ChatRequest(turns=[it.instruction])], generate, out_jsonl,
                model, judge_id, grade, lambda it: {"instruction": it.instruction, "dataset": it.dataset,
                                                    "seed": seed},
                chunk_size=chunk_size, judge=judge)
    return _rows(model, "alpaca_eval", score_records("alpaca_eval", recs), judge_id)


# --------------------------------------------------------------------------------------------------------------
# item-level scoring

def _failures(benchmark: str, recs: Sequence[dict]) -> Score:
    """Failed gradings among the records (MT-Bench: turns rated -1, FastChat's mark of an unparsable judgment)."""
    if benchmark in ("mt_bench", "mt_bench_noisy"):
        ratings = [s for r in recs for s in r["scores"][:2]]
        return Score(sum(s == -1 for s in ratings), len(ratings))
    return Score(sum(bool(r.get("failed")) for r in recs), len(recs))


def score_records(benchmark: str, recs: Sequence[dict]) -> dict[str, Score]:
    """A benchmark's scores from its per-item records (any subset or resample of them), through the metric functions
    of mmpref.evaluate.metrics: the run_* functions and the bootstrap both score this way. Judge-graded benchmarks
    add FAILURES, the number of failed gradings (left out of the other metrics)."""
    scores = _metric_scores(benchmark, recs)
    if benchmark in GRADING:
        scores[FAILURES] = _failures(benchmark, recs)
    return scores


def _metric_scores(benchmark: str, recs: Sequence[dict]) -> dict[str, Score]:
    if benchmark == "pope":
        by_split: dict[str, tuple[list[str], list[str]]] = {}
        for rec in recs:
            answers, labels = by_split.setdefault(rec["split"], ([], []))
            answers.append(rec["answers"][0])
            labels.append(rec["label"])
        order = [s for s in loaders.POPE_SPLITS if s in by_split] + \
            [s for s in by_split if s not in loaders.POPE_SPLITS]
        return metrics.pope_scores({s: by_split[s] for s in order})
    if benchmark == "mmbench":
        return metrics.mmbench_scores([r["passes"] for r in recs])
    if benchmark == "mmvet":
        return metrics.mmvet_scores([None if r.get("failed") else r["score"] for r in recs],
                                    [r["capability"] for r in recs])
    if benchmark == "llava_bench":
        return metrics.llava_bench_scores([None if r.get("failed") else tuple(r["scores"]) for r in recs],
                                          [r["category"] for r in recs])
    if benchmark in ("mt_bench", "mt_bench_noisy"):
        return metrics.mt_bench_scores([r["scores"][0] for r in recs], [r["scores"][1] for r in recs])
    if benchmark == "alpaca_eval":
        return metrics.alpaca_win_rate([None if r.get("failed") else r["preference"] for r in recs])
    raise ValueError(f"unknown benchmark {benchmark!r}; choose one of {BENCHMARKS}")


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
    **options: Any,
) -> list[dict]:
    """Load benchmark `name` (one of BENCHMARKS) from `data_path` (file or folder, official format), answer it with
    `generate`, score it (judge-graded benchmarks need `judge`) and return tidy rows; per-item records go to
    `out_jsonl`. `judge_templates` maps "mt_bench" / "alpaca_eval" / "llava_bench" / "mmvet" to the official judge
    prompt files (judge_prompts.jsonl, alpaca_eval_gpt4 prompt, rule.json, mm-vet_evaluator.py); without them the
    judges' fallback prompts are used.
    `options` go to the benchmark's run_* function (e.g. prompt_suffix, chunk_size, seed)."""
    templates = dict(judge_templates or {})
    if name == "pope":
        return run_pope(loaders.load_pope(data_path, limit), generate, out_jsonl, model, **options)
    if name == "mmbench":
        return run_mmbench(loaders.load_mmbench(data_path, limit), generate, out_jsonl, model, **options)
    if name == "mmvet":
        return run_mmvet(loaders.load_mmvet(data_path, limit), generate, judge, out_jsonl, model,
                         prompt_path=templates.get("mmvet"), **options)
    if name == "llava_bench":
        return run_llava_bench(loaders.load_llava_bench(data_path, limit), generate, judge, out_jsonl, model,
                               rule_path=templates.get("llava_bench"), **options)
    if name in ("mt_bench", "mt_bench_noisy"):
        if name == "mt_bench_noisy" and noise_images_dir is None:
            raise ValueError("mt_bench_noisy needs noise_images_dir (a folder of irrelevant images)")
        return run_mt_bench(loaders.load_mt_bench(data_path, limit), generate, judge, out_jsonl, model,
                            templates_path=templates.get("mt_bench"),
                            noise_images_dir=noise_images_dir if name == "mt_bench_noisy" else None, **options)
    if name == "alpaca_eval":
        return run_alpaca_eval(loaders.load_alpaca_eval(data_path, limit), generate, judge, out_jsonl, model,
                               template_path=templates.get("alpaca_eval"), **options)
    raise ValueError(f"unknown benchmark {name!r}; choose one of {BENCHMARKS}")

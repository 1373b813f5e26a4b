"""MT-Bench: two-turn questions, FastChat single-answer grading 1-10 (the noisy-image variant is mt_bench_noisy.py).

Loader: lm-sys/FastChat fastchat/llm_judge/data/mt_bench/question.jsonl and reference_answer/gpt-4.jsonl.
Generation: FastChat llm_judge/common.py temperature_config (lm-sys/FastChat commit 81785d7e), used by its
gen_model_answer.py and by the authors' LLaVA port (findalexli/mllm-dpo llava/eval/gen_model_answer.py); other
categories get 0.7; `decoding="greedy"` answers every category greedily.
Judge prompts, rating parser and metric: lm-sys/FastChat fastchat/llm_judge/common.py (`run_judge_single`, the
`[[x]]` / `[x]` patterns) and show_result.py display_result_single, commit 0e6d3e4beaab66f4d3f93db72541a4abab8af28d
(ratings of -1, the judge's unparsable replies, are dropped and counted). The judge templates are FastChat's
judge_prompts.jsonl read from params `evaluate.judge_templates.mt_bench`, never copied here; without it the fallback
templates below are used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, IMAGE_SUFFIXES, ItemProtocol, check_limit, existing, in_dir,
                                      literal_eval, mean, need_judge, need_keys, optional_template, run_items,
                                      score_records, tidy_rows)
from mmpref.io import read_jsonl, write_jsonl
from mmpref.judges.base import JudgeRequest
from mmpref.judges.parsing import ParseError
from mmpref.judges.rubric import assess, explain, need_inputs, rating_1_10
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.text_tasks import MT_BENCH_CATEGORY, TEXT_TASKS

log = logging.getLogger(__name__)

GRADING = "fastchat@0e6d3e4"  # records graded under another protocol are graded again
JUDGE_TASK = "grade_single"  # the JudgeRequest task of its gradings
MT_BENCH_NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat NEED_REF_CATS (plus arena-hard-200)


MT_BENCH_TEMPERATURES = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0,
                         "reasoning": 0.0, "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}


MT_BENCH_DEFAULT_TEMPERATURE = 0.7


class MTBenchItem(BaseModel):
    question_id: int | str
    category: str
    turns: list[str]
    reference: list[str] | None = None    # reference answers, set only for math/reasoning/coding (FastChat)
    answer_keys: list[str] | None = None
    references_all: list[str] | None = None  # the file's own "reference" field whatever the category (rubric truth)


def _find_mt_reference(folder: Path) -> Path | None:
    for cand in (folder / "reference_answer" / "gpt-4.jsonl", folder / "reference_answer_gpt-4.jsonl"):
        if cand.is_file():
            return cand
    return None


def load_mt_bench_references(path: str | Path) -> dict[Any, list[str]]:
    """FastChat reference_answer/gpt-4.jsonl: {question_id, model_id, choices: [{index, turns}]} -> {qid: turns}."""
    path = existing(path, "MT-Bench reference answers")
    out = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}: line {i}"
        need_keys(rec, ("question_id", "choices"), where)
        choices = rec["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("turns"), list):
            raise ValueError(f"{where}: 'choices' must be a list of {{index, turns: [...]}}")
        out[rec["question_id"]] = [str(t) for t in choices[0]["turns"]]
    return out


def load_mt_bench(path: str | Path, limit: int | None = None,
                  reference_path: str | Path | None = None) -> list[MTBenchItem]:
    """FastChat MT-Bench question.jsonl ({question_id, category, turns, [reference]}) or its folder.

    Reference answers (used, as in FastChat, only for math/reasoning/coding) come from `reference_path`, else from
    reference_answer/gpt-4.jsonl or reference_answer_gpt-4.jsonl beside the questions when present, else from the
    question's own "reference" field (the miniature's)."""
    check_limit(limit)
    file = in_dir(existing(path, "MT-Bench"), ("question.jsonl",), "MT-Bench")
    ref_file = Path(reference_path) if reference_path is not None else _find_mt_reference(file.parent)
    refs = load_mt_bench_references(ref_file) if ref_file is not None else {}
    rows = read_jsonl(file)
    items = []
    for i, rec in enumerate(rows[:limit] if limit else rows, 1):
        where = f"{file}: line {i}"
        need_keys(rec, ("question_id", "category", "turns"), where)
        turns = rec["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of strings")
        own = rec.get("reference")
        if own is not None and (not isinstance(own, list) or len(own) < len(turns)):
            raise ValueError(f"{where}: 'reference' must be a list with one answer per turn")
        keys = rec.get("answer_keys")
        if keys is not None and (not isinstance(keys, list) or len(keys) < len(turns)):
            raise ValueError(f"{where}: 'answer_keys' must be a list with one key per turn")
        ref = None
        if rec["category"] in MT_BENCH_NEED_REF_CATS:
            ref = refs.get(rec["question_id"]) or own
            if ref is None:
                log.warning("%s: %s question without a reference answer", where, rec["category"])
        items.append(MTBenchItem(question_id=rec["question_id"], category=rec["category"], turns=turns,
                                 reference=[str(r) for r in ref] if ref else None,
                                 answer_keys=[str(k) for k in keys] if keys is not None else None,
                                 references_all=[str(r) for r in own] if own is not None else None))
    if not items:
        raise ValueError(f"MT-Bench: {file} holds no questions")
    return items


# --------------------------------------------------------------------------------------------------------------
# judge prompts, rating parser and grading (FastChat llm_judge)

_FALLBACK_SINGLE_SYSTEM = "You are a fair and careful judge of assistant answers."


_FALLBACK_RATING_RULE = (
    "Explain your assessment briefly, then give a score from 1 to 10 written exactly like \"Rating: [[7]]\"."
)


FALLBACK_FASTCHAT_TEMPLATES: dict[str, dict] = {
    "single-v1": {
        "name": "single-v1",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge how helpful, accurate and clear the answer to this question is. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Question]\n{question}\n\n[Answer]\n{answer}\n[End of Answer]",
        "output_format": "[[rating]]",
    },
    "single-math-v1": {
        "name": "single-math-v1",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge whether the answer to this question is correct, using the reference answer. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n[End of Reference]"
        "\n\n[Answer]\n{answer}\n[End of Answer]",
        "output_format": "[[rating]]",
    },
    "single-v1-multi-turn": {
        "name": "single-v1-multi-turn",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge the assistant's answer to the SECOND user question in this conversation. "
        + _FALLBACK_RATING_RULE
        + "\n\n[User]\n{question_1}\n[Assistant]\n{answer_1}\n\n[User]\n{question_2}\n[Assistant]\n{answer_2}"
        "\n[End of Conversation]",
        "output_format": "[[rating]]",
    },
    "single-math-v1-multi-turn": {
        "name": "single-math-v1-multi-turn",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge whether the assistant's answer to the SECOND user question is correct, using the "
        "reference answers. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Reference]\nQ1: {question_1}\nA1: {ref_answer_1}\nQ2: {question_2}\nA2: {ref_answer_2}"
        "\n[End of Reference]\n\n[User]\n{question_1}\n[Assistant]\n{answer_1}\n\n[User]\n{question_2}"
        "\n[Assistant]\n{answer_2}\n[End of Conversation]",
        "output_format": "[[rating]]",
    },
}


def load_fastchat_judge_prompts(path: str | Path) -> dict[str, dict]:
    """Read FastChat's judge_jsonl into {name: record}; a bad line raises ValueError naming it."""
    path = Path(path)
    out: dict[str, dict] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[rec["name"]] = rec
                rec["prompt_template"], rec["system_prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a FastChat judge prompt record ({exc})") from None
    return out


def fastchat_template_name(multi_turn: bool, reference: bool) -> str:
    """FastChat's choice: math/reasoning/coding questions with a reference use single-math-v1."""
    name = "single-math-v1" if reference else "single-v1"
    return name + ("-multi-turn" if multi_turn else "")


def render_fastchat_single(
    question_turns: list[str],
    answers: list[str],
    reference: list[str] | None = None,
    multi_turn: bool = False,
    templates: dict[str, dict] | None = None,
) -> tuple[str, str, str]:
    """Fill a FastChat single-answer template as `run_judge_single` does. Returns (system, prompt, template name)."""
    name = fastchat_template_name(multi_turn, bool(reference))
    table = templates if templates is not None else FALLBACK_FASTCHAT_TEMPLATES
    if name not in table:
        raise ValueError(f"judge template {name!r} missing (have {sorted(table)})")
    rec = table[name]
    kwargs: dict[str, str] = {}
    if multi_turn:
        if len(question_turns) < 2 or len(answers) < 2:
            raise ValueError("multi-turn grading needs two questions and two answers")
        kwargs.update(question_1=question_turns[0], question_2=question_turns[1],
                      answer_1=answers[0], answer_2=answers[1])
        if reference:
            if len(reference) < 2:
                raise ValueError("multi-turn math grading needs two reference answers")
            kwargs.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    else:
        if not question_turns or not answers:
            raise ValueError("single-turn grading needs a question and an answer")
        kwargs.update(question=question_turns[0], answer=answers[0])
        if reference:
            kwargs["ref_answer_1"] = reference[0]
    return rec["system_prompt"], rec["prompt_template"].format(**kwargs), name


# FastChat single-answer grading patterns: lm-sys/FastChat fastchat/llm_judge/common.py, commit
# 0e6d3e4beaab66f4d3f93db72541a4abab8af28d.
one_score_pattern = re.compile(r"\[\[(\d+\.?\d*)\]\]")


one_score_pattern_backup = re.compile(r"\[(\d+\.?\d*)\]")


def parse_fastchat_rating(judgment: str) -> float:
    """FastChat `run_judge_single` parsing: `[[x]]`, else `[x]`; -1 when neither is found."""
    match = re.search(one_score_pattern, judgment)
    if not match:
        match = re.search(one_score_pattern_backup, judgment)
    if match:
        return float(literal_eval(match.groups()[0]))
    return -1.0


def grade_single(
    judge: Judge,
    question_turns: list[str],
    answers: list[str],
    reference: list[str] | None = None,
    truth: dict | None = None,
    templates: dict[str, dict] | None = None,
    multi_turn: bool = False,
    image: str | Path | None = None,
) -> tuple[float, str]:
    """FastChat single-answer grading (MT-Bench). Returns (rating 1..10, judgment); rating -1 when unparsable,
    as FastChat records it. `truth` ({"answer", "reference"}) is about the graded turn (turn 2 when multi_turn)."""
    system, prompt, _ = render_fastchat_single(question_turns, answers, reference, multi_turn, templates)
    req = JudgeRequest(task=JUDGE_TASK, system=system, prompt=prompt, images=[str(image)] if image else [],
                       inputs={"question_turns": list(question_turns), "answers": list(answers),
                               "reference": reference, "multi_turn": multi_turn},
                       truth=truth or {})
    judgment = judge.complete(req, check=_rated).text  # a judgment without a rating is not cached
    return parse_fastchat_rating(judgment), judgment


def _rated(judgment: str) -> None:
    if parse_fastchat_rating(judgment) == -1:
        raise ParseError("no [[rating]] in the judgment")


# --------------------------------------------------------------------------------------------------------------
# metric (show_result.py display_result_single)

def mt_bench_scores(turn1: Sequence[float], turn2: Sequence[float]) -> dict[str, Score]:
    """FastChat show_result (single): drop ratings of -1, then turn1 / turn2 means and the overall mean of all
    remaining turn ratings."""
    t1 = [float(s) for s in turn1 if s != -1]
    t2 = [float(s) for s in turn2 if s != -1]
    if not t1 and not t2:
        raise ValueError("MT-Bench: no valid ratings to score")
    return {"turn1": Score(mean(t1), len(t1)), "turn2": Score(mean(t2), len(t2)),
            "overall": Score(mean(t1 + t2), len(t1) + len(t2))}


def score(recs: Sequence[dict]) -> dict[str, Score]:
    recs = [_ratings(r) for r in recs]
    return mt_bench_scores([r[0] for r in recs], [r[1] for r in recs])


def _ratings(rec: dict) -> list[float]:
    """A record's two turn ratings; -1 (FastChat's unparsable mark) for a grading the judge gave up on."""
    return rec.get("scores") or [-1, -1]


def count_failed_turns(recs: Sequence[dict]) -> Score:
    """Failed gradings among the records' turns (rated -1, FastChat's mark of an unparsable judgment)."""
    ratings = [s for r in recs for s in _ratings(r)[:2]]
    return Score(sum(s == -1 for s in ratings), len(ratings))



# --------------------------------------------------------------------------------------------------------------
# noise images (the noisy-image variant, mt_bench_noisy.py)

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


# --------------------------------------------------------------------------------------------------------------
# protocol

def run_mt_bench(items: Sequence[MTBenchItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
                 model: str, templates_path: str | Path | None = None, noise_images_dir: str | Path | None = None,
                 chunk_size: int = DEFAULT_CHUNK, decoding: str = "fastchat",
                 answers_from: str | Path | None = None) -> list[dict]:
    """MT-Bench: two turns (turn 2 sees turn 1 and the model's answer), FastChat single-answer grading of each turn
    (single-v1 / single-math-v1 with the reference for math, reasoning, coding; the multi-turn templates for turn 2).
    With `noise_images_dir` it is the noisy-image MT-Bench: an irrelevant image chosen by the question id goes with
    every user turn (the design's "prepended to every turn"); the judge sees text only. `decoding="fastchat"` answers
    with FastChat's per-category temperatures (MT_BENCH_TEMPERATURES), "greedy" greedily."""
    if decoding not in ("fastchat", "greedy"):
        raise ValueError(f"MT-Bench decoding must be 'fastchat' or 'greedy', got {decoding!r}")
    benchmark = "mt_bench_noisy" if noise_images_dir is not None else "mt_bench"
    judge_id = need_judge(judge, benchmark)
    templates = load_fastchat_judge_prompts(templates_path) if templates_path is not None else None
    pool = noise_images(noise_images_dir) if noise_images_dir is not None else None
    bad = [it.question_id for it in items if len(it.turns) < 2]
    if bad:
        raise ValueError(f"{benchmark}: questions {bad[:5]} have fewer than two turns")

    def image(it: MTBenchItem) -> str | None:
        return str(noise_image_for(it.question_id, pool)) if pool is not None else None

    def temperature(it: MTBenchItem) -> float:
        if decoding == "greedy":
            return 0.0
        return MT_BENCH_TEMPERATURES.get(it.category, MT_BENCH_DEFAULT_TEMPERATURE)

    def truth(it: MTBenchItem, t: int) -> dict:
        out = {}
        if it.answer_keys:
            out["answer"] = it.answer_keys[t]
        if it.references_all:
            out["reference"] = it.references_all[t]
        return out

    def grade(it: MTBenchItem, answers: list[str]) -> dict:
        s1, j1 = grade_single(judge, it.turns[:1], answers[:1], reference=it.reference, truth=truth(it, 0),
                                     templates=templates, multi_turn=False)
        s2, j2 = grade_single(judge, it.turns[:2], answers[:2], reference=it.reference, truth=truth(it, 1),
                                     templates=templates, multi_turn=True)
        return {"scores": [s1, s2], "failed": [s1 == -1, s2 == -1], "judge_raw": [j1, j2]}

    protocol = ItemProtocol(
        benchmark, key=lambda it: str(it.question_id),
        requests=lambda it: [ChatRequest(turns=[it.turns[0]], image=image(it), image_every_turn=pool is not None,
                                         temperature=temperature(it))],
        describe=lambda it: {"question_id": it.question_id, "category": it.category,
                             "image": Path(image(it)).name if pool is not None else None, "turns": it.turns[:2]},
        grade=grade, grading=GRADING,
        second_turn=lambda it, a1: ChatRequest(turns=it.turns[:2], answers=[a1], image=image(it),
                                               image_every_turn=pool is not None, temperature=temperature(it)))
    recs = run_items(protocol, items, generate, out_jsonl, model, judge, chunk_size, answers_from)
    return tidy_rows(model, benchmark, score_records(benchmark, recs), judge_id)


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_mt_bench(load_mt_bench(data_path, limit), generate, judge, out_jsonl, model, templates_path=template,
                        **options)


def check(path: Path, params: Any = None) -> str:
    """Questions load; math/reasoning/coding get their reference answers: from FastChat's reference_answer/gpt-4.jsonl
    beside the questions (required for real runs, as FastChat's judging uses it), or from the questions' own
    "reference" field (the miniature world's)."""
    need_reference_file = params is None or params.world is None
    folder = path if path.is_dir() else path.parent
    ref = _find_mt_reference(folder)
    if ref is None and need_reference_file:
        raise ValueError(f"missing reference answers: neither {folder / 'reference_answer' / 'gpt-4.jsonl'} nor "
                         f"{folder / 'reference_answer_gpt-4.jsonl'} (FastChat grades math, reasoning and coding "
                         f"against them)")
    items = load_mt_bench(path)
    lacking = [it.question_id for it in items if it.category in MT_BENCH_NEED_REF_CATS and not it.reference]
    if lacking:
        raise ValueError(f"math/reasoning/coding questions {lacking[:5]} have no reference answer"
                         + (f" in {ref}" if ref else ""))
    n_ref = sum(1 for it in items if it.reference)
    return f"{len(items)} questions read; {n_ref} with reference answers"


def check_judge_prompts(path: Path) -> str:
    table = load_fastchat_judge_prompts(path)
    need = [f"single{m}-v1{t}" for m in ("", "-math") for t in ("", "-multi-turn")]
    absent = [n for n in need if n not in table]
    if absent:
        raise ValueError(f"{path}: lacks the judge prompts {absent}")
    return f"{len(table)} judge prompts"


def cost_inputs(path: Path | None, answer: str, template: Path | None, limit: int | None,
                default_chars: tuple[int, int] = (200, 750)) -> tuple[int, list[str], str]:
    """The texts of one model's judge calls (two per question; answers at `answer`); the file's questions when
    readable, else BENCHMARK.default_items questions of `default_chars` (turn, reference) characters."""
    notes = []
    try:
        items = [(it.turns, it.reference) for it in load_mt_bench(path)]
    except Exception:  # noqa: BLE001 - absent or unreadable: estimate from defaults
        cats = ["writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"]
        turn, ref = "x" * default_chars[0], "x" * default_chars[1]
        items = [([turn] * 2, [ref] * 2 if cats[i % 8] in MT_BENCH_NEED_REF_CATS else None)
                 for i in range(BENCHMARK.default_items)]
        notes.append(f"default {BENCHMARK.default_items} items (file absent)")
    table = optional_template(load_fastchat_judge_prompts, template, notes)
    items = items[:limit] if limit else items
    texts = []
    for turns, reference in items:
        for multi in (False, True):
            n = 2 if multi else 1
            system, prompt, _ = render_fastchat_single(turns[:n], [answer] * n, reference, multi_turn=multi,
                                                       templates=table)
            texts.append(system + prompt)
    return len(items), texts, "; ".join(notes)



# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    """Two-turn questions (reference answers and answer keys), the four text task kinds in turn, from the build's
    held-out prompts (drawn before AlpacaEval's)."""
    tasks, mt = list(TEXT_TASKS), []
    while len(mt) < build.n_text_bench:
        item = build.held_out.draw(True, tasks[len(mt) % len(tasks)])
        mt.append({"question_id": 81 + len(mt), "category": MT_BENCH_CATEGORY[item["task"]], "turns": item["turns"],
                   "reference": item["references"], "answer_keys": item["answers"]})
    write_jsonl(build.folder / "mt_bench" / "question.jsonl", mt)
    return {"mt_bench": len(mt)}


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's turns and reference answers (for the world's tokenizer)."""
    for r in read_jsonl(folder / "mt_bench" / "question.jsonl"):
        yield from r["turns"]
        yield from r["reference"]


# --------------------------------------------------------------------------------------------------------------
# the rubric judge's grading (the miniature world's judge, mmpref.judges.rubric: it grades against the truth)

def rubric_grade(inputs: dict, truth: dict) -> str:
    """The rubric judge's FastChat single-answer grading: its reasons, then "Rating: [[x]]" (`rating_1_10` of the graded
    turn's answer against the truth)."""
    (answers,) = need_inputs(inputs, "answers")
    if not answers:
        raise ValueError("rubric judge: grade_single got no answers")
    answer = answers[-1] if inputs.get("multi_turn") else answers[0]
    turns = inputs.get("question_turns") or [None]
    key, ref = truth.get("answer"), truth.get("reference")
    a = assess(answer, key, ref, turns[-1] if inputs.get("multi_turn") else turns[0])
    return f"{explain(a, key)}\n\nRating: [[{rating_1_10(a)}]]"


BENCHMARK = Benchmark(
    name="mt_bench", display="MT-bench", headline="overall", headline_name="MT-Bench overall", order=4, unit="1–10",
    in_table2=True, paper_key="mt_bench", text_only=True, grading=GRADING, judge_template="mt_bench", run=_run,
    score=score, failures=count_failed_turns, load=load_mt_bench, check=check, check_template=check_judge_prompts,
    options=lambda ev: {"decoding": ev.mt_bench_decoding}, cost_inputs=cost_inputs, default_items=80,
    output_tokens=250,   # a short explanation and "Rating: [[x]]"
    build_miniature=build_miniature, build_order=0, miniature_texts=miniature_texts,
    judge_task=JUDGE_TASK, rubric_grade=rubric_grade,
    data=DataFile("mt_bench", "MT-Bench questions and GPT-4 reference answers", "09_evaluate",
                  "evaluate.benchmarks.mt_bench", "mt_bench/question.jsonl",
                  ("mt_bench/question.jsonl", "mt_bench/reference_answer/gpt-4.jsonl"),
                  "github lm-sys/FastChat `fastchat/llm_judge/data/mt_bench/question.jsonl` and "
                  "`fastchat/llm_judge/data/mt_bench/reference_answer/gpt-4.jsonl`"),
    template_data=DataFile("judge_mt_bench", "MT-Bench judge prompts", "09_evaluate",
                           "evaluate.judge_templates.mt_bench", "mt_bench/judge_prompts.jsonl",
                           ("mt_bench/judge_prompts.jsonl",),
                           "github lm-sys/FastChat `fastchat/llm_judge/data/judge_prompts.jsonl`"),
)

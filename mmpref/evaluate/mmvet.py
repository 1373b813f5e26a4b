"""MM-Vet (integrated capabilities), graded by a judge 0.0-1.0 per item.

Loader: yuweihao/MM-Vet release `mm-vet.zip` (mm-vet.json {id: {imagename, capability, question, answer}}, images/).
Prompt: the question as it is; greedy answers.
Judge prompt, grade parsing, retry rule and metric: yuweihao/MM-Vet mm-vet_evaluator.py (`runs`, `export_result` with
num_run 1, decimal_places 1), commit acde843e02dae30047bb456ee4a8ab28dee7e0ae (the file is unchanged since c7ff270,
February 2024). Every grading call is sent as the evaluator sends it: `max_tokens=3`, the first at temperature 0.0, each
re-ask at the temperature then current, raised by 0.5 after it (so 0.0, 0.0, 0.5, 1.0, 1.5 for the five replies it
reads; `MMVET_TEMPERATURES`). The few-shot prompt is the module-level
string `prompt` of the official evaluator, read from its file (params `evaluate.judge_templates.mmvet`); without it
mmpref's own header below is used, with the same layout and the same output contract (the reply's first token is the
score). The evaluator sends no system message. It scores an item whose grading failed five times as 0.0; here it is
left out (None) and counted, and the counts it divides by are those of the graded items.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, ItemProtocol, check_limit, existing, image_file, images_folder,
                                      in_dir, need_judge, need_keys, optional_template, read_json, run_items,
                                      score_records, sum_in_order, tidy_rows)
from mmpref.io import write_json
from mmpref.judges.base import JudgeRequest
from mmpref.judges.parsing import ParseError
from mmpref.judges.rubric import need_inputs
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.questions import chart_qas, scene_qas
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.scenes import Images
from mmpref.world.truth import key_match

log = logging.getLogger(__name__)

# records graded under another protocol are graded again (#2: the evaluator's temperatures and max_tokens=3)
GRADING = "mm-vet@acde843#2"
JUDGE_TASK = "grade_mmvet"  # the JudgeRequest task of its gradings


class MMVetItem(BaseModel):
    id: str
    image: str
    question: str
    answer: str                  # ground truth (may hold <AND>/<OR>)
    capabilities: list[str]
    answer_key: str | None = None


def load_mmvet(path: str | Path, limit: int | None = None, image_dir: str | Path | None = None) -> list[MMVetItem]:
    """MM-Vet: mm-vet.json ({id: {imagename, capability, question, answer}}) or its folder (images in images/)."""
    check_limit(limit)
    file = in_dir(existing(path, "MM-Vet"), ("mm-vet.json",), "MM-Vet")
    data = read_json(file)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"MM-Vet: {file} must be a non-empty JSON object of items")
    img_dir = images_folder(file.parent, image_dir)
    items = []
    for key, rec in list(data.items())[:limit] if limit else data.items():
        where = f"{file}: item {key!r}"
        need_keys(rec, ("imagename", "capability", "question", "answer"), where)
        caps = rec["capability"]
        if not isinstance(caps, list) or not caps:
            raise ValueError(f"{where}: 'capability' must be a non-empty list")
        items.append(MMVetItem(id=str(key), image=image_file(img_dir, rec["imagename"], where), question=rec["question"],
                               answer=str(rec["answer"]), capabilities=[str(c) for c in caps],
                               answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"])))
    return items


# --------------------------------------------------------------------------------------------------------------
# judge prompt, grade parser and grading (mm-vet_evaluator.py `runs`)

MMVET_SYSTEM = None


MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "


FALLBACK_MMVET_PROMPT = (
    "Compare the ground truth and the prediction of an AI model and give the prediction a correctness score between "
    "0.0 and 1.0 (0.0 totally wrong, 1.0 totally right, partial credit such as 0.5 when only part of the ground "
    "truth is matched). In the ground truth, <AND> means every part is needed and <OR> means any one part is enough. "
    "Complete the last row with the correctness score only, as a number.\n\n"
    "Question | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n"
)


def load_mmvet_prompt(path: str | Path) -> str:
    """The few-shot grading prompt of MM-Vet's evaluator: the string assigned to the top-level name `prompt` in
    mm-vet_evaluator.py, read with `ast` (the file is not imported or run)."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}: not a Python file ({exc.msg}, line {exc.lineno})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompt" for t in node.targets) \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    raise ValueError(f"{path}: no top-level string `prompt = \"\"\"...\"\"\"` (MM-Vet's mm-vet_evaluator.py)")


def render_mmvet_prompt(question: str, gt_answer: str, prediction: str, header: str | None = None,
                        retry: bool = False) -> str:
    """The evaluator's user message: `prompt + "\\n" + " | ".join([question, answer with " <AND> " / " <OR> ",
    prediction, ""])`, plus "\\nPredict the correctness of the answer (digit): " on a retry. `header` is the
    official prompt (load_mmvet_prompt); None uses mmpref's fallback."""
    text = (FALLBACK_MMVET_PROMPT if header is None else header) + "\n" + " | ".join(
        [question, gt_answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "), prediction, ""])
    return text + (MMVET_RETRY_SUFFIX if retry else "")


def parse_mmvet_score(content: str) -> float:
    """MM-Vet's grade rule (yuweihao/MM-Vet mm-vet_evaluator.py, commit acde843e02dae30047bb456ee4a8ab28dee7e0ae):
    `float(content.split(" ")[0].strip())`, which must lie in 0.0..1.0; otherwise ParseError (the grader retries).
    One deliberate difference: "nan", which the evaluator accepts (both range checks are False) and which would make
    every total NaN, is rejected."""
    try:
        score = float(content.split(" ")[0].strip())
    except (ValueError, AttributeError):
        raise ParseError(f"MM-Vet grade's first token is not a number: {str(content)[:80]!r}") from None
    if math.isnan(score):
        raise ParseError("MM-Vet grade is NaN")
    if score > 1.0 or score < 0.0:
        raise ParseError(f"MM-Vet grade {score} is outside 0.0..1.0")
    return score


MMVET_TRIES = 5  # replies the evaluator reads: the first and four retries
MMVET_MAX_TOKENS = 3  # `max_tokens=3` of every call of the evaluator
# the temperature of each of those calls: `temperature = 0.0` before the first; a re-ask is sent at the current
# temperature, then `temperature += 0.5`
MMVET_TEMPERATURES = tuple(0.5 * max(0, attempt - 1) for attempt in range(MMVET_TRIES))


def grade_mmvet(
    judge: Judge,
    question: str,
    gt_answer: str,
    prediction: str,
    truth: dict | None = None,
    header: str | None = None,
) -> tuple[float | None, str]:
    """MM-Vet grading 0.0..1.0 as yuweihao/MM-Vet mm-vet_evaluator.py `runs` does it (commit
    acde843e02dae30047bb456ee4a8ab28dee7e0ae): the few-shot prompt (`header`, mmpref's fallback when None) at
    temperature 0.0 with max_tokens=3; while the reply's first token is not a grade in 0..1, ask again with "Predict
    the correctness of the answer (digit): " appended, at the temperature then current, which the evaluator raises
    by 0.5 after each re-ask (MMVET_TEMPERATURES: 0.0, 0.0, 0.5, 1.0, 1.5). The evaluator reads five replies; after
    the fifth it makes a sixth call at temperature 2.0, never reads it and scores 0.0. Here the grading stops after
    the five read replies and returns None (a failed grading, left out of the score and counted), never 0.0.
    Returns (grade or None, the last reply)."""
    text = ""
    for attempt in range(MMVET_TRIES):
        req = JudgeRequest(task=JUDGE_TASK, system=MMVET_SYSTEM,
                           prompt=render_mmvet_prompt(question, gt_answer, prediction, header,
                                                              retry=attempt > 0),
                           inputs={"question": question, "gt_answer": gt_answer, "prediction": prediction},
                           truth=truth or {}, attempt=attempt, temperature=MMVET_TEMPERATURES[attempt],
                           max_tokens=MMVET_MAX_TOKENS)
        text = judge.complete(req, check=parse_mmvet_score).text  # an unparsable grade is not cached
        try:
            return parse_mmvet_score(text), text
        except ParseError as exc:
            log.info("%s: unparsable MM-Vet grade (attempt %d: %s)", judge.judge_id, attempt, exc)
    return None, text


# --------------------------------------------------------------------------------------------------------------
# metric (mm-vet_evaluator.py `export_result`)

def _mmvet_percent(total: float, count: int) -> float:
    """`round((np.array([total]) / count * 100).mean(), 1)`: MM-Vet's arithmetic, numpy's rounding included."""
    if not count:
        return float("nan")
    return float(round((np.array([total]) / count * 100).mean(), 1))


def mmvet_scores(grades: Sequence[float | None], capabilities: Sequence[Sequence[str]]) -> dict[str, Score]:
    """total = sum of grades / items x 100; "cap_<cap>" = the same over the items having capability <cap>;
    "capint_<caps>" = the same over the items whose capability set is exactly <caps> (MM-Vet's capability
    integrations; the names joined by "_" in sorted order, where MM-Vet uses Python's set order). Every value
    rounded to one decimal as the evaluator's table shows it. Failed gradings (None) are left out."""
    if len(grades) != len(capabilities):
        raise ValueError(f"MM-Vet: {len(grades)} grades for {len(capabilities)} items")
    kept = [(float(g), set(caps)) for g, caps in zip(grades, capabilities) if g is not None]
    if not kept:
        raise ValueError("MM-Vet: no graded items to score")
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for grade, caps in kept:  # the evaluator's accumulation order: item by item
        for key in [f"cap_{c}" for c in caps] + ["capint_" + "_".join(sorted(caps))]:
            sums[key] = sums.get(key, 0.0) + grade
            counts[key] = counts.get(key, 0) + 1
    out = {"total": Score(_mmvet_percent(sum_in_order([g for g, _ in kept]), len(kept)), len(kept))}
    for key in sorted(sums, key=lambda k: (k.startswith("capint_"), k)):
        out[key] = Score(_mmvet_percent(sums[key], counts[key]), counts[key])
    return out


def score(recs: Sequence[dict]) -> dict[str, Score]:
    return mmvet_scores([None if r.get("failed") else r["score"] for r in recs], [r["capability"] for r in recs])



# --------------------------------------------------------------------------------------------------------------
# protocol

def run_mmvet(items: Sequence[MMVetItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
              model: str, prompt_path: str | Path | None = None, chunk_size: int = DEFAULT_CHUNK,
              answers_from: str | Path | None = None) -> list[dict]:
    """MM-Vet: the judge grades each answer 0.0..1.0 against the ground truth with MM-Vet's few-shot prompt, read from
    the official mm-vet_evaluator.py at `prompt_path` (mmpref's fallback prompt when None); total, per capability
    and per capability integration x 100."""
    judge_id = need_judge(judge, "mmvet")
    header = load_mmvet_prompt(prompt_path) if prompt_path is not None else None

    def grade(it: MMVetItem, answers: list[str]) -> dict:
        truth = {"answer": it.answer_key} if it.answer_key else {}
        score, raw = grade_mmvet(judge, it.question, it.answer, answers[0], truth=truth, header=header)
        return {"score": score, "failed": score is None, "judge_raw": raw}

    protocol = ItemProtocol("mmvet", key=lambda it: it.id,
                            requests=lambda it: [ChatRequest(turns=[it.question], image=it.image)],
                            describe=lambda it: {"question_id": it.id, "capability": it.capabilities}, grade=grade,
                            grading=GRADING)
    recs = run_items(protocol, items, generate, out_jsonl, model, judge, chunk_size, answers_from)
    return tidy_rows(model, "mmvet", score_records("mmvet", recs), judge_id)


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_mmvet(load_mmvet(data_path, limit), generate, judge, out_jsonl, model, prompt_path=template, **options)


def check(path: Path, params: Any = None) -> str:
    return f"first {len(load_mmvet(path, limit=3))} items and images read"


def cost_inputs(path: Path | None, answer: str, template: Path | None, limit: int | None,
                default_chars: tuple[int, int] = (80, 20)) -> tuple[int, list[str], str]:
    """The judge-call texts for one model (answers at `answer`); the file's questions when readable (images not
    needed), else BENCHMARK.default_items items of `default_chars` (question, ground truth) characters."""
    notes = []
    try:
        file = path / "mm-vet.json" if path.is_dir() else path
        items = [(r["question"], str(r["answer"])) for r in json.loads(file.read_text(encoding="utf-8")).values()]
    except Exception:  # noqa: BLE001 - absent or unreadable: estimate from defaults
        items = [("x" * default_chars[0], "x" * default_chars[1])] * BENCHMARK.default_items
        notes.append(f"default {BENCHMARK.default_items} items (file absent)")
    header = optional_template(load_mmvet_prompt, template, notes)
    items = items[:limit] if limit else items
    return len(items), [render_mmvet_prompt(q, gt, answer, header) for q, gt in items], "; ".join(notes)


# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def build_mmvet(imgs: Images, rng: random.Random, bench: Path, n: int) -> int:
    items = {}
    for i in range(n):
        if i % 2 == 0:
            chart, im = imgs.chart(rng)
            qa = rng.choice([q for q in chart_qas(chart, rng) if q.qtype != "chart_describe"])
            caps = ["rec", "math"] if qa.qtype in ("bar_value", "line_value", "line_max", "line_min") else ["rec"]
        else:
            scene, im = imgs.scene(rng)
            qa = scene_qas(scene, rng, 1, 0.4)[0]
            caps = {"count": ["rec", "math"], "describe": ["rec", "gen"]}.get(qa.qtype, ["rec"])
        name = f"v1_{i}"
        imgs.save(im, f"benchmarks/mmvet/images/{name}.png")
        answer = qa.reference if qa.answer == "absent" or qa.qtype in ("describe", "chart_describe") else qa.answer
        items[name] = {"imagename": f"{name}.png", "capability": caps, "question": qa.question, "answer": answer,
                       "answer_key": qa.answer}
    write_json(bench / "mmvet" / "mm-vet.json", items)
    return n


def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    return {"mmvet": build_mmvet(build.imgs, build.rng("mmvet"), build.folder, build.n_bench)}


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's questions and answers (for the world's tokenizer)."""
    for r in read_json(folder / "mmvet" / "mm-vet.json").values():
        yield r["question"]
        yield r["answer"]


# --------------------------------------------------------------------------------------------------------------
# the rubric judge's grading (the miniature world's judge, mmpref.judges.rubric: it grades against the truth)

def rubric_grade(inputs: dict, truth: dict) -> str:
    """The rubric judge's MM-Vet grade: 1.0 for an answer that matches the key, else its partial credit."""
    (prediction,) = need_inputs(inputs, "prediction")
    key = truth.get("answer") or inputs.get("gt_answer")
    if not key:
        raise ValueError("rubric judge: MM-Vet grading needs truth['answer'] or inputs['gt_answer']")
    correct, partial, _ = key_match(prediction, str(key))
    score = 1.0 if correct else round(partial, 1)
    return f"{score:.1f}"


BENCHMARK = Benchmark(
    name="mmvet", display="MM-Vet", headline="total", headline_name="MM-Vet total", order=0, unit="0–100", in_table2=True,
    paper_key="mmvet", grading=GRADING, judge_template="mmvet", run=_run, score=score, load=load_mmvet, check=check,
    check_template=lambda p: f"few-shot prompt read ({len(load_mmvet_prompt(p))} characters)",
    cost_inputs=cost_inputs, output_tokens=MMVET_MAX_TOKENS, default_items=218,   # output: a number 0.0-1.0
    build_miniature=build_miniature, build_order=4, miniature_texts=miniature_texts,
    judge_task=JUDGE_TASK, rubric_grade=rubric_grade,
    data=DataFile("mmvet", "MM-Vet", "09_evaluate", "evaluate.benchmarks.mmvet", "mm-vet",
                  ("mm-vet/mm-vet.json", "mm-vet/images/"),
                  "github yuweihao/MM-Vet release `mm-vet.zip` (mm-vet.json + images/)"),
    template_data=DataFile("judge_mmvet", "MM-Vet grading prompt (few-shot, inside the evaluator)", "09_evaluate",
                           "evaluate.judge_templates.mmvet", "mm-vet/mm-vet_evaluator.py",
                           ("mm-vet/mm-vet_evaluator.py (only its `prompt` string is read, never run)",),
                           "github yuweihao/MM-Vet `mm-vet_evaluator.py`"),
)

"""LLaVA-Bench (in the wild): the judge scores the GPT-4 reference and the model's answer 1-10.

Loader: hub dataset `liuhaotian/llava-bench-in-the-wild` (questions.jsonl, answers_gpt4.jsonl, context.jsonl, images/).
Prompt: the question as it is; greedy answers.
Judge prompt and parsing: haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py (`get_eval`: system message, temperature
0.2; the content layout; `parse_score`) with the category's rule from llava/eval/table/rule.json, commit
c121f0432da27facab705978f83c4ada465e46fd.
Metric: llava/eval/summarize_gpt_review.py at the same commit, as it prints each line: `k, round(s[1]/s[0]*100, 1),
round(s[0]*10, 1), round(s[1]*10, 1)` with s = the mean (reference, model) pair rounded to 3 decimals. Two differences,
both deliberate: a review without two scores (parse_score's [-1, -1]) is left out and counted instead of averaged in as
-1; a mean reference score of 0, where the script raises ZeroDivisionError, gives NaN.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, ItemProtocol, check_limit, existing, image_file, images_folder,
                                      need_judge, need_keys, optional_template, run_items, score_records, tidy_rows)
from mmpref.io import read_jsonl, write_jsonl
from mmpref.judges.base import JudgeRequest
from mmpref.judges.parsing import ParseError
from mmpref.judges.rubric import assess, explain, need_inputs, rating_1_10
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.questions import (QA, chart_qas, describe_chart, describe_scene, scene_negative_qas,
                                    scene_positive_qas)
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.scenes import Images

log = logging.getLogger(__name__)

GRADING = "llava@c121f04"  # records graded under another protocol are graded again
JUDGE_TASK = "grade_llava_bench"  # the JudgeRequest task of its gradings


class LlavaBenchItem(BaseModel):
    question_id: int | str
    image: str
    text: str
    category: str
    reference: str               # the GPT-4 answer (answers_gpt4.jsonl)
    context: str                 # the image caption(s) (context.jsonl)
    answer_key: str | None = None


def load_llava_bench(path: str | Path, limit: int | None = None,
                     image_dir: str | Path | None = None) -> list[LlavaBenchItem]:
    """LLaVA-Bench in-the-wild folder: questions.jsonl, answers_gpt4.jsonl (reference answers, matched by
    question_id), context.jsonl (captions, matched by image), images/."""
    check_limit(limit)
    folder = existing(path, "LLaVA-Bench")
    if folder.is_file():
        folder = folder.parent
    files = {n: folder / f"{n}.jsonl" for n in ("questions", "answers_gpt4", "context")}
    for name, file in files.items():
        if not file.is_file():
            raise ValueError(f"LLaVA-Bench: {file} not found")
    questions = read_jsonl(files["questions"])
    answers: dict[Any, str] = {}
    for i, rec in enumerate(read_jsonl(files["answers_gpt4"]), 1):
        need_keys(rec, ("question_id", "text"), f"{files['answers_gpt4']}: line {i}")
        answers[rec["question_id"]] = rec["text"]
    contexts: dict[str, str] = {}
    for i, rec in enumerate(read_jsonl(files["context"]), 1):
        need_keys(rec, ("image", "caption"), f"{files['context']}: line {i}")
        cap = rec["caption"]
        contexts[rec["image"]] = "\n".join(cap) if isinstance(cap, list) else str(cap)
    img_dir = images_folder(folder, image_dir)
    items = []
    for i, rec in enumerate(questions[:limit] if limit else questions, 1):
        where = f"{files['questions']}: line {i}"
        need_keys(rec, ("question_id", "image", "text", "category"), where)
        if rec["question_id"] not in answers:
            raise ValueError(f"{where}: question_id {rec['question_id']!r} has no answer in {files['answers_gpt4']}")
        if rec["image"] not in contexts:
            raise ValueError(f"{where}: image {rec['image']!r} has no caption in {files['context']}")
        items.append(LlavaBenchItem(question_id=rec["question_id"], image=image_file(img_dir, rec["image"], where),
                                    text=rec["text"], category=rec["category"], reference=answers[rec["question_id"]],
                                    context=contexts[rec["image"]],
                                    answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"])))
    if not items:
        raise ValueError(f"LLaVA-Bench: {files['questions']} holds no questions")
    return items


# --------------------------------------------------------------------------------------------------------------
# judge prompt, review parser and review (eval_gpt_review_bench.py)

LLAVA_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."


LLAVA_TEMPERATURE = 0.2


FALLBACK_LLAVA_RULE = {
    "role": "Assistant",
    "prompt": "The user asked the question above about an image, described for you in the context. Score both "
    "assistants from 1 to 10 for helpfulness, relevance, accuracy and detail. On the first line write only the two "
    "scores, for Assistant 1 and Assistant 2, separated by a space. Explain your scores from the next line on.",
}


def load_llava_rules(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    for key, rule in rules.items():
        if not isinstance(rule, dict) or "role" not in rule or "prompt" not in rule:
            raise ValueError(f"{path}: rule {key!r} needs 'role' and 'prompt'")
    return rules


def llava_rule_for(rules: dict[str, dict], category: str) -> dict:
    """LLaVA-Bench uses the rule 'llava_bench_<category>' (conv, detail, complex)."""
    key = f"llava_bench_{category}"
    if key not in rules:
        raise ValueError(f"no LLaVA rule {key!r} (have {sorted(rules)})")
    return rules[key]


def render_llava_bench(question: str, context: str, answer_1: str, answer_2: str, rule: dict | None = None) -> tuple[str, str]:
    """The eval_gpt_review_bench content: context, question, the two answers, then the rule prompt."""
    rule = rule or FALLBACK_LLAVA_RULE
    role, prompt = rule["role"], rule["prompt"]
    content = (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer_1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer_2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )
    return LLAVA_SYSTEM, content


def parse_llava_score(review: str) -> list[float]:
    """LLaVA `eval_gpt_review_bench.parse_score` (haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py, commit
    c121f0432da27facab705978f83c4ada465e46fd): the first line, commas -> spaces, split on single spaces, must be
    exactly two floats. Where LLaVA returns [-1, -1] (and summarize_gpt_review averages that in) this raises
    ParseError: the review is recorded as failed."""
    try:
        score_pair = review.split("\n")[0]
        score_pair = score_pair.replace(",", " ")
        sp = score_pair.split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
    except Exception as exc:  # noqa: BLE001 - LLaVA swallows every error the same way
        raise ParseError(f"LLaVA-Bench review has no score pair on its first line ({exc}): {review[:80]!r}") from None
    raise ParseError(f"LLaVA-Bench review's first line is not two scores: {review[:80]!r}")


def grade_llava_bench(
    judge: Judge,
    question: str,
    context: str,
    reference_answer: str,
    answer: str,
    rule: dict | None = None,
    truth: dict | None = None,
) -> tuple[float | None, float | None, str]:
    """LLaVA-Bench review as eval_gpt_review_bench.py asks it (LLaVA's system message, temperature 0.2, one call):
    (reference score, model score), the reference being Assistant 1; (None, None) when the first line does not hold
    two scores (LLaVA's [-1, -1]): a failed review, never averaged in."""
    system, prompt = render_llava_bench(question, context, reference_answer, answer, rule)
    req = JudgeRequest(task=JUDGE_TASK, system=system, prompt=prompt,
                       inputs={"question": question, "context": context, "reference_answer": reference_answer,
                               "answer": answer},
                       truth=truth or {}, temperature=LLAVA_TEMPERATURE)
    text = judge.complete(req, check=parse_llava_score).text  # an unparsable review is not cached
    try:
        s_ref, s_model = parse_llava_score(text)
    except ParseError as exc:
        log.info("%s: unparsable LLaVA-Bench review (%s)", judge.judge_id, exc)
        return None, None, text
    return s_ref, s_model, text


# --------------------------------------------------------------------------------------------------------------
# metric (summarize_gpt_review.py)

def _llava_line(pairs: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(relative score, reference x 10, model x 10) of one printed line of summarize_gpt_review."""
    stats = np.asarray(pairs).mean(0).tolist()
    stats = [round(x, 3) for x in stats]
    rel = round(stats[1] / stats[0] * 100, 1) if stats[0] else float("nan")
    return rel, round(stats[0] * 10, 1), round(stats[1] * 10, 1)


def llava_bench_scores(pairs: Sequence[tuple[float, float] | None], categories: Sequence[str]) -> dict[str, Score]:
    """`pairs` = (reference score, model score) per question, None for a failed review. relative_score (%),
    reference_score and model_score (mean x 10, as printed), each also per category ("<metric>_<category>")."""
    if len(pairs) != len(categories):
        raise ValueError(f"LLaVA-Bench: {len(pairs)} score pairs for {len(categories)} questions")
    kept = [((float(p[0]), float(p[1])), c) for p, c in zip(pairs, categories) if p is not None]
    if not kept:
        raise ValueError("LLaVA-Bench: no reviewed items to score")
    out: dict[str, Score] = {}
    groups = [("", [p for p, _ in kept])] + [(f"_{cat}", [p for p, c in kept if c == cat])
                                               for cat in sorted({c for _, c in kept})]
    for suffix, sel in groups:
        rel, ref, model = _llava_line(sel)
        out[f"relative_score{suffix}"] = Score(rel, len(sel))
        out[f"reference_score{suffix}"] = Score(ref, len(sel))
        out[f"model_score{suffix}"] = Score(model, len(sel))
    return out


def score(recs: Sequence[dict]) -> dict[str, Score]:
    return llava_bench_scores([None if r.get("failed") else tuple(r["scores"]) for r in recs],
                              [r["category"] for r in recs])



# --------------------------------------------------------------------------------------------------------------
# protocol

def run_llava_bench(items: Sequence[LlavaBenchItem], generate: GenerateFn, judge: Any,
                    out_jsonl: str | Path, model: str, rule_path: str | Path | None = None,
                    chunk_size: int = DEFAULT_CHUNK,
                    answers_from: str | Path | None = None) -> list[dict]:
    """LLaVA-Bench: the judge scores the GPT-4 reference (Assistant 1) and the model (Assistant 2) 1..10 with the
    category's rule from rule.json (`rule_path`; the judges' fallback rule when None)."""
    judge_id = need_judge(judge, "llava_bench")
    rules = load_llava_rules(rule_path) if rule_path is not None else None
    if rules is not None:
        for cat in sorted({it.category for it in items}):
            llava_rule_for(rules, cat)  # fail before any generation when a category has no rule

    def grade(it: LlavaBenchItem, answers: list[str]) -> dict:
        rule = llava_rule_for(rules, it.category) if rules is not None else None
        truth = {"answer": it.answer_key, "reference": it.reference} if it.answer_key else {}
        s_ref, s_model, raw = grade_llava_bench(judge, it.text, it.context, it.reference, answers[0],
                                                       rule=rule, truth=truth)
        failed = s_ref is None or s_model is None
        return {"scores": None if failed else [s_ref, s_model], "failed": failed, "judge_raw": raw}

    protocol = ItemProtocol("llava_bench", key=lambda it: str(it.question_id),
                            requests=lambda it: [ChatRequest(turns=[it.text], image=it.image)],
                            describe=lambda it: {"question_id": it.question_id, "category": it.category}, grade=grade,
                            grading=GRADING)
    recs = run_items(protocol, items, generate, out_jsonl, model, judge, chunk_size, answers_from)
    unparsed = sum(bool(r.get("failed")) for r in recs)
    if unparsed:
        log.warning("llava_bench: %d reviews without two scores on the first line (failed: left out and counted)",
                    unparsed)
    return tidy_rows(model, "llava_bench", score_records("llava_bench", recs), judge_id)


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_llava_bench(load_llava_bench(data_path, limit), generate, judge, out_jsonl, model, rule_path=template,
                           **options)


def check(path: Path, params: Any = None) -> str:
    return f"first {len(load_llava_bench(path, limit=3))} items and images read"


def check_rules(path: Path) -> str:
    rules = load_llava_rules(path)
    for cat in ("conv", "detail", "complex"):
        llava_rule_for(rules, cat)
    return f"{len(rules)} rules"


def cost_inputs(path: Path | None, answer: str, template: Path | None, limit: int | None,
                default_chars: tuple[int, int, int] = (80, 500, 900)) -> tuple[int, list[str], str]:
    """The judge-call texts for one model (answers at `answer`); the file's questions, references and captions when
    readable (images not needed), else BENCHMARK.default_items items of `default_chars` (question, context,
    reference) characters."""
    notes = []
    try:
        folder = path if path.is_dir() else path.parent
        answers = {r["question_id"]: r["text"] for r in read_jsonl(folder / "answers_gpt4.jsonl")}
        contexts = {r["image"]: r["caption"] for r in read_jsonl(folder / "context.jsonl")}
        items = [(r["text"], "\n".join(c) if isinstance(c := contexts.get(r["image"], ""), list) else str(c),
                  answers.get(r["question_id"], ""), r["category"]) for r in read_jsonl(folder / "questions.jsonl")]
        if not items:
            raise ValueError("no questions")
    except Exception:  # noqa: BLE001 - absent or unreadable: estimate from defaults
        q, c, ref = ("x" * n for n in default_chars)
        items = [(q, c, ref, "conv")] * BENCHMARK.default_items
        notes.append(f"default {BENCHMARK.default_items} items (file absent)")
    rules = optional_template(load_llava_rules, template, notes)
    items = items[:limit] if limit else items
    texts = []
    for question, context, reference, category in items:
        system, prompt = render_llava_bench(question, context, reference, answer,
                                            (rules or {}).get(f"llava_bench_{category}"))
        texts.append(system + prompt)
    return len(items), texts, "; ".join(notes)


# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def build_llava_bench(imgs: Images, rng: random.Random, bench: Path, n: int, name: str = "llava_bench") -> int:
    """LLaVA-Bench (in-the-wild) layout in ``bench/name``: three questions per picture — conv, detail, complex.
    ``name="llava_bench_dev"`` writes the dev split that hyper-parameters are chosen on (other pictures)."""
    folder = name
    questions, answers, contexts = [], [], []
    i = 0
    while len(questions) < n:
        name = f"{i:03d}.png"
        if i % 2 == 0:
            chart, im = imgs.chart(rng)
            caption = describe_chart(chart)
            qas = {q.qtype: q for q in chart_qas(chart, rng)}
            conv = qas["bar_value" if chart.kind == "bar" else "line_value"]
            detail = QA("Describe the chart in detail.", chart.kind, caption, "chart_describe")
            complex_ = qas["bar_tallest" if chart.kind == "bar" else "line_trend"]
        else:
            scene, im = imgs.scene(rng)
            caption = describe_scene(scene)
            pos = {q.qtype: q for q in scene_positive_qas(scene, rng)}
            conv = pos["color"]
            detail = QA("Describe the image in detail.", pos["describe"].answer, caption, "describe")
            complex_ = rng.choice([pos["count"], scene_negative_qas(scene, rng)[-1]])
        imgs.save(im, f"benchmarks/{folder}/images/{name}")
        contexts.append({"id": name.removesuffix(".png"), "image": name, "caption": caption})
        for cat, qa in (("conv", conv), ("detail", detail), ("complex", complex_)):
            if len(questions) >= n:
                break
            qid = len(questions)
            questions.append({"question_id": qid, "image": name, "text": qa.question, "category": cat,
                              "answer_key": qa.answer})
            answers.append({"question_id": qid, "text": qa.reference})
        i += 1
    d = bench / folder
    write_jsonl(d / "questions.jsonl", questions)
    write_jsonl(d / "answers_gpt4.jsonl", answers)
    write_jsonl(d / "context.jsonl", contexts)
    return len(questions)


def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    """The benchmark, then its dev split (other pictures), where the DPO search chooses hyper-parameters."""
    return {name: build_llava_bench(build.imgs, build.rng(name), build.folder, build.n_bench, name=name)
            for name in ("llava_bench", "llava_bench_dev")}


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's questions, reference answers and captions (for the world's tokenizer; the dev split's
    are other pictures' of the same kinds)."""
    for name in ("questions", "answers_gpt4"):
        for r in read_jsonl(folder / "llava_bench" / f"{name}.jsonl"):
            yield r["text"]
    for r in read_jsonl(folder / "llava_bench" / "context.jsonl"):
        yield r["caption"]


# --------------------------------------------------------------------------------------------------------------
# the rubric judge's grading (the miniature world's judge, mmpref.judges.rubric: it grades against the truth)

def rubric_grade(inputs: dict, truth: dict) -> str:
    """The rubric judge's LLaVA-Bench review: "s1 s2" (`rating_1_10` of the reference and of the model's answer), then
    its reasons per assistant."""
    ref_answer, answer = need_inputs(inputs, "reference_answer", "answer")
    key = truth.get("answer")
    ref = truth.get("reference") or ref_answer
    a_ref, a_model = (assess(text, key, ref, inputs.get("question")) for text in (ref_answer, answer))
    s1, s2 = rating_1_10(a_ref), rating_1_10(a_model)
    return f"{s1} {s2}\nAssistant 1: {explain(a_ref, key)}\nAssistant 2: {explain(a_model, key)}"


BENCHMARK = Benchmark(
    name="llava_bench", display="LLaVA-bench", headline="relative_score", headline_name="LLaVA-Bench relative score",
    order=1, unit="%", in_table2=True, paper_key="llava_bench", grading=GRADING, judge_template="llava_bench", run=_run,
    score=score, load=load_llava_bench, check=check, check_template=check_rules, cost_inputs=cost_inputs,
    output_tokens=200, default_items=60,   # output: two scores on the first line, then the explanation
    build_miniature=build_miniature, build_order=5, miniature_texts=miniature_texts,
    judge_task=JUDGE_TASK, rubric_grade=rubric_grade,
    data=DataFile("llava_bench", "LLaVA-Bench (in-the-wild)", "09_evaluate", "evaluate.benchmarks.llava_bench",
                  "llava-bench-in-the-wild",
                  ("llava-bench-in-the-wild/{questions,context,answers_gpt4}.jsonl", "llava-bench-in-the-wild/images/"),
                  "hub dataset `liuhaotian/llava-bench-in-the-wild` (questions.jsonl, context.jsonl, "
                  "answers_gpt4.jsonl, images/)"),
    template_data=DataFile("judge_llava_bench", "LLaVA-Bench judge rules", "09_evaluate",
                           "evaluate.judge_templates.llava_bench", "llava-bench-in-the-wild/rule.json",
                           ("llava-bench-in-the-wild/rule.json",), "github haotian-liu/LLaVA `llava/eval/table/rule.json`"),
)

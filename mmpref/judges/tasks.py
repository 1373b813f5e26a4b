"""High-level judge tasks shared by annotation and evaluation.

Each function renders the prompt, asks the judge, parses the reply with the matching parser and retries a malformed
reply as a NEW call (attempt number + 1, so it is not answered from the cache).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel

from mmpref.judges import prompts
from mmpref.judges.base import Judge, JudgeRequest
from mmpref.judges.parsing import (
    AttributeScores,
    ParseError,
    parse_alpaca_ranking,
    parse_annotation,
    parse_fastchat_rating,
    parse_llava_score,
    parse_mmvet_score,
)

log = logging.getLogger(__name__)

__all__ = ["AttributeScores", "Annotation", "annotate_responses", "gold_answer", "grade_single",
           "grade_pairwise_alpaca", "grade_mmvet", "grade_llava_bench"]


class Annotation(BaseModel):
    status: Literal["ok", "failed"]
    reasoning: str
    scores: list[AttributeScores] | None
    raw: str
    judge: str
    error: str | None = None


def _images(image: str | Path | None) -> list[str]:
    return [str(image)] if image else []


def _ask_until_parsed(judge: Judge, request: JudgeRequest, parse: Callable[[str], Any], tries: int, what: str):
    """Ask up to `tries` times until `parse` accepts the reply; each retry is a new call (attempt + 1, so it is not
    answered from the cache). Returns (parsed value or None, last reply text, last parse error or None)."""
    text, error = "", None
    for attempt in range(tries):
        text = judge.complete(request.model_copy(update={"attempt": attempt})).text
        try:
            return parse(text), text, None
        except ParseError as exc:
            error = f"attempt {attempt}: {exc}"
            log.info("%s: unparsable %s (%s)", judge.judge_id, what, error)
    return None, text, error


def annotate_responses(
    judge: Judge,
    question: str,
    image: str | Path | None,
    responses: list[str],
    truth: dict | None = None,
    max_retries: int = 2,
) -> Annotation:
    """Rate every response 0..4 on the five HelpSteer attributes in one judge call (reasoning first).

    A malformed reply is retried up to `max_retries` times; after that the result has status "failed" and keeps the
    raw text and the parse error (it is never scored 0).
    """
    if not responses:
        raise ValueError("annotate_responses: no responses to rate")
    req = JudgeRequest(task="annotate", system=prompts.ANNOTATION_SYSTEM,
                       prompt=prompts.render_annotation_prompt(question, responses), images=_images(image),
                       inputs={"question": question, "responses": list(responses)}, truth=truth or {},
                       json_schema="annotation")
    parsed, raw, error = _ask_until_parsed(judge, req, lambda t: parse_annotation(t, len(responses)),
                                           max_retries + 1, "annotation")
    if parsed is None:
        return Annotation(status="failed", reasoning="", scores=None, raw=raw, judge=judge.judge_id, error=error)
    reasoning, scores = parsed
    return Annotation(status="ok", reasoning=reasoning, scores=scores, raw=raw, judge=judge.judge_id)


def gold_answer(judge: Judge, question: str, image: str | Path | None, truth: dict | None = None) -> str:
    """The judge's own answer to the question (SFT-gold data)."""
    req = JudgeRequest(task="answer", system=prompts.GOLD_SYSTEM, prompt=prompts.render_gold_prompt(question),
                       images=_images(image), inputs={"question": question}, truth=truth or {})
    text = judge.complete(req).text.strip()
    if not text:
        raise ValueError(f"{judge.judge_id} gave an empty gold answer to {question[:80]!r}")
    return text


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
    system, prompt, _ = prompts.render_fastchat_single(question_turns, answers, reference, multi_turn, templates)
    req = JudgeRequest(task="grade_single", system=system, prompt=prompt, images=_images(image),
                       inputs={"question_turns": list(question_turns), "answers": list(answers),
                               "reference": reference, "multi_turn": multi_turn},
                       truth=truth or {})
    judgment = judge.complete(req).text
    return parse_fastchat_rating(judgment), judgment


def grade_pairwise_alpaca(
    judge: Judge,
    instruction: str,
    output_1: str,
    output_2: str,
    truth: dict | None = None,
    template: str | None = None,
    max_retries: int = 0,
) -> tuple[float | None, str]:
    """AlpacaEval pairwise preference with alpaca_eval's ranking_parser: 1.0 (output_1 better) or 2.0 (output_2
    better); None when the reply does not parse (alpaca_eval's NaN, dropped from the win rate). alpaca_eval asks once
    (`max_retries` 0); each retry is a new call."""
    system, prompt = prompts.render_alpaca(instruction, output_1, output_2, template)
    req = JudgeRequest(task="grade_pairwise", system=system, prompt=prompt,
                       inputs={"instruction": instruction, "output_1": output_1, "output_2": output_2},
                       truth=truth or {})
    preference, text, _ = _ask_until_parsed(judge, req, parse_alpaca_ranking, max_retries + 1, "AlpacaEval ranking")
    return preference, text


MMVET_TRIES = 5  # replies the evaluator reads: the first and four retries


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
    temperature 0.0; while the reply's first token is not a grade in 0..1, ask again with "Predict the correctness of
    the answer (digit): " appended and the temperature raised by 0.5. The evaluator reads five replies; after the
    fifth it makes a sixth call at temperature 2.5 (which OpenAI rejects), never reads it and scores 0.0. Here the
    grading stops after the five read replies and returns None (a failed grading, left out of the score and counted),
    never 0.0. Returns (grade or None, the last reply)."""
    text = ""
    for attempt in range(MMVET_TRIES):
        req = JudgeRequest(task="grade_mmvet", system=prompts.MMVET_SYSTEM,
                           prompt=prompts.render_mmvet_prompt(question, gt_answer, prediction, header,
                                                              retry=attempt > 0),
                           inputs={"question": question, "gt_answer": gt_answer, "prediction": prediction},
                           truth=truth or {}, attempt=attempt, temperature=0.5 * attempt)
        text = judge.complete(req).text
        try:
            return parse_mmvet_score(text), text
        except ParseError as exc:
            log.info("%s: unparsable MM-Vet grade (attempt %d: %s)", judge.judge_id, attempt, exc)
    return None, text


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
    system, prompt = prompts.render_llava_bench(question, context, reference_answer, answer, rule)
    req = JudgeRequest(task="grade_llava_bench", system=system, prompt=prompt,
                       inputs={"question": question, "context": context, "reference_answer": reference_answer,
                               "answer": answer},
                       truth=truth or {}, temperature=prompts.LLAVA_TEMPERATURE)
    text = judge.complete(req).text
    try:
        s_ref, s_model = parse_llava_score(text)
    except ParseError as exc:
        log.info("%s: unparsable LLaVA-Bench review (%s)", judge.judge_id, exc)
        return None, None, text
    return s_ref, s_model, text

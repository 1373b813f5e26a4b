"""Judge tasks of annotation (ratings, gold answers) and `ask_until_parsed`, which benchmark graders use too.

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
from mmpref.judges.parsing import AttributeScores, ParseError, parse_annotation

log = logging.getLogger(__name__)

__all__ = ["AttributeScores", "Annotation", "annotate_responses", "gold_answer", "ask_until_parsed",
           "annotation_request", "gold_request"]


class Annotation(BaseModel):
    status: Literal["ok", "failed"]
    reasoning: str
    scores: list[AttributeScores] | None
    raw: str
    judge: str
    error: str | None = None


def _images(image: str | Path | None) -> list[str]:
    return [str(image)] if image else []


def ask_until_parsed(judge: Judge, request: JudgeRequest, parse: Callable[[str], Any], tries: int, what: str):
    """Ask up to `tries` times until `parse` accepts the reply; each retry is a new call (attempt + 1, so it is not
    answered from the cache). Returns (parsed value or None, last reply text, last parse error or None)."""
    text, error = "", None
    for attempt in range(tries):
        text = judge.complete(request.model_copy(update={"attempt": attempt}), check=parse).text
        try:
            return parse(text), text, None
        except ParseError as exc:
            error = f"attempt {attempt}: {exc}"
            log.info("%s: unparsable %s (%s)", judge.judge_id, what, error)
    return None, text, error


def annotation_request(question: str, image: str | Path | None, responses: list[str],
                       truth: dict | None = None) -> JudgeRequest:
    """The first (attempt 0) request of `annotate_responses` (what a batch job submits ahead)."""
    if not responses:
        raise ValueError("annotate_responses: no responses to rate")
    return JudgeRequest(task="annotate", system=prompts.ANNOTATION_SYSTEM,
                        prompt=prompts.render_annotation_prompt(question, responses), images=_images(image),
                        inputs={"question": question, "responses": list(responses)}, truth=truth or {},
                        json_schema="annotation")


def gold_request(question: str, image: str | Path | None, truth: dict | None = None) -> JudgeRequest:
    """The request of `gold_answer`."""
    return JudgeRequest(task="answer", system=prompts.GOLD_SYSTEM, prompt=prompts.render_gold_prompt(question),
                        images=_images(image), inputs={"question": question}, truth=truth or {})


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
    req = annotation_request(question, image, responses, truth)
    parsed, raw, error = ask_until_parsed(judge, req, lambda t: parse_annotation(t, len(responses)),
                                           max_retries + 1, "annotation")
    if parsed is None:
        return Annotation(status="failed", reasoning="", scores=None, raw=raw, judge=judge.judge_id, error=error)
    reasoning, scores = parsed
    return Annotation(status="ok", reasoning=reasoning, scores=scores, raw=raw, judge=judge.judge_id)


def gold_answer(judge: Judge, question: str, image: str | Path | None, truth: dict | None = None) -> str:
    """The judge's own answer to the question (SFT-gold data)."""
    text = judge.complete(gold_request(question, image, truth), check=_non_empty).text.strip()
    if not text:
        raise ParseError(f"{judge.judge_id} gave an empty gold answer to {question[:80]!r}")
    return text


def _non_empty(text: str) -> None:
    if not text.strip():
        raise ParseError("empty gold answer")

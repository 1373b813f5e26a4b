"""Parsers for judge replies: our annotation JSON, FastChat ratings, AlpacaEval rankings, LLaVA-Bench and MM-Vet scores.

Every parser either returns a validated value or raises `ParseError` (a ValueError) saying what was wrong, except
FastChat's rating parser, which returns FastChat's own -1 for an unparsable judgment (show_result drops it). The
benchmark parsers follow the official code named in their docstrings; a reply they reject is a failed grading, never
a default score.
"""

from __future__ import annotations

import ast
import json
import math
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


class ParseError(ValueError):
    """A judge reply that does not have the expected format."""


class AttributeScores(BaseModel):
    """HelpSteer ratings of one response: integers 0..4 (strict: 3.0 or "3" are rejected)."""

    model_config = ConfigDict(extra="forbid")
    helpfulness: int = Field(ge=0, le=4, strict=True)
    correctness: int = Field(ge=0, le=4, strict=True)
    coherence: int = Field(ge=0, le=4, strict=True)
    complexity: int = Field(ge=0, le=4, strict=True)
    verbosity: int = Field(ge=0, le=4, strict=True)

    def quality(self) -> int:
        """The paper's pairing quality: helpfulness + correctness + coherence."""
        return self.helpfulness + self.correctness + self.coherence


class AnnotationPayload(BaseModel):
    """The JSON object an annotation judge must return. `reasoning` is filled when the backend is restricted to
    JSON output (structured output), so the step-by-step reasoning still comes first."""

    reasoning: str | None = None
    responses: list[AttributeScores]


class AnnotationSchema(BaseModel):
    """Structured-output schema sent to API judges (json_schema="annotation"): reasoning first, then the ratings."""

    reasoning: str
    responses: list[AttributeScores]


SCHEMAS: dict[str, type[BaseModel]] = {"annotation": AnnotationSchema}


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json_object(text: str) -> tuple[str, dict]:
    """Split a reply into (reasoning, last JSON object).

    Looks first for a fenced ```json block, then for the last top-level `{...}` that parses as JSON.
    The reasoning is the text before the JSON block (the whole reply when it is pure JSON: then "").
    """
    if not isinstance(text, str) or not text.strip():
        raise ParseError("empty judge reply: expected reasoning followed by a JSON object")
    fences = list(_FENCE.finditer(text))
    for m in reversed(fences):
        body = m.group(1).strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return text[: m.start()].strip(), obj
    decoder = json.JSONDecoder()
    found: tuple[int, dict] | None = None
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found = (i, obj)
        i = text.find("{", end)
    if found is None:
        raise ParseError(f"no JSON object found in judge reply (starts {text[:80]!r})")
    start, obj = found
    return text[:start].strip(), obj


def parse_annotation(text: str, n_responses: int) -> tuple[str, list[AttributeScores]]:
    """Parse an annotation reply into (reasoning, one AttributeScores per response), validated.

    Raises ParseError when there is no JSON, the count differs from `n_responses`, or a score is not an int in 0..4.
    """
    reasoning, obj = extract_json_object(text)
    try:
        payload = AnnotationPayload.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()[:5]
        )
        raise ParseError(f"annotation JSON does not match the schema: {problems}") from None
    if len(payload.responses) != n_responses:
        raise ParseError(f"annotation JSON rates {len(payload.responses)} responses, expected {n_responses}")
    if payload.reasoning:
        reasoning = (reasoning + "\n" + payload.reasoning).strip()
    return reasoning, payload.responses


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
        return float(ast.literal_eval(match.groups()[0]))
    return -1.0


def parse_alpaca_ranking(completion: str, model_1_name: str = "model_1") -> float:
    """AlpacaEval's `ranking_parser` (tatsu-lab/alpaca_eval src/alpaca_eval/completion_parsers.py, commit
    cd543a149df89434d8a54582c0151c0b945c3d20), used by the alpaca_eval_gpt4 annotator: the whole completion is read
    with `ast.literal_eval`, and the rank of the first entry whose "model" is `model_1_name` is the preference, which
    must be 1 or 2. So tied ranks give model_1's rank (both rank 1 -> 1.0), and a ranking wrapped in other text does
    not parse. Where alpaca_eval returns NaN (any exception; an empty completion raises and is dropped the same way)
    this raises ParseError."""
    if completion == "":
        raise ParseError("empty AlpacaEval completion")
    try:
        ordered_completions = ast.literal_eval(completion) if isinstance(completion, str) else completion
        rank = [c for c in ordered_completions if c["model"] == model_1_name][0]["rank"]
        assert rank in [1, 2]
        return float(rank)
    except Exception as exc:  # noqa: BLE001 - alpaca_eval catches every error the same way
        raise ParseError(f"AlpacaEval ranking_parser rejects {str(completion)[:120]!r} "
                         f"({type(exc).__name__}: {exc})") from None


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

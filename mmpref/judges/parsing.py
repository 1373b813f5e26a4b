"""Parsers for judge replies: our annotation JSON, FastChat ratings, AlpacaEval rankings, LLaVA-Bench and MM-Vet scores.

Every parser either returns a validated value or raises `ParseError` (a ValueError) saying what was wrong, except the
two that copy an official script's behaviour of returning a sentinel (-1) for unparsable text.
"""

from __future__ import annotations

import ast
import json
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


# FastChat llm_judge/common.py single-answer grading patterns.
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


def _literal_lists(text: str):
    """Yield python literals of every balanced `[...]` span in text, last first."""
    spans = []
    for start in (i for i, c in enumerate(text) if c == "["):
        depth = 0
        for j in range(start, len(text)):
            if text[j] == "[":
                depth += 1
            elif text[j] == "]":
                depth -= 1
                if depth == 0:
                    spans.append((start, j + 1))
                    break
    for start, end in sorted(spans, key=lambda s: (s[1] - s[0]), reverse=True):
        try:
            yield ast.literal_eval(text[start:end])
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue


def parse_alpaca_ranking(completion: str, model_1_name: str = "model_1", model_2_name: str = "model_2") -> float:
    """AlpacaEval (v1, alpaca_eval_gpt4) ranking parser: the rank of model_1 is the preference.

    Returns 1.0 (output_1 preferred) or 2.0 (output_2 preferred); 1.5 when both are given the same rank.
    The completion should be a python list of {'model', 'rank'} dicts; when it carries extra text the largest
    python list literal in it is used. Raises ParseError otherwise.
    """
    try:
        candidates = [ast.literal_eval(completion.strip())]
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        candidates = list(_literal_lists(completion))
    for ranking in candidates:
        if not isinstance(ranking, (list, tuple)) or not all(isinstance(c, dict) for c in ranking):
            continue
        ranks = {c.get("model"): c.get("rank") for c in ranking}
        if model_1_name not in ranks:
            continue
        r1 = ranks[model_1_name]
        if r1 not in (1, 2):
            raise ParseError(f"AlpacaEval ranking gives {model_1_name} rank {r1!r}, expected 1 or 2")
        if ranks.get(model_2_name) == r1:
            return 1.5
        return float(r1)
    raise ParseError(f"no AlpacaEval ranking list with {model_1_name!r} found in {completion[:120]!r}")


def parse_llava_score(review: str) -> list[float]:
    """LLaVA `eval_gpt_review*.parse_score`: first line holds two scores 'a b' (comma allowed); else [-1, -1]."""
    try:
        score_pair = review.split("\n")[0]
        score_pair = score_pair.replace(",", " ")
        sp = score_pair.split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        return [-1.0, -1.0]
    except Exception:  # noqa: BLE001 - LLaVA swallows every error the same way
        return [-1.0, -1.0]


def parse_mmvet_score(content: str) -> float:
    """MM-Vet grader: the whole reply must be a float in [0, 1]; otherwise ParseError (the grader retries)."""
    try:
        score = float(content.strip())
    except (ValueError, AttributeError):
        raise ParseError(f"MM-Vet grade is not a number: {str(content)[:80]!r}") from None
    if not 0.0 <= score <= 1.0:
        raise ParseError(f"MM-Vet grade {score} is outside 0.0..1.0")
    return score

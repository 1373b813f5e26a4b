"""The annotation reply parser (reasoning, then JSON with the five HelpSteer ratings per response) and `ParseError`.

A parser either returns a validated value or raises `ParseError` (a ValueError) saying what was wrong; a rejected
reply is a failed annotation, never a default score. Each benchmark's judge-reply parser lives in its module under
mmpref/evaluate/.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mmpref import ratings


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
        """The paper's pairing quality (mmpref.ratings.quality: helpfulness + correctness + coherence)."""
        return ratings.quality(self)


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

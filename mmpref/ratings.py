"""The HelpSteer ratings every stage reads, with one home: the five attributes, the paper's pairing quality and
SteerLM's rating condition. A leaf module (it imports nothing of mmpref), so the judges, the pairing, the methods and
the figures all read it without import cycles.

- ATTRIBUTES: the five HelpSteer attributes the annotation judge rates 0..4 (paper section 3.1).
- quality = helpfulness + correctness + coherence (0..12; paper section 3.2): DPO's chosen/rejected and rejection
  sampling's top response.
- STEERLM_SUFFIX: the rating condition appended to a SteerLM question (the authors' prompt, findalexli/mllm-dpo).
"""

from __future__ import annotations

from typing import Any, Mapping

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
QUALITY_ATTRIBUTES = ("helpfulness", "correctness", "coherence")

STEERLM_SUFFIX = (
    "\nPlease answer the question such that your response is in the following attributes in 5-point Likert scale:\n"
    "Helpfulness:{helpfulness},Correctness:{correctness},Coherence:{coherence},"
    "Complexity:{complexity},Verbosity:{verbosity}"
)


def rating(scores: Any, attr: str) -> int:
    """One attribute's rating of a response (a dict or an object with the attributes as fields), checked 0..4."""
    try:
        value = scores[attr] if isinstance(scores, Mapping) else getattr(scores, attr)
    except (KeyError, AttributeError):
        raise ValueError(f"ratings lack attribute {attr!r}: {scores!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        raise ValueError(f"attribute {attr!r} must be an integer 0..4, got {value!r}")
    return value


def attributes(scores: Any) -> dict[str, int]:
    """The five ratings of one response as a plain dict (validated 0..4)."""
    return {a: rating(scores, a) for a in ATTRIBUTES}


def quality(scores: Any) -> int:
    """helpfulness + correctness + coherence of one response's ratings (validated 0..4 each)."""
    return sum(rating(scores, a) for a in QUALITY_ATTRIBUTES)


def steerlm_question(question: str, attrs: Mapping[str, int]) -> str:
    """The question with the SteerLM attribute condition appended."""
    return question + STEERLM_SUFFIX.format(**{a: int(attrs[a]) for a in ATTRIBUTES})

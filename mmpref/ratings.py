"""The HelpSteer ratings every stage reads, with one home: the five attributes, the paper's pairing quality and
SteerLM's rating condition. A leaf module (it imports nothing of mmpref), so the judges, the pairing, the methods and
the figures all read it without import cycles.

- ATTRIBUTES: the five HelpSteer attributes the annotation judge rates 0..4 (paper section 3.1).
- quality = helpfulness + correctness + coherence (0..12; paper section 3.2): DPO's chosen/rejected and rejection
  sampling's top response.
- RATINGS_LINE: the five ratings on one line (`ratings_line`, `parse_ratings_line`).
- STEERLM_SUFFIX: the rating condition appended to a SteerLM question (the authors' prompt, findalexli/mllm-dpo).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
QUALITY_ATTRIBUTES = ("helpfulness", "correctness", "coherence")

# the five ratings as one line, the authors' SteerLM format (also the critique reward model's score line)
RATINGS_LINE = ("Helpfulness:{helpfulness},Correctness:{correctness},Coherence:{coherence},"
                "Complexity:{complexity},Verbosity:{verbosity}")
STEERLM_SUFFIX = ("\nPlease answer the question such that your response is in the following attributes in 5-point "
                  "Likert scale:\n" + RATINGS_LINE)
_RATINGS_LINE_RE = re.compile(r"\s*,\s*".join(rf"{a.capitalize()}\s*:\s*(\d+)" for a in ATTRIBUTES))


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


def ratings_line(attrs: Mapping[str, int]) -> str:
    """The five ratings as RATINGS_LINE ("Helpfulness:3,Correctness:2,...")."""
    return RATINGS_LINE.format(**{a: int(attrs[a]) for a in ATTRIBUTES})


def parse_ratings_line(text: str) -> dict[str, int]:
    """The ratings of the last complete RATINGS_LINE in `text`, validated 0..4; ValueError when there is none."""
    found = list(_RATINGS_LINE_RE.finditer(text))
    if not found:
        raise ValueError(f"no ratings line ({RATINGS_LINE.split(',')[0]},...) in {text[-120:]!r}")
    return attributes(dict(zip(ATTRIBUTES, map(int, found[-1].groups()))))

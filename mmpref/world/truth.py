"""The miniature world's ground truth: when is an answer right (the key-answer rule), and the simulated human
preference labels that stand in for LLaVA-RLHF's crowd labels in Figure 3."""

from __future__ import annotations

import random
import re
from typing import Iterable

from mmpref.pairing import prompt_seed

_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
NEGATIONS = {"no", "not", "none", "nothing", "neither", "nor", "never"}


def tokens(text: str) -> list[str]:
    """Normalised word tokens: lowercase, punctuation dropped, "n't" read as "not", decimals kept."""
    text = text.lower().replace("n't", " not").replace("’", "'")
    return _TOKEN.findall(text)


def _as_number(tok: str) -> float | None:
    return float(tok) if _NUMBER.match(tok) else None


def contains_phrase(seq: list[str], sub: list[str]) -> bool:
    n = len(sub)
    return n > 0 and any(seq[i : i + n] == sub for i in range(len(seq) - n + 1))


def key_match(response: str, key: str) -> tuple[bool, float, str]:
    """Decide correctness by the key convention. Returns (correct, partial credit 0..1, what the response claims)."""
    toks = tokens(response)
    key_n = " ".join(tokens(key))
    if not toks:
        return False, 0.0, "nothing"
    if key_n in ("yes", "no"):
        first = next((t for t in toks if t in ("yes", "no")), None)
        return first == key_n, float(first == key_n), f'"{first}"' if first else "neither yes nor no"
    if key_n == "absent":
        negated = any(t in NEGATIONS for t in toks)
        ok = negated and toks[0] != "yes"
        return ok, float(ok), "that it is absent" if ok else "that it is present"
    if "," in key:
        items = [tokens(part) for part in key.split(",") if tokens(part)]
        found = sum(contains_phrase(toks, item) for item in items)
        frac = found / len(items) if items else 0.0
        return frac == 1.0, frac, f"{found} of the {len(items)} listed items"
    key_toks = tokens(key)
    present = contains_phrase(toks, key_toks)
    key_num = _as_number(key_n) if len(key_toks) == 1 else None
    if key_num is not None:
        nums = [float(t) for t in toks if _as_number(t) is not None]
        last = nums[-1] if nums else None
        ok = present and last == key_num
        claim = f"{toks[[i for i, t in enumerate(toks) if _as_number(t) is not None][-1]]}" if nums else "no number"
        return ok, float(ok), claim  # a wrong final number gets no credit (the key may echo the question)
    return present, float(present), f'"{key}"' if present else f'something other than "{key}"'



def key_answer_correct(response: str, key: str) -> bool:
    """Is ``response`` right for the key answer ``key``? The one answer rule of the world (`key_match`), shared by
    the rubric judge and the simulated human labels."""
    if not tokens(key):
        raise ValueError(f"empty key answer {key!r}")
    return key_match(response, key)[0]


def noisy_human_preferences(prompts: Iterable[dict], samples: Iterable[dict], seed: int,
                            flip_prob: float) -> list[dict]:
    """One simulated crowd label per prompt between responses 0 (A) and 1 (B).

    The label follows ground truth (the response whose key answer is right); when both or neither are right it is
    a coin flip; then it is flipped with probability ``flip_prob`` (LLaVA-RLHF's noisy labels). Prompts without a
    key answer or with fewer than two responses are skipped. Rows: prompt_id, preferred (0 = A, 1 = B),
    basis ("truth" | "coin"), flipped. Draws are seeded per prompt, so they do not depend on record order.
    """
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must lie in [0, 1], got {flip_prob}")
    by_prompt = {s["prompt_id"]: s for s in samples}
    out = []
    for p in prompts:
        key, s = p.get("answer"), by_prompt.get(p.get("id"))
        if key is None or s is None or len(s.get("responses") or []) < 2:
            continue
        rng = random.Random(prompt_seed(seed, p["id"]))
        coin, flip = rng.randrange(2), rng.random() < flip_prob
        a_ok, b_ok = (key_answer_correct(r, key) for r in s["responses"][:2])
        if a_ok != b_ok:
            preferred, basis = (0 if a_ok else 1), "truth"
        else:
            preferred, basis = coin, "coin"
        if flip:
            preferred = 1 - preferred
        out.append({"prompt_id": p["id"], "preferred": preferred, "basis": basis, "flipped": flip})
    return out

"""The miniature world's deterministic judge.

`RubricJudge` scores responses against the ground truth carried in `req.truth` (key answer + reference sentence,
see the key-answer conventions in the build spec) and writes its verdict as TEXT in the same format an LLM judge
would: step-by-step reasoning, then the JSON object / `[[rating]]` / ranking list / "s1 s2" line / MM-Vet number.
The ordinary parsers then read it, so the rubric exercises exactly the code path of a real judge.

Its own tasks are annotation and gold answers; a benchmark's grading is the benchmark module's `rubric_grade`, found
in the registry by the request's task (`Benchmark.judge_task`). The assessment they share (`assess`, `rating_1_10`,
`explain`, `need_inputs`) lives here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from mmpref import ratings
from mmpref.evaluate import registry
from mmpref.judges.base import Judge, JudgeReply, JudgeRequest
from mmpref.world.scenes import COLORS, SHAPES
from mmpref.world.truth import NEGATIONS, contains_phrase, key_match, tokens

_ODD_CHARS = re.compile(r"[^\w\s.,;:!?'\"()\-%/+=*<>]")

@dataclass
class Assessment:
    """The rubric's view of one response."""

    correct: bool | None  # None when there is no key to check against
    partial: float
    claim: str
    form: float  # overlap with the reference's words, 0..1
    coherence: int
    coherence_notes: list[str]
    complexity: int
    verbosity: int
    helpfulness: int
    correctness: int
    n_words: int
    ref_words: int

    def scores(self) -> dict:
        return {"helpfulness": self.helpfulness, "correctness": self.correctness, "coherence": self.coherence,
                "complexity": self.complexity, "verbosity": self.verbosity}

    def quality(self) -> int:
        return ratings.quality(self.scores())


def _items(toks: list[str]) -> list[tuple[str, ...]]:
    """The items of an enumeration ("a red circle, a ring and a red circle" -> 3 items), split at "and" and commas
    (tokens drop commas, so the caller passes the text split at commas first)."""
    out, cur = [], []
    for t in toks:
        if t == "and":
            out, cur = out + [tuple(cur)] if cur else out, []
        else:
            cur.append(t)
    return out + [tuple(cur)] if cur else out


_NUMBERED = re.compile(r"\b(bar|point) (\d+)\b")


def _subjects(text: str) -> set[str]:
    """What a sentence of the world speaks about: its objects (shape names) and numbered chart parts ("bar 2")."""
    return {t for t in tokens(text) if t in SHAPES} | {f"{m[1]} {m[2]}" for m in _NUMBERED.finditer(text.lower())}


# The two ends of the world's superlatives ("Which bar is the tallest?", "the smallest number"): an answer about the
# other end than the question's answers another question.
_HIGH = {"highest", "tallest", "maximum", "largest"}
_LOW = {"lowest", "shortest", "minimum", "smallest"}
_CORRECTION = re.compile(r"\b(\w+),? not (\w+)\b")


def _question_notes(text: str, question: str) -> list[str]:
    """Inconsistencies with the question asked (what a judge reading question and answer together sees): an answer
    about the other end of the question's superlative ("The shortest bar is bar 3." to "Which bar has the highest
    value?"), a correction of a colour the question never named ("the triangle is green, not red" to "Is there a blue
    triangle?"), and denying the asked "<colour> <shape>" and then saying that the shape is that colour ("No, the
    diamond is red, not yellow." to "Is there a red diamond?")."""
    q, toks = tokens(question), tokens(text)
    notes = []
    asked_ends = [end for end in (_HIGH, _LOW) if end & set(q)]
    said = (_HIGH | _LOW) & set(toks)
    if len(asked_ends) == 1 and said and not said & asked_ends[0]:
        notes.append(f"it answers about the {', '.join(sorted(said))} where the question asks about the "
                     f"{', '.join(sorted(asked_ends[0] & set(q)))}")
    for m in _CORRECTION.finditer(text.lower()):
        if m[1] in COLORS and m[2] in COLORS and m[2] not in q:
            notes.append(f"it corrects a {m[2]} the question did not mention")
    if toks and toks[0] == "no":
        asked = dict.fromkeys((q[i + 1], q[i]) for i in range(len(q) - 1) if q[i] in COLORS and q[i + 1] in SHAPES)
        for shape, colour in asked:
            if contains_phrase(toks, [shape, "is", colour]):
                notes.append(f"it denies the {colour} {shape} and then says the {shape} is {colour}")
    return notes


def consistency_notes(text: str, reference: str | None = None, question: str | None = None) -> list[str]:
    """What makes an answer inconsistent (HelpSteer's coherence: "consistency and clarity"): affirming and then
    denying ("Yes, there is no star."), denying and then affirming ("No, there is a star."), "X, not X", naming the
    same item twice in one enumeration, and, given the reference answer, speaking of other objects than the ones the
    answer is about ("The cross is green." where the question and its reference are about the star, "bar 3" where
    they are about bar 2); given the question, the inconsistencies with it of `_question_notes`."""
    toks = tokens(text)
    notes = []
    if toks and toks[0] == "yes" and any(t in NEGATIONS for t in toks[1:]):
        notes.append("it says yes and then denies it")
    if len(toks) > 1 and toks[0] == "no" and not any(t in NEGATIONS for t in toks[1:]):
        notes.append("it says no and then affirms it")
    if re.search(r"\b(\w+),? not \1\b", text.lower()):
        notes.append("it contradicts itself (\"X, not X\")")
    items = [item for part in text.split(",") for item in _items(tokens(part))]
    # each item's last two words ("red circle"), so "The image shows a red circle" and "a red circle" are one item;
    # single numbers or words are not compared (a list may repeat a number)
    items = [tuple(t for t in item if t not in ("a", "an", "the"))[-2:] for item in items]
    items = [i for i in items if len(i) == 2]
    if len(items) >= 2 and len(set(items)) < len(items):
        notes.append("it names the same thing twice")
    asked, named = _subjects(reference or ""), _subjects(text)
    if asked and named and not asked & named:
        notes.append(f"it speaks of the {', '.join(sorted(named))} where the answer is about the "
                     f"{', '.join(sorted(asked))}")
    if question:
        notes += _question_notes(text, question)
    return notes


def fluency_score(response: str) -> tuple[int, list[str]]:
    """Clarity of the text alone: 4 minus penalties for repeated n-grams, stuttering, garbage characters and
    unfinished text (what an answer that did not stop cleanly shows)."""
    text = response.strip()
    toks = tokens(text)
    if not toks:
        return 0, ["it is empty"]
    score, notes = 4, []
    trigrams = [tuple(toks[i : i + 3]) for i in range(len(toks) - 2)]
    if len(trigrams) >= 3:
        dup = 1 - len(set(trigrams)) / len(trigrams)
        if dup > 0.3:
            score, notes = score - 2, notes + [f"it repeats itself heavily ({dup:.0%} repeated phrases)"]
        elif dup > 0.1:
            score, notes = score - 1, notes + [f"it repeats some phrases ({dup:.0%})"]
    if any(toks[i] == toks[i + 1] == toks[i + 2] for i in range(len(toks) - 2)):
        score, notes = score - 1, notes + ["it stutters (a word three times in a row)"]
    odd = len(_ODD_CHARS.findall(text)) / max(1, len(text))
    if odd > 0.3:
        score, notes = score - 3, notes + ["it is mostly garbled text"]
    elif odd > 0.1 or sum(len(t) == 1 and not t.isdigit() for t in toks) > 0.5 * len(toks):
        score, notes = score - 2, notes + ["it contains garbled text"]
    if len(toks) >= 4 and not re.search(r"[.!?)\"'\]]$", text):
        score, notes = score - 1, notes + ["it is unfinished"]
    return max(0, score), notes


def coherence_score(response: str, reference: str | None = None, question: str | None = None) -> tuple[int, list[str]]:
    """HelpSteer's coherence: `fluency_score`, less 2 for answers that contradict or repeat themselves, stray from
    the reference answer's subject or do not fit the question (`consistency_notes`)."""
    score, notes = fluency_score(response)
    inconsistent = consistency_notes(response.strip(), reference, question) if score else []
    if inconsistent:
        score, notes = score - 2, notes + inconsistent
    return max(0, score), notes


def complexity_score(response: str) -> int:
    toks = tokens(response)
    n = len(toks)
    score = 0 if n < 4 else 1 if n < 9 else 2 if n < 20 else 3 if n < 40 else 4
    if n >= 6 and len(set(toks)) / n < 0.5:
        score -= 1
    if n >= 4 and sum(len(t) for t in toks) / n > 6.5:
        score += 1
    return max(0, min(4, score))


def verbosity_score(n_words: int, ref_words: int) -> int:
    ratio = n_words / max(1, ref_words)
    return 0 if ratio < 0.34 else 1 if ratio < 0.67 else 2 if ratio <= 1.6 else 3 if ratio <= 3.0 else 4


def assess(response: str, key: str | None, reference: str | None, question: str | None = None) -> Assessment:
    """Score one response 0..4 on the five HelpSteer attributes against the key answer and reference sentence; the
    question, where given, is read for coherence too (`consistency_notes`)."""
    toks = tokens(response)
    ref_toks = tokens(reference) if reference else []
    coherence, notes = coherence_score(response, reference, question)
    form = len(set(toks) & set(ref_toks)) / len(set(ref_toks)) if ref_toks else 0.0
    ref_words = len(ref_toks) if ref_toks else 10
    verbosity = verbosity_score(len(toks), ref_words)
    if key is not None:
        correct, partial, claim = key_match(response, key)
    else:
        correct, partial, claim = None, 0.0, "an answer that cannot be checked"
    if correct:
        correctness = 4 if coherence >= 2 else 3
        helpfulness = 2 + (form >= 0.4) + (form >= 0.7 and coherence >= 3)
        if coherence <= 1:
            helpfulness = min(helpfulness, 2)
        if verbosity == 4:
            helpfulness -= 1
    elif correct is None:
        correctness = 2
        helpfulness = min(coherence, 2 + (form >= 0.4))
    else:
        correctness = 2 if partial >= 0.5 else 1 if partial > 0 else 0
        helpfulness = 1 if (coherence >= 3 and (form >= 0.4 or partial > 0)) else 0
    return Assessment(
        correct=correct, partial=partial, claim=claim, form=form, coherence=coherence, coherence_notes=notes,
        complexity=complexity_score(response), verbosity=verbosity, helpfulness=max(0, min(4, helpfulness)),
        correctness=correctness, n_words=len(toks), ref_words=ref_words,
    )


def rating_1_10(a: Assessment) -> int:
    """An MT-Bench style 1..10 rating, by the criteria FastChat's judge prompt names (helpfulness, relevance,
    accuracy, depth, level of detail): a correct answer starts at 5 and earns up to 3 points for answering as fully
    as the reference does (word overlap: 2 at 0.4, 1 more at 0.7) and 2 for reading clearly (coherence 3 and 4);
    rambling far past what was asked (verbosity 4) costs one. A wrong answer gets 1, plus partial credit and a point
    each for clarity and form. So "8." to "What is 3 plus 5?" rates 7, "3 plus 5 is 8." rates 10."""
    if a.correct is None:
        return max(1, min(10, 2 + 2 * a.coherence))
    if a.correct:
        score = 5 + 2 * (a.form >= 0.4) + (a.form >= 0.7) + (a.coherence >= 3) + (a.coherence >= 4)
        score -= a.verbosity == 4
    else:
        score = 1 + round(2 * a.partial) + (a.coherence >= 3) + (a.form >= 0.4)
    return max(1, min(10, score))


def explain(a: Assessment, key: str | None) -> str:
    if a.correct is None:
        verdict = "There is no key answer to check it against."
    elif a.correct:
        verdict = f'It gives {a.claim}, which matches the key answer "{key}", so it is correct.'
    else:
        verdict = f'It gives {a.claim}, but the key answer is "{key}", so it is wrong.'
    form = ("It follows the reference's form" if a.form >= 0.4 else "It does not follow the reference's form") + (
        f" (word overlap {a.form:.2f}).")
    coh = "It reads clearly." if not a.coherence_notes else "Coherence suffers: " + "; ".join(a.coherence_notes) + "."
    length = f"It has {a.n_words} words against {a.ref_words} in the reference."
    return " ".join([verdict, form, coh, length])


def need_inputs(inputs: dict, *names: str) -> list:
    """The request inputs `names`, in order; ValueError naming the ones it lacks."""
    missing = [n for n in names if n not in inputs]
    if missing:
        raise ValueError(f"rubric judge: request inputs lack {missing} (have {sorted(inputs)})")
    return [inputs[n] for n in names]


class RubricJudge(Judge):
    """Deterministic ground-truth judge for the miniature world (judge id 'rubric-v4': v4 reads the question for
    coherence too, `_question_notes`)."""

    judge_id = "rubric-v4"
    model = "rubric-v4"
    uses_truth = True
    backend = "rubric"
    free = True
    takes_model = False
    api = False

    def __init__(self, cache_dir=None, **limits):
        limits.setdefault("max_concurrency", 8)
        super().__init__(cache_dir=cache_dir, **limits)

    def _call(self, req: JudgeRequest) -> JudgeReply:
        # its own tasks, else the grading of the benchmark whose judge task it is (Benchmark.rubric_grade)
        handler = {"annotate": self._annotate, "answer": self._answer}.get(req.task) \
            or registry.rubric_graders().get(req.task)
        if handler is None:
            raise ValueError(f"rubric judge: unknown task {req.task!r}")
        text = handler(req.inputs, req.truth)
        if req.max_tokens is not None:  # the reply ends after its first max_tokens tokens (the rubric's token: a word)
            words = list(re.finditer(r"\S+", text))[:max(req.max_tokens, 0)]
            text = text[:words[-1].end()] if words else ""
        n_in, n_out = len(req.prompt.split()), len(text.split())
        return JudgeReply(text=text, input_tokens=n_in, output_tokens=n_out, judge_id=self.judge_id)

    def _annotate(self, inputs: dict, truth: dict) -> str:
        (responses,) = need_inputs(inputs, "responses")
        key, ref, question = truth.get("answer"), truth.get("reference"), inputs.get("question")
        if key is None:
            raise ValueError("rubric judge: annotation needs truth['answer'] (the key answer)")
        lines = ["Let me work through this step by step.",
                 f'The correct answer is "{key}"' + (f' (reference: "{ref}").' if ref else ".")]
        scores = []
        for i, resp in enumerate(responses, 1):
            a = assess(resp, key, ref, question)
            lines.append(f"Response {i}: {explain(a, key)}")
            scores.append(a.scores())
        body = json.dumps({"responses": scores})
        return "\n".join(lines) + f"\n\n```json\n{body}\n```"

    def _answer(self, inputs: dict, truth: dict) -> str:
        if truth.get("reference"):
            return truth["reference"]
        if truth.get("answer"):
            key = str(truth["answer"])
            return f"The answer is {key}."
        raise ValueError("rubric judge: a gold answer needs truth['reference'] or truth['answer']")

"""Annotation and gold-answer prompt texts (mmpref's own). Each benchmark's judge prompt lives in its module under
mmpref/evaluate/ (the official templates are read from the paths in params, never copied into the repository)."""

from __future__ import annotations

# --------------------------------------------------------------------------------------------------------------
# Annotation (HelpSteer attributes, zero-shot chain of thought, JSON output)

ANNOTATION_SYSTEM = (
    "You are an expert annotator of answers given by AI assistants to questions about images. "
    "You follow the labelling guide exactly and you are strict about facts you can check in the image."
)

ANNOTATION_GUIDE = """\
Labelling guide. Rate every response on five attributes, each an integer from 0 (lowest) to 4 (highest):
- helpfulness: how useful the response is for the question overall (a wrong answer is not helpful).
- correctness: whether it states all pertinent facts without errors or hallucinations (anything the image does
  not support counts as an error).
- coherence: how consistent and clear the response is (repetition, garbled or unfinished text lowers it).
- complexity: the intellectual depth needed to write it (0 = anyone could write it, 4 = expert knowledge).
- verbosity: the amount of detail relative to what the question asked (0 = far too little, 2 = about right,
  4 = far too much).
Rate each response on its own merits; do not let the order of the responses influence you."""

ANNOTATION_FORMAT = """\
First think step by step: look at the image, work out the right answer, then check each response against it and
against the guide. After your reasoning, output a single JSON object (and nothing after it) of this form, with
exactly one entry per response, in the order given:
{"responses": [{"helpfulness": 0-4, "correctness": 0-4, "coherence": 0-4, "complexity": 0-4, "verbosity": 0-4}, ...]}
If your reply is restricted to JSON, put your step-by-step reasoning in a "reasoning" string field before "responses"."""


def render_annotation_prompt(question: str, responses: list[str]) -> str:
    """The annotation prompt: guide, question, the k numbered responses, output instructions."""
    if not responses:
        raise ValueError("render_annotation_prompt: no responses to rate")
    parts = [ANNOTATION_GUIDE, "", f"[Question]\n{question}", ""]
    for i, resp in enumerate(responses, 1):
        parts.append(f"[Response {i}]\n{resp}\n[End of Response {i}]")
        parts.append("")
    parts.append(f"There are {len(responses)} responses.")
    parts.append(ANNOTATION_FORMAT)
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------------------------
# Gold answers (the judge answers the question itself; used for SFT-gold)

GOLD_SYSTEM = "You are a helpful assistant that answers questions about images accurately and concisely."


def render_gold_prompt(question: str) -> str:
    return (
        "Answer the question about the image. Give a correct, clear answer in one or two complete sentences.\n\n"
        f"Question: {question}"
    )

"""Judge prompt texts.

Our own texts (annotation guide, gold answers, short fallbacks) live here. The official benchmark templates (FastChat
judge_prompts.jsonl, AlpacaEval's alpaca_eval_gpt4 prompt, LLaVA's rule.json, the few-shot prompt inside MM-Vet's
mm-vet_evaluator.py) are never copied into the repository: the loaders read them from the path given in params and
the renderers fill them exactly the way the official scripts do.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

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


# --------------------------------------------------------------------------------------------------------------
# MT-Bench single-answer grading (FastChat judge_prompts.jsonl format)

_FALLBACK_SINGLE_SYSTEM = "You are a fair and careful judge of assistant answers."
_FALLBACK_RATING_RULE = (
    "Explain your assessment briefly, then give a score from 1 to 10 written exactly like \"Rating: [[7]]\"."
)
FALLBACK_FASTCHAT_TEMPLATES: dict[str, dict] = {
    "single-v1": {
        "name": "single-v1",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge how helpful, accurate and clear the answer to this question is. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Question]\n{question}\n\n[Answer]\n{answer}\n[End of Answer]",
        "output_format": "[[rating]]",
    },
    "single-math-v1": {
        "name": "single-math-v1",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge whether the answer to this question is correct, using the reference answer. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n[End of Reference]"
        "\n\n[Answer]\n{answer}\n[End of Answer]",
        "output_format": "[[rating]]",
    },
    "single-v1-multi-turn": {
        "name": "single-v1-multi-turn",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge the assistant's answer to the SECOND user question in this conversation. "
        + _FALLBACK_RATING_RULE
        + "\n\n[User]\n{question_1}\n[Assistant]\n{answer_1}\n\n[User]\n{question_2}\n[Assistant]\n{answer_2}"
        "\n[End of Conversation]",
        "output_format": "[[rating]]",
    },
    "single-math-v1-multi-turn": {
        "name": "single-math-v1-multi-turn",
        "system_prompt": _FALLBACK_SINGLE_SYSTEM,
        "prompt_template": "Judge whether the assistant's answer to the SECOND user question is correct, using the "
        "reference answers. "
        + _FALLBACK_RATING_RULE
        + "\n\n[Reference]\nQ1: {question_1}\nA1: {ref_answer_1}\nQ2: {question_2}\nA2: {ref_answer_2}"
        "\n[End of Reference]\n\n[User]\n{question_1}\n[Assistant]\n{answer_1}\n\n[User]\n{question_2}"
        "\n[Assistant]\n{answer_2}\n[End of Conversation]",
        "output_format": "[[rating]]",
    },
}


def load_fastchat_judge_prompts(path: str | Path) -> dict[str, dict]:
    """Read FastChat's judge_prompts.jsonl into {name: record}; a bad line raises ValueError naming it."""
    path = Path(path)
    out: dict[str, dict] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[rec["name"]] = rec
                rec["prompt_template"], rec["system_prompt"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{lineno}: not a FastChat judge prompt record ({exc})") from None
    return out


def fastchat_template_name(multi_turn: bool, reference: bool) -> str:
    """FastChat's choice: math/reasoning/coding questions with a reference use single-math-v1."""
    name = "single-math-v1" if reference else "single-v1"
    return name + ("-multi-turn" if multi_turn else "")


def render_fastchat_single(
    question_turns: list[str],
    answers: list[str],
    reference: list[str] | None = None,
    multi_turn: bool = False,
    templates: dict[str, dict] | None = None,
) -> tuple[str, str, str]:
    """Fill a FastChat single-answer template as `run_judge_single` does. Returns (system, prompt, template name)."""
    name = fastchat_template_name(multi_turn, bool(reference))
    table = templates if templates is not None else FALLBACK_FASTCHAT_TEMPLATES
    if name not in table:
        raise ValueError(f"judge template {name!r} missing (have {sorted(table)})")
    rec = table[name]
    kwargs: dict[str, str] = {}
    if multi_turn:
        if len(question_turns) < 2 or len(answers) < 2:
            raise ValueError("multi-turn grading needs two questions and two answers")
        kwargs.update(question_1=question_turns[0], question_2=question_turns[1],
                      answer_1=answers[0], answer_2=answers[1])
        if reference:
            if len(reference) < 2:
                raise ValueError("multi-turn math grading needs two reference answers")
            kwargs.update(ref_answer_1=reference[0], ref_answer_2=reference[1])
    else:
        if not question_turns or not answers:
            raise ValueError("single-turn grading needs a question and an answer")
        kwargs.update(question=question_turns[0], answer=answers[0])
        if reference:
            kwargs["ref_answer_1"] = reference[0]
    return rec["system_prompt"], rec["prompt_template"].format(**kwargs), name


# --------------------------------------------------------------------------------------------------------------
# AlpacaEval (v1) pairwise ranking

FALLBACK_ALPACA_TEMPLATE = """<|im_start|>system
You compare two AI answers to the same instruction and rank them.
<|im_end|>
<|im_start|>user
Instruction:
{instruction}

Answer of model_1:
{output_1}

Answer of model_2:
{output_2}

Rank the two models so that rank 1 is the answer most people would prefer. Reply with a python list only, e.g.
[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]
<|im_end|>"""

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)\n?<\|im_end\|>", re.DOTALL)


def load_alpaca_template(path: str | Path) -> str:
    text = Path(path).read_text(encoding="utf-8")
    for key in ("{instruction}", "{output_1}", "{output_2}"):
        if key not in text:
            raise ValueError(f"{path}: AlpacaEval template lacks the placeholder {key}")
    return text


def render_alpaca(instruction: str, output_1: str, output_2: str, template: str | None = None) -> tuple[str | None, str]:
    """Fill an AlpacaEval prompt (only `{instruction}`, `{output_1}`, `{output_2}` are replaced, as AlpacaEval does,
    so the template's literal braces survive) and split its chatml into (system, user)."""
    text = template if template is not None else FALLBACK_ALPACA_TEMPLATE
    for key, value in (("instruction", instruction), ("output_1", output_1), ("output_2", output_2)):
        text = text.replace("{" + key + "}", value)
    turns = _CHATML.findall(text)
    if not turns:
        return None, text
    system = "\n".join(body.strip() for role, body in turns if role == "system") or None
    user = "\n\n".join(body.strip() for role, body in turns if role == "user")
    if not user:
        raise ValueError("AlpacaEval template has no user turn")
    return system, user


# --------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (rule.json + eval_gpt_review_bench content layout)

# haotian-liu/LLaVA llava/eval/eval_gpt_review_bench.py `get_eval`, commit c121f0432da27facab705978f83c4ada465e46fd:
# the system message and the sampling temperature of every review.
LLAVA_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
LLAVA_TEMPERATURE = 0.2
FALLBACK_LLAVA_RULE = {
    "role": "Assistant",
    "prompt": "The user asked the question above about an image, described for you in the context. Score both "
    "assistants from 1 to 10 for helpfulness, relevance, accuracy and detail. On the first line write only the two "
    "scores, for Assistant 1 and Assistant 2, separated by a space. Explain your scores from the next line on.",
}


def load_llava_rules(path: str | Path) -> dict[str, dict]:
    path = Path(path)
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
    for key, rule in rules.items():
        if not isinstance(rule, dict) or "role" not in rule or "prompt" not in rule:
            raise ValueError(f"{path}: rule {key!r} needs 'role' and 'prompt'")
    return rules


def llava_rule_for(rules: dict[str, dict], category: str) -> dict:
    """LLaVA-Bench uses the rule 'llava_bench_<category>' (conv, detail, complex)."""
    key = f"llava_bench_{category}"
    if key not in rules:
        raise ValueError(f"no LLaVA rule {key!r} (have {sorted(rules)})")
    return rules[key]


def render_llava_bench(question: str, context: str, answer_1: str, answer_2: str, rule: dict | None = None) -> tuple[str, str]:
    """The eval_gpt_review_bench content: context, question, the two answers, then the rule prompt."""
    rule = rule or FALLBACK_LLAVA_RULE
    role, prompt = rule["role"], rule["prompt"]
    content = (
        f"[Context]\n{context}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer_1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer_2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )
    return LLAVA_SYSTEM, content


# --------------------------------------------------------------------------------------------------------------
# MM-Vet grading: yuweihao/MM-Vet mm-vet_evaluator.py `runs`, commit acde843e02dae30047bb456ee4a8ab28dee7e0ae. The
# few-shot prompt is the module-level string `prompt` of the official evaluator, read from its file (params
# `evaluate.judge_templates.mmvet`); without it mmpref's own header below is used, with the same layout and the same
# output contract (the reply's first token is the score). The evaluator sends no system message.

MMVET_SYSTEM = None
MMVET_RETRY_SUFFIX = "\nPredict the correctness of the answer (digit): "
FALLBACK_MMVET_PROMPT = (
    "Compare the ground truth and the prediction of an AI model and give the prediction a correctness score between "
    "0.0 and 1.0 (0.0 totally wrong, 1.0 totally right, partial credit such as 0.5 when only part of the ground "
    "truth is matched). In the ground truth, <AND> means every part is needed and <OR> means any one part is enough. "
    "Complete the last row with the correctness score only, as a number.\n\n"
    "Question | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n"
)


def load_mmvet_prompt(path: str | Path) -> str:
    """The few-shot grading prompt of MM-Vet's evaluator: the string assigned to the top-level name `prompt` in
    mm-vet_evaluator.py, read with `ast` (the file is not imported or run)."""
    path = Path(path)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}: not a Python file ({exc.msg}, line {exc.lineno})") from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "prompt" for t in node.targets) \
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return node.value.value
    raise ValueError(f"{path}: no top-level string `prompt = \"\"\"...\"\"\"` (MM-Vet's mm-vet_evaluator.py)")


def render_mmvet_prompt(question: str, gt_answer: str, prediction: str, header: str | None = None,
                        retry: bool = False) -> str:
    """The evaluator's user message: `prompt + "\\n" + " | ".join([question, answer with " <AND> " / " <OR> ",
    prediction, ""])`, plus "\\nPredict the correctness of the answer (digit): " on a retry. `header` is the
    official prompt (load_mmvet_prompt); None uses mmpref's fallback."""
    text = (FALLBACK_MMVET_PROMPT if header is None else header) + "\n" + " | ".join(
        [question, gt_answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> "), prediction, ""])
    return text + (MMVET_RETRY_SUFFIX if retry else "")

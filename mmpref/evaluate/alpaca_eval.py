"""AlpacaEval (v1): the judge ranks the model's output against text-davinci-003's; win rate in percent.

Loader: tatsu-lab/alpaca_eval `results/text_davinci_003/model_outputs.json` (a JSON list of {instruction, output,
generator, dataset}).
Prompt: the instruction as it is, text only; greedy answers.
Judge prompt, ranking parser and metric: tatsu-lab/alpaca_eval, commit cd543a149df89434d8a54582c0151c0b945c3d20: the
alpaca_eval_gpt4 prompt (src/alpaca_eval/evaluators_configs/alpaca_eval_gpt4/alpaca_eval.txt, read from params
`evaluate.judge_templates.alpaca_eval`; the fallback below without it), src/alpaca_eval/completion_parsers.py
`ranking_parser`, src/alpaca_eval/metrics/winrate.py `pairwise_to_winrate` (AbsoluteScoringRule.describe_head2head in
metrics/helpers.py) and the switch-back of annotators/pairwise_evaluator.py (`3 - x`).
Order of the two outputs: `main.evaluate` annotates head to head with output_1 the reference and output_2 the model;
annotators/pairwise_evaluator.py's SinglePairwiseAnnotator switches them by src/alpaca_eval/processors.py
RandomSwitchTwoColumnsProcessor (`_switch_column="is_switched_outputs"`, seeded by the instruction and the annotator's
seed, 0 by default: `alpaca_switch`). Identical outputs: PairwiseAnnotatorLocal._preprocess sets their preference to
1.5 and the judge is never asked about them.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd
from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, ItemProtocol, check_limit, existing, in_dir, literal_eval,
                                      need_judge, need_keys, optional_template, read_json, run_items, score_records,
                                      tidy_rows)
from mmpref.io import write_json
from mmpref.judges.base import JudgeRequest
from mmpref.judges.parsing import ParseError
from mmpref.judges.rubric import assess, explain, need_inputs
from mmpref.judges.tasks import ask_until_parsed
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.text_tasks import TEXT_TASKS, imperfect_output

log = logging.getLogger(__name__)

# records graded under another protocol are graded again (#2: alpaca_eval's order coin and identical outputs)
GRADING = "alpaca_eval@cd543a1#2"
JUDGE_TASK = "grade_pairwise"  # the JudgeRequest task of its gradings


class AlpacaItem(BaseModel):
    instruction: str
    output: str                  # the reference model's (text-davinci-003) answer
    generator: str = ""
    dataset: str = ""
    answer_key: str | None = None
    reference: str | None = None


def load_alpaca_eval(path: str | Path, limit: int | None = None) -> list[AlpacaItem]:
    """AlpacaEval v1 reference outputs: a JSON list of {instruction, output, generator, dataset}; `path` is the file
    or a folder with eval.json / text_davinci_003_outputs.json / model_outputs.json."""
    check_limit(limit)
    file = in_dir(existing(path, "AlpacaEval"),
                   ("eval.json", "text_davinci_003_outputs.json", "model_outputs.json"), "AlpacaEval")
    data = read_json(file)
    if not isinstance(data, list) or not data:
        raise ValueError(f"AlpacaEval: {file} must be a non-empty JSON list of records")
    items = []
    for i, rec in enumerate(data[:limit] if limit else data):
        where = f"{file}: record {i}"
        need_keys(rec, ("instruction", "output"), where)
        items.append(AlpacaItem(instruction=str(rec["instruction"]), output=str(rec["output"]),
                                generator=str(rec.get("generator", "")), dataset=str(rec.get("dataset", "")),
                                answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"]),
                                reference=rec.get("reference")))
    return items


# --------------------------------------------------------------------------------------------------------------
# judge prompt, ranking parser and grading

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
        ordered_completions = literal_eval(completion) if isinstance(completion, str) else completion
        rank = [c for c in ordered_completions if c["model"] == model_1_name][0]["rank"]
        assert rank in [1, 2]
        return float(rank)
    except Exception as exc:  # noqa: BLE001 - alpaca_eval catches every error the same way
        raise ParseError(f"AlpacaEval ranking_parser rejects {str(completion)[:120]!r} "
                         f"({type(exc).__name__}: {exc})") from None


def grade_pairwise_alpaca(
    judge: Judge,
    instruction: str,
    output_1: str,
    output_2: str,
    truth: dict | None = None,
    template: str | None = None,
    max_retries: int = 0,
) -> tuple[float | None, str]:
    """AlpacaEval pairwise preference with alpaca_eval's ranking_parser: 1.0 (output_1 better) or 2.0 (output_2
    better); None when the reply does not parse (alpaca_eval's NaN, dropped from the win rate). alpaca_eval asks once
    (`max_retries` 0); each retry is a new call."""
    system, prompt = render_alpaca(instruction, output_1, output_2, template)
    req = JudgeRequest(task=JUDGE_TASK, system=system, prompt=prompt,
                       inputs={"instruction": instruction, "output_1": output_1, "output_2": output_2},
                       truth=truth or {})
    preference, text, _ = ask_until_parsed(judge, req, parse_alpaca_ranking, max_retries + 1, "AlpacaEval ranking")
    return preference, text


# --------------------------------------------------------------------------------------------------------------
# metric (pairwise_to_winrate)

def alpaca_unswitch(preference: float | None, switched: bool) -> float | None:
    """Map a judge preference back to the unswitched order (output_1 = reference, output_2 = model): AlpacaEval's
    `_fn_replace_if_switch` applies 3 - x to every preference when the outputs were switched (1 <-> 2, 1.5 stays);
    a failed preference (None or NaN) stays as it is."""
    if preference is None or (isinstance(preference, float) and math.isnan(preference)):
        return preference
    return 3.0 - preference if switched else preference


def alpaca_win_rate(preferences: Sequence[float | None]) -> dict[str, Score]:
    """AlpacaEval's pairwise_to_winrate: 0 -> 1.5 (draw), keep the preferences with 1 <= x <= 2 (failed ones, None or
    NaN, and anything else are dropped), win_rate = mean(x - 1) x 100, standard_error = pandas sem (ddof 1) x 100
    (NaN for a single preference, as pandas gives)."""
    prefs = pd.Series([math.nan if p is None else p for p in preferences], dtype=float).replace({0.0: 1.5})
    kept = prefs[(prefs >= 1) & (prefs <= 2)] - 1
    if kept.empty:
        raise ValueError("AlpacaEval: no valid preferences to score")
    return {"win_rate": Score(float(kept.mean() * 100), len(kept)),
            "standard_error": Score(float(kept.sem() * 100), len(kept))}


def score(recs: Sequence[dict]) -> dict[str, Score]:
    return alpaca_win_rate([None if r.get("failed") else r["preference"] for r in recs])



# --------------------------------------------------------------------------------------------------------------
# protocol

ALPACA_SWITCH_COLUMN = "is_switched_outputs"  # pairwise_evaluator.py's `_switch_column`, which prefixes the coin's seed
ALPACA_SEED = 0  # BaseAnnotator's default `seed`, which its annotators pass to their processors


def alpaca_switch(instruction: str, seed: int = ALPACA_SEED) -> bool:
    """AlpacaEval's order coin: RandomSwitchTwoColumnsProcessor.preprocess draws
    `utils.random_seeded_choice(seed=_switch_column + "".join(row[["instruction"]]) + str(seed), choices=[False,
    True])`, i.e. `random.Random(seed string).choices([False, True], k=1)[0]`. True puts the model's output first
    (output_1)."""
    return random.Random(ALPACA_SWITCH_COLUMN + instruction + str(seed)).choices([False, True], k=1)[0]


def run_alpaca_eval(items: Sequence[AlpacaItem], generate: GenerateFn, judge: Any, out_jsonl: str | Path,
                    model: str, template_path: str | Path | None = None, seed: int = ALPACA_SEED,
                    chunk_size: int = DEFAULT_CHUNK,
                    answers_from: str | Path | None = None) -> list[dict]:
    """AlpacaEval v1: the judge ranks the reference output against the model's; the order is switched by alpaca_eval's
    seeded coin per instruction and the preference mapped back (2.0 = the model wins); an output identical to the
    reference scores 1.5 with no judge call. win_rate and standard_error in percent."""
    judge_id = need_judge(judge, "alpaca_eval")
    template = load_alpaca_template(template_path) if template_path is not None else None

    def grade(it: AlpacaItem, answers: list[str]) -> dict:
        switched = alpaca_switch(it.instruction, seed)
        if answers[0] == it.output:  # alpaca_eval: `output_1 == output_2` -> preference 1.5, never annotated
            return {"switched": switched, "raw_preference": None, "preference": 1.5, "failed": False,
                    "identical": True, "judge_raw": ""}
        first, second = (answers[0], it.output) if switched else (it.output, answers[0])
        truth = {k: v for k, v in (("answer", it.answer_key), ("reference", it.reference)) if v}
        raw_pref, raw = grade_pairwise_alpaca(judge, it.instruction, first, second, truth=truth,
                                                     template=template)
        return {"switched": switched, "raw_preference": raw_pref,
                "preference": alpaca_unswitch(raw_pref, switched), "failed": raw_pref is None,
                "judge_raw": raw}

    protocol = ItemProtocol("alpaca_eval", key=lambda it: hashlib.sha256(it.instruction.encode()).hexdigest()[:16],
                            requests=lambda it: [ChatRequest(turns=[it.instruction])],
                            describe=lambda it: {"instruction": it.instruction, "dataset": it.dataset, "seed": seed},
                            grade=grade, grading=GRADING)
    recs = run_items(protocol, items, generate, out_jsonl, model, judge, chunk_size, answers_from)
    return tidy_rows(model, "alpaca_eval", score_records("alpaca_eval", recs), judge_id)


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_alpaca_eval(load_alpaca_eval(data_path, limit), generate, judge, out_jsonl, model,
                           template_path=template, **options)


def check(path: Path, params: Any = None) -> str:
    return f"first {len(load_alpaca_eval(path, limit=3))} records read"


def cost_inputs(path: Path | None, answer: str, template: Path | None, limit: int | None,
                default_chars: tuple[int, int] = (165, 310)) -> tuple[int, list[str], str]:
    """The judge-call texts for one model (answers at `answer`); the file's records when readable, else
    BENCHMARK.default_items records of `default_chars` (instruction, reference output) characters."""
    notes = []
    try:
        items = [(it.instruction, it.output) for it in load_alpaca_eval(path)]
    except Exception:  # noqa: BLE001 - absent or unreadable: estimate from defaults
        items = [("x" * default_chars[0], "x" * default_chars[1])] * BENCHMARK.default_items
        notes.append(f"default {BENCHMARK.default_items} items (file absent)")
    text = optional_template(load_alpaca_template, template, notes)
    items = items[:limit] if limit else items
    texts = []
    for instruction, output in items:
        system, user = render_alpaca(instruction, output, answer, text)
        texts.append((system or "") + user)
    return len(items), texts, "; ".join(notes)



# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    """Instructions with imperfect reference outputs (the miniature text-davinci-003), the four text task kinds in
    turn, from the build's held-out prompts (after MT-Bench's)."""
    tasks, alpaca = list(TEXT_TASKS), []
    while len(alpaca) < build.n_text_bench:
        item = build.held_out.draw(False, tasks[len(alpaca) % len(tasks)])
        alpaca.append({"instruction": item["turns"][0], "output": imperfect_output(item, build.held_out.rng),
                       "generator": "text_davinci_003", "dataset": "mini", "answer_key": item["answers"][0],
                       "reference": item["references"][0]})
    write_json(build.folder / "alpaca_eval" / "eval.json", alpaca)
    return {"alpaca_eval": len(alpaca)}


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's instructions and reference outputs (for the world's tokenizer)."""
    for r in read_json(folder / "alpaca_eval" / "eval.json"):
        yield r["instruction"]
        yield r["output"]


# --------------------------------------------------------------------------------------------------------------
# the rubric judge's grading (the miniature world's judge, mmpref.judges.rubric: it grades against the truth)

def rubric_grade(inputs: dict, truth: dict) -> str:
    """The rubric judge's AlpacaEval ranking: the output of higher quality (`Assessment.quality`) ranks first, then the
    one whose length fits better, then a fixed coin; its reasons as comments before the ranking list."""
    out1, out2 = need_inputs(inputs, "output_1", "output_2")
    key, ref = truth.get("answer"), truth.get("reference")
    a1, a2 = (assess(out, key, ref, inputs.get("instruction")) for out in (out1, out2))
    q1, q2 = a1.quality(), a2.quality()
    if q1 != q2:
        first_wins, why = q1 > q2, f"quality {q1} vs {q2}"
    elif abs(a1.verbosity - 2) != abs(a2.verbosity - 2):
        first_wins, why = abs(a1.verbosity - 2) < abs(a2.verbosity - 2), "equal quality; length fits better"
    else:
        digest = hashlib.sha256(f"{out1}\x00{out2}".encode("utf-8")).digest()
        first_wins, why = digest[0] % 2 == 0, "equal quality; fixed tie-break"
    r1, r2 = (1, 2) if first_wins else (2, 1)
    reasoning = f"model_1: {explain(a1, key)}\nmodel_2: {explain(a2, key)}\nDecision: {why}."
    ranking = f"[{{'model': 'model_1', 'rank': {r1}}}, {{'model': 'model_2', 'rank': {r2}}}]"
    # alpaca_eval's ranking_parser reads the whole reply with ast.literal_eval: the reasoning goes as comments
    return "".join(f"# {line}\n" for line in reasoning.splitlines()) + ranking


BENCHMARK = Benchmark(
    name="alpaca_eval", display="AlpacaEval", headline="win_rate", headline_name="AlpacaEval win rate", order=5, unit="%",
    in_table2=True, paper_key="alpaca_eval", text_only=True, grading=GRADING, judge_template="alpaca_eval", run=_run,
    score=score, load=load_alpaca_eval, check=check,
    check_template=lambda p: (load_alpaca_template(p), "template with its placeholders")[1],
    cost_inputs=cost_inputs, output_tokens=30, default_items=805,   # output: the ranking as a python list
    build_miniature=build_miniature, build_order=1, miniature_texts=miniature_texts,
    judge_task=JUDGE_TASK, rubric_grade=rubric_grade,
    data=DataFile("alpaca_eval", "AlpacaEval (v1) reference outputs", "09_evaluate", "evaluate.benchmarks.alpaca_eval",
                  "alpaca_eval/text_davinci_003_outputs.json", ("alpaca_eval/text_davinci_003_outputs.json",),
                  "github tatsu-lab/alpaca_eval `results/text_davinci_003/model_outputs.json`"),
    template_data=DataFile("judge_alpaca_eval", "AlpacaEval judge prompt (alpaca_eval_gpt4)", "09_evaluate",
                           "evaluate.judge_templates.alpaca_eval", "alpaca_eval/alpaca_eval_gpt4_prompt.txt",
                           ("alpaca_eval/alpaca_eval_gpt4_prompt.txt",),
                           "github tatsu-lab/alpaca_eval `src/alpaca_eval/evaluators_configs/alpaca_eval_gpt4/"
                           "alpaca_eval.txt`"),
)

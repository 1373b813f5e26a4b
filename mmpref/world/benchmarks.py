"""Small instances of the seven benchmarks, written in their official file formats so the real loaders read them."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from mmpref.io import write_json, write_jsonl
from mmpref.world.text_tasks import MT_BENCH_CATEGORY, TEXT_TASKS, imperfect_output, sample_text_item


def build_text_benchmarks(rng: random.Random, bench: Path, n: int) -> tuple[int, int, set[str]]:
    """MT-Bench (two turns, reference + answer keys) and AlpacaEval (imperfect reference outputs), n of each, the
    four task kinds in turn.

    First turns are in the benchmarks' own phrasings (`text_tasks._phrase`), which no training text uses; no first
    turn occurs twice, and a fact (``topic``) is asked at most twice over both benchmarks, so it stays in training
    under the training phrasings: the benchmarks hold out prompts, not knowledge. Returns the counts and the set of
    first turns that training must not contain."""
    held: set[str] = set()
    topics: Counter = Counter()
    tasks = list(TEXT_TASKS)

    def draw(two_turn: bool, task: str) -> dict:
        for _ in range(10_000):
            item = sample_text_item(rng, two_turn=two_turn, task=task, phrasings="bench")
            topic = item.get("topic")
            if item["turns"][0] in held or (topic is not None and topics[topic] >= 2):
                continue
            held.add(item["turns"][0])
            if topic is not None:
                topics[topic] += 1
            return item
        raise ValueError(f"the world's {task} tasks cannot give {n} held-out prompts per text benchmark; lower "
                         f"world.n_text_bench")

    mt = []
    while len(mt) < n:
        item = draw(True, tasks[len(mt) % len(tasks)])
        mt.append({"question_id": 81 + len(mt), "category": MT_BENCH_CATEGORY[item["task"]], "turns": item["turns"],
                   "reference": item["references"], "answer_keys": item["answers"]})
    write_jsonl(bench / "mt_bench" / "question.jsonl", mt)
    alpaca = []
    while len(alpaca) < n:
        item = draw(False, tasks[len(alpaca) % len(tasks)])
        alpaca.append({"instruction": item["turns"][0], "output": imperfect_output(item, rng),
                       "generator": "text_davinci_003", "dataset": "mini", "answer_key": item["answers"][0],
                       "reference": item["references"][0]})
    write_json(bench / "alpaca_eval" / "eval.json", alpaca)
    return len(mt), len(alpaca), held

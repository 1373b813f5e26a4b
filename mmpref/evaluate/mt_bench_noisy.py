"""Noisy-image MT-Bench (the paper's Table 3): MT-Bench with an irrelevant image that goes with every user turn.

The questions, answer generation, judge prompts, parser and metric are MT-Bench's (mt_bench.py, FastChat commit
0e6d3e4beaab66f4d3f93db72541a4abab8af28d); the image for a question is chosen from `evaluate.noise_images` by a hash of
the question id (`noise_image_for`), the same on every run and machine; the judge sees text only.
"""

from __future__ import annotations

from typing import Any

from mmpref.evaluate import mt_bench
from mmpref.evaluate.benchmark import Benchmark, DataFile


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    if noise_images_dir is None:
        raise ValueError("mt_bench_noisy needs noise_images_dir (a folder of irrelevant images)")
    return mt_bench.run_mt_bench(mt_bench.load_mt_bench(data_path, limit), generate, judge, out_jsonl, model,
                                 templates_path=template, noise_images_dir=noise_images_dir, **options)


BENCHMARK = Benchmark(
    name="mt_bench_noisy", display="Noisy-image MT-Bench", headline="overall",
    headline_name="noisy-image MT-Bench overall", order=6, paper_key="mt_bench_noisy", grading=mt_bench.GRADING,
    judge_template="mt_bench", uses_noise_images=True, run=_run, score=mt_bench.score,
    failures=mt_bench.count_failed_turns, load=mt_bench.load_mt_bench, check=mt_bench.check,
    check_template=mt_bench.check_judge_prompts, options=lambda ev: {"decoding": ev.mt_bench_decoding},
    cost_inputs=mt_bench.cost_inputs, output_tokens=mt_bench.BENCHMARK.output_tokens, default_items=80,
    data=DataFile("mt_bench_noisy", "Noisy-image MT-Bench questions", "09_evaluate",
                  "evaluate.benchmarks.mt_bench_noisy", "mt_bench/question.jsonl",
                  ("mt_bench/question.jsonl (the MT-Bench file)",),
                  "github lm-sys/FastChat `fastchat/llm_judge/data/mt_bench/question.jsonl`"),
)

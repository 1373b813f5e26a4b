"""Evaluation: official-format benchmark loaders, metrics as the official scripts compute them, and one protocol
(load -> greedy answers -> score -> tidy rows) behind `run_benchmark`. `suite.evaluate_all` runs a whole params file.
"""

from mmpref.evaluate.benchmarks import (
    BENCHMARKS,
    HEADLINE,
    alpaca_switch,
    mmbench_prompt,
    noise_image_for,
    noise_images,
    run_alpaca_eval,
    run_benchmark,
    run_llava_bench,
    run_mmbench,
    run_mmvet,
    run_mt_bench,
    run_pope,
)
from mmpref.evaluate.loaders import (
    load_alpaca_eval,
    load_llava_bench,
    load_mmbench,
    load_mmvet,
    load_mt_bench,
    load_mt_bench_references,
    load_pope,
)

__all__ = ["BENCHMARKS", "HEADLINE", "run_benchmark", "run_pope", "run_mmbench", "run_mmvet", "run_llava_bench",
           "run_mt_bench", "run_alpaca_eval", "mmbench_prompt", "noise_images", "noise_image_for", "alpaca_switch",
           "load_pope", "load_mmbench", "load_mmvet", "load_llava_bench", "load_mt_bench", "load_mt_bench_references",
           "load_alpaca_eval"]

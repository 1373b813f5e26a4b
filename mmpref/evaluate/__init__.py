"""Evaluation: one module per benchmark (pope, mmbench, mmvet, llava_bench, mt_bench, mt_bench_noisy, alpaca_eval:
official-format loader, prompt and generation settings, judge prompt and parser, metric, run function), the registry
that lists them (`registry`), the shared protocol behind `run_benchmark` (`protocol`), and `suite.evaluate_all`, which
runs a whole params file.
"""

from mmpref.evaluate.benchmark import Score
from mmpref.evaluate.protocol import FAILURES, run_benchmark, score_records, scored_records

__all__ = ["run_benchmark", "score_records", "scored_records", "Score", "FAILURES"]

"""Evaluation: one module per benchmark (pope, mmbench, mmvet, llava_bench, mt_bench, mt_bench_noisy, alpaca_eval:
official-format loader, prompt and generation settings, judge prompt and parser, metric, run function, miniature
builder and rubric grading), what a benchmark is (`benchmark`), the registry that lists them (`registry`), the shared
protocol behind `run_benchmark` (`protocol`), and `suite.evaluate_all`, which runs a whole params file.

Nothing is imported here: the judges import the registry (the judge tasks), and the protocol imports the judges.
"""

"""The registry of benchmarks: name -> Benchmark (mmpref.evaluate.benchmark says what a benchmark is).

Every module of mmpref/evaluate/ that defines a module-level `BENCHMARK` is registered when the registry is first
read, so adding a benchmark is one module (loader, prompts, judge prompt and parser, metric, run function, miniature
builder, rubric grading, and its `BENCHMARK` entry) plus its params entry (`evaluate.benchmarks.<name>: <path>`).
`register` adds one at run time (tests register a toy benchmark this way). Config validation, stage 09's plan, the
figures and tables, the bootstrap, `mmpref check`, the miniature world's build, the judges' task check and the rubric
judge all read the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
import threading
from pathlib import Path
from typing import Callable

from mmpref.evaluate.benchmark import Benchmark


_REGISTRY: dict[str, Benchmark] = {}
_DISCOVERED = False
_DISCOVERING = False
_DISCOVERY_LOCK = threading.RLock()


def register(spec: Benchmark) -> Benchmark:
    """Add a benchmark (or replace one of the same name); returns it."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _discover() -> None:
    """Register every module's BENCHMARK, once. Other threads wait for it (judge requests are validated against the
    registry from grading threads); the discovering thread itself, re-entering from a module it imports, sees what is
    registered so far."""
    global _DISCOVERED, _DISCOVERING
    if _DISCOVERED:
        return
    with _DISCOVERY_LOCK:
        if _DISCOVERED or _DISCOVERING:
            return
        _DISCOVERING = True
        try:
            for info in pkgutil.iter_modules([str(Path(__file__).parent)]):  # the modules beside this one
                module = importlib.import_module(f"{__package__}.{info.name}")
                spec = getattr(module, "BENCHMARK", None)
                if isinstance(spec, Benchmark):
                    _REGISTRY.setdefault(spec.name, spec)
            _DISCOVERED = True
        finally:
            _DISCOVERING = False


def benchmarks() -> list[Benchmark]:
    """Every registered benchmark, in table order."""
    _discover()
    return sorted(_REGISTRY.values(), key=lambda b: (b.order, b.name))


def names() -> list[str]:
    return [b.name for b in benchmarks()]


def get(name: str) -> Benchmark:
    _discover()
    if name not in _REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {names()}")
    return _REGISTRY[name]


def headlines() -> dict[str, str]:
    """{benchmark: headline metric}."""
    return {b.name: b.headline for b in benchmarks()}


def judge_templates() -> list[str]:
    """The evaluate.judge_templates keys some benchmark reads."""
    return sorted({b.judge_template for b in benchmarks() if b.judge_template})


def judge_tasks() -> list[str]:
    """The JudgeRequest tasks of the benchmarks' gradings (`Benchmark.judge_task`)."""
    return sorted({b.judge_task for b in benchmarks() if b.judge_task})


def rubric_graders() -> dict[str, Callable[[dict, dict], str]]:
    """{judge task: the rubric judge's grading of it} (`Benchmark.rubric_grade`); benchmarks that share a task
    (MT-Bench and its noisy-image variant) share its grading."""
    out: dict[str, Callable[[dict, dict], str]] = {}
    for b in benchmarks():
        if b.rubric_grade is None:
            continue
        if b.judge_task is None:
            raise ValueError(f"{b.name}: a rubric grading needs the judge task it grades (judge_task)")
        if out.setdefault(b.judge_task, b.rubric_grade) is not b.rubric_grade:
            raise ValueError(f"judge task {b.judge_task!r}: two benchmarks give different rubric gradings")
    return out

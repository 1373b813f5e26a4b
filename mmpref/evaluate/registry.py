"""The registry of benchmarks: name -> Benchmark, the one place that says what a benchmark is.

Every module of mmpref/evaluate/ that defines a module-level `BENCHMARK` is registered when the registry is first
read, so adding a benchmark is one module (loader, prompts, judge prompt and parser, metric, run function, and its
`BENCHMARK` entry) plus its params entry (`evaluate.benchmarks.<name>: <path>`). `register` adds one at run time
(tests register a toy benchmark this way). Config validation, stage 09's plan, the figures and tables, the bootstrap
and `mmpref check` all read the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mmpref.evaluate.protocol import Score, count_failed


@dataclass(frozen=True)
class DataFile:
    """A file a run reads, as `mmpref check` and README "Get the data" describe it."""

    key: str
    what: str
    stage: str          # the stage that reads it
    param: str          # the params key that points at it
    path: str           # its value in params/paper-13b.yaml, relative to run.data_dir (or a hub id)
    layout: tuple[str, ...]   # what the loader reads, relative to run.data_dir
    source: str         # official source: repository or hub id and the path in it


@dataclass(frozen=True)
class Benchmark:
    name: str                 # params key (evaluate.benchmarks.<name>) and results.csv "benchmark"
    display: str              # the paper's column name (Table 2) or label
    headline: str             # the metric reported in tables and figures
    headline_name: str        # the headline in words ("POPE F1"), for claims and logs
    order: int                # position in listings and tables (the paper's Table 2 order)
    # run(data_path, generate, judge, out_jsonl, model, *, template, limit, noise_images_dir, **options) -> rows
    run: Callable[..., list[dict]]
    score: Callable[[Sequence[dict]], dict[str, Score]]   # metric scores from per-item records
    load: Callable[..., list] # load(path, limit) -> items (official format)
    data: DataFile            # where the data comes from (mmpref check, README)
    check: Callable[[Path, Any], str]   # check(path, params) -> note; raises ValueError naming the problem
    unit: str = ""            # the headline's unit or scale as tables' headers show it ("%", "1–10"); "": none
    text_only: bool = False   # answerable by a text-only LM (the base LM is scored on it)
    grading: str | None = None          # judge protocol tag (official repository@commit); None: scored by rule
    judge_template: str | None = None   # its evaluate.judge_templates key (official judge prompt file)
    template_data: DataFile | None = None
    check_template: Callable[[Path], str] | None = None
    in_table2: bool = False   # a column of the paper's Table 2 (its value in paper_results.yaml table2 rows)
    paper_key: str | None = None        # its key in params/paper_results.yaml (None: the paper does not report it)
    uses_noise_images: bool = False     # needs evaluate.noise_images
    failures: Callable[[Sequence[dict]], Score] = count_failed   # failed gradings among the records
    strata: Callable[[dict], str] | None = None   # bootstrap draws within these groups of records (POPE's splits)
    backfill: Callable[[list[dict], list], list[dict]] | None = None  # old records + loaded items -> current records
    options: Callable[[Any], dict] = lambda ev: {}  # run options from the params' `evaluate` section
    # cost estimate of one model's judge calls: cost_inputs(path or None, answer text, template path or None, limit)
    # -> (items, input texts of its judge calls, notes); output_tokens: the judge's reply per call
    cost_inputs: Callable[..., tuple[int, list[str], str]] | None = None
    output_tokens: int = 0
    default_items: int = 0    # items of the official file (cost estimate when it is absent)
    extra: dict = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.grading is not None


_REGISTRY: dict[str, Benchmark] = {}
_DISCOVERED = False


def register(spec: Benchmark) -> Benchmark:
    """Add a benchmark (or replace one of the same name); returns it."""
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def _discover() -> None:
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import mmpref.evaluate as package

    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        spec = getattr(module, "BENCHMARK", None)
        if isinstance(spec, Benchmark):
            _REGISTRY.setdefault(spec.name, spec)


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

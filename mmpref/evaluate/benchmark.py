"""What a benchmark is: the `Benchmark` record each benchmark module defines (its `BENCHMARK`) and the registry lists,
the data files it reads (`DataFile`) and the scores its metric gives (`Score`, `count_failed`).

A leaf module: the registry and the shared protocol both import it, and it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence


class Score(NamedTuple):
    value: float
    n: int


def count_failed(recs: Sequence[dict]) -> Score:
    """Failed gradings among the records (those marked "failed": true), out of all records."""
    return Score(sum(bool(r.get("failed")) for r in recs), len(recs))


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
    # the miniature world's copy: build_miniature(build) -> {name: items} writes it in the official layout under
    # build.folder (build: mmpref.world.benchmarks.MiniatureBuild); world/build.py runs the builders in build_order
    # (every picture of the world is unique, so a builder's pictures depend on those drawn before: a new one goes last)
    build_miniature: Callable[[Any], dict[str, int]] | None = None
    build_order: int = 100
    miniature_texts: Callable[[Path], Iterable[str]] | None = None  # (benchmarks folder) -> its texts (tokenizer)
    judge_task: str | None = None       # the JudgeRequest task of its gradings (judges accept the registered ones)
    # the rubric judge's grading of judge_task: rubric_grade(request inputs, request truth) -> the judge's reply text
    rubric_grade: Callable[[dict, dict], str] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def judged(self) -> bool:
        return self.grading is not None

"""Regenerate the paper's tables and figures from a run's ``eval/results.csv`` and annotations.

- :func:`table2` / :func:`table3`: the paper's Table 2 (alignment methods x six benchmarks) and Table 3
  (noisy-image MT-Bench) from the HEADLINE metric of each benchmark, optionally with the paper's rows beside them.
- :func:`figure2`: MT-Bench vs the share of the preference pairs (0 % = "vit", 100 % = "dpo"; MM-DPO beside DPO),
  base LM as a reference line.
- :func:`figure3`: Pearson correlations among the judge's attribute differences (response A - B) and a human
  preference label; :func:`noisy_human_preferences` simulates LLaVA-RLHF's noisy crowd labels in the miniature world.
- :func:`paper_vs_run`: the run's numbers next to the paper's, with the direction of change against the
  visual-instruction-tuned model.
- :func:`table2_intervals` / :func:`table3_intervals`: the run's own rows with 95 % bootstrap intervals from
  ``eval/intervals.csv`` (computed by :mod:`mmpref.stats`); :func:`save_interval_table` writes them as CSV (value,
  lo, hi columns) and markdown ("6.12 [5.85, 6.40]" cells).

Values are shown in the units results.csv holds them (no rescaling); the paper's units are listed in
``params/paper_results.yaml``. Rendered tables (the markdown files, the notebooks' views) name each column's unit in
its header, from one map (:func:`table_units`; a benchmark's unit is its registry entry's ``unit``); the CSV files
keep the plain column names. Figures are drawn on a bare ``matplotlib.figure.Figure`` (no pyplot state, so a
notebook's backend is never touched) and saved as PNG (200 dpi) and PDF (:func:`save_figure`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Literal, Sequence

import pandas as pd
import yaml
from matplotlib.figure import Figure
from pydantic import BaseModel, ConfigDict, ValidationError, create_model, field_validator

from mmpref import methods
from mmpref.evaluate import registry
from mmpref.evaluate.suite import RESULT_COLUMNS
from mmpref.io import read_jsonl
from mmpref.ratings import ATTRIBUTES

log = logging.getLogger(__name__)

# read from the registries (mmpref.evaluate.registry, mmpref.methods) when this module is imported
HEADLINE = registry.headlines()
MODEL_ORDER = methods.model_order()
MODEL_NAMES = {m: methods.display_name(m) for m in MODEL_ORDER}
TABLE2_COLUMNS = {b.name: b.display for b in registry.benchmarks() if b.in_table2}
TEXT_BENCHMARKS = [b.name for b in registry.benchmarks() if b.text_only]
DIFF_COLUMNS = [f"d_{a}" for a in ATTRIBUTES]
PREFERENCE_COLUMN = "human_preference"

RunModel = Literal[tuple(MODEL_ORDER)]  # type: ignore[valid-type]


# ----------------------------------------------------------------------------------------------- paper numbers
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _PaperTable2Base(_Strict):
    name: str
    run_model: RunModel | None


# one field per Table 2 benchmark of the registry, named by its paper_results.yaml key (None: not reported)
PaperTable2Row = create_model("PaperTable2Row", __base__=_PaperTable2Base,
                              **{b.paper_key: (float | None, None) for b in registry.benchmarks()
                                 if b.in_table2 and b.paper_key})


def _paper_value(row: BaseModel, bench: str) -> float | None:
    """A paper row's number for a benchmark (None when the paper does not report it)."""
    key = registry.get(bench).paper_key
    return getattr(row, key, None) if key else None


class PaperTable3Row(_Strict):
    name: str
    llm: str
    run_model: RunModel | None
    mt_bench_noisy: float


class PaperFigure2(_Strict):
    points: dict[float, float]
    base_lm: float

    @field_validator("points")
    @classmethod
    def _fractions(cls, v: dict[float, float]) -> dict[float, float]:
        bad = [f for f in v if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in [0, 1]: {bad}")
        return dict(sorted(v.items()))


class PaperDPOData(_Strict):
    """Section 3.1 (prompts per source), Table 4 (DPO pairs per source) and section 4.3's data-scaling claim."""
    prompts: dict[str, int]
    pairs: dict[str, int]
    passes_base_lm_below: float | None = None   # share of the DPO data below which DPO passes the base LM on MT-Bench


class PaperFigure3(_Strict):
    """Figure 3 / section 5: the number of pairs and the bound on every correlation with the human preference."""
    n: int
    human_r_below: float


class PaperResults(_Strict):
    source: str
    table2: list[PaperTable2Row]
    table3: list[PaperTable3Row]
    figure2: PaperFigure2
    dpo_data: PaperDPOData | None = None
    figure3: PaperFigure3 | None = None

    def table2_for(self, run_model: str) -> PaperTable2Row | None:
        return next((r for r in self.table2 if r.run_model == run_model), None)

    def table3_for(self, run_model: str) -> PaperTable3Row | None:
        return next((r for r in self.table3 if r.run_model == run_model), None)


def load_paper_results(path: str | Path) -> PaperResults:
    """Read and validate ``params/paper_results.yaml``; errors name the file and the bad key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    try:
        return PaperResults.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: invalid paper results:\n{exc}") from None


PAPER_DECIMALS = {"pope": 3, "mt_bench": 2}  # as the paper prints them (others: 1)


def paper_number(row: BaseModel, bench: str) -> str:
    """A paper row's number for a benchmark as the paper prints it (PAPER_DECIMALS)."""
    return f"{_paper_value(row, bench):.{PAPER_DECIMALS.get(bench, 1)}f}"


def paper_sentence(paper: PaperResults, model: str) -> str:
    """The paper's Table 2 on one run model, as a sentence for a stage notebook: its numbers on every Table 2
    benchmark with those of the model it fine-tunes (LLaVA-1.5) in parentheses, the base LM's text scores, and its
    MT-Bench rank among the alignment methods. ValueError when the paper has no row for `model`."""
    row = paper.table2_for(model)
    if row is None:
        raise ValueError(f"the paper's Table 2 has no row for run model {model!r}; rows: "
                         f"{[r.run_model for r in paper.table2 if r.run_model]}")
    policy, base = paper.table2_for(methods.POLICY), paper.table2_for(methods.BASE_LM)
    cells = []
    for bench, display in TABLE2_COLUMNS.items():
        value = _paper_value(row, bench)
        if value is None:
            continue
        ref = _paper_value(policy, bench) if policy is not None and policy is not row else None
        cells.append(f"{display} {paper_number(row, bench)}" + (f" ({paper_number(policy, bench)})" if ref is not None
                                                                   else ""))
    text = f"The paper's {row.name} (Table 2"
    text += f"; in parentheses {policy.name}, the model it fine-tunes): " if policy is not None and policy is not row \
        else "): "
    text += ", ".join(cells) + "."
    if base is not None and base is not row:
        text += " " + base.name + ", the base LM: " + ", ".join(
            f"{display} {paper_number(base, bench)}" for bench, display in TABLE2_COLUMNS.items()
            if _paper_value(base, bench) is not None) + "."
    ranked = [r for r in paper.table2 if r.run_model in methods.names() and r.mt_bench is not None]
    if row in ranked:
        ranked.sort(key=lambda r: -r.mt_bench)
        text += f" On MT-Bench it ranks {ranked.index(row) + 1} of the {len(ranked)} alignment methods."
    return text


# ----------------------------------------------------------------------------------------------- results frame
def load_results(path: str | Path) -> pd.DataFrame:
    """Read ``eval/results.csv`` and check its columns."""
    df = pd.read_csv(path)
    return _check_results(df, str(path))


def _check_results(results: pd.DataFrame, where: str = "results") -> pd.DataFrame:
    missing = [c for c in ["model", "benchmark", "metric", "value"] if c not in results.columns]
    if missing:
        raise ValueError(f"{where}: missing columns {missing}; expected {RESULT_COLUMNS}")
    return results


def headline_values(results: pd.DataFrame) -> dict[tuple[str, str], float]:
    """{(model, benchmark): headline value}; conflicting duplicate rows raise ValueError."""
    _check_results(results)
    out: dict[tuple[str, str], float] = {}
    headline = registry.headlines()
    for row in results.itertuples(index=False):
        if headline.get(row.benchmark) != row.metric:
            continue
        key, value = (row.model, row.benchmark), float(row.value)
        if key in out and not (out[key] == value or (math.isnan(out[key]) and math.isnan(value))):
            raise ValueError(f"results: two different {row.benchmark}/{row.metric} values for model {row.model}: "
                             f"{out[key]} and {value}")
        out[key] = value
    return out


def table2(results: pd.DataFrame, paper: PaperResults | None = None, run_label: str = "") -> pd.DataFrame:
    """Table 2: one row per run model (paper order, display names) x the six benchmarks' headline metrics.

    The base LM gets only the text benchmarks (blank elsewhere, as in the paper). With ``paper``, the paper's seven
    rows follow, named "<row> (paper)". ``run_label`` marks the run's rows, e.g. "miniature": "DPO (miniature)".
    """
    values = headline_values(results)
    models = [m for m in MODEL_ORDER if any(k[0] == m for k in values)]
    rows = []
    for m in models:
        benches = TEXT_BENCHMARKS if m == methods.BASE_LM else list(TABLE2_COLUMNS)
        rows.append({"Model": f"{MODEL_NAMES[m]} ({run_label})" if run_label else MODEL_NAMES[m],
                     **{TABLE2_COLUMNS[b]: values.get((m, b), math.nan) if b in benches else math.nan
                        for b in TABLE2_COLUMNS}})
    if paper is not None:
        for r in paper.table2:
            rows.append({"Model": f"{r.name} (paper)",
                         **{TABLE2_COLUMNS[b]: math.nan if _paper_value(r, b) is None else _paper_value(r, b)
                            for b in TABLE2_COLUMNS}})
    return pd.DataFrame(rows, columns=["Model", *TABLE2_COLUMNS.values()]).set_index("Model")


def table3(results: pd.DataFrame, paper: PaperResults | None = None) -> pd.DataFrame:
    """Table 3: noisy-image MT-Bench per model, with the same model's MT-bench without an image and the change.

    The base LM (text-only) usually has no noisy-image score; its plain MT-bench is the reference, as in the paper.
    """
    values = headline_values(results)
    cols = ["Noisy-image MT-Bench", "MT-bench (no image)", "Change (noisy - no image)"]
    rows = []
    for m in MODEL_ORDER:
        noisy, clean = values.get((m, "mt_bench_noisy"), math.nan), values.get((m, "mt_bench"), math.nan)
        if math.isnan(noisy) and not (m == methods.BASE_LM and not math.isnan(clean)):
            continue
        rows.append({"Model": MODEL_NAMES[m], cols[0]: noisy, cols[1]: clean, cols[2]: noisy - clean})
    if paper is not None:
        for r in paper.table3:
            rows.append({"Model": f"{r.name} (paper)", cols[0]: r.mt_bench_noisy, cols[1]: math.nan,
                         cols[2]: math.nan})
    return pd.DataFrame(rows, columns=["Model", *cols]).set_index("Model")


def paper_vs_run(results: pd.DataFrame, paper_results: PaperResults) -> pd.DataFrame:
    """The run's headline numbers beside the paper's, per (model, benchmark).

    ``run_change`` / ``paper_change`` are the differences to the visual-instruction-tuned model (run "vit", paper
    LLaVA-1.5-13b); ``same_direction`` says whether the run moves the same way as the paper (blank when either
    change is zero or missing). ``unit``: the unit of the row's numbers (the benchmark's headline unit, from its
    registry entry).
    """
    values = headline_values(results)
    rows = []

    def add(model: str, paper_name: str, bench: str, display: str, paper_value: float | None,
            paper_base: float | None) -> None:
        if model == methods.BASE_LM and bench not in (*TEXT_BENCHMARKS, "mt_bench_noisy"):
            return  # the base LM is text-only: its visual scores are blank in Table 2
        run, run_base = values.get((model, bench), math.nan), values.get((methods.POLICY, bench), math.nan)
        pv = math.nan if paper_value is None else paper_value
        pb = math.nan if paper_base is None else paper_base
        if math.isnan(run) and math.isnan(pv):
            return
        rc, pc = run - run_base, pv - pb
        same = None
        if not (math.isnan(rc) or math.isnan(pc)) and rc != 0 and pc != 0:
            same = (rc > 0) == (pc > 0)
        rows.append({"model": model, "paper_model": paper_name, "benchmark": display, "unit": registry.get(bench).unit,
                     "run": run, "paper": pv, "run_change": rc, "paper_change": pc, "same_direction": same})

    base2 = paper_results.table2_for(methods.POLICY)
    for r in paper_results.table2:
        if r.run_model is None:
            continue
        for b, display in TABLE2_COLUMNS.items():
            add(r.run_model, r.name, b, display, _paper_value(r, b), _paper_value(base2, b) if base2 else None)
    base3 = paper_results.table3_for(methods.POLICY)
    for r in paper_results.table3:
        if r.run_model is not None:
            add(r.run_model, r.name, "mt_bench_noisy", "Noisy-image MT-Bench", r.mt_bench_noisy,
                base3.mt_bench_noisy if base3 else None)
    return pd.DataFrame(rows, columns=["model", "paper_model", "benchmark", "unit", "run", "paper", "run_change",
                                       "paper_change", "same_direction"])


# ----------------------------------------------------------------------------------------------- with intervals
TABLE3_COLUMNS = ["Noisy-image MT-Bench", "MT-bench (no image)", "Change (noisy - no image)"]
DECIMALS = {"PoPe": 3}  # display column -> decimals in "value [lo, hi]" cells (others: 2)


def _interval_lookup(intervals: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, float, float]]:
    missing = [c for c in ["model", "benchmark", "metric", "value", "lo", "hi"] if c not in intervals.columns]
    if missing:
        raise ValueError(f"intervals: missing columns {missing}")
    return {(r.model, r.benchmark, r.metric): (float(r.value), float(r.lo), float(r.hi))
            for r in intervals.itertuples(index=False)}


def _triple(row: dict, col: str, got: tuple[float, float, float] | None) -> None:
    row[col], row[f"{col} lo"], row[f"{col} hi"] = got if got is not None else (math.nan,) * 3


def table2_intervals(intervals: pd.DataFrame) -> pd.DataFrame:
    """Table 2 for the run's own models from ``eval/intervals.csv``: per benchmark the headline value and its 95 %
    bootstrap interval as columns "<benchmark>", "<benchmark> lo", "<benchmark> hi" (base LM: text benchmarks only)."""
    iv = _interval_lookup(intervals)
    rows = []
    for m in MODEL_ORDER:
        if not any(k[0] == m and k[1] in TABLE2_COLUMNS for k in iv):
            continue
        benches = TEXT_BENCHMARKS if m == methods.BASE_LM else list(TABLE2_COLUMNS)
        row: dict = {"Model": MODEL_NAMES[m]}
        for b, col in TABLE2_COLUMNS.items():
            _triple(row, col, iv.get((m, b, HEADLINE[b])) if b in benches else None)
        rows.append(row)
    cols = [c for col in TABLE2_COLUMNS.values() for c in (col, f"{col} lo", f"{col} hi")]
    return pd.DataFrame(rows, columns=["Model", *cols]).set_index("Model")


def table3_intervals(intervals: pd.DataFrame, change_metric: str = "change_vs_mt_bench") -> pd.DataFrame:
    """Table 3 for the run's own models with intervals: noisy-image MT-Bench, plain MT-Bench, and the paired change
    (rows of metric `change_metric` in intervals.csv); value, lo and hi columns as in :func:`table2_intervals`."""
    iv = _interval_lookup(intervals)
    rows = []
    for m in MODEL_ORDER:
        noisy, clean = iv.get((m, "mt_bench_noisy", HEADLINE["mt_bench_noisy"])), iv.get((m, "mt_bench", "overall"))
        if noisy is None and not (m == methods.BASE_LM and clean is not None):
            continue
        row: dict = {"Model": MODEL_NAMES[m]}
        for col, got in zip(TABLE3_COLUMNS, (noisy, clean, iv.get((m, "mt_bench_noisy", change_metric)))):
            _triple(row, col, got)
        rows.append(row)
    cols = [c for col in TABLE3_COLUMNS for c in (col, f"{col} lo", f"{col} hi")]
    return pd.DataFrame(rows, columns=["Model", *cols]).set_index("Model")


def interval_cell(value: float, lo: float, hi: float, decimals: int = 2) -> str:
    """"6.12 [5.85, 6.40]"; blank without a value, the bare value without an interval."""
    if value is None or math.isnan(value):
        return ""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return f"{value:.{decimals}f}"
    return f"{value:.{decimals}f} [{lo:.{decimals}f}, {hi:.{decimals}f}]"


def interval_cells(table: pd.DataFrame) -> pd.DataFrame:
    """A value/lo/hi table (:func:`table2_intervals`, :func:`table3_intervals`) as one "value [lo, hi]" text cell
    per column."""
    base = [c for c in table.columns if f"{c} lo" in table.columns and f"{c} hi" in table.columns]
    out = pd.DataFrame(index=table.index)
    for c in base:
        d = DECIMALS.get(c, 2)
        out[c] = [interval_cell(v, lo, hi, d) for v, lo, hi in zip(table[c], table[f"{c} lo"], table[f"{c} hi"])]
    return out


def save_interval_table(table: pd.DataFrame, out_dir: str | Path, name: str) -> dict[str, Path]:
    """``<name>.csv`` with the numeric value / lo / hi columns and ``<name>.md`` with "value [lo, hi]" cells."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    table.to_csv(csv)
    md.write_text(to_markdown(with_table_units(interval_cells(table), name)), encoding="utf-8")
    return {"csv": csv, "md": md}


# ----------------------------------------------------------------------------------------------- units in headers
def with_units(df: pd.DataFrame, units: dict[str, str]) -> pd.DataFrame:
    """A copy whose column headers (and index name) carry their units: "MT-bench" -> "MT-bench (1–10)". `units`:
    header -> unit for this table (a header means one thing per table: "full" counts pairs in one table and is a
    share of answers in another); a header without a unit, or one that already ends in "(unit)", is kept."""
    def name(header):
        unit = units.get(header) if isinstance(header, str) else None
        return header if not unit or header.endswith(f"({unit})") else f"{header} ({unit})"

    out = df.rename(columns=name)
    if out.index.name is not None:
        out.index = out.index.rename(name(out.index.name))
    return out


SHARES = ("pictures", "format adherence", "adherence, short asked", "adherence, sentence asked", "behaviour failures")


def table_units(name: str) -> dict[str, str]:
    """The one map of units in table headers: header -> unit for the table `name` (a saved table's file name,
    tables/<name>.md, or a notebook's table named here). A table whose column holds rows of several units has none
    for it (claims, paper_vs_run, dpo_diagnosis, c2_decision: each row says what it measures)."""
    from mmpref.world.anatomy import KINDS  # the kinds of answer (columns of the anatomy tables)

    mt = registry.get("mt_bench").unit if "mt_bench" in registry.names() else ""
    benchmarks = {b.display: b.unit for b in registry.benchmarks() if b.unit}
    kinds_share = {k: "%" for k in (*KINDS, *SHARES)}
    nats = "nats"
    units = {
        "table2": benchmarks, "table2_ci": benchmarks,
        "table3": {TABLE3_COLUMNS[0]: mt, TABLE3_COLUMNS[1]: mt, TABLE3_COLUMNS[2]: "points"},
        "regression_anatomy": {k: "%" for k in KINDS},
        "dpo_pair_anatomy": {k: "pairs" for k in KINDS},
        "response_form": kinds_share, "response_form_by_category_turn": kinds_share,
        "mt_bench_decomposition": {"contribution": "points", "lo": "points", "hi": "points"},
        "mt_bench_transitions": {"mean rating change": "points"},
        "knowledge_probe": {c: "%" for c in ("accuracy", "lo", "hi", "chance")},
        "knowledge_probe_by_item_group": {m: "%" for m in MODEL_ORDER},
        # notebooks' tables
        "headline": {b.name: b.unit for b in registry.benchmarks() if b.unit},  # 09: model x benchmark
        "dpo_sweep": {"dev_relative_score": registry.get("llava_bench").unit if "llava_bench" in registry.names()
                      else "", "final_loss": nats, "ln 2": nats, "loss - ln 2": nats},
        "training_runs": {"final_loss": nats, "final loss": nats, "loss - ln 2": nats},
        "dpo_steps": {"loss": nats, "rewards/chosen": nats, "rewards/rejected": nats, "rewards/margins": nats,
                      "rewards/accuracies": "share of pairs", "logps/chosen": nats, "logps/rejected": nats},
        "ratings": {**{a: "0–4" for a in ATTRIBUTES}, "quality": "0–12", "chosen_quality": "0–12",
                    "rejected_quality": "0–12", "quality (h + c + coh)": "0–12", "mean": "0–4", "std": "0–4",
                    "min": "0–4", "max": "0–4"},
        "mm_dpo_margins": {"delta": "points", "weight_vs_dpo": "×", "weight vs DPO": "×"},
    }
    units["table3_ci"] = units["table3"]
    return {k: v for k, v in units.get(name, {}).items() if v}


def with_table_units(df: pd.DataFrame, name: str) -> pd.DataFrame:
    """`with_units` by the table's name (`table_units`)."""
    return with_units(df, table_units(name))


# ----------------------------------------------------------------------------------------------- saving tables
def readable(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A copy of a table for reading in a notebook: each float column rounded to about `digits` significant digits
    of its largest value (36.666667 -> 36.7, 0.123456 -> 0.123, 6.123 -> 6.12), a float column of whole numbers
    shown as integers (208.0 -> 208), and a missing value (NaN, None) shown blank, as `to_markdown` writes it. The one home
    of that rule for every table a notebook shows; the CSV files keep full precision."""
    out = df.copy()
    for col in out.columns:
        values = out[col]
        if values.dtype == object:
            present = values.dropna()
            if len(present) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
                values = values.astype(float)  # numbers with None among them
            else:
                out[col] = values.where(values.notna(), "")
                continue
        if not pd.api.types.is_float_dtype(values):
            continue
        top = values.abs().max()
        if not (pd.isna(top) or top == 0):
            values = values.round(max(0, digits - 1 - int(math.floor(math.log10(top))))) + 0.0  # -0.0 -> 0.0
        present = values.dropna()
        if len(present) and bool((present == present.round()).all()) and present.abs().max() < 2 ** 53:
            values = values.astype("Int64")
        if values.isna().any():
            values = values.astype(object).where(values.notna(), "")
        out[col] = values
    return out


def _is_float(v: object) -> bool:
    return isinstance(v, float) and not math.isnan(v)


def column_decimals(values: Iterable[object]) -> int:
    """One precision for a column: the decimals that give its largest value 3 significant digits (0.0206 -> 4,
    0.883 -> 3, 6.73 -> 2, 86.4 -> 1, 1234.5 -> 0), so a column never mixes 0.0206 with -3.6e-05 and is never in
    scientific notation (a value below the column's precision reads 0.0000)."""
    largest = max((abs(v) for v in values if _is_float(v)), default=0.0)
    if largest == 0:
        return 0
    return min(6, max(0, 2 - math.floor(math.log10(largest))))


def _cell(v: object, decimals: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        text = f"{v:.{decimals}f}"
        return f"{0.0:.{decimals}f}" if float(text) == 0 else text  # no "-0.00"
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub Markdown table (blank for missing values; each column's floats at one precision,
    `column_decimals`)."""
    frame = df.reset_index() if index and (df.index.name is not None or not isinstance(df.index, pd.RangeIndex)) \
        else df
    header = [str(c) for c in frame.columns]
    decimals = [column_decimals(frame.iloc[:, i]) for i in range(frame.shape[1])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v, d) for v, d in zip(row, decimals)) + " |")
    return "\n".join(lines) + "\n"


def save_table(df: pd.DataFrame, out_dir: str | Path, name: str) -> dict[str, Path]:
    """Write ``<name>.csv`` and ``<name>.md`` into out_dir; returns their paths. The markdown's headers carry their
    units (`table_units`); the CSV keeps the plain column names other code reads."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keep_index = df.index.name is not None or not isinstance(df.index, pd.RangeIndex)
    csv, md = out_dir / f"{name}.csv", out_dir / f"{name}.md"
    df.to_csv(csv, index=keep_index)
    md.write_text(to_markdown(with_table_units(df, name), index=keep_index), encoding="utf-8")
    return {"csv": csv, "md": md}


# ----------------------------------------------------------------------------------------------- figure 2
def fraction_model(fraction: float, method: str = "dpo") -> str:
    """Run model name of `method` (a data-fraction method: DPO, MM-DPO) on a share of its data: 0 -> "vit",
    1 -> the method, else "<method>_frac<f>" (mmpref.methods.fraction_adapter)."""
    if fraction == 0:
        return methods.POLICY
    if fraction == 1:
        return method
    if not 0 < fraction < 1:
        raise ValueError(f"a data fraction must lie in [0, 1], got {fraction}")
    return methods.fraction_adapter(method, fraction)


FRACTION_COLORS = ("tab:blue", "tab:green", "tab:purple", "tab:brown")  # one per data-fraction method (DPO first)


def figure2(results: pd.DataFrame, fractions: Sequence[float], out_png: str | Path,
            paper: PaperResults | PaperFigure2 | None = None, source: str = "this run",
            intervals: pd.DataFrame | None = None) -> pd.DataFrame:
    """`figure2_plot` saved as PNG and PDF (:func:`save_figure`); returns the run's plotted points."""
    fig, pts = figure2_plot(results, fractions, paper, source, intervals)
    save_figure(fig, out_png)
    return pts


def figure2_plot(results: pd.DataFrame, fractions: Sequence[float],
                 paper: PaperResults | PaperFigure2 | None = None, source: str = "this run",
                 intervals: pd.DataFrame | None = None) -> tuple[Figure, pd.DataFrame]:
    """MT-Bench overall vs share of the preference data (0 % = vit, 100 % = the full adapter), one curve per
    data-fraction method trained in the run (DPO as in the paper; MM-DPO beside it), with the base LM as a reference
    line.

    ``fractions`` are the intermediate data-fraction runs (0 and 1 are always added). ``intervals``
    (`mmpref.stats` intervals: model, benchmark, metric, lo, hi, n_units) draws each run point's 95 % interval. With
    ``paper``, a second panel on the same y scale shows the paper's reported points as points (the paper's text gives
    only its endpoints: nothing joins them) and its Vicuna line. The title names the items and the judge.
    ``source`` names the run in the legend and title (e.g. "this run, miniature world"). Returns the figure and the
    run's plotted points (with lo/hi where the intervals have them).
    """
    values = headline_values(results)
    bench = methods.FRACTIONS_BENCHMARK
    fr = sorted({0.0, 1.0, *(float(f) for f in fractions)})
    ci = {}
    if intervals is not None and not intervals.empty:
        rows = intervals[(intervals["benchmark"] == bench) & (intervals["metric"] == registry.get(bench).headline)]
        ci = {r.model: (r.lo, r.hi, r.n_units) for r in rows.itertuples()}
    points = []
    for method in methods.fraction_methods():
        own = [fraction_model(f, method.name) for f in fr if f > 0]
        if not any((m, bench) in values for m in own):
            continue  # not trained in this run: no curve
        for f in fr:
            m = fraction_model(f, method.name)
            if (m, bench) in values:
                lo, hi, n = ci.get(m, (math.nan, math.nan, math.nan))
                points.append({"method": method.name, "fraction": f, "model": m, "mt_bench": values[(m, bench)],
                               "lo": lo, "hi": hi, "n": n})
            else:
                log.warning("figure2: no MT-Bench result for %s (fraction %g); point left out", m, f)
    if not points:
        raise ValueError(f"figure2: results hold no MT-Bench 'overall' for any data-fraction model of "
                         f"{[m.name for m in methods.fraction_methods()]}")
    pts = pd.DataFrame(points)
    base = values.get((methods.BASE_LM, bench))
    fig2 = paper.figure2 if isinstance(paper, PaperResults) else paper
    xlabel, ylabel = "share of the preference pairs used (%)", "MT-Bench overall score (1–10)"
    judged = results[(results["benchmark"] == bench) & results["model"].isin(pts["model"])]
    judges = sorted({str(j) for j in judged.get("judge", pd.Series(dtype=str)).dropna() if str(j) != "nan"})
    n_items = sorted({int(n) for n in pts["n"].dropna()})

    fig = Figure(figsize=(11 if fig2 else 6, 4.6), layout="constrained")
    axes = fig.subplots(1, 2 if fig2 else 1, squeeze=False, sharey=True)[0]
    ax = axes[0]
    curves = list(dict.fromkeys(pts["method"]))
    for k, (name, color) in enumerate(zip(curves, FRACTION_COLORS)):
        line = pts[pts["method"] == name]
        shift = 1.5 * (k - (len(curves) - 1) / 2)  # curves side by side, so their intervals do not hide each other
        has_ci = line["lo"].notna()
        ax.plot(line.fraction * 100 + shift, line.mt_bench, marker="o", color=color,
                label=f"{methods.display_name(name)} on a share of the data ({source})"
                      + (", 95 % interval" if has_ci.any() else ""))
        if has_ci.any():
            sub = line[has_ci]
            ax.errorbar(sub.fraction * 100 + shift, sub.mt_bench, yerr=[sub.mt_bench - sub.lo, sub.hi - sub.mt_bench],
                        fmt="none", ecolor=color, capsize=3, linewidth=1)
        for x, y in zip(line.fraction * 100 + shift, line.mt_bench):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(8, 4 - 12 * k), ha="left",
                        fontsize=8, color=color)
    if base is not None:
        lo, hi, _ = ci.get(methods.BASE_LM, (math.nan, math.nan, math.nan))
        ax.axhline(base, color="tab:red", linestyle="--", label=f"{MODEL_NAMES['base-lm']} ({source}): {base:.2f}")
        if not math.isnan(lo):
            ax.axhspan(lo, hi, color="tab:red", alpha=0.08, linewidth=0)
    ax.set(title=f"{source[:1].upper()}{source[1:]} (0 % = LLaVA-1.5, visual instruction tuned)", xlabel=xlabel,
           ylabel=ylabel, xticks=[f * 100 for f in fr], xlim=(-8, 114))
    ax.legend(loc="lower right", fontsize=8)
    shown = [*pts.mt_bench, *pts.lo.dropna(), *pts.hi.dropna(), *([base] if base is not None else [])]
    if fig2:
        ax2 = axes[1]
        for f, y in fig2.points.items():
            label = ("LLaVA-1.5-13b, visual instruction tuned, 0 % DPO (paper)" if f == 0
                     else f"LLaVA-1.5-13b + DPO on {f:.0%} of the data (paper)")
            ax2.plot([f * 100], [y], marker="o" if f == 0 else "s", linestyle="none",
                     color="tab:gray" if f == 0 else "black", label=label)
            ax2.annotate(f"{y:.2f}", (f * 100, y), textcoords="offset points", xytext=(8, 4), ha="left",
                         fontsize=8)
        ax2.axhline(fig2.base_lm, color="tab:red", linestyle="--", label=f"Vicuna-1.5-13b (paper): {fig2.base_lm:.2f}")
        ax2.set(title="Paper (reported points only; section 4.3)", xlabel=xlabel,
                xticks=[0, 25, 50, 75, 100], xlim=(-8, 114))
        ax2.legend(loc="lower right", fontsize=8)
        shown += [*fig2.points.values(), fig2.base_lm]
    low, high = min(shown), max(shown)
    pad = max(0.5, 0.25 * (high - low))
    axes[0].set_ylim(max(0.0, low - pad), min(10.5, high + pad))  # one scale for both panels (sharey)
    about = ", ".join(filter(None, [f"n = {n_items[0]} questions per point" if len(n_items) == 1 else "",
                                    f"judge {', '.join(judges)}" if judges else ""]))
    fig.suptitle("MT-Bench vs DPO data scaling (paper Figure 2)" + (f"\n({about})" if about else ""), fontsize=11)
    return fig, pts


def save_figure(fig: Figure, out_png: str | Path, dpi: int = 200) -> dict[str, Path]:
    """Write the figure as ``<name>.png`` (``dpi``) and ``<name>.pdf`` beside it; returns both paths. The PDF carries
    no creation date, so a regenerated figure that did not change is byte-identical (no churn in `figures/`), and
    embeds its fonts as TrueType (Type 42): matplotlib's default Type 3 fonts are refused by conference PDF checkers
    (ACL's, IEEE PDF eXpress)."""
    import matplotlib

    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    pdf = out_png.with_suffix(".pdf")
    fig.savefig(out_png, dpi=dpi)
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        fig.savefig(pdf, metadata={"CreationDate": None})
    return {"png": out_png, "pdf": pdf}


# ----------------------------------------------------------------------------------------------- figure 3
def attribute_diff_frame(annotations: Iterable[dict] | str | Path,
                         human_prefs: Iterable[dict]) -> pd.DataFrame:
    """Pairs frame for Figure 3: per prompt, d_<attribute> = score(A) - score(B) for the five attributes and
    ``human_preference`` = 1 when A (response 0) is preferred, 0 when B is. Failed annotations are left out."""
    if isinstance(annotations, (str, Path)):
        annotations = read_jsonl(annotations)
    prefs = {h["prompt_id"]: int(h["preferred"]) for h in human_prefs}
    rows = []
    for a in annotations:
        pid = a.get("prompt_id")
        if pid not in prefs or a.get("status") != "ok" or not a.get("scores") or len(a["scores"]) < 2:
            continue
        sa, sb = a["scores"][0], a["scores"][1]
        rows.append({"prompt_id": pid, **{f"d_{k}": sa[k] - sb[k] for k in ATTRIBUTES},
                     PREFERENCE_COLUMN: 1 - prefs[pid]})
    return pd.DataFrame(rows, columns=["prompt_id", *DIFF_COLUMNS, PREFERENCE_COLUMN])


def figure3(pairs_df: pd.DataFrame, out_png: str | Path, simulated_labels: bool = False,
            source: str = "", paper: PaperResults | None = None) -> pd.DataFrame:
    """Pearson correlation heatmap among the attribute differences and the human preference (paper Figure 3).

    n is stated on the figure; ``simulated_labels`` says there that the human labels are simulated (the miniature
    world's noisy labels); ``source`` names where the pairs come from; with ``paper``, its note gives the paper's
    reported values beside this run's strongest human-label correlation. A variable that is constant over the
    pairs has no correlation: its row and column carry a note instead of blank cells. The note also names the most
    correlated pair of judge attributes (two attributes that move together carry one signal, not two). Saved as
    PNG and PDF. Returns the correlation matrix (NaN where a column is constant)."""
    import seaborn as sns

    cols = [*DIFF_COLUMNS, PREFERENCE_COLUMN]
    missing = [c for c in cols if c not in pairs_df.columns]
    if missing:
        raise ValueError(f"figure3: pairs frame lacks columns {missing}")
    if len(pairs_df) < 3:
        raise ValueError(f"figure3: need at least 3 pairs for a correlation, got {len(pairs_df)}")
    human = "simulated human preference (A = 1)" if simulated_labels else "human preference (A = 1)"
    labels = [f"Δ {a}" for a in ATTRIBUTES] + [human]
    frame = pairs_df[cols].astype(float)
    corr = frame.corr(method="pearson")
    constant = [labels[i] for i, c in enumerate(cols) if frame[c].nunique(dropna=True) <= 1]
    shown = corr.copy()
    shown.index, shown.columns = labels, labels
    fig = Figure(figsize=(7.6, 6.6), layout="constrained")
    ax = fig.subplots()
    # vmin/vmax symmetric about 0 centre the diverging map already; seaborn 0.13's `center=` path rebuilds the
    # colormap with Colormap.set_bad, which matplotlib 3.11 deprecates (PendingDeprecationWarning in the notebook)
    sns.heatmap(shown, ax=ax, vmin=-1, vmax=1, cmap="coolwarm", annot=True, fmt=".2f", square=True,
                cbar_kws={"label": "Pearson r"})
    for name in constant:
        i = labels.index(name)
        ax.text(len(labels) / 2, i + 0.5, f"{name}: constant over all {len(pairs_df)} pairs, no correlation",
                ha="center", va="center", fontsize=7, style="italic",
                bbox={"facecolor": "white", "edgecolor": "gray", "alpha": 0.9})
    n_text = f"n = {len(pairs_df)} response pairs" + (f" ({source})" if source else "")
    # a figure title, so the constrained layout centres it over the heatmap and its colour bar without overlap
    fig.suptitle(f"Judge attribute differences (A − B) vs human preference\n{n_text}", fontsize=11)
    ax.set_xlabel("judge score difference A − B (points) · human label", fontsize=9)
    ax.set_ylabel("judge score difference A − B (points) · human label", fontsize=9)
    ax.tick_params(axis="x", labelrotation=40)
    for t in ax.get_xticklabels():
        t.set_ha("right")
    notes = []
    human_r = corr[PREFERENCE_COLUMN].drop(PREFERENCE_COLUMN).dropna()
    if paper is not None and paper.figure3 is not None and not human_r.empty:
        top = human_r.abs().idxmax()
        notes.append(f"Paper (n = {paper.figure3.n} LLaVA-RLHF pairs, Gemini): every |r| with the human label below "
                     f"{paper.figure3.human_r_below:g}. This run: largest |r| {abs(human_r[top]):.2f} "
                     f"(Δ {top.removeprefix('d_')}).")
    pairs = [(abs(corr.loc[a, b]), a, b) for i, a in enumerate(DIFF_COLUMNS) for b in DIFF_COLUMNS[i + 1:]
             if not math.isnan(corr.loc[a, b])]
    if pairs:
        r, a, b = max(pairs)
        notes.append(f"Most correlated judge attributes: Δ {a.removeprefix('d_')} and Δ {b.removeprefix('d_')}, "
                     f"r = {corr.loc[a, b]:.2f}" + (": nearly one signal, not two." if r >= 0.9 else "."))
    if simulated_labels:
        notes.append("Human labels are SIMULATED: the miniature world's noisy crowd labels, not LLaVA-RLHF's.")
    if constant:
        notes.append(f"Constant (no correlation defined): {', '.join(constant)}.")
    if notes:  # the figure grows by the notes' lines, so the heatmap keeps its size under the title
        height = 6.6 + 0.22 * len(notes)
        fig.set_figheight(height)
        fig.text(0.01, 0.005, "\n".join(notes), fontsize=8, ha="left", va="bottom")
        share = (0.22 * len(notes) + 0.1) / height
        fig.get_layout_engine().set(rect=(0, share, 1, 1 - share))
    save_figure(fig, out_png)
    return corr

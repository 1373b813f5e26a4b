"""95 % bootstrap intervals for Table 2 / Table 3 cells, paired differences between models, and the paper's claims
judged from them.

Where they are computed: in stage 10 (:func:`mmpref.analysis.analyse_run` calls :func:`write_intervals`), which
writes the tidy file ``<run_dir>/eval/intervals.csv`` (model, benchmark, metric, value, lo, hi, n_units,
n_resamples, level, seed) beside ``results.csv``. A file, so the numbers behind ``tables/table2_ci`` and
``tables/table3_ci`` can be read and checked against results.csv without re-running anything; in stage 10 and not in
stage 09 because they need nothing but 09's per-item records (no model, no judge) and take seconds, so a change of
the resampling settings never needs a re-evaluation.

What is resampled: the units of a benchmark, one per-item record each (``eval/<model>/<benchmark>.jsonl``, the
records its latest scoring used): POPE questions, resampled within their split (the headline is the mean F1 of the
splits); MMBench questions, each record holding all rotations of one question (circular accuracy needs the whole
group); MM-Vet items; LLaVA-Bench questions (the ratio of means is recomputed per resample); MT-Bench questions with
both turns; AlpacaEval instructions. Every resample is scored by :func:`mmpref.evaluate.protocol.score_records`,
i.e. by the same metric functions that produce results.csv, so unparsable or failed judge items are treated exactly
as there (MT-Bench -1 dropped, LLaVA (-1, -1) averaged in, AlpacaEval NaN dropped). A resample the metric function
refuses to score (e.g. every MT-Bench rating -1) or scores NaN is left out of the percentiles.

Intervals are percentile bootstrap intervals (``N_RESAMPLES`` resamples, numpy ``default_rng(SEED)``): the same
settings give the same numbers on every machine. A paired difference draws the same items for both models.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from mmpref.evaluate import registry
from mmpref.evaluate.protocol import score_records, scored_records

log = logging.getLogger(__name__)

N_RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
INTERVAL_COLUMNS = ["model", "benchmark", "metric", "value", "lo", "hi", "n_units", "n_resamples", "level", "seed"]
CLAIM_COLUMNS = ["claim", "evidence", "difference", "lo", "hi", "verdict"]
CHANGE_METRIC = "change_vs_mt_bench"  # Table 3: noisy-image MT-Bench minus the same model's MT-Bench, paired

# (claim id, statement, benchmark, model a, model b, kind): the claim is about a - b.
# kind "greater": the paper claims a > b; "no_loss": the paper claims a is not worse than b.
CLAIMS = [
    ("C1", "visual instruction tuning regresses text skill: base-lm > vit", "mt_bench", "base-lm", "vit", "greater"),
    ("C1", "visual instruction tuning regresses text skill: base-lm > vit", "alpaca_eval", "base-lm", "vit",
     "greater"),
    ("C2", "DPO restores text skill: dpo > vit", "mt_bench", "dpo", "vit", "greater"),
    ("C2", "DPO passes the base LM: dpo > base-lm", "mt_bench", "dpo", "base-lm", "greater"),
    ("C3", "DPO's text gain beats SFT on gold answers: dpo > sft_gold", "mt_bench", "dpo", "sft_gold", "greater"),
    ("C3", "DPO's text gain beats SteerLM: dpo > steerlm", "mt_bench", "dpo", "steerlm", "greater"),
    ("C3", "DPO's text gain beats rejection sampling: dpo > rejection_sampling", "mt_bench", "dpo",
     "rejection_sampling", "greater"),
    ("C4", "DPO keeps multi-modal skill: no significant loss, dpo vs vit", "mmbench", "dpo", "vit", "no_loss"),
    # MM-RLHF's claim for its Dynamic Reward Scaling (section 4.2, Table 8: MM-DPO above DPO on its benchmarks)
    ("M1", "scaling beta by the pair's margin beats plain DPO: mm_dpo > dpo", "mt_bench", "mm_dpo", "dpo", "greater"),
    ("M1", "scaling beta by the pair's margin beats plain DPO: mm_dpo > dpo", "llava_bench", "mm_dpo", "dpo",
     "greater"),
]


# ----------------------------------------------------------------------------------------------- records
def records(run_dir: str | Path, model: str, benchmark: str,
            items: Callable[[str], Sequence] | None = None) -> list[dict]:
    """The per-item records of (model, benchmark) that its scoring used; [] when the run has none.

    Records of an older format (MMBench's written before each rotation's correctness was stored) are brought up to
    date by the benchmark's `backfill` from ``items(benchmark)`` (the loaded benchmark items); without them, or when
    they cannot be loaded or used, they give [] (not measured)."""
    recs = scored_records(Path(run_dir) / "eval" / model / f"{benchmark}.jsonl", model, benchmark)
    backfill = registry.get(benchmark).backfill
    if backfill is None or not recs:
        return recs
    try:
        return backfill(recs, []) if items is None else backfill(recs, items(benchmark))
    except (OSError, ValueError) as exc:
        log.warning("%s/%s: records of an older format that could not be brought up to date (%s); not measured",
                    model, benchmark, exc)
        return []


def headline(benchmark: str, recs: Sequence[dict]) -> float:
    """The benchmark's headline metric on these records, by the metric functions of results.csv."""
    return float(score_records(benchmark, recs)[registry.get(benchmark).headline].value)


# ----------------------------------------------------------------------------------------------- bootstrap
def _draws(benchmark: str, recs: Sequence[dict], n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) record indices; a benchmark with `strata` (POPE: its splits) draws within each group (the
    group sizes stay fixed)."""
    group = registry.get(benchmark).strata
    if group is not None:
        splits = list(dict.fromkeys(group(r) for r in recs))
        strata = [np.array([i for i, r in enumerate(recs) if group(r) == s]) for s in splits]
    else:
        strata = [np.arange(len(recs))]
    rng = np.random.default_rng(seed)
    return np.concatenate([s[rng.integers(0, len(s), size=(n_resamples, len(s)))] for s in strata], axis=1)


def _score(benchmark: str, recs: Sequence[dict], idx: np.ndarray) -> float:
    try:
        return headline(benchmark, [recs[i] for i in idx])
    except ValueError:  # the metric function refuses this resample (e.g. no valid rating left)
        return math.nan


def percentile_interval(values: Sequence[float], level: float) -> tuple[float, float, int]:
    """The (lo, hi) percentile interval at `level` of the finite values, and how many there were."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan, 0
    lo, hi = np.percentile(v, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi), int(len(v))


def bootstrap(benchmark: str, recs: Sequence[dict], n_resamples: int = N_RESAMPLES, seed: int = SEED,
              level: float = LEVEL) -> dict:
    """Headline value on all records and its percentile bootstrap interval over resampled units.
    Returns {value, lo, hi, n_units, n_resamples (the resamples that could be scored)}."""
    if not recs:
        raise ValueError(f"{benchmark}: no records to resample")
    value = headline(benchmark, recs)
    stats = [_score(benchmark, recs, idx) for idx in _draws(benchmark, recs, n_resamples, seed)]
    lo, hi, ok = percentile_interval(stats, level)
    return {"value": value, "lo": lo, "hi": hi, "n_units": len(recs), "n_resamples": ok}


def paired_difference(benchmark: str, recs_a: Sequence[dict], recs_b: Sequence[dict],
                      benchmark_b: str | None = None, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                      level: float = LEVEL) -> dict:
    """Headline(a) - headline(b) on the items both were scored on (matched by record key), with the percentile
    bootstrap interval of the difference: every resample draws the same items for a and for b.
    `benchmark_b` scores b as another benchmark with the same items (Table 3: noisy-image vs plain MT-Bench).
    Returns {value, a, b, lo, hi, n_units, n_resamples}."""
    benchmark_b = benchmark_b or benchmark
    by_key_b = {r["key"]: r for r in recs_b}
    a = [r for r in recs_a if r["key"] in by_key_b]
    b = [by_key_b[r["key"]] for r in a]
    if not a:
        raise ValueError(f"{benchmark}: the two models share no scored items")
    if len(a) < max(len(recs_a), len(recs_b)):
        log.warning("%s: %d of %d / %d items shared; the difference uses the shared ones", benchmark, len(a),
                    len(recs_a), len(recs_b))
    va, vb = headline(benchmark, a), headline(benchmark_b, b)
    diffs = [_score(benchmark, a, idx) - _score(benchmark_b, b, idx)
             for idx in _draws(benchmark, a, n_resamples, seed)]
    lo, hi, ok = percentile_interval(diffs, level)
    return {"value": va - vb, "a": va, "b": vb, "lo": lo, "hi": hi, "n_units": len(a), "n_resamples": ok}


# ----------------------------------------------------------------------------------------------- a run's intervals
def intervals(run_dir: str | Path, results: pd.DataFrame | None = None,
              items: Callable[[str], Sequence] | None = None, n_resamples: int = N_RESAMPLES,
              seed: int = SEED, level: float = LEVEL) -> pd.DataFrame:
    """Tidy intervals of every (model, benchmark) with per-item records in ``<run_dir>/eval``, plus Table 3's paired
    change (metric CHANGE_METRIC: noisy-image minus plain MT-Bench of the same model). With `results`
    (results.csv), a value that differs from its results.csv headline is logged as a warning."""
    eval_dir = Path(run_dir) / "eval"
    models = sorted(d.name for d in eval_dir.iterdir() if d.is_dir()) if eval_dir.is_dir() else []
    reported = {}
    if results is not None:
        from mmpref.figures import headline_values
        reported = headline_values(results)
    rows = []
    extra = {"level": level, "seed": seed}
    for model in models:
        recs = {b: records(run_dir, model, b, items) for b in registry.names()}
        for bench, rs in recs.items():
            if not rs:
                continue
            got = bootstrap(bench, rs, n_resamples, seed, level)
            ref = reported.get((model, bench))
            if ref is not None and not math.isclose(ref, got["value"], rel_tol=1e-9, abs_tol=1e-9):
                log.warning("%s/%s: records give %.6g, results.csv holds %.6g", model, bench, got["value"], ref)
            rows.append({"model": model, "benchmark": bench, "metric": registry.get(bench).headline, **got, **extra})
        if recs["mt_bench_noisy"] and recs["mt_bench"]:
            d = paired_difference("mt_bench_noisy", recs["mt_bench_noisy"], recs["mt_bench"], "mt_bench",
                                  n_resamples, seed, level)
            rows.append({"model": model, "benchmark": "mt_bench_noisy", "metric": CHANGE_METRIC,
                         **{k: d[k] for k in ("value", "lo", "hi", "n_units", "n_resamples")}, **extra})
    return pd.DataFrame(rows, columns=INTERVAL_COLUMNS)


def write_intervals(run_dir: str | Path, **kwargs) -> pd.DataFrame:
    """:func:`intervals` written to ``<run_dir>/eval/intervals.csv``; returns the frame."""
    frame = intervals(run_dir, **kwargs)
    path = Path(run_dir) / "eval" / "intervals.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


# ----------------------------------------------------------------------------------------------- claims
def verdict(kind: str, lo: float, hi: float) -> str:
    """"greater": reproduced when the interval of a - b lies above 0, not reproduced when below, else inconclusive.
    "no_loss": not reproduced when the interval lies entirely below 0, else reproduced."""
    if math.isnan(lo) or math.isnan(hi):
        return "inconclusive"
    if kind == "greater":
        return "reproduced" if lo > 0 else "not reproduced" if hi < 0 else "inconclusive"
    if kind == "no_loss":
        return "not reproduced" if hi < 0 else "reproduced"
    raise ValueError(f"unknown claim kind {kind!r}")


def claims(run_dir: str | Path, items: Callable[[str], Sequence] | None = None,
           n_resamples: int = N_RESAMPLES, seed: int = SEED, level: float = LEVEL) -> pd.DataFrame:
    """The paper's claims C1-C4 (and MM-RLHF's M1, where the run trains MM-DPO) judged on this run's per-item records: one row per comparison with the evidence
    (point estimates), the difference a - b, its paired bootstrap interval and the verdict ("reproduced", "not
    reproduced", "inconclusive", or "not measured" when a model or benchmark is missing from the run)."""
    cache: dict[tuple[str, str], list[dict]] = {}

    def recs(model: str, bench: str) -> list[dict]:
        if (model, bench) not in cache:
            cache[(model, bench)] = records(run_dir, model, bench, items)
        return cache[(model, bench)]

    rows = []
    for cid, text, bench, a, b, kind in CLAIMS:
        name = registry.get(bench).headline_name
        claim = f"{cid} ({name}): {text}"
        missing = [m for m in (a, b) if not recs(m, bench)]
        if missing:
            rows.append({"claim": claim, "evidence": f"no {name} records for {', '.join(missing)}",
                         "difference": math.nan, "lo": math.nan, "hi": math.nan, "verdict": "not measured"})
            continue
        d = paired_difference(bench, recs(a, bench), recs(b, bench), n_resamples=n_resamples, seed=seed,
                              level=level)
        evidence = (f"{name}: {a} {d['a']:.3g} vs {b} {d['b']:.3g} on {d['n_units']} shared items; "
                    f"{a} - {b} = {d['value']:.3g} [{d['lo']:.3g}, {d['hi']:.3g}] "
                    f"({100 * level:g} % paired bootstrap)")
        rows.append({"claim": claim, "evidence": evidence, "difference": d["value"], "lo": d["lo"], "hi": d["hi"],
                     "verdict": verdict(kind, d["lo"], d["hi"])})
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def claims_markdown(frame: pd.DataFrame) -> str:
    """A markdown list, one line per claim row: verdict, claim, evidence."""
    counts = frame["verdict"].value_counts()
    head = ", ".join(f"{n} {v}" for v, n in counts.items())
    lines = [f"**Claims of the paper in this run** ({head}):", ""]
    lines += [f"- **{r.verdict}** — {r.claim}. {r.evidence}" for r in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"

"""Robustness over seeds: the same params run under several ``run.seed`` values (each its own run, named
``<name>-seed<K>``, with its own world), and the spread of the headline numbers and claim verdicts over them.

``mmpref seeds params/tiny.yaml --seeds 0,1,2`` writes, into ``runs/<name>-seeds/``:

- ``headlines.csv``: seed, model, benchmark, value: every Table 2 and noisy-image headline of every seed's run;
- ``spread.csv``: per model and benchmark, the mean, standard deviation, minimum and maximum over the seeds;
- ``claims.csv``: per claim, each seed's difference and verdict, and how many seeds gave each verdict.

The seeds' runs are ordinary runs: each resumes like any other, and a finished one is not redone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)


def seed_overrides(name: str, seed: int) -> dict:
    """The params overrides of one seed's run."""
    return {"run": {"seed": seed, "name": f"{name}-seed{seed}"}}


def headline_frame(run_dirs: dict[int, Path]) -> pd.DataFrame:
    """seed, model, benchmark, value: the headline value of each (model, benchmark) of each seed's results.csv."""
    from mmpref import figures

    rows = []
    for seed, run_dir in run_dirs.items():
        values = figures.headline_values(figures.load_results(run_dir / "eval" / "results.csv"))
        rows += [{"seed": seed, "model": m, "benchmark": b, "value": v} for (m, b), v in values.items()]
    return pd.DataFrame(rows, columns=["seed", "model", "benchmark", "value"])


def spread(headlines: pd.DataFrame) -> pd.DataFrame:
    """Per (model, benchmark): the number of seeds, mean, sample standard deviation, minimum and maximum."""
    g = headlines.dropna(subset=["value"]).groupby(["model", "benchmark"], sort=False)["value"]
    out = g.agg(seeds="count", mean="mean", sd="std", min="min", max="max").reset_index()
    return out


def claims_frame(run_dirs: dict[int, Path]) -> pd.DataFrame:
    """One row per claim: each seed's difference and verdict (columns "difference seed K", "verdict seed K") and the
    count of seeds per verdict ("verdicts")."""
    per_seed = {}
    for seed, run_dir in run_dirs.items():
        claims = pd.read_csv(run_dir / "tables" / "claims.csv")
        per_seed[seed] = claims.set_index("claim")[["difference", "verdict"]]
    if not per_seed:
        return pd.DataFrame()
    claims = list(dict.fromkeys(c for frame in per_seed.values() for c in frame.index))
    rows = []
    for claim in claims:
        row: dict = {"claim": claim}
        verdicts = []
        for seed, frame in per_seed.items():
            diff, verdict = (frame.loc[claim, "difference"], frame.loc[claim, "verdict"]) if claim in frame.index \
                else (float("nan"), "missing")
            row[f"difference seed {seed}"], row[f"verdict seed {seed}"] = diff, verdict
            verdicts.append(verdict)
        row["verdicts"] = ", ".join(f"{v} x{verdicts.count(v)}" for v in dict.fromkeys(verdicts))
        rows.append(row)
    return pd.DataFrame(rows)


def run_seeds(params_path: str | Path, seeds: list[int], overrides: dict | None = None,
              stages: str | None = None) -> dict:
    """Run the params once per seed (`mmpref.runner.run`), then write the spread tables; returns the frames and the
    folder they are in."""
    from mmpref import figures, runner
    from mmpref.config import deep_merge, load_params

    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds needs at least two distinct seeds, got {seeds}")
    overrides = overrides or {}
    name = load_params(params_path, overrides).run.name
    run_dirs: dict[int, Path] = {}
    for seed in seeds:
        seeded = deep_merge(overrides, seed_overrides(name, seed))
        log.info("seed %d: run %s-seed%d", seed, name, seed)
        runner.run(params_path, stages=stages, overrides=seeded)
        run_dirs[seed] = Path(load_params(params_path, seeded).run_dir)
    out_dir = Path(load_params(params_path, deep_merge(overrides, {"run": {"name": f"{name}-seeds"}})).run_dir)
    headlines = headline_frame(run_dirs)
    frames = {"headlines": headlines, "spread": spread(headlines), "claims": claims_frame(run_dirs)}
    files = {k: figures.save_table(v, out_dir, k) for k, v in frames.items()}
    return {"dir": out_dir, "run_dirs": run_dirs, "files": files, **frames}

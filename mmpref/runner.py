"""Stages, the manifest, and `mmpref run`: execute the numbered notebooks with papermill.

A stage is complete when `manifest.jsonl` holds an "ok" line for it whose params hash (of the params sections the stage
reads) and input hashes (the output hashes of the stages it reads from) match the current ones. `mmpref run` skips
complete stages; a notebook run by hand in JupyterLab records its line the same way (`Stage.done()`).
"""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from mmpref import methods
from mmpref.config import Params, load_params, resolve_params_path, stages as all_stages
from mmpref.io import append_jsonl, read_jsonl, sha256_file, sha256_json

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class StageSpec:
    sections: tuple[str, ...]
    upstream: tuple[str, ...]


SPECS: dict[str, StageSpec] = {
    "00_world": StageSpec(("run", "world"), ()),
    "01_collect": StageSpec(("run", "prompts"), ("00_world",)),
    "02_sample": StageSpec(("run", "models", "sampling", "judge"), ("01_collect",)),
    "03_annotate": StageSpec(("run", "judge"), ("02_sample",)),
    "04_pair": StageSpec(("run", "pairing"), ("03_annotate",)),
    "09_evaluate": StageSpec(("run", "models", "evaluate", "train"), ()),  # upstream: every training stage
    "10_analyse": StageSpec(("run", "world"), ("09_evaluate",)),
}


def spec_of(stage: str) -> StageSpec:
    """A stage's params sections and upstream stages; a training stage's come from its method (mmpref.methods):
    DPO's sweep scores its trials on a dev split with the evaluation judge (train.dpo.sweep), so it reads
    `evaluate` too; stage 09 reads every training stage."""
    train = methods.by_stage()
    if stage in train:
        dpo = methods.get(train[stage]).trainer == "dpo"
        return StageSpec(("run", "models", "train", "evaluate") if dpo else ("run", "models", "train"), ("04_pair",))
    if stage == "09_evaluate":
        return StageSpec(SPECS[stage].sections, tuple(train))
    return SPECS[stage]


def active_stages(params: Params) -> list[str]:
    """Stages this run has: no 00_world without a miniature world, no training stage for an unlisted method."""
    out = []
    train = methods.by_stage()
    for s in all_stages():
        if s == "00_world" and params.world is None:
            continue
        if s in train and train[s] not in params.train.methods:
            continue
        out.append(s)
    return out


def stage_outputs(params: Params, stage: str) -> list[Path]:
    """The files whose content defines a stage's result (hashed into downstream stages' inputs)."""
    rd = params.run_dir
    if stage == "00_world":
        return [rd / "world" / m / "model.safetensors" for m in ("base-lm", "vit")]
    if stage == "01_collect":
        return [rd / "prompts.jsonl"]
    if stage == "02_sample":
        return [rd / "samples.jsonl", rd / "gold.jsonl"]
    if stage == "03_annotate":
        return [rd / "annotations.jsonl"]
    if stage == "04_pair":
        return sorted((rd / "datasets").glob("*.jsonl"))
    if stage in methods.by_stage():
        return sorted((rd / "adapters").glob(f"{methods.by_stage()[stage]}*/adapter_model.safetensors"))
    if stage == "09_evaluate":
        return [rd / "eval" / "results.csv"]
    if stage == "10_analyse":
        return sorted((rd / "tables").glob("*.csv"))
    raise ValueError(f"unknown stage {stage!r}; stages: {all_stages()}")


def outputs_hash(params: Params, stage: str) -> str | None:
    files = stage_outputs(params, stage)
    if not files or not all(f.exists() for f in files):
        return None
    return sha256_json({f.name if f.parent == params.run_dir else str(f.relative_to(params.run_dir)): sha256_file(f)
                        for f in files})[:16]


def manifest_path(params: Params) -> Path:
    return params.run_dir / "manifest.jsonl"


def last_lines(params: Params) -> dict[str, dict]:
    path = manifest_path(params)
    lines: dict[str, dict] = {}
    if path.exists():
        for row in read_jsonl(path):
            lines[row["stage"]] = row
    return lines


def expected(params: Params, stage: str) -> dict:
    spec = spec_of(stage)
    ups = [u for u in spec.upstream if u in active_stages(params)]
    return {"params_hash": params.section_hash(*spec.sections),
            "input_hashes": {u: last_lines(params).get(u, {}).get("outputs_hash") for u in ups}}


def stage_state(params: Params, stage: str) -> str:
    """'complete', 'stale' (params or inputs changed, or outputs gone), 'failed' or 'not run'."""
    line = last_lines(params).get(stage)
    if line is None:
        return "not run"
    if line["status"] != "ok":
        return "failed"
    exp = expected(params, stage)
    if (line["params_hash"] != exp["params_hash"] or line["input_hashes"] != exp["input_hashes"]
            or line.get("outputs_hash") != outputs_hash(params, stage)):
        return "stale"
    return "complete"


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "google-genai", "mmpref"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def setup_logging(level: int = logging.INFO) -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_mmpref", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        handler._mmpref = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("httpx", "urllib3", "matplotlib", "PIL", "datasets", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class Stage:
    """What a notebook opens at its start and closes at its end: params, run dir, timing, the manifest line."""

    def __init__(self, params_path: str, overrides: dict | None, name: str):
        if name not in all_stages():
            raise ValueError(f"unknown stage {name!r}; stages: {all_stages()}")
        setup_logging()
        self.name = name
        self.params = load_params(params_path, overrides)
        self.run_dir = self.params.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.start = time.time()
        log.info("stage %s of run %s in %s", name, self.params.run.name, self.run_dir)

    def done(self, **summary) -> dict:
        exp = expected(self.params, self.name)
        line = {"stage": self.name, "status": "ok", **exp, "outputs_hash": outputs_hash(self.params, self.name),
                "seconds": round(time.time() - self.start, 1), "versions": package_versions(),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "summary": summary}
        append_jsonl(manifest_path(self.params), line)
        log.info("stage %s done in %.1fs", self.name, line["seconds"])
        return line


def judge_spend(run_dir: str | Path, tasks: list[str], judge_params, judge=None) -> dict:
    """What the judge calls of `tasks` ("answer", "annotate", "grade_*") have cost this run, for a manifest line.

    Every paid call leaves one file in run_dir/judge_cache (cache hits leave none), so summing those files counts the
    run's spend once, however often the stage was interrupted and resumed. USD at the params' prices
    (`judge_params.price_*_per_mtok`; None when a price is unknown and tokens were spent; 0 for the rubric judge). With `judge`, its
    in-process totals (this session's calls, cache hits, retries) are added as "session"."""
    import json

    calls, tokens_in, tokens_out, ids = 0, 0, 0, set()
    cache = Path(run_dir) / "judge_cache"
    for path in sorted(cache.glob("*/*.json")) if cache.is_dir() else []:
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if rec.get("task") not in tasks:
            continue
        reply = rec.get("reply") or {}
        calls += 1
        tokens_in += int(reply.get("input_tokens") or 0)
        tokens_out += int(reply.get("output_tokens") or 0)
        ids.add(str(rec.get("judge_id", "")))
    p_in, p_out = judge_params.price_input_per_mtok, judge_params.price_output_per_mtok
    if judge_params.backend == "rubric":
        cost = 0.0  # the miniature's local judge: its token counts are simulated
    elif p_in is not None and p_out is not None:
        cost = (tokens_in * p_in + tokens_out * p_out) / 1e6
    else:
        cost = 0.0 if tokens_in + tokens_out == 0 else None
    out = {"judge_ids": sorted(ids), "tasks": list(tasks), "calls": calls, "input_tokens": tokens_in,
           "output_tokens": tokens_out, "cost_usd": cost, "price_input_per_mtok": p_in, "price_output_per_mtok": p_out}
    if judge is not None:
        out["session"] = judge.usage()
    return out


def parse_stage_range(spec: str | None, available: list[str]) -> list[str]:
    """'02-04', '3', '05_train_sft_gold', '02,04' -> stage names (in run order)."""
    if not spec:
        return list(available)

    stages = all_stages()

    def find(token: str) -> int:
        token = token.strip()
        for i, s in enumerate(stages):
            if s == token or s.split("_")[0] == token.zfill(2):
                return i
        raise ValueError(f"unknown stage {token!r}; stages: {', '.join(stages)}")

    chosen: set[str] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            chosen.update(stages[find(a): find(b) + 1])
        else:
            chosen.add(stages[find(part)])
    return [s for s in available if s in chosen]


class StageFailed(RuntimeError):
    pass


def notebooks_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "notebooks"


def run(params_path: str, stages: str | None = None, force: list[str] | None = None,
        overrides: dict | None = None) -> list[dict]:
    """Execute the run's notebooks in order with papermill; complete stages are skipped unless forced."""
    import papermill as pm
    from tqdm.auto import tqdm

    setup_logging()
    path = resolve_params_path(params_path)
    params = load_params(path, overrides)
    todo = parse_stage_range(stages, active_stages(params))
    forced = set(parse_stage_range(",".join(force), all_stages())) if force else set()
    out_dir = params.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    report = []
    bar = tqdm(todo, desc=f"run {params.run.name}", unit="stage")
    for stage in bar:
        bar.set_postfix_str(stage)
        state = stage_state(params, stage)
        if state == "complete" and stage not in forced:
            log.info("%s: complete, skipped", stage)
            report.append({"stage": stage, "action": "skipped (complete)", "seconds": 0.0})
            continue
        src = notebooks_dir() / f"{stage}.ipynb"
        dst = out_dir / f"{stage}.ipynb"
        start = time.time()
        log.info("%s: running (%s) -> %s", stage, state, dst)
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"params_path": str(path), "overrides": overrides or {}},
                                cwd=str(src.parent), progress_bar=False, log_output=False, kernel_name="python3")
        except pm.PapermillExecutionError as exc:
            append_jsonl(manifest_path(params), {"stage": stage, "status": "failed", "error": f"{exc.ename}: {exc.evalue}",
                                                 "seconds": round(time.time() - start, 1)})
            raise StageFailed(
                f"stage {stage} failed in notebook {src.name}, cell {exc.cell_index + 1} ({exc.ename}: {exc.evalue}).\n"
                f"The executed copy with the traceback is {dst}"
            ) from None
        seconds = round(time.time() - start, 1)
        report.append({"stage": stage, "action": "ran", "seconds": seconds})
        log.info("%s: finished in %.1fs", stage, seconds)
    return report


def status(params_path: str, overrides: dict | None = None) -> list[dict]:
    params = load_params(params_path, overrides)
    lines = last_lines(params)
    return [{"stage": s, "state": stage_state(params, s), "seconds": lines.get(s, {}).get("seconds"),
             "finished": lines.get(s, {}).get("finished")} for s in active_stages(params)]


def summary_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


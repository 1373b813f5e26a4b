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
from datetime import datetime, timezone
from pathlib import Path

from mmpref import stages as stage_table
from mmpref.console import PROGRESS_ENV, StageReport, quiet_libraries, setup_logging
from mmpref.config import Params, load_params, resolve_params_path
from mmpref.io import append_jsonl, read_jsonl, sha256_file, sha256_json
from mmpref.judges import BACKENDS

log = logging.getLogger(__name__)



_FILE_HASHES: dict[tuple, str] = {}


def _file_hash(path: Path) -> str:
    """sha256 of a file, memoised per process by (path, size, mtime): big adapters are hashed once."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = sha256_file(path)
    return _FILE_HASHES[key]


def files_hash(params: Params, files: list[Path]) -> str | None:
    """Hash of files of the run directory as they are on disk now (None when there are none or one is missing)."""
    if not files or not all(f.exists() for f in files):
        return None
    return sha256_json({f.name if f.parent == params.run_dir else str(f.relative_to(params.run_dir)): _file_hash(f)
                        for f in files})[:16]


def outputs_hash(params: Params, stage: str) -> str | None:
    """Hash of a stage's output files as they are on disk now (None when one is missing)."""
    return files_hash(params, stage_table.outputs(params, stage))


def stage_inputs(params: Params, stage: str) -> dict[str, list[Path]]:
    """The files a stage reads, by the active upstream stage that writes them (`mmpref.stages`: its `reads`)."""
    rd, active = params.run_dir, stage_table.active(params)
    out = {}
    for up, paths in stage_table.get(stage).reads.items():
        if up not in active:
            continue
        if not paths:
            out[up] = stage_table.outputs(params, up)
            continue
        out[up] = [f for p in paths for f in (sorted(rd.glob(p)) if any(c in p for c in "*?[") else [rd / p])]
    return out


def manifest_path(params: Params) -> Path:
    return params.run_dir / "manifest.jsonl"


def last_lines(params: Params) -> dict[str, dict]:
    path = manifest_path(params)
    lines: dict[str, dict] = {}
    if path.exists():
        for row in read_jsonl(path, appended=True):
            lines[row["stage"]] = row
    return lines


def expected(params: Params, stage: str) -> dict:
    """What a stage's manifest line must hold to be complete: the hash of its params sections, and the hashes of
    its inputs, i.e. the files it reads, per upstream stage, as they are on disk now (not as the manifest remembers
    them: a damaged or replaced input makes every stage that read it stale)."""
    return {"params_hash": params.section_hash(*stage_table.get(stage).sections),
            "input_hashes": {u: files_hash(params, files) for u, files in stage_inputs(params, stage).items()}}


def _flat(tree, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, dict) and tree:
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): tree}


def changed_keys(old: dict, new: dict, limit: int = 3) -> str:
    """The params keys whose values differ, dotted, with old -> new: "train.mm_dpo.w 0.5 -> 2.0"."""
    a, b = _flat(old), _flat(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k, "(unset)") != b.get(k, "(unset)"))
    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 48 else text[:45] + "..."

    shown = [f"{k} {short(a.get(k, '(unset)'))} -> {short(b.get(k, '(unset)'))}" for k in keys[:limit]]
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(shown) + more if keys else "a value the hash covers"


def stage_why(params: Params, stage: str) -> tuple[str, str]:
    """(state, why): state is 'complete', 'stale', 'failed' or 'not run'; why says what made it so."""
    line = last_lines(params).get(stage)
    if line is None:
        return "not run", "no manifest line"
    if line["status"] != "ok":
        return "failed", str(line.get("error") or "the last run failed")[:120]
    exp = expected(params, stage)
    if line["params_hash"] != exp["params_hash"]:
        sections = stage_table.get(stage).sections
        if "params" not in line:  # a line written before the manifest kept the values
            return "stale", f"params changed (sections {', '.join(sections)})"
        return "stale", f"params changed: {changed_keys(line['params'], params.section_values(*sections))}"
    old_inputs = line.get("input_hashes") or {}
    for up, h in exp["input_hashes"].items():
        if old_inputs.get(up) != h:
            return "stale", f"the outputs of {up} it read are missing" if h is None else \
                f"the outputs of {up} it read changed since it ran"
    if set(old_inputs) != set(exp["input_hashes"]):
        return "stale", "its upstream stages changed"
    now = outputs_hash(params, stage)
    if now is None:
        return "stale", "an output file is missing"
    if line.get("outputs_hash") != now:
        return "stale", "its outputs changed or are damaged"
    return "complete", ""


def stage_state(params: Params, stage: str) -> str:
    """'complete', 'stale' (params, input files or output files changed), 'failed' or 'not run'."""
    return stage_why(params, stage)[0]


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "google-genai", "mmpref"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class MissingInput(FileNotFoundError):
    """A stage was opened before the stage that makes its input ran."""


def missing_inputs(params: Params, stage: str) -> list[tuple[str, Path]]:
    """(upstream stage, file or folder) for each input of `stage` not on disk (a folder when the stage's outputs are
    a set of files and there are none)."""
    out = []
    spec = stage_table.get(stage)
    for up in spec.upstream:
        if up not in stage_table.active(params) or up in spec.optional:
            continue
        files = stage_table.outputs(params, up)
        if not files:
            folder = {"04_pair": "datasets"}.get(up, "adapters")
            out.append((up, params.run_dir / folder))
        out += [(up, f) for f in files if not f.exists()]
    return out


def require_inputs(params: Params, stage: str, params_path: str | Path = "PARAMS",
                   overrides: dict | None = None) -> None:
    """Raise MissingInput naming the missing file, the stage that makes it and the command that runs that stage."""
    missing = missing_inputs(params, stage)
    if not missing:
        return
    up, path = max(missing, key=lambda m: stage_table.names().index(m[0]))  # the nearest stage that has not made its files
    sets = "".join(f" --set {k}" for k in _dotted(overrides or {}))
    raise MissingInput(f"stage {stage} needs {path}, which stage {up} makes and has not made; run it first: "
                       f"mmpref run {params_path} --stages {up.split('_')[0]}{sets}")


def _dotted(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}={v}"]
    return out


FORCE_ENV = "MMPREF_FORCE"  # the stages `mmpref run --force` runs, comma-separated, for their kernels (Stage.force)


class Stage:
    """What a notebook opens at its start and closes at its end: params, run dir, timing, the manifest line.

    Opening it sends the kernel's log records to `{run_dir}/logs/<stage>.log` (the notebook keeps warnings and errors)
    and prints that path once; `done()` records the manifest line and shows a short summary of what the stage wrote.
    `force`: the stage redoes its work rather than reusing what it finds (a training stage retrains); true when
    `mmpref run --force STAGE` runs it (the FORCE_ENV variable names the forced stages) or when passed."""

    def __init__(self, params_path: str, overrides: dict | None, name: str, force: bool | None = None):
        import os

        if name not in stage_table.names():
            raise ValueError(f"unknown stage {name!r}; stages: {stage_table.names()}")
        die_with_runner()
        self.name = name
        self.force = name in os.environ.get(FORCE_ENV, "").split(",") if force is None else force
        self.params = load_params(params_path, overrides)
        self.run_dir = self.params.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = setup_logging(log_file=self.run_dir / "logs" / f"{name}.log")
        quiet_libraries()
        check_lock(self.run_dir)
        require_inputs(self.params, name, params_path, overrides)
        self.start = time.time()
        log.info("stage %s of run %s in %s (params %s, overrides %s)", name, self.params.run.name, self.run_dir,
                 params_path, overrides or {})
        print(f"stage {name} of run {self.params.run.name}; its log: {self.log_path}")

    def done(self, **summary) -> "StageReport":
        exp = expected(self.params, self.name)
        line = {"stage": self.name, "status": "ok", **exp, "outputs_hash": outputs_hash(self.params, self.name),
                "params": self.params.section_values(*stage_table.get(self.name).sections),
                "seconds": round(time.time() - self.start, 1), "versions": package_versions(),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "summary": summary}
        append_jsonl(manifest_path(self.params), line)
        log.info("stage %s done in %.1fs", self.name, line["seconds"])
        return StageReport(line, self.run_dir, stage_table.outputs(self.params, self.name))


def judge_spend(run_dir: str | Path, tasks: list[str], judge_params, judge=None) -> dict:
    """What the judge calls of `tasks` ("answer", "annotate", "grade_*") have cost this run, for a manifest line.

    Every paid call leaves one file in run_dir/judge_cache (cache hits leave none), so summing those files counts the
    run's spend once, however often the stage was interrupted and resumed. USD at the params' prices
    (`judge_params.price_*_per_mtok`; None when a price is unknown and tokens were spent; 0 for the rubric judge). With `judge`, its
    in-process totals (this session's calls, cache hits, retries) are added as "session"."""
    import json

    calls, tokens_in, tokens_out, ids = 0, 0, 0, set()
    batch_in, batch_out, batch_calls = 0, 0, 0  # answered by a batch job: billed at judge.batch_price_factor
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
        if rec.get("batch"):
            batch_calls += 1
            batch_in += int(reply.get("input_tokens") or 0)
            batch_out += int(reply.get("output_tokens") or 0)
        ids.add(str(rec.get("judge_id", "")))
    p_in, p_out = judge_params.price_input_per_mtok, judge_params.price_output_per_mtok
    if BACKENDS[judge_params.backend].free:
        cost = 0.0  # the miniature's local judge: its token counts are simulated
    elif p_in is not None and p_out is not None:
        factor = judge_params.batch_price_factor
        cost = ((tokens_in - batch_in * (1 - factor)) * p_in + (tokens_out - batch_out * (1 - factor)) * p_out) / 1e6
    else:
        cost = 0.0 if tokens_in + tokens_out == 0 else None
    out = {"judge_ids": sorted(ids), "tasks": list(tasks), "calls": calls, "batch_calls": batch_calls, "input_tokens": tokens_in,
           "output_tokens": tokens_out, "cost_usd": cost, "price_input_per_mtok": p_in, "price_output_per_mtok": p_out,
           "batch_price_factor": judge_params.batch_price_factor}
    if judge is not None:
        out["session"] = judge.usage()
    return out


def did_you_mean(token: str, stages: list[str]) -> str:
    """' (did you mean 08_train_dpo?)' for a stage name mistyped or given by its part ('dpo', 'evalute', 'analyze'),
    else ''."""
    import difflib

    token = token.strip().lower()
    parts = {s.split("_", 1)[1]: s for s in stages if "_" in s}
    hits = [s for s in stages if token and token in s]
    hits += [parts[p] for p in difflib.get_close_matches(token, list(parts), n=1, cutoff=0.6)]
    hits += difflib.get_close_matches(token, stages, n=1, cutoff=0.6)
    hits = list(dict.fromkeys(hits))
    return f" (did you mean {' or '.join(hits[:2])}?)" if hits else ""


def parse_stage_range(spec: str | None, available: list[str]) -> list[str]:
    """'02-04', '3', '05_train_sft_gold', '02,04', '04-' (04 to the last), '-04' (the first to 04) -> stage names
    (in run order). A reversed range ('05-02') is a ValueError naming the stages."""
    if not spec:
        return list(available)

    stages = stage_table.names()

    def find(token: str) -> int:
        token = token.strip()
        for i, s in enumerate(stages):
            if s == token or s.split("_")[0] == token.zfill(2):
                return i
        raise ValueError(f"unknown stage {token!r}{did_you_mean(token, stages)}; stages: {', '.join(stages)}")

    chosen: set[str] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            lo = find(a) if a.strip() else 0
            hi = find(b) if b.strip() else len(stages) - 1
            if lo > hi:
                raise ValueError(f"reversed stage range {part!r}: write it first to last, e.g. "
                                 f"{stages[hi].split('_')[0]}-{stages[lo].split('_')[0]}; stages: {', '.join(stages)}")
            chosen.update(stages[lo: hi + 1])
        else:
            chosen.add(stages[find(part)])
    return [s for s in available if s in chosen]


class StageFailed(RuntimeError):
    pass


class Interrupted(RuntimeError):
    """`mmpref run` stopped by Ctrl-C or SIGTERM (`signal_name`); the stage that was running, if any, is `stage`."""

    def __init__(self, signal_name: str, stage: str | None = None):
        import signal

        self.signal_name, self.stage = signal_name, stage
        self.exit_code = 128 + (signal.SIGINT if signal_name == "Ctrl-C" else signal.SIGTERM)  # as the shell reports
        where = f" during stage {stage}; its kernel was stopped and every item it finished is kept" if stage else ""
        super().__init__(f"interrupted ({signal_name}){where}: run the same command again to go on")


# the output file in which a judging stage records its failed items (gold answers, annotations, gradings)
FAILED_ITEMS_FILE = {"02_sample": "gold.jsonl", "03_annotate": "annotations.jsonl", "09_evaluate": "results.csv"}


def failed_items(params: Params, stage: str, since: float | None = None) -> int | None:
    """The judge items a stage's output file records as failed (FAILED_ITEMS_FILE), for a stage that ended without
    its manifest summary; None when the stage has no such file, or it was not written since `since`."""
    files = [f for f in stage_table.outputs(params, stage) if f.name == FAILED_ITEMS_FILE.get(stage)]
    if not files or not files[0].is_file() or (since is not None and files[0].stat().st_mtime < since):
        return None
    if files[0].suffix == ".csv":
        import pandas as pd

        from mmpref.evaluate.protocol import FAILURES

        frame = pd.read_csv(files[0])
        return int(frame.loc[frame["metric"] == FAILURES, "value"].sum())
    from mmpref.annotate import failed_count

    return failed_count(files[0])


def retry_hint(params_path: str | Path, stage: str, overrides: dict | None, failed: int) -> str:
    """How many judge items of a stage failed and the command that re-asks exactly those."""
    sets = "".join(f" --set {k}" for k in _dotted(overrides or {}))
    items = "item" if failed == 1 else "items"
    return (f"{failed} judge {items} failed (recorded, not scored); re-ask {'it' if failed == 1 else 'them'} with: "
            f"mmpref run {params_path} --stages {stage.split('_')[0]}{sets} --retry-failed")


def stage_kernel(log_path: Path):
    """The kernel manager class papermill starts a stage's kernel with: the kernel's own stdout and stderr (its
    start-up warnings, the traceback of a kernel stopped in the middle of a cell, a crash) go to the stage's log
    file, not to the terminal (jupyter_client's documented hook, `_async_launch_kernel`). The kernel talks to the
    runner over IPC sockets (files beside its connection file) where the platform has them, not TCP: a local kernel
    needs no network port, and ipykernel warns that TCP without CurveZMQ keys is unencrypted (the warning every stage
    printed before)."""
    from jupyter_client import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kw):
            if sys.platform != "win32":
                kw.setdefault("transport", "ipc")
            super().__init__(**kw)

        async def _async_launch_kernel(self, kernel_cmd, **kw):
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as fh:  # the kernel keeps its own copy of the descriptor
                await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": fh, "stderr": fh})

    return StageKernelManager


# ---- one run at a time per run directory -------------------------------------------------------------------------

LOCK_NAME = ".mmpref.lock"


class RunLocked(RuntimeError):
    """Another `mmpref run` holds this run directory."""


def _proc_start(pid: int) -> str | None:
    """The start time of a process (Linux /proc), to tell a live holder from a reused pid; None elsewhere."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def read_lock(run_dir: Path) -> dict | None:
    import json

    try:
        return json.loads((Path(run_dir) / LOCK_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"unreadable": True}


def lock_alive(holder: dict) -> bool:
    """Whether the process named by a lock still runs (a lock of another host is taken as alive)."""
    import os
    import socket

    if holder.get("unreadable"):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    start = _proc_start(pid)
    return start is None or holder.get("proc_start") in (None, start)


def describe_holder(holder: dict) -> str:
    if holder.get("unreadable"):
        return "an unreadable lock file"
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({' '.join(holder.get('argv') or [])})")


def acquire_lock(run_dir: Path) -> dict:
    """Take `run_dir/.mmpref.lock` (pid, host, start time, command); a lock whose process is gone is stale and taken
    over; a live one raises RunLocked naming its holder."""
    import json
    import os
    import socket
    import uuid

    path = Path(run_dir) / LOCK_NAME
    record = {"pid": os.getpid(), "host": socket.gethostname(), "proc_start": _proc_start(os.getpid()),
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "argv": sys.argv,
              "token": uuid.uuid4().hex}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_lock(run_dir)
            if holder is None:
                continue
            if holder.get("unreadable") and time.time() - path.stat().st_mtime < 5:
                time.sleep(0.5)  # being written right now
                continue
            if lock_alive(holder):
                raise RunLocked(f"run directory {run_dir} is in use by {describe_holder(holder)}; wait for it, or "
                                f"remove {path} if that process is gone") from None
            log.warning("taking over a stale lock of %s", describe_holder(holder))
            try:  # one taker wins the rename; the others see it gone and try again
                os.replace(path, path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}"))
                path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}").unlink()
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        return record
    raise RunLocked(f"could not take the lock {path}")


def release_lock(run_dir: Path, record: dict) -> None:
    holder = read_lock(run_dir)
    if holder is not None and holder.get("token") == record["token"]:
        (Path(run_dir) / LOCK_NAME).unlink(missing_ok=True)


def check_lock(run_dir: Path) -> None:
    """In a stage: refuse to run while another process's `mmpref run` holds the run directory."""
    import os

    holder = read_lock(run_dir)
    if holder is not None and holder.get("token") != os.environ.get("MMPREF_RUN_LOCK") and lock_alive(holder):
        raise RunLocked(f"run directory {run_dir} is in use by {describe_holder(holder)}")


def die_with_runner() -> None:
    """In a notebook kernel started by `mmpref run`: end this process the moment the runner dies (SIGKILL included),
    so no judge call or write outlives it. Linux: the parent-death signal; elsewhere a watchdog thread."""
    import os
    import signal
    import threading

    runner_pid = int(os.environ.get("MMPREF_RUNNER_PID") or 0)
    if not runner_pid:
        return
    parent = os.getppid()
    if parent == runner_pid and sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    def alive() -> bool:
        try:
            os.kill(runner_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return os.getppid() == parent

    if not alive():
        os._exit(1)

    def watch() -> None:
        while alive():
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="mmpref-runner-watch", daemon=True).start()


def notebooks_dir(params_path: str | Path | None = None) -> Path:
    """The notebooks a run executes: those of the project its params file belongs to (the nearest folder above the
    file with both `params/` and `notebooks/`: a second checkout runs its own notebooks, whichever checkout the venv
    was installed from), else the ones beside the installed mmpref package."""
    if params_path is not None:
        for folder in Path(params_path).resolve().parents:
            if (folder / "notebooks").is_dir() and (folder / "params").is_dir():
                return folder / "notebooks"
    return Path(__file__).resolve().parent.parent / "notebooks"


def run(params_path: str, stages: str | None = None, force: list[str] | None = None,
        overrides: dict | None = None, retry_failed: bool = False) -> list[dict]:
    """Execute the run's notebooks in order with papermill; complete stages are skipped unless forced.

    One run at a time per run directory (`.mmpref.lock`). Each notebook executes into a temporary copy that replaces
    `notebooks/<stage>.ipynb` only when it finishes (a failed one is kept as `<stage>.failed.ipynb`). The kernel dies
    with this process; it runs headless, so its progress bars each leave one line (MMPREF_PROGRESS=summary), and its
    own output goes to the stage's log file (`stage_kernel`). `retry_failed`: re-ask the judge items recorded as
    failed (stages whose last run had failures run again). A stage that ends with failed judge items (under its
    threshold) prints one line with their number and the command that re-asks them; a failed stage's manifest line
    holds its failed items too (`failed_items`). Ctrl-C or SIGTERM raises Interrupted (the kernel shut down, the lock
    released, the stage recorded as interrupted)."""
    import os
    import signal

    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from tqdm.auto import tqdm

    from mmpref.config import deep_merge

    setup_logging()
    logging.getLogger("asyncio").addFilter(drop_orphan_kernel_watch)  # once: addFilter keeps one copy
    path = resolve_params_path(params_path)
    asked = overrides  # the user's --set values, for the commands this prints
    if retry_failed:
        overrides = deep_merge(overrides or {}, {"judge": {"retry_failed": True},
                                                 "evaluate": {"judge": {"retry_failed": True}}})
    params = load_params(path, overrides)
    todo = parse_stage_range(stages, stage_table.active(params))
    forced = set(parse_stage_range(",".join(force), stage_table.names())) if force else set()
    params.run_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(params.run_dir)
    os.environ["MMPREF_RUN_LOCK"], os.environ["MMPREF_RUNNER_PID"] = lock["token"], str(os.getpid())
    os.environ[FORCE_ENV] = ",".join(sorted(forced))  # a forced stage redoes its work (Stage.force)
    # the kernels run headless: each progress bar leaves one line with its final state (mmpref.console)
    progress_before = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = "summary"

    def on_term(signum, frame):  # SIGTERM: unwind (the kernel is shut down, the lock released)
        raise Interrupted("SIGTERM")

    def on_int(signum, frame):  # Ctrl-C: the same, never a KeyboardInterrupt that the notebook client may swallow
        raise Interrupted("Ctrl-C")

    previous = signal.signal(signal.SIGTERM, on_term) if threading_main() else None
    previous_int = signal.signal(signal.SIGINT, on_int) if threading_main() else None
    try:
        out_dir = params.run_dir / "notebooks"
        out_dir.mkdir(parents=True, exist_ok=True)
        report = []
        # a live bar in a terminal; outside one (a pipe, a CI log) no bar, whose redraws would glue to the log lines:
        # each stage's start and end are one log line each
        bar = tqdm(todo, desc=f"run {params.run.name}", unit="stage", disable=not sys.stderr.isatty())
        for stage in bar:
            bar.set_postfix_str(stage)
            state, why = stage_why(params, stage)
            failures = (last_lines(params).get(stage, {}).get("summary") or {}).get("failed") or 0
            if state == "complete" and stage not in forced and not (retry_failed and failures):
                log.info("%s: complete, skipped", stage)
                report.append({"stage": stage, "action": "skipped (complete)", "seconds": 0.0})
                if failures:
                    tqdm.write(f"{stage}: {retry_hint(params_path, stage, asked, failures)}", file=sys.stdout)
                continue
            src = notebooks_dir(path) / f"{stage}.ipynb"
            dst = out_dir / f"{stage}.ipynb"
            tmp = out_dir / f".{stage}.running.ipynb"
            start = time.time()
            log.info("%s: running (%s%s) -> %s", stage, state, f": {why}" if why else "", dst)
            kernel_log = params.run_dir / "logs" / f"{stage}.log"

            def failed_line(error: str) -> None:
                failed = failed_items(params, stage, since=start)
                append_jsonl(manifest_path(params), {
                    "stage": stage, "status": "failed", "error": error, "seconds": round(time.time() - start, 1),
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    **({"summary": {"failed": failed}} if failed is not None else {})})

            try:
                pm.execute_notebook(str(src), str(tmp),
                                    parameters={"params_path": str(path), "overrides": overrides or {}},
                                    cwd=str(src.parent), progress_bar=False, log_output=False, kernel_name="python3",
                                    kernel_manager_class=stage_kernel(kernel_log))
            except pm.PapermillExecutionError as exc:
                failed_copy = out_dir / f"{stage}.failed.ipynb"
                os.replace(tmp, failed_copy)
                failed_line(f"{exc.ename}: {exc.evalue}")
                raise StageFailed(
                    f"stage {stage} failed in notebook {src.name}, cell {exc.cell_index + 1} ({exc.ename}: "
                    f"{exc.evalue}).\nThe executed copy with the traceback is {failed_copy}"
                ) from None
            except (KeyboardInterrupt, Interrupted) as exc:
                name = exc.signal_name if isinstance(exc, Interrupted) else "Ctrl-C"
                failed_line(f"interrupted ({name})")
                raise Interrupted(name, stage) from None
            except DeadKernelError as exc:
                failed_line(f"the kernel died: {exc}")
                raise StageFailed(f"stage {stage}: its kernel died ({exc}; out of memory?); the stage's log is "
                                  f"{kernel_log}") from None
            os.replace(tmp, dst)
            (out_dir / f"{stage}.failed.ipynb").unlink(missing_ok=True)
            seconds = round(time.time() - start, 1)
            report.append({"stage": stage, "action": "ran", "seconds": seconds})
            log.info("%s: finished in %.1fs", stage, seconds)
            failures = (last_lines(params).get(stage, {}).get("summary") or {}).get("failed") or 0
            if failures:  # under the stage's threshold, or it would have failed: said here, not only in the notebook
                tqdm.write(f"{stage}: {retry_hint(params_path, stage, asked, failures)}", file=sys.stdout)
        return report
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)
        release_lock(params.run_dir, lock)
        os.environ.pop("MMPREF_RUN_LOCK", None)
        os.environ.pop("MMPREF_RUNNER_PID", None)
        os.environ.pop(FORCE_ENV, None)
        if progress_before is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = progress_before


def drop_orphan_kernel_watch(record: logging.LogRecord) -> bool:
    """A logging filter for asyncio: drops "Task exception was never retrieved" for nbclient's kernel-watch task
    when it ends in DeadKernelError. A stage stopped by Ctrl-C or SIGTERM shuts its kernel down while that task still
    polls it; the task's exception is then never retrieved and asyncio logged it, with a traceback, at interpreter
    exit, after the runner's own one line. A kernel that dies while its stage runs is reported by `run` itself
    (StageFailed), so this copy says nothing new."""
    from nbclient.exceptions import DeadKernelError

    exc = record.exc_info[1] if record.exc_info else None
    return not isinstance(exc, DeadKernelError)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def status(params_path: str, overrides: dict | None = None) -> list[dict]:
    """One row per stage: its state (complete, stale, failed, not run), when its last run ended, why it is in that
    state (a complete stage with failed judge items: the command that re-asks them) and its failed judge items."""
    params = load_params(params_path, overrides)
    lines = last_lines(params)
    out, states = [], {}
    for s in stage_table.active(params):
        state, why = stage_why(params, s)
        line = lines.get(s, {})
        failed = (line.get("summary") or {}).get("failed")
        seconds = line.get("seconds")
        behind = [u for u in stage_table.get(s).upstream if states.get(u) in ("stale", "failed", "upstream stale")]
        if state == "complete" and behind:  # its inputs are as it read them, but an upstream stage will rerun first
            state, why = "upstream stale", f"{behind[0]} is {states[behind[0]]}: this stage reruns after it if its " \
                                           f"outputs change"
        elif state == "complete":
            why = retry_hint(params_path, s, overrides, failed) if failed else ""
        states[s] = state
        out.append({"stage": s, "state": state, "when": line.get("finished") or ("not run" if not line else ""),
                    "seconds": "" if seconds is None else f"{seconds:.1f}",
                    "why": "" if line == {} else why, "failed items": failed or ""})
    holder = read_lock(params.run_dir)
    if holder is not None:
        out.append({"stage": "(lock)", "state": "running" if lock_alive(holder) else "stale lock",
                    "when": holder.get("started", ""), "seconds": "", "why": describe_holder(holder),
                    "failed items": ""})
    return out


def summary_table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


"""What a stage shows in its notebook: evidence, not logs.

- **Logs** go to a file in the run directory (`{run_dir}/logs/<stage>.log`, every INFO record with its time); the
  notebook shows only warnings and errors (`setup_logging`). The command line (`mmpref run`, `mmpref train`) keeps
  INFO on the terminal.
- **Progress bars** (`bar`) are tqdm.auto's bars (a live widget in JupyterLab, text in a terminal) except in a kernel
  that `mmpref run` executes headless (`MMPREF_PROGRESS=summary`): papermill saves a widget without its state, so the
  saved notebook would read `0%| | 0/282`. There a bar writes nothing while it runs and one plain-text line, its final
  state, when it closes; a bar made with `leave=False` (an inner bar that an outer bar sums up) writes nothing.
  The plain line was chosen over disabling bars because it records in the notebook how much work a cell did and how
  fast, which a student reading the saved notebook cannot get otherwise, at one line per loop.
- **Library noise** is stopped where it starts (`quiet_libraries`): transformers' own weight-loading and
  shard-writing bars (not tqdm.auto, and under a second for these models) are switched off with
  `transformers.utils.logging.disable_progress_bar()`; warnings that a library raises about another library's use
  of it, which a reader cannot act on, are filtered by exact category, message and raising module (`KNOWN_WARNINGS`,
  each with the reason). The HTTP clients' and SDKs' INFO record per request (`_QUIET_LOGGERS`: "HTTP Request: POST
  ...") is dropped wherever `setup_logging` runs: the runner, `mmpref train`, every stage's kernel. A kernel's own
  output (ipykernel's warnings, the traceback of a kernel stopped mid-cell) goes to the stage's log file
  (`mmpref.runner.stage_kernel`), not to the terminal.
- **A stage's closing summary** (`StageReport`, what `Stage.done()` returns): the manifest line shown as a few lines
  (files written with sizes, counts, the judge's spend, the time), as an HTML table of class SUMMARY_CLASS.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from tqdm.std import tqdm as _text_tqdm

PROGRESS_ENV = "MMPREF_PROGRESS"
SUMMARY_CLASS = "mmpref-stage-summary"  # the HTML class of a stage's closing summary (StageReport; mmpref.nbcheck)  # "live" (default: tqdm.auto), "summary" (one final line per bar), "off"

# (category, message regex, raising module regex, why it cannot be handled at its cause)
KNOWN_WARNINGS: list[tuple[type[Warning], str, str, str]] = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils",
     "peft 0.21 (peft_model.py, PeftModel.__init__) reads the deprecated property of transformers 5 on every "
     "adapter it wraps or loads; mmpref does not read it"),
]

_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# INFO records per HTTP request ("HTTP Request: POST ...": httpx, and the copy google-genai uses, httpx2) or per
# judge call (google_genai: "AFC is enabled ..."; openai): a stage makes thousands
_QUIET_LOGGERS = ("httpx", "httpx2", "httpcore", "google_genai", "openai", "urllib3", "matplotlib", "PIL", "datasets",
                  "filelock", "papermill")  # papermill: four INFO lines per notebook that the runner's own line says


def setup_logging(level: int = logging.INFO, log_file: str | Path | None = None,
                  console_level: int | None = None) -> Path | None:
    """Root logging for mmpref: records of `level` and above to `log_file` (appended; its folder made) when given,
    and records of `console_level` and above to stdout (default: `level` without a file, WARNING with one: a
    notebook shows warnings and errors, the file holds the rest). Calling it again replaces mmpref's handlers, so a
    notebook re-run in the same kernel logs once, to its own stage's file. Returns the log file's path."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_mmpref", False)]:
        root.removeHandler(h)
        h.close()
    if console_level is None:
        console_level = level if log_file is None else max(level, logging.WARNING)
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if log_file is not None else
                                           _LOG_FORMAT, "%H:%M:%S"))
    console.setLevel(console_level)
    handlers: list[logging.Handler] = [console]
    path = None
    if log_file is not None:
        path = Path(log_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(path, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(_LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        to_file.setLevel(level)
        handlers.append(to_file)
    for h in handlers:
        h._mmpref = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(min(level, console_level))
    for noisy in _QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path


def quiet_libraries() -> None:
    """Switch off transformers' own progress bars and filter the KNOWN_WARNINGS (exact category, message, module).
    Idempotent."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    else:
        hf_logging.disable_progress_bar()
    for category, message, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)


def progress_mode() -> str:
    mode = os.environ.get(PROGRESS_ENV, "live").strip().lower() or "live"
    if mode not in ("live", "summary", "off"):
        raise ValueError(f"{PROGRESS_ENV}={mode!r}: use live, summary or off")
    return mode


class FinalLineBar(_text_tqdm):
    """A tqdm bar that writes nothing while it runs and, when it closes, one line with its final state (count,
    elapsed time, overall rate, postfix) to stdout; nothing at all when made with leave=False or when it went over
    nothing (an empty loop: the work was done by an earlier run)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("file", sys.stdout)
        kwargs.setdefault("ascii", False)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):  # nothing while running
        return True

    def close(self):
        if getattr(self, "disable", True):
            return
        self._ema_dt = lambda: None  # the overall rate, not a moving average
        idle = self.n == 0 and not self.total  # a loop over nothing (all done earlier): no line
        line = self.__str__() if self.leave and not idle else None
        self.disable = True
        self._decr_instances(self)
        if line:
            self.fp.write(line + "\n")
            self.fp.flush()


def bar(iterable=None, **kwargs):
    """A progress bar (tqdm's arguments): tqdm.auto's live bar, a FinalLineBar under MMPREF_PROGRESS=summary, or
    none under MMPREF_PROGRESS=off."""
    mode = progress_mode()
    if mode == "summary":
        return FinalLineBar(iterable, **kwargs)
    if mode == "off":
        kwargs["disable"] = True
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


# ---------------------------------------------------------------------------------------- a stage's summary
def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1000
    return ""  # unreachable


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} min {sec:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def _value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    if isinstance(v, (list, tuple)):
        return f"{len(v)} items"
    return str(v)


def _judge_text(u: dict) -> str:
    cost = u.get("cost_usd")
    price = "price unknown" if cost is None else f"${cost:,.2f}"
    batch = f" ({u['batch_calls']:,} by batch)" if u.get("batch_calls") else ""
    return (f"{', '.join(u.get('judge_ids') or []) or 'judge'}: {u.get('calls', 0):,} calls{batch}, "
            f"{u.get('input_tokens', 0):,} input + {u.get('output_tokens', 0):,} output tokens, {price}")


class StageReport(dict):
    """A stage's manifest line (a dict, as written to manifest.jsonl) that a notebook shows as a few lines: what the
    stage wrote (its output files, sizes), its counts, the judge's spend, its time."""

    def __init__(self, line: dict, run_dir: Path, outputs: list[Path]):
        super().__init__(line)
        self.run_dir = Path(run_dir)
        self.outputs = [p for p in outputs if p.exists()]

    def wrote(self) -> str:
        """The output files, grouped: one folder's files together, or one file name across sibling folders
        (`adapters/{dpo, dpo_frac0.25}/adapter_model.safetensors`)."""
        def rel(p: Path) -> str:
            return (p.relative_to(self.run_dir) if p.is_relative_to(self.run_dir) else p).as_posix()

        def listed(names: list[str]) -> str:
            return ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")

        names = [p.name for p in self.outputs]
        groups: dict[tuple[Path, str | None], list[Path]] = {}
        for p in self.outputs:
            key = (p.parent.parent, p.name) if names.count(p.name) > 1 else (p.parent, None)
            groups.setdefault(key, []).append(p)
        parts = []
        for (folder, name), files in groups.items():
            size = _size(sum(f.stat().st_size for f in files))
            if len(files) == 1:
                parts.append(f"{rel(files[0])} ({size})")
            elif name is None and folder == self.run_dir:
                parts.append(f"{listed([f.name for f in files])} ({len(files)} files, {size})")
            elif name is not None:
                parts.append(f"{rel(folder)}/{{{listed([f.parent.name for f in files])}}}/{name} "
                             f"({len(files)} files, {size})")
            else:
                parts.append(f"{rel(folder)}/: {len(files)} files ({listed([f.name for f in files])}; {size})")
        return "; ".join(parts) or "no output files"

    def rows(self) -> list[tuple[str, str]]:
        summary = self.get("summary") or {}
        counts = [f"{k.replace('_', ' ')} {_value(v)}" for k, v in summary.items() if not isinstance(v, dict)]
        out = [("stage", f"{self['stage']} in run directory {self.run_dir}"),
               ("wrote", self.wrote())]
        if counts:
            out.append(("counts", " · ".join(counts)))
        for k, v in summary.items():
            if isinstance(v, dict):
                out.append((k.replace("_", " "), _judge_text(v) if "calls" in v else
                             " · ".join(f"{a} {_value(b)}" for a, b in v.items() if not isinstance(b, dict))))
        out.append(("time", f"{_duration(self['seconds'])}, finished {self['finished']}; recorded in manifest.jsonl"))
        return out

    def __repr__(self) -> str:
        rows = self.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))

    def _repr_html_(self) -> str:
        import html

        body = "".join(f"<tr><th style=\"text-align:left\">{html.escape(k)}</th>"
                       f"<td style=\"text-align:left\">{html.escape(v)}</td></tr>" for k, v in self.rows())
        return f"<table class=\"{SUMMARY_CLASS}\">{body}</table>"

"""Checks of an executed notebook's saved outputs: what a reader sees must be evidence, not logs.

`problems(nb, expect)` lists what is wrong with one notebook (nbformat JSON, as papermill saves it):

- a traceback (an `error` output);
- a raw log line: `12:00:01 INFO mmpref.x: ...`, `INFO:transformers...:`, `INFO name: ...`, or a trainer's printed log
  dict (`{'loss': ...}`) (logs belong in `{run_dir}/logs/<stage>.log`, warnings and errors may show);
- a library deprecation warning (FutureWarning, DeprecationWarning, PendingDeprecationWarning) in a stream;
- a progress bar that does not read as one: a widget (saved without its state, it reads `0%| | 0/282`), a trainer's
  HTML progress table, a text bar that stopped short of its total, or a bar rewritten in place (`\\r`);
- a table not rounded for reading: a NaN cell, or a decimal with more than 5 significant digits (36.666667);
- the whole manifest dict printed (`'params_hash': ...`) where a short summary belongs;
- fewer plots (`image/png` outputs) or tables (pandas HTML tables) than `expect` asks, or no stage summary
  (`Stage.done()`'s table) in the last code cell when `expect["summary"]` is set.

`python -m mmpref.nbcheck runs/tiny/notebooks` reports on every notebook of a run (exit status 1 when any fails).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from mmpref import stages
from mmpref.console import SUMMARY_CLASS  # Stage.done()'s HTML table (StageReport)



def expected_outputs(stage: str) -> dict:
    """What the tiny run's executed notebook of `stage` must show (the stage table, mmpref.stages): at least this
    many plots and pandas tables, and Stage.done()'s summary at the end."""
    spec = stages.get(stage)
    return {"png": spec.png, "tables": spec.tables, "summary": True}


LOG_LINE = re.compile(
    r"^\s*(?:\[?\d{4}-\d\d-\d\d[ T])?\[?\d\d:\d\d:\d\d(?:[.,]\d+)?\]?\s+(?:DEBUG|INFO)\b"  # 12:00:01 INFO ...
    r"|^\s*(?:DEBUG|INFO):[\w.]+:"                                                    # INFO:transformers.x:
    r"|^\s*(?:DEBUG|INFO)\s+[\w.]+:\s"                                                # INFO mmpref.x: ...
    r"|^\s*\{'(?:loss|train_runtime|eval_loss|epoch|grad_norm|learning_rate)':",      # a trainer's printed logs
    re.MULTILINE)
LIBRARY_WARNING = re.compile(r"\b(?:FutureWarning|DeprecationWarning|PendingDeprecationWarning):")
TEXT_BAR = re.compile(r"(\d{1,3})%\|[^|\n]*\|\s*(\d+)/(\d+)")
WIDGET = "application/vnd.jupyter.widget-view+json"
MANIFEST_DICT = re.compile(r"'params_hash':|\"params_hash\":")
TABLE = re.compile(r"<table[^>]*class=\"[^\"]*\bdataframe\b")
CELL = re.compile(r"<td[^>]*>\s*([^<]*?)\s*</td>")
DECIMAL = re.compile(r"^-?\d*\.\d+(?:e[-+]?\d+)?$", re.IGNORECASE)
MAX_SIGNIFICANT = 5  # 36.666667 (8) and 7.24375 (6) are not for reading; 0.000500 (3) and 6.12 (3) are


def _is_table(html: str) -> bool:
    """A pandas table (not a trainer's progress table, which pandas also renders)."""
    return bool(TABLE.search(html)) and "<progress" not in html


def _unreadable_cells(html: str) -> list[str]:
    """Cells of a pandas HTML table that are not for reading: NaN, or a decimal with more than MAX_SIGNIFICANT
    significant digits."""
    bad = []
    for cell in CELL.findall(html):
        if cell in ("NaN", "nan", "<NA>", "None"):
            bad.append(cell)
        elif DECIMAL.match(cell):
            mantissa = cell.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0").rstrip("0")
            if len(mantissa) > MAX_SIGNIFICANT:
                bad.append(cell)
    return bad


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value or "")


def _where(i: int, cell: dict) -> str:
    first = _text(cell.get("source")).strip().splitlines()[:1]
    return f"cell {i + 1} ({first[0][:50] if first else 'empty'})"


def _bar_problems(text: str) -> list[str]:
    out = []
    for line in text.split("\n"):
        states = [s for s in line.split("\r") if TEXT_BAR.search(s)]
        if len(states) > 1:
            out.append(f"a progress bar rewritten in place ({len(states)} states): {states[-1].strip()[:80]}")
            continue
        for m in TEXT_BAR.finditer(line):
            pct, n, total = int(m.group(1)), int(m.group(2)), int(m.group(3))
            if n != total or pct != 100:
                out.append(f"an unfinished progress bar: {line.strip()[:80]}")
                break
    return out


def problems(nb: dict, expect: dict | None = None) -> list[str]:
    """What is wrong with one executed notebook's saved outputs (an empty list when nothing)."""
    found: list[str] = []
    png = tables = 0
    code = [(i, c) for i, c in enumerate(nb.get("cells", [])) if c.get("cell_type") == "code"]
    for i, cell in code:
        where = _where(i, cell)
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "error":
                found.append(f"{where}: a traceback ({out.get('ename')}: {_text(out.get('evalue'))[:80]})")
                continue
            texts = []
            if kind == "stream":
                texts.append(_text(out.get("text")))
            data = out.get("data") or {}
            if WIDGET in data:
                plain = _text(data.get("text/plain")).strip()
                found.append(f"{where}: a progress widget saved without its state ({plain[:60] or 'no text'})")
                continue
            html = _text(data.get("text/html"))
            if "<progress" in html:
                found.append(f"{where}: an HTML progress table (a trainer's notebook callback)")
            if _is_table(html):
                tables += 1
                bad = _unreadable_cells(html)
                if bad:
                    found.append(f"{where}: a table not rounded for reading ({len(bad)} cells such as "
                                 f"{', '.join(sorted(set(bad))[:3])})")
            if "image/png" in data:
                png += 1
            if "text/plain" in data and "text/html" not in data:
                texts.append(_text(data["text/plain"]))
            plain = _text(data.get("text/plain"))
            if MANIFEST_DICT.search(plain):
                found.append(f"{where}: the whole manifest line printed (a dict with params_hash)")
            for text in texts:
                for m in LOG_LINE.finditer(text):
                    line = text[m.start():].split("\n", 1)[0].strip()
                    found.append(f"{where}: a raw log line: {line[:100]}")
                for m in LIBRARY_WARNING.finditer(text):
                    line = text[:m.end()].rsplit("\n", 1)[-1] + text[m.end():].split("\n", 1)[0]
                    found.append(f"{where}: a library warning: {line.strip()[:120]}")
                found += [f"{where}: {p}" for p in _bar_problems(text)]
    expect = expect or {}
    if png < expect.get("png", 0):
        found.append(f"{png} plots (image/png outputs), expected at least {expect['png']}")
    if tables < expect.get("tables", 0):
        found.append(f"{tables} tables (pandas HTML tables), expected at least {expect['tables']}")
    if expect.get("summary"):
        last = code[-1][1] if code else {}
        if not any(SUMMARY_CLASS in _text((o.get("data") or {}).get("text/html")) for o in last.get("outputs", [])):
            found.append("the last code cell shows no stage summary (Stage.done())")
    return found


def counts(nb: dict) -> dict:
    """Plots, tables, stream lines and outputs of a notebook, for a before/after report."""
    png = tables = lines = outputs = 0
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            outputs += 1
            data = out.get("data") or {}
            png += "image/png" in data
            tables += _is_table(_text(data.get("text/html")))
            if out.get("output_type") == "stream":
                lines += len(_text(out.get("text")).splitlines())
    return {"outputs": outputs, "stream_lines": lines, "plots": png, "tables": tables}


def check_file(path: str | Path, expect: dict | None = None) -> list[str]:
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    return problems(nb, expected_outputs(path.stem) if expect is None else expect)


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if not args:
        print("usage: python -m mmpref.nbcheck NOTEBOOK_OR_FOLDER ...", file=sys.stderr)
        return 2
    paths: list[Path] = []
    for a in args:
        p = Path(a)
        paths += sorted(q for q in p.glob("*.ipynb") if not q.name.startswith(".")) if p.is_dir() else [p]
    bad = 0
    for p in paths:
        found = check_file(p)
        c = counts(json.loads(p.read_text(encoding="utf-8")))
        print(f"{p.name}: {'ok' if not found else f'{len(found)} problems'} "
              f"({c['plots']} plots, {c['tables']} tables, {c['stream_lines']} stream lines, {c['outputs']} outputs)")
        for f in found:
            print(f"  - {f}")
        bad += bool(found)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

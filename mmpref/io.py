"""Small file helpers shared by every stage: JSON lines, JSON files and content hashes.

A JSON or JSON-lines file is written whole (a temp file renamed over it: a kill or a full disk leaves the old file and
no temp file) or appended row by row (`append_jsonl`; a torn last row is dropped by `read_jsonl(appended=True)` and cut off before
the next append). A damaged file is a ValueError naming it and what to do."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, int]] = set()  # torn files already reported
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def read_jsonl(path: str | Path, *, appended: bool = False) -> list[dict]:
    """Read a JSON-lines file; a bad line raises ValueError naming file and line and what to do.

    `appended`: a file this project appends to row by row (samples, gold answers, annotations, per-item evaluation
    records, the manifest, ...). A kill or a full disk during an append leaves its last line unfinished: that line
    is dropped with a warning, so its item is done again (and `append_jsonl` cuts it off before the next row)."""
    path = Path(path)
    with path.open("rb") as fh:
        data = fh.read()
    lines, rows = data.split(b"\n"), []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            if appended and i == last:
                if (str(path), len(data)) not in _WARNED:  # once per file state, however often it is read
                    _WARNED.add((str(path), len(data)))
                    log.warning("%s: line %d is unfinished (an interrupted write), dropped: its item is done again",
                                path, i + 1)
                break
            fix = ("remove that line (its item is then done again) or delete the file (all its items are)"
                   if appended else "fix that line or replace the file")
            raise ValueError(f"{path}:{i + 1}: not valid JSON ({msg}); {fix}") from None
    return rows


def _last_line(fh) -> tuple[int, bytes]:
    """(offset, bytes) of the last line of a binary file open for reading, its newline included."""
    end = fh.seek(0, os.SEEK_END)
    pos, tail = end, b""
    while pos > 0:
        step = min(1 << 16, pos)
        pos -= step
        fh.seek(pos)
        tail = fh.read(step) + tail
        cut = tail.rfind(b"\n", 0, len(tail) - 1)
        if cut >= 0:
            return pos + cut + 1, tail[cut + 1:]
    return 0, tail


def _is_row(line: bytes) -> bool:
    try:
        json.loads(line)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False
    return True


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Write rows atomically (temp file + rename) so a crash never leaves half a file."""
    def write(fh) -> None:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")

    _write_whole(path, write)


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one row and flush: finished work survives an interruption. An unfinished last line (an append cut off
    by a kill or a full disk, which `read_jsonl(appended=True)` drops) is cut off first, so the row never joins it.
    One writer per file at a time (each stage appends from one thread; the run lock keeps out other runs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as fh:
        start, last = _last_line(fh)
        if last.strip() and not _is_row(last):
            log.warning("%s: cut off its unfinished last line (an interrupted write)", path)
            fh.truncate(start)
        elif last and not last.endswith(b"\n"):
            fh.write(b"\n")
        fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        fh.flush()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of the canonical JSON form (sorted keys) of obj."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    """Write one JSON document atomically (temp file + rename), indented for reading."""
    text = json.dumps(obj, ensure_ascii=False, indent=1)
    _write_whole(path, lambda fh: fh.write(text))


def _write_whole(path: str | Path, write: Callable[[Any], Any]) -> None:
    """`write(fh)` into a temp file beside `path`, then rename it over `path`; on any error (a full disk) the temp
    file is removed and `path` keeps its old content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the file gets the mode open() would give it
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: str | Path, fix: str = "delete it and run the stage that writes it again") -> Any:
    """One JSON document; a damaged one (an interrupted write of an older version, an edit) raises ValueError naming
    the file and `fix`, what to do about it."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes())
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        where = f" at line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
        msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(f"{path}: not valid JSON ({msg}{where}); {fix}") from None

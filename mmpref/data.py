"""Prompt sources in their official formats, and stage 01's prompt collection.

Official record formats (checked against the published data cards / READMEs):

- **SciGraphQA-295K** (hub id ``alexshengzhili/SciGraphQA-295K-train``, parquet, split ``train``): columns
  ``image_file`` (file name inside the separately distributed ``img.zip``), ``id``, ``caption``, ``conversations``
  (list of ``{"from": "human"|"gpt", "value": str}``, multi-turn), ``first_mention``, ``response``, ``title``,
  ``abstract``, ``q_a_pairs`` (list of ``[question, answer]``). We take the first human turn as the prompt and the
  following gpt turn as the reference answer (``q_a_pairs[0]`` when ``conversations`` is empty).
- **LRV-Instruction** (github.com/FuxiaoLiu/LRV-Instruction; ``filter_cap*.json``, also the chart split
  ``chart_release_update.json``): a JSON list of ``{"image_id", "question", "answer", "task"}``, e.g.
  ``{'image_id': '2392588', 'question': 'Can you see a blue teapot ...?', 'answer': 'There is no mention of a
  teapot ...', 'task': 'negative'}``. Visual Genome images are ``<image_id>.jpg``; chart ``image_id`` values already
  carry their file name. A record is *negative* when its task names it (``"negative"``) or, for task labels without
  that word, when the answer denies the object ("There is no ...", "No, ...", "... no mention of ...", "... not
  present ...").

The miniature world writes its pools in exactly these formats, adding an ``answer_key`` field (the rubric's key
answer); real records have no key, so ``answer`` is None and the reference is the dataset's own answer.

Local sources may be ``.json`` (a list, or an object with an ``annotations``/``data`` list), ``.jsonl`` or
``.parquet``; anything else that is not an existing path is treated as a hub id for ``datasets.load_dataset``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

from mmpref.io import read_jsonl, sha256_bytes, sha256_json, write_jsonl

log = logging.getLogger(__name__)

NEGATIVE_ANSWER = re.compile(
    r"^(no\b|there (is|are) no\b)|\bno mention\b|\bnot (present|visible|shown|mentioned|in the image)\b|"
    r"\b(does|do) not (exist|appear|contain)\b|\bthere('s| is| are) no\b",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------------------------------------------
# Reading official files
# ----------------------------------------------------------------------------------------------------------------

def _read_records(source: str | Path, limit: int | None) -> tuple[list[dict], Path | None]:
    """Records from a local file (json/jsonl/parquet) or a hub dataset; also the file's folder (None for the hub)."""
    path = Path(source)
    if path.exists():
        if path.is_dir():
            raise ValueError(f"{path}: expected a .json, .jsonl or .parquet file, got a directory")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            rows = read_jsonl(path)
        elif suffix == ".json":
            try:
                obj = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
            if isinstance(obj, dict):
                obj = obj.get("annotations", obj.get("data"))
            if not isinstance(obj, list):
                raise ValueError(f"{path}: expected a JSON list of records (or {{'annotations': [...]}})")
            rows = obj
        elif suffix == ".parquet":
            import pandas as pd

            rows = pd.read_parquet(path).to_dict(orient="records")
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r} (use .json, .jsonl or .parquet)")
        return (rows[:limit] if limit is not None else rows), path.parent
    if "/" not in str(source) or str(source).startswith((".", "/", "~")):
        raise ValueError(f"{source}: no such file, and not a hub dataset id of the form 'owner/name'")
    import datasets  # only needed for the hub branch

    split = "train" if limit is None else f"train[:{int(limit)}]"
    ds = datasets.load_dataset(str(source), split=split)
    return [dict(r) for r in ds], None


def _image_root(image_root: str | Path | None, file_dir: Path | None, source) -> Path:
    if image_root is not None:
        return Path(image_root)
    if file_dir is not None:
        return file_dir
    raise ValueError(f"{source}: image_root is required for hub datasets (images ship separately)")


def _as_list(value: Any) -> list:
    """Lists from JSON, hub rows or parquet (numpy arrays) alike; None -> []."""
    return [] if value is None else list(value)


def _strip_image_token(text: str) -> str:
    return text.replace("<image>", "").strip()


def _pil_or_none(value: Any):
    """A PIL image embedded in a hub record (datasets' Image feature), else None."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        return None
    return value if isinstance(value, Image.Image) else None


def load_scigraphqa(source: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """SciGraphQA records -> [{source, question, answer, reference, negative, image_path, meta}].

    ``source`` is a local file in the official columns or the hub id; ``image_root`` is the folder holding the
    ``image_file`` names (default: the file's folder).
    """
    rows, file_dir = _read_records(source, limit)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "image_file" not in r:
            raise ValueError(f"{source}: record {i} has no 'image_file' (not a SciGraphQA record)")
        question = reference = None
        conv = _as_list(r.get("conversations"))
        for j, turn in enumerate(conv):
            if turn.get("from") in ("human", "user"):
                question = _strip_image_token(str(turn.get("value", "")))
                nxt = conv[j + 1] if j + 1 < len(conv) else None
                if nxt is not None and nxt.get("from") in ("gpt", "assistant"):
                    reference = str(nxt.get("value", "")).strip()
                break
        if not question:
            pairs = [_as_list(p) for p in _as_list(r.get("q_a_pairs"))]
            if pairs and len(pairs[0]) >= 2:
                question, reference = _strip_image_token(str(pairs[0][0])), str(pairs[0][1]).strip()
        if not question:
            raise ValueError(f"{source}: record {i} (id {r.get('id')!r}) has no human turn in 'conversations' "
                             f"and no 'q_a_pairs'")
        embedded = _pil_or_none(r.get("image"))
        path = None if embedded is not None and image_root is None and file_dir is None else \
            str(_image_root(image_root, file_dir, source) / str(r["image_file"]))
        key = r.get("answer_key")
        out.append({
            "source": "scigraphqa", "question": question, "answer": None if key is None else str(key),
            "reference": reference or None, "negative": bool(r.get("negative", False)),
            "image_path": path, "image": embedded,
            "meta": {"id": str(r.get("id", "")), "image_file": str(r["image_file"]),
                     "title": r.get("title"), "caption": r.get("caption")},
        })
    log.info("SciGraphQA: %d records from %s", len(out), source)
    return out


def is_negative_lrv(task: str | None, answer: str | None) -> bool:
    """LRV negative instruction: the task label says so, or the answer denies the asked-about object."""
    if task and "negative" in str(task).lower():
        return True
    return bool(answer) and bool(NEGATIVE_ANSWER.search(str(answer).strip()))


def _lrv_image_path(root: Path, image_id: str) -> Path:
    candidate = root / image_id
    if candidate.suffix:
        return candidate
    for ext in (".jpg", ".png", ".jpeg"):
        if (root / f"{image_id}{ext}").exists():
            return root / f"{image_id}{ext}"
    return root / f"{image_id}.jpg"  # Visual Genome default; a missing file is reported by collect_prompts


def load_lrv_instruct(source: str | Path, image_root: str | Path | None = None, limit: int | None = None) -> list[dict]:
    """LRV-Instruction records -> [{source, question, answer, reference, negative, image_path, meta}]."""
    rows, file_dir = _read_records(source, limit)
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise ValueError(f"{source}: record {i} is not an object")
        missing = [k for k in ("image_id", "question") if k not in r]
        if missing:
            raise ValueError(f"{source}: record {i} lacks {missing} (LRV records have image_id, question, answer, "
                             f"task)")
        embedded = _pil_or_none(r.get("image"))
        path = None if embedded is not None and image_root is None and file_dir is None else \
            str(_lrv_image_path(_image_root(image_root, file_dir, source), str(r["image_id"])))
        answer = r.get("answer")
        key = r.get("answer_key")
        out.append({
            "source": "lrv", "question": _strip_image_token(str(r["question"])),
            "answer": None if key is None else str(key),
            "reference": None if answer is None else str(answer).strip(),
            "negative": is_negative_lrv(r.get("task"), answer),
            "image_path": path, "image": embedded,
            "meta": {"image_id": str(r["image_id"]), "task": r.get("task")},
        })
    log.info("LRV-Instruct: %d records (%d negative) from %s", len(out), sum(o["negative"] for o in out), source)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Stage 01: collect prompts
# ----------------------------------------------------------------------------------------------------------------

def _png_bytes(record: dict) -> bytes:
    """The record's image re-encoded as RGB PNG; raises OSError/ValueError with a reason when it cannot be read."""
    from PIL import Image

    im = record.get("image")
    if im is None:
        path = record.get("image_path")
        if not path:
            raise ValueError("record has no image_path")
        if not Path(path).is_file():
            raise FileNotFoundError(f"missing file {path}")
        with Image.open(path) as src:
            src.load()
            im = src.convert("RGB")
    else:
        im = im.convert("RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _store_image(data: bytes, images_dir: Path) -> tuple[str, bool]:
    """Write images/<sha256>.png once (atomically); return the hash and whether it was newly written."""
    digest = sha256_bytes(data)
    path = images_dir / f"{digest}.png"
    if path.exists():
        return digest, False
    images_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=images_dir, prefix=".img.", suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
    return digest, True


def prompt_id(source: str, question: str, image_hash: str) -> str:
    """Stable prompt id: hash of source, question and image content."""
    return sha256_json({"source": source, "question": question, "image": image_hash})[:16]


def collect_prompts(records_by_source: dict[str, list[dict]], n_per_source: int | dict[str, int], run_dir: str | Path,
                    seed: int) -> dict:
    """Sample n prompts per source (seeded), store images by content hash, write run_dir/prompts.jsonl.

    Records whose image is missing, corrupt or unreadable are logged, skipped and listed in the summary's
    ``"skipped"`` (the next sampled record takes their place). Re-running with the same inputs writes the same file.
    """
    from mmpref.console import bar as progress_bar

    run_dir = Path(run_dir)
    images_dir = run_dir / "images"
    rows: list[dict] = []
    skipped: list[dict] = []
    summary: dict[str, Any] = {"by_source": {}, "negative": 0, "images_written": 0, "images_reused": 0,
                               "duplicates": 0}
    for source in sorted(records_by_source):
        records = records_by_source[source]
        want = n_per_source.get(source, 0) if isinstance(n_per_source, dict) else int(n_per_source)
        if want < 0:
            raise ValueError(f"n_per_source for {source!r} must be >= 0, got {want}")
        order = list(range(len(records)))
        random.Random(f"collect:{seed}:{source}").shuffle(order)
        seen_ids: set[str] = set()
        taken = 0
        bar = progress_bar(total=min(want, len(records)), desc=f"collect {source}")
        for idx in order:
            if taken >= want:
                break
            rec = records[idx]
            where = rec.get("image_path") or f"{source} record {idx}"
            try:
                data = _png_bytes(rec)
            except Exception as exc:  # noqa: BLE001 - any unreadable image is reported and skipped
                reason = f"{type(exc).__name__}: {exc}"
                log.warning("skipping %s image %s: %s", source, where, reason)
                skipped.append({"source": source, "image": str(where), "reason": reason})
                continue
            digest, new = _store_image(data, images_dir)
            pid = prompt_id(source, rec["question"], digest)
            if pid in seen_ids:
                summary["duplicates"] += 1
                continue
            seen_ids.add(pid)
            summary["images_written" if new else "images_reused"] += 1
            rows.append({"id": pid, "source": source, "image": f"images/{digest}.png", "question": rec["question"],
                         "answer": rec.get("answer"), "reference": rec.get("reference"),
                         "negative": bool(rec.get("negative", False)),
                         "meta": {**(rec.get("meta") or {}), "original_image": str(where)}})
            taken += 1
            bar.update(1)
        bar.close()
        if taken < want:
            log.warning("%s: only %d usable prompts of the %d asked for", source, taken, want)
        summary["by_source"][source] = taken
    write_jsonl(run_dir / "prompts.jsonl", rows)
    summary["prompts"] = len(rows)
    summary["negative"] = sum(r["negative"] for r in rows)
    summary["skipped"] = skipped
    log.info("collected %d prompts (%s), %d skipped", len(rows), summary["by_source"], len(skipped))
    return summary

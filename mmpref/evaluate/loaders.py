"""Loaders for the official benchmark file formats (the miniature world writes the same formats).

Each loader takes a file or the benchmark's directory and an optional `limit` (the first `limit` items; for POPE the
first `limit` of every split) and returns a list of pydantic items. A malformed file raises ValueError naming the file
(and line or key) and the problem. Miniature-only fields ("answer_key", "answer_keys", "reference" on AlpacaEval
items) are kept as rubric truth; real files without them load the same way.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mmpref.io import read_jsonl, sha256_bytes

log = logging.getLogger(__name__)

POPE_SPLITS = ("random", "popular", "adversarial")
MT_BENCH_NEED_REF_CATS = ("math", "reasoning", "coding")  # FastChat NEED_REF_CATS (plus arena-hard-200)


class PopeItem(BaseModel):
    question_id: int | str
    split: str
    image: str
    text: str
    label: str


class MMBenchItem(BaseModel):
    index: int | str
    question: str
    hint: str | None
    options: list[str]           # option texts in file order (A, B, ...), empty ones dropped
    answer_index: int            # position of the correct option in `options`
    category: str = ""
    l2_category: str = ""
    image: str


class MMVetItem(BaseModel):
    id: str
    image: str
    question: str
    answer: str                  # ground truth (may hold <AND>/<OR>)
    capabilities: list[str]
    answer_key: str | None = None


class LlavaBenchItem(BaseModel):
    question_id: int | str
    image: str
    text: str
    category: str
    reference: str               # the GPT-4 answer (answers_gpt4.jsonl)
    context: str                 # the image caption(s) (context.jsonl)
    answer_key: str | None = None


class MTBenchItem(BaseModel):
    question_id: int | str
    category: str
    turns: list[str]
    reference: list[str] | None = None    # reference answers, set only for math/reasoning/coding (FastChat)
    answer_keys: list[str] | None = None
    references_all: list[str] | None = None  # the file's own "reference" field whatever the category (rubric truth)


class AlpacaItem(BaseModel):
    instruction: str
    output: str                  # the reference model's (text-davinci-003) answer
    generator: str = ""
    dataset: str = ""
    answer_key: str | None = None
    reference: str | None = None


# --------------------------------------------------------------------------------------------------------------
# helpers

def _need(rec: Any, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing} (has {sorted(rec)})")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _existing(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{what}: {path} does not exist")
    return path


def _in_dir(path: Path, names: tuple[str, ...], what: str) -> Path:
    """`path` itself when it is a file, else the first of `names` inside it."""
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise ValueError(f"{what}: none of {list(names)} in {path}")


def _image_dir(base: Path, image_dir: str | Path | None) -> Path:
    if image_dir is not None:
        return _existing(image_dir, "image folder")
    return base / "images" if (base / "images").is_dir() else base


def _image(img_dir: Path, name: Any, where: str) -> str:
    path = img_dir / str(name)
    if not path.is_file():
        raise ValueError(f"{where}: image {path} not found")
    return str(path)


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items, got {limit}")


# --------------------------------------------------------------------------------------------------------------
# POPE

def load_pope(path: str | Path, limit: int | None = None, image_dir: str | Path | None = None) -> list[PopeItem]:
    """POPE: a folder with coco_pope_{random,popular,adversarial}.json (JSON lines {question_id, image, text, label}),
    or one such file. Images come from `image_dir`, else <folder>/images, else the folder itself."""
    _check_limit(limit)
    path = _existing(path, "POPE")
    if path.is_file():
        stem = path.stem
        if not stem.startswith("coco_pope_"):
            raise ValueError(f"POPE: {path} is not named coco_pope_<split>.json")
        files = {stem.removeprefix("coco_pope_"): path}
        base = path.parent
    else:
        files = {s: path / f"coco_pope_{s}.json" for s in POPE_SPLITS if (path / f"coco_pope_{s}.json").is_file()}
        if not files:
            raise ValueError(f"POPE: no coco_pope_<split>.json files in {path}")
        base = path
    img_dir = _image_dir(base, image_dir)
    items: list[PopeItem] = []
    for split, file in files.items():
        rows = read_jsonl(file)
        if not rows:
            raise ValueError(f"POPE: {file} holds no questions")
        for lineno, rec in enumerate(rows[:limit] if limit else rows, 1):
            where = f"{file}: item {lineno}"
            _need(rec, ("question_id", "image", "text", "label"), where)
            if rec["label"] not in ("yes", "no"):
                raise ValueError(f"{where}: label must be 'yes' or 'no', got {rec['label']!r}")
            items.append(PopeItem(question_id=rec["question_id"], split=split, text=rec["text"], label=rec["label"],
                                  image=_image(img_dir, rec["image"], where)))
    return items


# --------------------------------------------------------------------------------------------------------------
# MMBench

def _blank(value: Any) -> bool:
    return value is None or str(value).strip().lower() in ("", "nan", "none")


def _image_suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data[:3] == b"GIF":
        return ".gif"
    return ".img"


def load_mmbench(path: str | Path, limit: int | None = None, image_dir: str | Path | None = None) -> list[MMBenchItem]:
    """MMBench TSV (index, question, hint, A..D, answer, category, l2-category, image as base64, ...); `path` is the
    .tsv or a folder holding exactly one. Images are decoded once into `image_dir` (default: <tsv stem>_images next to
    the file), named by content hash."""
    import pandas as pd

    _check_limit(limit)
    path = _existing(path, "MMBench")
    if path.is_dir():
        tsvs = sorted(path.glob("*.tsv"))
        if len(tsvs) != 1:
            raise ValueError(f"MMBench: expected one .tsv in {path}, found {[t.name for t in tsvs]}")
        path = tsvs[0]
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several parser error types
        raise ValueError(f"MMBench: cannot read {path} as TSV ({exc})") from None
    missing = [c for c in ("index", "question", "A", "B", "answer", "image") if c not in frame.columns]
    if missing:
        raise ValueError(f"MMBench: {path} lacks column(s) {missing} (has {list(frame.columns)})")
    out_dir = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = frame.to_dict("records")
    items: list[MMBenchItem] = []
    for rowno, rec in enumerate(rows[:limit] if limit else rows, 2):  # line 1 is the header
        where = f"{path}:{rowno} (index {rec['index']})"
        options = []
        for letter in "ABCDEFGHI":
            if letter not in rec or _blank(rec[letter]):
                break  # LLaVA's get_options stops at the first missing option
            options.append(str(rec[letter]))
        if len(options) < 2:
            raise ValueError(f"{where}: fewer than two options")
        answer = str(rec["answer"]).strip()
        if answer not in list("ABCDEFGHI"[: len(options)]):
            raise ValueError(f"{where}: answer {answer!r} is not one of the option letters "
                             f"{list('ABCDEFGHI'[:len(options)])}")
        try:
            data = base64.b64decode(str(rec["image"]), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"{where}: image column is not valid base64 ({exc})") from None
        if not data:
            raise ValueError(f"{where}: empty image")
        img = out_dir / f"{sha256_bytes(data)}{_image_suffix(data)}"
        if not img.exists():
            img.write_bytes(data)
        items.append(MMBenchItem(
            index=int(rec["index"]) if str(rec["index"]).lstrip("-").isdigit() else rec["index"],
            question=str(rec["question"]), hint=None if _blank(rec.get("hint")) else str(rec["hint"]),
            options=options, answer_index="ABCDEFGHI".index(answer), category=str(rec.get("category", "")),
            l2_category=str(rec.get("l2-category", "")), image=str(img)))
    if not items:
        raise ValueError(f"MMBench: {path} holds no questions")
    return items


# --------------------------------------------------------------------------------------------------------------
# MM-Vet

def load_mmvet(path: str | Path, limit: int | None = None, image_dir: str | Path | None = None) -> list[MMVetItem]:
    """MM-Vet: mm-vet.json ({id: {imagename, capability, question, answer}}) or its folder (images in images/)."""
    _check_limit(limit)
    file = _in_dir(_existing(path, "MM-Vet"), ("mm-vet.json",), "MM-Vet")
    data = _read_json(file)
    if not isinstance(data, dict) or not data:
        raise ValueError(f"MM-Vet: {file} must be a non-empty JSON object of items")
    img_dir = _image_dir(file.parent, image_dir)
    items = []
    for key, rec in list(data.items())[:limit] if limit else data.items():
        where = f"{file}: item {key!r}"
        _need(rec, ("imagename", "capability", "question", "answer"), where)
        caps = rec["capability"]
        if not isinstance(caps, list) or not caps:
            raise ValueError(f"{where}: 'capability' must be a non-empty list")
        items.append(MMVetItem(id=str(key), image=_image(img_dir, rec["imagename"], where), question=rec["question"],
                               answer=str(rec["answer"]), capabilities=[str(c) for c in caps],
                               answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"])))
    return items


# --------------------------------------------------------------------------------------------------------------
# LLaVA-Bench (in the wild)

def load_llava_bench(path: str | Path, limit: int | None = None,
                     image_dir: str | Path | None = None) -> list[LlavaBenchItem]:
    """LLaVA-Bench in-the-wild folder: questions.jsonl, answers_gpt4.jsonl (reference answers, matched by
    question_id), context.jsonl (captions, matched by image), images/."""
    _check_limit(limit)
    folder = _existing(path, "LLaVA-Bench")
    if folder.is_file():
        folder = folder.parent
    files = {n: folder / f"{n}.jsonl" for n in ("questions", "answers_gpt4", "context")}
    for name, file in files.items():
        if not file.is_file():
            raise ValueError(f"LLaVA-Bench: {file} not found")
    questions = read_jsonl(files["questions"])
    answers: dict[Any, str] = {}
    for i, rec in enumerate(read_jsonl(files["answers_gpt4"]), 1):
        _need(rec, ("question_id", "text"), f"{files['answers_gpt4']}: line {i}")
        answers[rec["question_id"]] = rec["text"]
    contexts: dict[str, str] = {}
    for i, rec in enumerate(read_jsonl(files["context"]), 1):
        _need(rec, ("image", "caption"), f"{files['context']}: line {i}")
        cap = rec["caption"]
        contexts[rec["image"]] = "\n".join(cap) if isinstance(cap, list) else str(cap)
    img_dir = _image_dir(folder, image_dir)
    items = []
    for i, rec in enumerate(questions[:limit] if limit else questions, 1):
        where = f"{files['questions']}: line {i}"
        _need(rec, ("question_id", "image", "text", "category"), where)
        if rec["question_id"] not in answers:
            raise ValueError(f"{where}: question_id {rec['question_id']!r} has no answer in {files['answers_gpt4']}")
        if rec["image"] not in contexts:
            raise ValueError(f"{where}: image {rec['image']!r} has no caption in {files['context']}")
        items.append(LlavaBenchItem(question_id=rec["question_id"], image=_image(img_dir, rec["image"], where),
                                    text=rec["text"], category=rec["category"], reference=answers[rec["question_id"]],
                                    context=contexts[rec["image"]],
                                    answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"])))
    if not items:
        raise ValueError(f"LLaVA-Bench: {files['questions']} holds no questions")
    return items


# --------------------------------------------------------------------------------------------------------------
# MT-Bench

def _find_mt_reference(folder: Path) -> Path | None:
    for cand in (folder / "reference_answer" / "gpt-4.jsonl", folder / "reference_answer_gpt-4.jsonl"):
        if cand.is_file():
            return cand
    return None


def load_mt_bench_references(path: str | Path) -> dict[Any, list[str]]:
    """FastChat reference_answer/gpt-4.jsonl: {question_id, model_id, choices: [{index, turns}]} -> {qid: turns}."""
    path = _existing(path, "MT-Bench reference answers")
    out = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}: line {i}"
        _need(rec, ("question_id", "choices"), where)
        choices = rec["choices"]
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict) \
                or not isinstance(choices[0].get("turns"), list):
            raise ValueError(f"{where}: 'choices' must be a list of {{index, turns: [...]}}")
        out[rec["question_id"]] = [str(t) for t in choices[0]["turns"]]
    return out


def load_mt_bench(path: str | Path, limit: int | None = None,
                  reference_path: str | Path | None = None) -> list[MTBenchItem]:
    """FastChat MT-Bench question.jsonl ({question_id, category, turns, [reference]}) or its folder.

    Reference answers (used, as in FastChat, only for math/reasoning/coding) come from `reference_path`, else from
    reference_answer/gpt-4.jsonl or reference_answer_gpt-4.jsonl beside the questions when present, else from the
    question's own "reference" field (the miniature's)."""
    _check_limit(limit)
    file = _in_dir(_existing(path, "MT-Bench"), ("question.jsonl",), "MT-Bench")
    ref_file = Path(reference_path) if reference_path is not None else _find_mt_reference(file.parent)
    refs = load_mt_bench_references(ref_file) if ref_file is not None else {}
    rows = read_jsonl(file)
    items = []
    for i, rec in enumerate(rows[:limit] if limit else rows, 1):
        where = f"{file}: line {i}"
        _need(rec, ("question_id", "category", "turns"), where)
        turns = rec["turns"]
        if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
            raise ValueError(f"{where}: 'turns' must be a non-empty list of strings")
        own = rec.get("reference")
        if own is not None and (not isinstance(own, list) or len(own) < len(turns)):
            raise ValueError(f"{where}: 'reference' must be a list with one answer per turn")
        keys = rec.get("answer_keys")
        if keys is not None and (not isinstance(keys, list) or len(keys) < len(turns)):
            raise ValueError(f"{where}: 'answer_keys' must be a list with one key per turn")
        ref = None
        if rec["category"] in MT_BENCH_NEED_REF_CATS:
            ref = refs.get(rec["question_id"]) or own
            if ref is None:
                log.warning("%s: %s question without a reference answer", where, rec["category"])
        items.append(MTBenchItem(question_id=rec["question_id"], category=rec["category"], turns=turns,
                                 reference=[str(r) for r in ref] if ref else None,
                                 answer_keys=[str(k) for k in keys] if keys is not None else None,
                                 references_all=[str(r) for r in own] if own is not None else None))
    if not items:
        raise ValueError(f"MT-Bench: {file} holds no questions")
    return items


# --------------------------------------------------------------------------------------------------------------
# AlpacaEval (v1)

def load_alpaca_eval(path: str | Path, limit: int | None = None) -> list[AlpacaItem]:
    """AlpacaEval v1 reference outputs: a JSON list of {instruction, output, generator, dataset}; `path` is the file
    or a folder with eval.json / text_davinci_003_outputs.json / model_outputs.json."""
    _check_limit(limit)
    file = _in_dir(_existing(path, "AlpacaEval"),
                   ("eval.json", "text_davinci_003_outputs.json", "model_outputs.json"), "AlpacaEval")
    data = _read_json(file)
    if not isinstance(data, list) or not data:
        raise ValueError(f"AlpacaEval: {file} must be a non-empty JSON list of records")
    items = []
    for i, rec in enumerate(data[:limit] if limit else data):
        where = f"{file}: record {i}"
        _need(rec, ("instruction", "output"), where)
        items.append(AlpacaItem(instruction=str(rec["instruction"]), output=str(rec["output"]),
                                generator=str(rec.get("generator", "")), dataset=str(rec.get("dataset", "")),
                                answer_key=None if rec.get("answer_key") is None else str(rec["answer_key"]),
                                reference=rec.get("reference")))
    return items

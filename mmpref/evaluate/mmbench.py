"""MMBench (dev, EN), circular evaluation, scored by rule.

Loader: OpenCompass MMBench TSV (index, question, hint, A..D, answer, category, l2-category, image as base64).
Prompt: LLaVA's model_vqa_mmbench.py layout and suffix (haotian-liu/LLaVA scripts/v1_5/eval/mmbench.sh, as the
authors' findalexli/mllm-dpo scripts/v1_5/eval/mmbench.sh runs it: --single-pred-prompt --temperature 0, no
--all-rounds); greedy answers.
Circular evaluation, two layouts (the records' "circular" and the results' metric `circular_from_file` say which):
- "file": the official dev/test TSVs already hold each question's circular copies as rows of their own (index
  i + k * 1e6, options rotated, answer letter moved). As LLaVA's script does, every row is asked once in its own
  option order, and the rows are grouped into questions as VLMEvalKit's `multiple_choice_eval` groups them
  (`data[data['index'] % int(1e6) == idx]` for each row with index < 1e6): a question is right only when all its
  rows are. A copy whose question row is missing is an error (VLMEvalKit would skip it silently).
- "rotated": a file with no copy rows (the miniature world's) is rotated by mmpref: for n options, n rounds, round k
  shifting the options left by k (LLaVA's `--all-rounds`: `options[1:] + options[:1]` per round).
Matching and metric: open-compass/VLMEvalKit vlmeval/utils/matching_util.py (can_infer_option, can_infer_text,
can_infer) and vlmeval/evaluate/multiple_choice.py (circular groups: prefetch_sub_data / eval_data_groups), commit
c6bdffd3a3f2772ce9eaa157d7d31ec741b245b0 (March 2024; these functions were unchanged from January 2024 to August
2025, the period of the paper and of LLaVA-1.5's numbers). Default settings: the environment variable VERBOSE unset
(so the "A may be an article" rejection is off) and the `exact_matching` judge (no GPT matching: an answer that
neither rule decides counts as wrong, as VLMEvalKit scores it without a GPT key). Later commits (c3371551 and
a67ace50, 2025-2026) add a position rule for the letter, a length limit for text matching and an "answer is X"
regex; they are not followed.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

from PIL import Image
from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, RULE_JUDGE, ItemProtocol, check_limit, existing, run_items,
                                      score_records, tidy_rows)
from mmpref.io import sha256_bytes
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.questions import lettered_options, mc_item
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.scenes import Images

# Prompt suffix of LLaVA-1.5's model_vqa_mmbench.py.
MMBENCH_PROMPT_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
CIRCULAR_STEP = 1_000_000    # VLMEvalKit: the circular copies of question i are the rows i + k * 1e6
FILE_COPIES, ROTATED = "file", "rotated"   # where a question's rounds come from (see the module docstring)
LAYOUT_METRIC = "circular_from_file"       # % of questions whose rounds are the file's own copy rows


class MMBenchItem(BaseModel):
    index: int | str
    question: str
    hint: str | None
    options: list[str]           # option texts in file order (A, B, ...), empty ones dropped
    answer_index: int            # position of the correct option in `options`
    category: str = ""
    l2_category: str = ""
    image: str


class MMBenchQuestion(BaseModel):
    """One question of the circular evaluation: its rounds are asked one by one, round 0 (its own row, the original
    option order) counting for vanilla accuracy."""
    index: int | str             # the question's row (index < 1e6)
    category: str = ""
    rounds: list[MMBenchItem]    # FILE_COPIES: its rows in index order; ROTATED: its options rotated
    circular: str                # FILE_COPIES or ROTATED


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
    the file), named by content hash. Returns the rows; `limit` keeps the first `limit` questions, with their circular
    copy rows where the file has them (mmbench_questions groups the rows)."""
    import pandas as pd

    check_limit(limit)
    path = existing(path, "MMBench")
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
    rows = list(enumerate(frame.to_dict("records"), 2))  # (line, row); line 1 is the header
    indices = [_index(rec["index"]) for _, rec in rows]
    if any(isinstance(i, int) and i >= CIRCULAR_STEP for i in indices):  # the official layout: copies as rows
        mains = [i for i in indices if isinstance(i, int) and i < CIRCULAR_STEP]
        questions = set(mains)
        for (rowno, rec), idx in zip(rows, indices):
            if not isinstance(idx, int) or idx < 0:
                raise ValueError(f"{path}:{rowno} (index {rec['index']}): the file holds circular copies (index + k * "
                                 f"{CIRCULAR_STEP}), so every index must be a whole number >= 0")
            if idx >= CIRCULAR_STEP and idx % CIRCULAR_STEP not in questions:
                raise ValueError(f"{path}:{rowno} (index {idx}): a circular copy of question {idx % CIRCULAR_STEP}, "
                                 f"which {path.name} lacks (VLMEvalKit would skip the copy); restore the question's "
                                 f"row or remove its copies")
        if limit:
            keep = set(mains[:limit])
            rows = [r for r, idx in zip(rows, indices) if idx % CIRCULAR_STEP in keep]
    elif limit:
        rows = rows[:limit]
    items: list[MMBenchItem] = []
    for rowno, rec in rows:
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
            index=_index(rec["index"]),
            question=str(rec["question"]), hint=None if _blank(rec.get("hint")) else str(rec["hint"]),
            options=options, answer_index="ABCDEFGHI".index(answer), category=str(rec.get("category", "")),
            l2_category=str(rec.get("l2-category", "")), image=str(img)))
    if not items:
        raise ValueError(f"MMBench: {path} holds no questions")
    return items


def _index(value: Any) -> int | str:
    return int(value) if str(value).lstrip("-").isdigit() else value


def mmbench_questions(items: Sequence[MMBenchItem]) -> list[MMBenchQuestion]:
    """The loaded rows as questions of the circular evaluation. Rows with circular copies (an index >= 1e6, the
    official layout) are grouped as VLMEvalKit groups them, by index % 1e6, each question's rows in index order
    (its own row first); a file without copies gets every row rotated (`mmbench_rotations`)."""
    if not any(isinstance(it.index, int) and it.index >= CIRCULAR_STEP for it in items):
        return [MMBenchQuestion(index=it.index, category=it.category, circular=ROTATED, rounds=[
            it.model_copy(update={"options": list(opts.values()), "answer_index": LETTERS.index(letter)})
            for opts, letter in mmbench_rotations(it.options, it.answer_index)]) for it in items]
    if any(not isinstance(it.index, int) for it in items):
        raise ValueError("MMBench: rows with circular copies need whole-number indices")
    groups: dict[int, list[MMBenchItem]] = {}
    for it in sorted(items, key=lambda it: it.index):
        groups.setdefault(it.index % CIRCULAR_STEP, []).append(it)
    mains = [it for it in items if it.index < CIRCULAR_STEP]
    orphans = sorted(set(groups) - {it.index for it in mains})
    if orphans:
        raise ValueError(f"MMBench: circular copies of question(s) {orphans[:5]} whose own rows are missing")
    return [MMBenchQuestion(index=it.index, category=it.category, rounds=groups[it.index], circular=FILE_COPIES)
            for it in mains]


# --------------------------------------------------------------------------------------------------------------
# matching and metric (VLMEvalKit)

LETTERS = "ABCDEFGHI"


_OPTION_PUNCT = ".()[],:;!*#{}"


MMBENCH_REFUSALS = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")


def mmbench_infer_letter(answer: str, choices: Sequence[str]) -> str | None:
    """VLMEvalKit `can_infer_option` (VERBOSE unset): "Z" for a refusal (one of MMBENCH_REFUSALS in the answer);
    else punctuation -> spaces, split on whitespace: exactly one option letter among the words gives that letter;
    no option letter but the word "Z" gives "Z"; otherwise None (VLMEvalKit's False). An answer holding
    "Failed to obtain answer via API" gives None before the refusal check, as in VLMEvalKit."""
    if "Failed to obtain answer via API" in answer:
        return None
    if any(err in answer for err in MMBENCH_REFUSALS):
        return "Z"
    text = answer
    for ch in _OPTION_PUNCT:
        text = text.replace(ch, " ")
    words = [w.strip() for w in text.split()]
    hits = [c for c in choices if c in words]
    if len(hits) == 1:
        return hits[0]
    if not hits and "Z" in words:
        return "Z"
    return None


def mmbench_infer_text(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer_text`: the option whose text (lower-cased) occurs in the lower-cased answer, if exactly
    one does."""
    low = answer.lower()
    hits = [letter for letter, text in options.items() if str(text).lower() in low]
    return hits[0] if len(hits) == 1 else None


def mmbench_match(answer: str, options: dict[str, str]) -> str | None:
    """VLMEvalKit `can_infer`: by letter first (a refusal gives "Z", which is never right), then by option text;
    None when neither decides."""
    answer = str(answer)
    return mmbench_infer_letter(answer, list(options)) or mmbench_infer_text(answer, options)


def mmbench_rotations(options: Sequence[str], answer_index: int) -> list[tuple[dict[str, str], str]]:
    """Circular evaluation: for n options, n passes; pass k shifts the options left by k (LLaVA's
    `options[1:] + options[:1]` applied k times). Returns [(letter -> text, correct letter)] with pass 0 the original."""
    n = len(options)
    if n < 2:
        raise ValueError(f"MMBench: a question needs at least 2 options, got {n}")
    if not 0 <= answer_index < n:
        raise ValueError(f"MMBench: answer index {answer_index} outside the {n} options")
    out = []
    for k in range(n):
        rotated = list(options[k:]) + list(options[:k])
        out.append((dict(zip(LETTERS, rotated)), LETTERS[(answer_index - k) % n]))
    return out


def mmbench_scores(passes: Sequence[Sequence[bool]]) -> dict[str, Score]:
    """`passes[q]` = correctness of every rotation of question q (pass 0 = original order).
    circular_accuracy: % of questions right in every pass (VLMEvalKit's circular group: hit 1 only when every
    rotation's can_infer answer equals its correct letter; under exact matching an undecided rotation is a miss);
    vanilla_accuracy: % right in pass 0 (mmpref's addition, not a VLMEvalKit number)."""
    if not passes or any(len(p) == 0 for p in passes):
        raise ValueError("MMBench: every question needs at least one scored pass")
    n = len(passes)
    return {"circular_accuracy": Score(100.0 * sum(all(p) for p in passes) / n, n),
            "vanilla_accuracy": Score(100.0 * sum(bool(p[0]) for p in passes) / n, n)}


def score(recs: Sequence[dict]) -> dict[str, Score]:
    """mmbench_scores, plus LAYOUT_METRIC: the % of questions whose rounds are the file's own circular copies
    (100: the official layout, VLMEvalKit's grouping; 0: rotated by mmpref; records from before the layouts were told
    apart were rotated)."""
    out = mmbench_scores([r["passes"] for r in recs])
    out[LAYOUT_METRIC] = Score(100.0 * sum(r.get("circular") == FILE_COPIES for r in recs) / len(recs), len(recs))
    return out


# --------------------------------------------------------------------------------------------------------------
# protocol

def mmbench_prompt(question: str, hint: str | None, options: dict[str, str], suffix: str = MMBENCH_PROMPT_SUFFIX) -> str:
    """LLaVA's model_vqa_mmbench layout: [hint\\n]question, one line "X. option" per option, then the suffix."""
    text = f"{hint}\n{question}" if hint else question
    for letter, option in options.items():
        text += f"\n{letter}. {option}"
    return text + suffix


def _lettered(row: MMBenchItem) -> dict[str, str]:
    return dict(zip(LETTERS, row.options))


def run_mmbench(items: Sequence[MMBenchItem], generate: GenerateFn, out_jsonl: str | Path, model: str,
                prompt_suffix: str = MMBENCH_PROMPT_SUFFIX, chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """MMBench circular evaluation over the questions of `mmbench_questions(items)`: every round is asked once; a
    question counts for circular_accuracy only when every round is answered right (matched by letter, then by
    option text)."""
    questions = mmbench_questions(items)

    def requests(q: MMBenchQuestion) -> list[ChatRequest]:
        return [ChatRequest(turns=[mmbench_prompt(r.question, r.hint, _lettered(r), prompt_suffix)], image=r.image)
                for r in q.rounds]

    def describe(q: MMBenchQuestion) -> dict:
        rows = {"rows": [r.index for r in q.rounds]} if q.circular == FILE_COPIES else {}
        return {"question_id": q.index, "category": q.category, **rows,
                "correct": [LETTERS[r.answer_index] for r in q.rounds]}

    protocol = ItemProtocol("mmbench", key=lambda q: str(q.index), requests=requests, describe=describe,
                            derive=lambda q, answers: {"passes": mmbench_passes(q, answers), "circular": q.circular})
    recs = run_items(protocol, questions, generate, out_jsonl, model, chunk_size=chunk_size)
    return tidy_rows(model, "mmbench", score_records("mmbench", recs), RULE_JUDGE)


def mmbench_passes(question: MMBenchQuestion, answers: Sequence[str]) -> list[bool]:
    """Correctness of each round's answer (matched by letter, then by option text)."""
    return [mmbench_match(a, _lettered(r)) == LETTERS[r.answer_index] for a, r in zip(answers, question.rounds)]


def add_mmbench_passes(records: Sequence[dict], items: Sequence[MMBenchItem]) -> list[dict]:
    """Records written before "passes" was stored, with "passes" computed from the benchmark's items (by key)."""
    by_key = {str(q.index): q for q in mmbench_questions(items)}
    missing = sorted({r["key"] for r in records if "passes" not in r and r["key"] not in by_key})
    if missing:
        raise ValueError(f"mmbench: records {missing[:5]} have no item in the benchmark data")
    return [r if "passes" in r else {**r, "passes": mmbench_passes(by_key[r["key"]], r["answers"])}
            for r in records]


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_mmbench(load_mmbench(data_path, limit), generate, out_jsonl, model, **options)


def check(path: Path, params: Any = None) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:  # decode the sample images away from the data folder
        items = load_mmbench(path, limit=3, image_dir=tmp)
    return f"first {len(items)} rows read"


# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def build_mmbench(imgs: Images, rng: random.Random, bench: Path, n: int) -> int:
    path = bench / "mmbench" / "mmbench_dev.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for i in range(n):
            item = mc_item(rng, imgs)
            letters, answer = lettered_options(item, rng)
            w.writerow([i, item.question, "", *(letters.get(k, "") for k in "ABCD"), answer, item.category,
                        item.l2_category, "dev", _png_b64(item.image)])
    return n


def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    return {"mmbench": build_mmbench(build.imgs, build.rng("mmbench"), build.folder, build.n_bench)}


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's questions with their options (for the world's tokenizer)."""
    with (folder / "mmbench" / "mmbench_dev.tsv").open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            yield " ".join([r["question"]] + [r[k] for k in "ABCD" if r[k]])


BENCHMARK = Benchmark(
    name="mmbench", display="MM-Bench", headline="circular_accuracy", headline_name="MMBench circular accuracy",
    order=3, unit="%", in_table2=True, paper_key="mmbench", run=_run, score=score, load=load_mmbench, check=check,
    backfill=add_mmbench_passes, default_items=4377,
    build_miniature=build_miniature, build_order=3, miniature_texts=miniature_texts,
    data=DataFile("mmbench", "MMBench dev (EN)", "09_evaluate", "evaluate.benchmarks.mmbench",
                  "mmbench/mmbench_dev_20230712.tsv", ("mmbench/mmbench_dev_20230712.tsv (images inside, base64)",),
                  "OpenCompass MMBench `mmbench_dev_20230712.tsv` (download.openmmlab.com/mmclassification/datasets/"
                  "mmbench/)"),
)

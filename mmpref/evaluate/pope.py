"""POPE (object hallucination, COCO; random / popular / adversarial splits), scored by rule.

Loader: AoiDragon/POPE `output/coco/coco_pope_<split>.json` (JSON lines {question_id, image, text, label}).
Prompt: LLaVA-1.5's llava_pope_test.jsonl suffix; greedy answers.
Metric: haotian-liu/LLaVA llava/eval/eval_pope.py, commit c121f0432da27facab705978f83c4ada465e46fd. Where eval_pope.py
crashes (ZeroDivisionError when nothing is predicted "yes", nothing is labelled "yes", or precision + recall is 0),
precision, recall and F1 are 0.0 here, so a model that answers "no" to everything scores F1 0 on that split instead
of stopping the run.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Sequence

from pydantic import BaseModel

from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (DEFAULT_CHUNK, RULE_JUDGE, ItemProtocol, check_limit, existing, image_file,
                                      images_folder, mean, need_keys, run_items, score_records, tidy_rows)
from mmpref.io import read_jsonl, write_jsonl
from mmpref.sampling import ChatRequest, GenerateFn
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.scenes import SHAPES, Images, Scene, absent_shapes

POPE_SPLITS = ("random", "popular", "adversarial")
# Prompt suffix of LLaVA-1.5's evaluation question file llava_pope_test.jsonl.
POPE_PROMPT_SUFFIX = "\nAnswer the question using a single word or phrase."


class PopeItem(BaseModel):
    question_id: int | str
    split: str
    image: str
    text: str
    label: str


def load_pope(path: str | Path, limit: int | None = None, image_dir: str | Path | None = None) -> list[PopeItem]:
    """POPE: a folder with coco_pope_{random,popular,adversarial}.json (JSON lines {question_id, image, text, label}),
    or one such file; `limit` keeps the first `limit` of every split. Images come from `image_dir`, else
    <folder>/images, else the folder itself."""
    check_limit(limit)
    path = existing(path, "POPE")
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
    img_dir = images_folder(base, image_dir)
    items: list[PopeItem] = []
    for split, file in files.items():
        rows = read_jsonl(file)
        if not rows:
            raise ValueError(f"POPE: {file} holds no questions")
        for lineno, rec in enumerate(rows[:limit] if limit else rows, 1):
            where = f"{file}: item {lineno}"
            need_keys(rec, ("question_id", "image", "text", "label"), where)
            if rec["label"] not in ("yes", "no"):
                raise ValueError(f"{where}: label must be 'yes' or 'no', got {rec['label']!r}")
            items.append(PopeItem(question_id=rec["question_id"], split=split, text=rec["text"], label=rec["label"],
                                  image=image_file(img_dir, rec["image"], where)))
    return items


# --------------------------------------------------------------------------------------------------------------
# metric (eval_pope.py)

def pope_parse_yes_no(text: str) -> str:
    """LLaVA's eval_pope rule: keep the text before the first '.', drop commas, split on spaces; the answer is "no"
    when one of the words is exactly "No", "not" or "no", otherwise "yes"."""
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_split_metrics(predictions: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (yes = positive class) and the share of "yes" predictions.

    `predictions` are already parsed ("yes"/"no"); `labels` are the file's "yes"/"no". Precision (recall) is 0 when
    nothing is predicted (labelled) yes, where eval_pope.py would divide by zero."""
    if len(predictions) != len(labels):
        raise ValueError(f"POPE: {len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        raise ValueError("POPE: no items to score")
    bad = sorted({x for x in list(labels) + list(predictions) if x not in ("yes", "no")})
    if bad:
        raise ValueError(f"POPE: labels and predictions must be 'yes' or 'no', got {bad}")
    tp = sum(p == "yes" and lab == "yes" for p, lab in zip(predictions, labels))
    fp = sum(p == "yes" and lab == "no" for p, lab in zip(predictions, labels))
    tn = sum(p == "no" and lab == "no" for p, lab in zip(predictions, labels))
    fn = sum(p == "no" and lab == "yes" for p, lab in zip(predictions, labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / len(labels), "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / len(labels)}


def pope_scores(by_split: dict[str, tuple[Sequence[str], Sequence[str]]]) -> dict[str, Score]:
    """Per split "<metric>_<split>" (accuracy, precision, recall, f1, yes_ratio) and the headline "f1", the mean F1
    of the splits. `by_split` maps split -> (raw answer texts, labels); answers are parsed with pope_parse_yes_no."""
    if not by_split:
        raise ValueError("POPE: no splits to score")
    out: dict[str, Score] = {}
    f1s, total = [], 0
    for split, (answers, labels) in by_split.items():
        m = pope_split_metrics([pope_parse_yes_no(a) for a in answers], labels)
        for name, value in m.items():
            out[f"{name}_{split}"] = Score(value, len(labels))
        f1s.append(m["f1"])
        total += len(labels)
    out["f1"] = Score(mean(f1s), total)
    return out


def score(recs: Sequence[dict]) -> dict[str, Score]:
    by_split: dict[str, tuple[list[str], list[str]]] = {}
    for rec in recs:
        answers, labels = by_split.setdefault(rec["split"], ([], []))
        answers.append(rec["answers"][0])
        labels.append(rec["label"])
    order = [s for s in POPE_SPLITS if s in by_split] + [s for s in by_split if s not in POPE_SPLITS]
    return pope_scores({s: by_split[s] for s in order})


# --------------------------------------------------------------------------------------------------------------
# protocol

def run_pope(items: Sequence[PopeItem], generate: GenerateFn, out_jsonl: str | Path, model: str,
             prompt_suffix: str = POPE_PROMPT_SUFFIX, chunk_size: int = DEFAULT_CHUNK) -> list[dict]:
    """POPE: one yes/no question per item; scored by LLaVA's eval_pope rule per split (no judge)."""
    protocol = ItemProtocol(
        "pope", key=lambda it: f"{it.split}/{it.question_id}",
        requests=lambda it: [ChatRequest(turns=[it.text + prompt_suffix], image=it.image)],
        describe=lambda it: {"question_id": it.question_id, "split": it.split, "label": it.label})
    recs = run_items(protocol, items, generate, out_jsonl, model, chunk_size=chunk_size)
    return tidy_rows(model, "pope", score_records("pope", recs), RULE_JUDGE)


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    return run_pope(load_pope(data_path, limit), generate, out_jsonl, model, **options)


def check(path: Path, params: Any = None) -> str:
    if path.is_dir():
        absent = [f"coco_pope_{s}.json" for s in POPE_SPLITS if not (path / f"coco_pope_{s}.json").is_file()]
        if absent:
            raise ValueError(f"missing {', '.join(absent)} in {path}")
    items = load_pope(path, limit=3)
    return f"{len({i.split for i in items})} splits; first 3 questions and images of each read"


# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def _pope_questions(scene: Scene, strategy: str, freq: Counter, cooc: Counter, rng: random.Random) -> list[tuple]:
    """POPE: one "yes" per present object (shape category) and as many absent ones, chosen by the split's strategy:
    at random, the most frequent in the benchmark's pictures, or the ones co-occurring most with the present ones."""
    present = sorted(scene.shape_types(), key=SHAPES.index)
    absent = absent_shapes(scene)
    k = min(len(present), len(absent))
    if strategy == "random":
        negs = rng.sample(absent, k)
    elif strategy == "popular":
        negs = sorted(absent, key=lambda o: (-freq[o], SHAPES.index(o)))[:k]
    else:
        negs = sorted(absent, key=lambda o: (-sum(cooc[frozenset((o, p))] for p in present), SHAPES.index(o)))[:k]
    return [(o, "yes") for o in present[:k]] + [(o, "no") for o in negs]


def build_pope(imgs: Images, rng: random.Random, bench: Path, n_per_split: int,
               n_shapes: list[int] | None = None) -> dict[str, int]:
    """POPE in its official layout (coco_pope_{random,popular,adversarial}.json: question_id, image, text, label),
    balanced yes/no, at least n_per_split questions per split; each picture has one of ``n_shapes`` shapes (default:
    the training pictures' 1-3; POPE's own images have at least three objects)."""
    scenes = []
    total = 0
    while total < n_per_split:
        scene, im = imgs.scene(rng, rng.choice(n_shapes) if n_shapes else None)
        name = f"pope_{len(scenes):04d}.png"
        imgs.save(im, f"benchmarks/pope/images/{name}")
        scenes.append((name, scene))
        total += 2 * min(len(scene.shapes), len(absent_shapes(scene)))
    freq = Counter(o for _, s in scenes for o in s.shape_types())
    cooc = Counter(frozenset((a, b)) for _, s in scenes for a in s.shape_types() for b in s.shape_types() if a != b)
    counts = {}
    for split in ("random", "popular", "adversarial"):
        rows, qid = [], 1
        for name, scene in scenes:
            for shape, label in _pope_questions(scene, split, freq, cooc, rng):
                rows.append({"question_id": qid, "image": name, "text": f"Is there a {shape} in the image?",
                             "label": label})
                qid += 1
        write_jsonl(bench / "pope" / f"coco_pope_{split}.json", rows)
        counts[f"pope_{split}"] = len(rows)
    return counts


def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    return build_pope(build.imgs, build.rng("pope"), build.folder, build.n_bench, build.pope_shapes)


def miniature_texts(folder: Path) -> Iterator[str]:
    """The miniature copy's questions (for the world's tokenizer)."""
    for split in POPE_SPLITS:
        for r in read_jsonl(folder / "pope" / f"coco_pope_{split}.json"):
            yield r["text"]


BENCHMARK = Benchmark(
    name="pope", display="PoPe", headline="f1", headline_name="POPE F1", order=2, unit="F1, 0–1", in_table2=True, paper_key="pope",
    run=_run, score=score, load=load_pope, check=check, strata=lambda rec: rec["split"], default_items=3 * 3000,
    build_miniature=build_miniature, build_order=2, miniature_texts=miniature_texts,
    data=DataFile("pope", "POPE (COCO, random/popular/adversarial)", "09_evaluate", "evaluate.benchmarks.pope",
                  "pope", ("pope/coco_pope_{random,popular,adversarial}.json", "pope/images/COCO_val2014_*.jpg"),
                  "github AoiDragon/POPE `output/coco/coco_pope_{random,popular,adversarial}.json`; COCO "
                  "`val2014.zip` images"),
)

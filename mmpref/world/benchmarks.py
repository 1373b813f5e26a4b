"""Small instances of the seven benchmarks, written in their official file formats so the real loaders read them."""

from __future__ import annotations

import base64
import csv
import io
import random
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmpref.io import write_json, write_jsonl
from mmpref.world.questions import (QA, chart_qas, describe_chart, describe_scene, lettered_options, mc_item,
                                    scene_negative_qas, scene_positive_qas, scene_qas)
from mmpref.world.scenes import SHAPES, Images, Scene, absent_shapes
from mmpref.world.text_tasks import MT_BENCH_CATEGORY, TEXT_TASKS, imperfect_output, sample_text_item


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


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


def build_mmvet(imgs: Images, rng: random.Random, bench: Path, n: int) -> int:
    items = {}
    for i in range(n):
        if i % 2 == 0:
            chart, im = imgs.chart(rng)
            qa = rng.choice([q for q in chart_qas(chart, rng) if q.qtype != "chart_describe"])
            caps = ["rec", "math"] if qa.qtype in ("bar_value", "line_value", "line_max", "line_min") else ["rec"]
        else:
            scene, im = imgs.scene(rng)
            qa = scene_qas(scene, rng, 1, 0.4)[0]
            caps = {"count": ["rec", "math"], "describe": ["rec", "gen"]}.get(qa.qtype, ["rec"])
        name = f"v1_{i}"
        imgs.save(im, f"benchmarks/mmvet/images/{name}.png")
        answer = qa.reference if qa.answer == "absent" or qa.qtype in ("describe", "chart_describe") else qa.answer
        items[name] = {"imagename": f"{name}.png", "capability": caps, "question": qa.question, "answer": answer,
                       "answer_key": qa.answer}
    write_json(bench / "mmvet" / "mm-vet.json", items)
    return n


def build_llava_bench(imgs: Images, rng: random.Random, bench: Path, n: int, name: str = "llava_bench") -> int:
    """LLaVA-Bench (in-the-wild) layout in ``bench/name``: three questions per picture — conv, detail, complex.
    ``name="llava_bench_dev"`` writes the dev split that hyper-parameters are chosen on (other pictures)."""
    folder = name
    questions, answers, contexts = [], [], []
    i = 0
    while len(questions) < n:
        name = f"{i:03d}.png"
        if i % 2 == 0:
            chart, im = imgs.chart(rng)
            caption = describe_chart(chart)
            qas = {q.qtype: q for q in chart_qas(chart, rng)}
            conv = qas["bar_value" if chart.kind == "bar" else "line_value"]
            detail = QA("Describe the chart in detail.", chart.kind, caption, "chart_describe")
            complex_ = qas["bar_tallest" if chart.kind == "bar" else "line_trend"]
        else:
            scene, im = imgs.scene(rng)
            caption = describe_scene(scene)
            pos = {q.qtype: q for q in scene_positive_qas(scene, rng)}
            conv = pos["color"]
            detail = QA("Describe the image in detail.", pos["describe"].answer, caption, "describe")
            complex_ = rng.choice([pos["count"], scene_negative_qas(scene, rng)[-1]])
        imgs.save(im, f"benchmarks/{folder}/images/{name}")
        contexts.append({"id": name.removesuffix(".png"), "image": name, "caption": caption})
        for cat, qa in (("conv", conv), ("detail", detail), ("complex", complex_)):
            if len(questions) >= n:
                break
            qid = len(questions)
            questions.append({"question_id": qid, "image": name, "text": qa.question, "category": cat,
                              "answer_key": qa.answer})
            answers.append({"question_id": qid, "text": qa.reference})
        i += 1
    d = bench / folder
    write_jsonl(d / "questions.jsonl", questions)
    write_jsonl(d / "answers_gpt4.jsonl", answers)
    write_jsonl(d / "context.jsonl", contexts)
    return len(questions)


def build_noise_images(imgs: Images, rng: random.Random, bench: Path) -> int:
    """Irrelevant images for noisy-image MT-Bench: blank, uniform noise, landscapes and unrelated world pictures."""
    size = imgs.size
    nrng = np.random.default_rng(rng.randrange(2**32))
    pics = [("blank.png", Image.new("RGB", (size, size), "white"))]
    for k in range(4):
        pics.append((f"noise_{k}.png", Image.fromarray(nrng.integers(0, 256, (size, size, 3), dtype=np.uint8))))
    for k in range(3):
        im = Image.new("RGB", (size, size), (120 + 30 * k, 180, 235))
        d = ImageDraw.Draw(im)
        horizon = rng.randint(size // 2, 3 * size // 4)
        d.rectangle([0, horizon, size, size], fill=(60, 140 - 20 * k, 50))
        r = rng.randint(3, size // 6)
        x = rng.randint(r, size - r)
        d.ellipse([x - r, 4, x + r, 4 + 2 * r], fill=(250, 220, 80))
        pics.append((f"landscape_{k}.png", im))
    pics.append(("scene_0.png", imgs.scene(rng)[1]))
    pics.append(("chart_0.png", imgs.chart(rng)[1]))
    for name, im in pics:
        if name.startswith(("blank", "noise", "landscape")):
            imgs.unique(im)
        imgs.save(im, f"benchmarks/noise_images/{name}")
    return len(pics)


def build_text_benchmarks(rng: random.Random, bench: Path, n: int) -> tuple[int, int, set[str]]:
    """MT-Bench (two turns, reference + answer keys) and AlpacaEval (imperfect reference outputs), n of each, the
    four task kinds in turn.

    First turns are in the benchmarks' own phrasings (`text_tasks._phrase`), which no training text uses; no first
    turn occurs twice, and a fact (``topic``) is asked at most twice over both benchmarks, so it stays in training
    under the training phrasings: the benchmarks hold out prompts, not knowledge. Returns the counts and the set of
    first turns that training must not contain."""
    held: set[str] = set()
    topics: Counter = Counter()
    tasks = list(TEXT_TASKS)

    def draw(two_turn: bool, task: str) -> dict:
        for _ in range(10_000):
            item = sample_text_item(rng, two_turn=two_turn, task=task, phrasings="bench")
            topic = item.get("topic")
            if item["turns"][0] in held or (topic is not None and topics[topic] >= 2):
                continue
            held.add(item["turns"][0])
            if topic is not None:
                topics[topic] += 1
            return item
        raise ValueError(f"the world's {task} tasks cannot give {n} held-out prompts per text benchmark; lower "
                         f"world.n_text_bench")

    mt = []
    while len(mt) < n:
        item = draw(True, tasks[len(mt) % len(tasks)])
        mt.append({"question_id": 81 + len(mt), "category": MT_BENCH_CATEGORY[item["task"]], "turns": item["turns"],
                   "reference": item["references"], "answer_keys": item["answers"]})
    write_jsonl(bench / "mt_bench" / "question.jsonl", mt)
    alpaca = []
    while len(alpaca) < n:
        item = draw(False, tasks[len(alpaca) % len(tasks)])
        alpaca.append({"instruction": item["turns"][0], "output": imperfect_output(item, rng),
                       "generator": "text_davinci_003", "dataset": "mini", "answer_key": item["answers"][0],
                       "reference": item["references"][0]})
    write_json(bench / "alpaca_eval" / "eval.json", alpaca)
    return len(mt), len(alpaca), held

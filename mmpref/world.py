"""The miniature world's synthetic data: charts, shape scenes, text tasks, prompt pools and benchmarks.

Everything is deterministic from one seed and held out by construction:

- every image in the world (train, pools, benchmarks, noise) has a unique pixel content — a generator that draws an
  image already used anywhere else draws again;
- no benchmark text prompt (MT-Bench turn 1, AlpacaEval instruction) occurs as a first turn in ``text_train.jsonl``.

Images are drawn with PIL primitives straight into ``image_size``² RGB pictures (no matplotlib: at 48 px a vector
renderer only adds antialiasing blur, and PIL draws a picture in well under a millisecond, so the default world of a
few thousand images builds in seconds). Bar heights and line points sit on a faint integer grid so values 1–9 can be
read off the picture.

Ground truth follows the spec's conventions: every item carries ``answer`` (the short key: "7", "yes", "blue",
"absent", ...) and ``reference`` (a full sentence in the house style: "The value of bar 2 is 7.").

Output layout of :func:`build_world_data` (``out_dir`` is ``<run_dir>/world``)::

    visual_train.jsonl        {"image", "question", "answer", "reference", "source": "chart"|"scene", "negative",
                               "qtype", "format": "open"|"short"|"multiple_choice"}
    text_train.jsonl          {"turns", "references", "answers", "task"}
    image_tags.jsonl          {"image", "tags"} for the training pictures (see image_tags)
    images/                   training images (paths in visual_train.jsonl are relative to out_dir)
    pools/scigraphqa.json     SciGraphQA-295K records (image_file, id, caption, title, abstract, first_mention,
                              response, conversations, q_a_pairs) + miniature extra "answer_key"
    pools/scigraphqa_images/
    pools/lrv.json            LRV-Instruction records (image_id, question, answer, task) + "answer_key"
    pools/lrv_images/
    benchmarks/pope/coco_pope_{random,popular,adversarial}.json + pope/images/
    benchmarks/mmbench/mmbench_dev.tsv
    benchmarks/mmvet/mm-vet.json + mmvet/images/
    benchmarks/llava_bench/{questions,answers_gpt4,context}.jsonl + llava_bench/images/
    benchmarks/mt_bench/question.jsonl
    benchmarks/alpaca_eval/eval.json
    benchmarks/noise_images/*.png
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw

from mmpref.evaluate.benchmarks import POPE_PROMPT_SUFFIX, mmbench_prompt
from mmpref.io import read_jsonl, write_jsonl

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Vocabulary of the world
# ----------------------------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 70, 220), "yellow": (235, 200, 20),
}
# Non-uniform frequencies so POPE's "popular" split (most frequent objects) means something.
COLOR_WEIGHTS = [0.4, 0.25, 0.2, 0.15]
SHAPES = ["circle", "square", "triangle"]
SHAPE_WEIGHTS = [0.4, 0.35, 0.25]
OBJECTS = [(c, s) for c in COLORS for s in SHAPES]

CHART_COLORS = [(40, 90, 200), (200, 60, 40), (40, 150, 70), (230, 130, 20), (130, 60, 170)]
GRID = (225, 225, 225)

WORDS = ["cat", "dog", "sun", "tree", "bird", "fish", "book", "lamp", "rain", "star", "moon", "cake", "ship", "frog",
         "milk", "rose", "ring", "door", "desk", "kite", "hat", "cup", "pen", "box", "bus", "car", "egg", "map", "key",
         "bed", "leaf", "road", "snow", "wind", "salt", "gold", "nest", "bell", "drum", "coin"]
CAPITALS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Germany": "Berlin", "Japan": "Tokyo",
            "China": "Beijing", "Egypt": "Cairo", "Russia": "Moscow", "Greece": "Athens", "Peru": "Lima",
            "Kenya": "Nairobi", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Cuba": "Havana",
            "Chile": "Santiago", "Austria": "Vienna", "Ireland": "Dublin", "Portugal": "Lisbon", "Canada": "Ottawa"}
SOUNDS = {"dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "lion": "roar",
          "owl": "hoot", "pig": "oink", "horse": "neigh", "snake": "hiss"}

# The SteerLM attribute suffix (DESIGN.md) is part of later prompts: give the tokenizer a chance to learn it.
STEERLM_TEXT = ("Please answer the question such that your response is in the following attributes in 5-point "
                "Likert scale:\nHelpfulness:4,Correctness:4,Coherence:4,Complexity:4,Verbosity:4")

TEXT_TASK_WEIGHTS = {"arithmetic": 0.3, "word": 0.25, "list": 0.25, "facts": 0.2}
MT_BENCH_CATEGORY = {"arithmetic": "math", "list": "reasoning", "word": "extraction", "facts": "humanities"}


# ----------------------------------------------------------------------------------------------------------------
# Pictures
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class Chart:
    kind: str                 # "bar" | "line"
    values: list[int]         # integers 1..9, left to right
    color: tuple[int, int, int]


@dataclass
class Shape:
    color: str
    shape: str
    cx: int
    cy: int
    r: int


@dataclass
class Scene:
    shapes: list[Shape]       # at most one of each shape type, sorted left to right

    def has(self, color: str, shape: str) -> bool:
        return any(s.color == color and s.shape == shape for s in self.shapes)

    def shape_types(self) -> set[str]:
        return {s.shape for s in self.shapes}

    def objects(self) -> list[tuple[str, str]]:
        return [(s.color, s.shape) for s in self.shapes]


def sample_chart(rng: random.Random) -> Chart:
    """A bar chart (3–4 bars, unique tallest and shortest) or a line chart (4–5 points, clear trend)."""
    color = rng.choice(CHART_COLORS)
    if rng.random() < 0.5:
        n = rng.choice([3, 4])
        while True:
            values = [rng.randint(1, 9) for _ in range(n)]
            if values.count(max(values)) == 1 and values.count(min(values)) == 1:
                return Chart("bar", values, color)
    n = rng.choice([4, 5])
    while True:
        values = [rng.randint(1, 9) for _ in range(n)]
        if abs(values[-1] - values[0]) >= 2:
            return Chart("line", values, color)


_CHART_FIGURES: dict[int, tuple] = {}


def _chart_axes(size: int):
    """One matplotlib Figure per image size with axes and grid set up once; each chart only swaps its data artists."""
    if size not in _CHART_FIGURES:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(size / 100, size / 100), dpi=100)
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_axes((0.1, 0.08, 0.88, 0.86))
        ax.set_ylim(0, 9.3)
        ax.set_yticks(range(1, 10))
        ax.set_xticks([])
        ax.tick_params(left=False, labelleft=False)
        ax.grid(axis="y", color=tuple(c / 255 for c in GRID), linewidth=0.5, antialiased=False)
        ax.set_axisbelow(True)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_linewidth(0.6)
        _CHART_FIGURES[size] = (fig, canvas, ax)
    return _CHART_FIGURES[size]


def draw_chart(chart: Chart, size: int) -> Image.Image:
    """A matplotlib bar or line chart: axes, a faint grid line per integer 1..9, bars or a line with square markers."""
    fig, canvas, ax = _chart_axes(size)
    for artist in [*ax.patches, *ax.lines]:
        artist.remove()
    ax.set_xlim(-0.5, len(chart.values) - 0.5)
    color = tuple(c / 255 for c in chart.color)
    xs = range(len(chart.values))
    if chart.kind == "bar":
        ax.bar(xs, chart.values, width=0.6, color=color, antialiased=False)
    else:
        ax.plot(xs, chart.values, color=color, linewidth=max(0.6, size / 80), marker="s",
                markersize=max(1.5, size / 24), antialiased=False)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def _weighted_distinct(rng: random.Random, items: list[str], weights: list[float], k: int) -> list[str]:
    items, weights, out = list(items), list(weights), []
    for _ in range(k):
        pick = rng.choices(range(len(items)), weights=weights)[0]
        out.append(items.pop(pick))
        weights.pop(pick)
    return out


def sample_scene(rng: random.Random, size: int, n_shapes: int | None = None) -> Scene:
    """1–3 non-overlapping shapes of distinct types (so "the square" is unambiguous), colours drawn by weight."""
    n = n_shapes or rng.choices([1, 2, 3], weights=[0.3, 0.4, 0.3])[0]
    r = max(3, round(size * 0.12))
    while True:
        types = _weighted_distinct(rng, SHAPES, SHAPE_WEIGHTS, n)
        shapes: list[Shape] = []
        for t in types:
            for _ in range(200):
                cx, cy = rng.randint(r + 1, size - r - 2), rng.randint(r + 1, size - r - 2)
                if all(abs(cx - s.cx) > 2 * r + 2 or abs(cy - s.cy) > 2 * r + 2 for s in shapes):
                    shapes.append(Shape(rng.choices(list(COLORS), weights=COLOR_WEIGHTS)[0], t, cx, cy, r))
                    break
        if len(shapes) == n:
            return Scene(sorted(shapes, key=lambda s: (s.cx, s.cy)))


def draw_scene(scene: Scene, size: int) -> Image.Image:
    im = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(im)
    for s in scene.shapes:
        box = [s.cx - s.r, s.cy - s.r, s.cx + s.r, s.cy + s.r]
        fill = COLORS[s.color]
        if s.shape == "circle":
            d.ellipse(box, fill=fill)
        elif s.shape == "square":
            d.rectangle(box, fill=fill)
        else:
            d.polygon([(s.cx, s.cy - s.r), (s.cx - s.r, s.cy + s.r), (s.cx + s.r, s.cy + s.r)], fill=fill)
    return im


# ----------------------------------------------------------------------------------------------------------------
# Visual questions with ground truth
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class QA:
    question: str
    answer: str               # key
    reference: str            # house-style sentence
    qtype: str
    negative: bool = False


def image_tags(picture: Chart | Scene) -> list[str]:
    """The visual concepts a picture shows, as short labels: what the tiny vision tower learns before visual
    instruction tuning (the stand-in for CLIP's image-text pretraining; LLaVA starts from a pretrained tower)."""
    if isinstance(picture, Scene):
        return (["scene", f"{len(picture.shapes)} shapes"] + [f"{c} {s}" for c, s in picture.objects()]
                + sorted(picture.shape_types()) + sorted({c for c, _ in picture.objects()}))
    v = picture.values
    return (["chart", picture.kind, f"{len(v)} values", "up" if v[-1] > v[0] else "down",
             f"highest {v.index(max(v)) + 1}", f"lowest {v.index(min(v)) + 1}"]
            + [f"value {i + 1} is {x}" for i, x in enumerate(v)])


def _shapes_sentence(n: int) -> str:
    return "There is 1 shape." if n == 1 else f"There are {n} shapes."


def describe_scene(scene: Scene) -> str:
    names = [f"a {c} {s}" for c, s in scene.objects()]
    body = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"The image shows {body}."


def describe_chart(chart: Chart) -> str:
    if chart.kind == "bar":
        return f"This is a bar chart with {len(chart.values)} bars."
    trend = "up" if chart.values[-1] > chart.values[0] else "down"
    return f"This is a line chart with {len(chart.values)} points that goes {trend}."


def chart_qas(chart: Chart, rng: random.Random) -> list[QA]:
    """All question types for one chart (one phrasing each, drawn at random)."""
    v, n = chart.values, len(chart.values)
    qs: list[QA] = [QA(rng.choice(["Describe the chart.", "What kind of chart is this?"]), chart.kind,
                       describe_chart(chart), "chart_describe")]
    if chart.kind == "bar":
        i = rng.randrange(n)
        qs.append(QA(rng.choice(["What is the value of bar {i}?", "How high is bar {i}?",
                                 "What value does bar {i} show?"]).format(i=i + 1),
                     str(v[i]), f"The value of bar {i + 1} is {v[i]}.", "bar_value"))
        qs.append(QA(rng.choice(["Which bar is the tallest?", "Which bar has the highest value?"]),
                     str(v.index(max(v)) + 1), f"The tallest bar is bar {v.index(max(v)) + 1}.", "bar_tallest"))
        qs.append(QA(rng.choice(["Which bar is the shortest?", "Which bar has the lowest value?"]),
                     str(v.index(min(v)) + 1), f"The shortest bar is bar {v.index(min(v)) + 1}.", "bar_shortest"))
        qs.append(QA(rng.choice(["How many bars are there?", "How many bars are in the chart?"]),
                     str(n), f"There are {n} bars.", "bar_count"))
    else:
        trend = "up" if v[-1] > v[0] else "down"
        qs.append(QA(rng.choice(["Does the line go up or down?", "Is the line going up or down?"]),
                     trend, f"The line goes {trend}.", "line_trend"))
        qs.append(QA(rng.choice(["What is the highest value of the line?", "What is the maximum value of the line?"]),
                     str(max(v)), f"The highest value of the line is {max(v)}.", "line_max"))
        qs.append(QA(rng.choice(["What is the lowest value of the line?", "What is the minimum value of the line?"]),
                     str(min(v)), f"The lowest value of the line is {min(v)}.", "line_min"))
        i = rng.randrange(n)
        qs.append(QA(rng.choice(["What is the value at point {i}?", "What value does point {i} have?"]).format(i=i + 1),
                     str(v[i]), f"The value at point {i + 1} is {v[i]}.", "line_value"))
        qs.append(QA(rng.choice(["How many points are on the line?", "How many points does the line have?"]),
                     str(n), f"There are {n} points on the line.", "line_count"))
    return qs


EXIST_Q = ["Is there a {c} {s} in the image?", "Can you see a {c} {s} in the picture?", "Does the image contain a {c} {s}?"]
COLOR_Q = ["What color is the {s}?", "What is the color of the {s}?", "Which color does the {s} have?"]
COUNT_Q = ["How many shapes are there?", "How many shapes are in the image?", "Count the shapes in the image."]
DESCRIBE_Q = ["Describe the image.", "What is in the image?"]


def exist_qa(color: str, shape: str, present: bool, rng: random.Random) -> QA:
    q = rng.choice(EXIST_Q).format(c=color, s=shape)
    if present:
        return QA(q, "yes", f"Yes, there is a {color} {shape}.", "exist")
    return QA(q, "no", f"No, there is no {color} {shape}.", "exist_absent", negative=True)


def scene_positive_qas(scene: Scene, rng: random.Random) -> list[QA]:
    s = rng.choice(scene.shapes)
    n = len(scene.shapes)
    return [
        exist_qa(s.color, s.shape, True, rng),
        QA(rng.choice(COLOR_Q).format(s=s.shape), s.color, f"The {s.shape} is {s.color}.", "color"),
        QA(rng.choice(COUNT_Q), str(n), _shapes_sentence(n), "count"),
        QA(rng.choice(DESCRIBE_Q), " ".join(scene.objects()[0]), describe_scene(scene), "describe"),
    ]


def absent_objects(scene: Scene) -> list[tuple[str, str]]:
    return [o for o in OBJECTS if not scene.has(*o)]


def scene_negative_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions about absent objects: a nonexistent object, a present shape in another colour (LRV's existent
    element manipulation), and the colour of a shape type that is not there."""
    absent = absent_objects(scene)
    out = [exist_qa(*rng.choice(absent), False, rng)]
    manipulated = [o for o in absent if o[1] in scene.shape_types()]
    if manipulated:
        out.append(exist_qa(*rng.choice(manipulated), False, rng))
    missing = [s for s in SHAPES if s not in scene.shape_types()]
    if missing:
        s = rng.choice(missing)
        out.append(QA(rng.choice(COLOR_Q).format(s=s), "absent", f"There is no {s} in the image.", "color_absent",
                      negative=True))
    return out


def scene_qas(scene: Scene, rng: random.Random, k: int, negative_rate: float) -> list[QA]:
    """k distinct question types for a scene, each negative with probability negative_rate."""
    pos, neg = scene_positive_qas(scene, rng), scene_negative_qas(scene, rng)
    rng.shuffle(pos)
    rng.shuffle(neg)
    out = []
    for _ in range(k):
        pool = neg if (neg and rng.random() < negative_rate) or not pos else pos
        if not pool:
            break
        out.append(pool.pop())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Text tasks (what the base LM, the "Vicuna", learns)
# ----------------------------------------------------------------------------------------------------------------

def _nums(xs: list[int]) -> str:
    return ", ".join(str(x) for x in xs)


def _arith_follow(r: int, rng: random.Random) -> tuple[str, str, str]:
    kind = rng.choice(["add", "sub", "double"]) if r > 1 else "add"
    if kind == "add":
        k = rng.randint(1, 9)
        q = rng.choice(["Now add {k} to your answer.", "Add {k} to that."]).format(k=k)
        return q, str(r + k), f"{r} plus {k} is {r + k}."
    if kind == "sub":
        k = rng.randint(1, min(9, r))
        q = rng.choice(["Now subtract {k} from your answer.", "Take {k} away from that."]).format(k=k)
        return q, str(r - k), f"{r} minus {k} is {r - k}."
    q = rng.choice(["Now double your answer.", "Now multiply your answer by 2."])
    return q, str(2 * r), f"{r} times 2 is {2 * r}."


def _capitals_of(word: str) -> tuple[str, str, str]:
    q = "Now spell your answer in capitals."
    return q, word.upper(), f"The word {word} in capitals is {word.upper()}."


def task_arithmetic(rng: random.Random, two_turn: bool) -> dict:
    op = rng.choice(["plus", "minus", "times"])
    if op == "plus":
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        r, qs = a + b, ["What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} plus {b}.",
                        "What do you get when you add {a} and {b}?"]
    elif op == "minus":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        r, qs = a - b, ["What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."]
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 9)
        r, qs = a * b, ["What is {a} times {b}?", "Multiply {a} by {b}.", "Compute {a} times {b}."]
    q = rng.choice(qs).format(a=a, b=b)
    ref = f"{a} {op} {b} is {r}."
    if rng.random() < 0.2:
        q, ref = f"Answer with just the number: {q[0].lower()}{q[1:]}", f"{r}."
    turns, refs, keys = [q], [ref], [str(r)]
    if two_turn:
        q2, k2, r2 = _arith_follow(r, rng)
        turns, refs, keys = turns + [q2], refs + [r2], keys + [k2]
    return {"turns": turns, "references": refs, "answers": keys, "task": "arithmetic"}


def task_word(rng: random.Random, two_turn: bool) -> dict:
    w = rng.choice(WORDS)
    kind = rng.choice(["reverse", "capitals", "first", "last"])
    if kind == "reverse":
        q = rng.choice(["Reverse the word {w}.", "Write the word {w} backwards.", "What is {w} spelled backwards?"])
        key, ref, follow = w[::-1], f"The word {w} reversed is {w[::-1]}.", _capitals_of(w[::-1])
    elif kind == "capitals":
        q = rng.choice(["Spell the word {w} in capitals.", "Write {w} in capital letters.",
                        "Write the word {w} in uppercase."])
        up = w.upper()
        key, ref = up, f"The word {w} in capitals is {up}."
        follow = ("Now reverse your answer.", up[::-1], f"The word {up} reversed is {up[::-1]}.")
    elif kind == "first":
        q = rng.choice(["What is the first letter of the word {w}?", "Which letter does {w} start with?"])
        key, ref = w[0], f"The first letter of {w} is {w[0]}."
        follow = ("Now give the last letter of the same word.", w[-1], f"The last letter of {w} is {w[-1]}.")
    else:
        q = rng.choice(["What is the last letter of the word {w}?", "Which letter does {w} end with?"])
        key, ref = w[-1], f"The last letter of {w} is {w[-1]}."
        follow = ("Now give the first letter of the same word.", w[0], f"The first letter of {w} is {w[0]}.")
    turns, refs, keys = [q.format(w=w)], [ref], [key]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "word"}


def task_list(rng: random.Random, two_turn: bool) -> dict:
    xs = rng.sample(range(1, 21), rng.choice([3, 4]))
    kind = rng.choice(["largest", "smallest", "sort", "count"])
    if kind in ("largest", "smallest"):
        m = max(xs) if kind == "largest" else min(xs)
        q = rng.choice(["What is the {k} of {L}?", "Which number is the {k}: {L}?",
                        "Find the {k} number in {L}."]).format(k=kind, L=_nums(xs))
        key, ref = str(m), f"The {kind} number is {m}."
        k = rng.randint(1, 9)
        follow = (f"Now add {k} to it.", str(m + k), f"{m} plus {k} is {m + k}.")
    elif kind == "sort":
        s = sorted(xs)
        q = rng.choice(["Sort {L} from smallest to largest.", "Put {L} in increasing order."]).format(L=_nums(xs))
        key, ref = _nums(s), f"The sorted list is {_nums(s)}."
        follow = ("Now give the first number of the sorted list.", str(s[0]), f"The first number is {s[0]}.")
    else:
        items = rng.sample(WORDS, len(xs))
        q = rng.choice(["How many items are in the list {L}?", "Count the items in {L}."]).format(L=", ".join(items))
        n = len(items)
        key, ref = str(n), f"There are {n} items in the list."
        follow = ("Now add 1 to that number.", str(n + 1), f"{n} plus 1 is {n + 1}.")
    turns, refs, keys = [q], [ref], [key]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "list"}


def task_facts(rng: random.Random, two_turn: bool) -> dict:
    one_word = rng.random() < 0.4
    if rng.random() < 0.6:
        country = rng.choice(list(CAPITALS))
        city = CAPITALS[country]
        if one_word:
            q, ref = f"Answer in one word: what is the capital of {country}?", f"{city}."
        else:
            q = rng.choice(["What is the capital of {c}?", "Which city is the capital of {c}?",
                            "Name the capital of {c}."]).format(c=country)
            ref = f"The capital of {country} is {city}."
        key = city
        follow = rng.choice([(f"Now spell that city in capitals.", city.upper(),
                              f"The word {city} in capitals is {city.upper()}."),
                             ("Now give the first letter of that city.", city[0],
                              f"The first letter of {city} is {city[0]}.")])
    else:
        animal = rng.choice(list(SOUNDS))
        sound = SOUNDS[animal]
        if one_word:
            q, ref = f"Answer in one word: what sound does a {animal} make?", f"{sound.capitalize()}."
        else:
            q = rng.choice(["What sound does a {a} make?", "Which sound does a {a} make?"]).format(a=animal)
            ref = f"A {animal} says {sound}."
        key = sound
        follow = ("Now reverse that word.", sound[::-1], f"The word {sound} reversed is {sound[::-1]}.")
    turns, refs, keys = [q], [ref], [key]
    if two_turn:
        turns, keys, refs = turns + [follow[0]], keys + [follow[1]], refs + [follow[2]]
    return {"turns": turns, "references": refs, "answers": keys, "task": "facts"}


TEXT_TASKS = {"arithmetic": task_arithmetic, "word": task_word, "list": task_list, "facts": task_facts}


def sample_text_item(rng: random.Random, two_turn: bool | None = None, task: str | None = None) -> dict:
    """One text instruction item; two-turn with probability 0.3 unless told."""
    task = task or rng.choices(list(TEXT_TASK_WEIGHTS), weights=list(TEXT_TASK_WEIGHTS.values()))[0]
    if two_turn is None:
        two_turn = rng.random() < 0.3
    return TEXT_TASKS[task](rng, two_turn)


def imperfect_output(item: dict, rng: random.Random) -> str:
    """The miniature "text-davinci-003": house-style right answer ~60 %, else plausible wrong or off-format."""
    ref, key = item["references"][0], item["answers"][0]
    u = rng.random()
    if u < 0.6:
        return ref
    if u < 0.85:
        return _wrong_reference(item, rng)
    return rng.choice([f"Well, it depends. Some people would say {key}, but there are many views on this.",
                       "I am not able to answer that question.",
                       f"Sure! Here is a long answer. The question is: {item['turns'][0]} Let me think about it."])


def _wrong_reference(item: dict, rng: random.Random) -> str:
    ref, key = item["references"][0], item["answers"][0]
    if key.isdigit():
        wrong = str(max(0, int(key) + rng.choice([-3, -2, -1, 1, 2, 3])))
        if wrong == key:
            wrong = str(int(key) + 1)
        return _replace_last(ref, key, wrong)
    if key in CAPITALS.values():
        return _replace_last(ref, key, rng.choice([c for c in CAPITALS.values() if c != key]))
    if key in SOUNDS.values():
        return _replace_last(ref, key.capitalize() if ref.startswith(key.capitalize()) else key,
                             rng.choice([s for s in SOUNDS.values() if s != key]))
    if "," in key:                               # a sorted list: swap two numbers
        parts = key.split(", ")
        parts[0], parts[-1] = parts[-1], parts[0]
        return _replace_last(ref, key, ", ".join(parts))
    wrong = key[::-1] if key[::-1] != key else key + key[-1]
    if len(key) == 1:
        wrong = rng.choice([ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch != key.lower()])
        wrong = wrong.upper() if key.isupper() else wrong
    return _replace_last(ref, key, wrong)


def _replace_last(text: str, old: str, new: str) -> str:
    i = text.rfind(old)
    return text if i < 0 else text[:i] + new + text[i + len(old):]


# ----------------------------------------------------------------------------------------------------------------
# The builder
# ----------------------------------------------------------------------------------------------------------------

class _Images:
    """Draws pictures whose pixel content is unique across the whole world (the held-out guarantee)."""

    def __init__(self, out_dir: Path, size: int):
        self.out_dir, self.size = out_dir, size
        self.seen: set[str] = set()
        self.written = 0
        self.draw_seconds = 0.0
        self.tags: list[dict] = []

    def _claim(self, im: Image.Image) -> bool:
        h = hashlib.sha256(im.tobytes()).hexdigest()
        if h in self.seen:
            return False
        self.seen.add(h)
        return True

    def chart(self, rng: random.Random) -> tuple[Chart, Image.Image]:
        while True:
            t = time.perf_counter()
            chart = sample_chart(rng)
            im = draw_chart(chart, self.size)
            self.draw_seconds += time.perf_counter() - t
            if self._claim(im):
                return chart, im

    def scene(self, rng: random.Random, n_shapes: int | None = None) -> tuple[Scene, Image.Image]:
        while True:
            t = time.perf_counter()
            scene = sample_scene(rng, self.size, n_shapes)
            im = draw_scene(scene, self.size)
            self.draw_seconds += time.perf_counter() - t
            if self._claim(im):
                return scene, im

    def unique(self, im: Image.Image) -> bool:
        return self._claim(im)

    def save(self, im: Image.Image, rel: str, tags: list[str] | None = None) -> str:
        """Write the picture under out_dir; `tags` (see image_tags) are kept in self.tags for the tower's pretraining."""
        if tags is not None:
            self.tags.append({"image": rel, "tags": tags})
        t = time.perf_counter()
        path = self.out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, format="PNG")
        self.written += 1
        self.draw_seconds += time.perf_counter() - t
        return rel


def _rng(seed: int, part: str) -> random.Random:
    return random.Random(f"mmpref-world:{seed}:{part}")


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)


def short_answer_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """VQAv2/GQA-style short-answer questions for a scene, in random order: a present object (yes), an absent one
    (no; half the time a present shape in another colour, like POPE's adversarial split), a colour and a count.
    The question carries the evaluation's POPE suffix; the reference is the single word ("Yes", "No", "Red", "3")."""
    s = rng.choice(scene.shapes)
    absent = absent_objects(scene)
    manipulated = [o for o in absent if o[1] in scene.shape_types()]
    c_no, s_no = rng.choice(manipulated if manipulated and rng.random() < 0.5 else absent)
    n = len(scene.shapes)
    qas = [
        QA(rng.choice(EXIST_Q).format(c=s.color, s=s.shape), "yes", "Yes", "exist"),
        QA(rng.choice(EXIST_Q).format(c=c_no, s=s_no), "no", "No", "exist_absent", negative=True),
        QA(rng.choice(COLOR_Q).format(s=s.shape), s.color, s.color.capitalize(), "color"),
        QA(rng.choice(COUNT_Q), str(n), str(n), "count"),
    ]
    rng.shuffle(qas)
    for qa in qas:
        qa.question += POPE_PROMPT_SUFFIX
    return qas


def build_visual_train(imgs: _Images, rng: random.Random, n: int, per_image: int = 3, negative_rate: float = 0.25,
                       short_rate: float = 0.15, mc_rate: float = 0.10) -> list[dict]:
    """Visual instruction-tuning data, n rows in random order, in three formats (the "format" field):

    - "open" (the rest): half charts, half scenes, per_image free-form questions per picture;
    - "short" (round(n * short_rate) rows): LLaVA-1.5's VQAv2/GQA-style items — a yes/no presence (balanced),
      colour or count question with the POPE suffix, answered by a single word; per_image questions per scene;
    - "multiple_choice" (round(n * mc_rate) rows): A-OKVQA-style items built like the MMBench benchmark's, rendered
      with the evaluation's ``mmbench_prompt``; reference and answer key are the option letter. One per picture.
    """
    if short_rate < 0 or mc_rate < 0 or short_rate + mc_rate > 1:
        raise ValueError(f"short_rate and mc_rate must be >= 0 and sum to at most 1, got {short_rate}, {mc_rate}")
    n_short, n_mc = round(n * short_rate), round(n * mc_rate)
    n_open = n - n_short - n_mc

    def row(rel: str, qa: QA, source: str, fmt: str) -> dict:
        return {"image": rel, "question": qa.question, "answer": qa.answer, "reference": qa.reference,
                "source": source, "negative": qa.negative, "qtype": qa.qtype, "format": fmt}

    rows: list[dict] = []
    i = 0
    while len(rows) < n_open:
        if i % 2 == 0:
            chart, im = imgs.chart(rng)
            qas = rng.sample(chart_qas(chart, rng), per_image)
            source = "chart"
        else:
            scene, im = imgs.scene(rng)
            qas = scene_qas(scene, rng, per_image, negative_rate)
            source = "scene"
        rel = imgs.save(im, f"images/{source}_{i:05d}.png", tags=image_tags(chart if source == "chart" else scene))
        rows.extend(row(rel, qa, source, "open") for qa in qas[: n_open - len(rows)])
        i += 1
    i = 0
    while len(rows) < n_open + n_short:
        scene, im = imgs.scene(rng)
        rel = imgs.save(im, f"images/short_{i:05d}.png", tags=image_tags(scene))
        qas = short_answer_qas(scene, rng)[:per_image]
        rows.extend(row(rel, qa, "scene", "short") for qa in qas[: n_open + n_short - len(rows)])
        i += 1
    for i in range(n_mc):
        item = _mmbench_item(rng, imgs)
        letters, letter = _lettered(item, rng)
        rel = imgs.save(item.image, f"images/mc_{i:05d}.png")
        qa = QA(mmbench_prompt(item.question, None, letters), letter, letter, "multiple_choice")
        rows.append(row(rel, qa, item.source, "multiple_choice"))
    rng.shuffle(rows)
    return rows


def build_scigraphqa_pool(imgs: _Images, rng: random.Random, n: int) -> list[dict]:
    """SciGraphQA-295K records (one chart each), in the hub dataset's columns, plus "answer_key"."""
    out = []
    for i in range(n):
        chart, im = imgs.chart(rng)
        qa = rng.choice(chart_qas(chart, rng))
        rel = imgs.save(im, f"pools/scigraphqa_images/chart_{i:05d}.png")
        caption = describe_chart(chart)
        out.append({
            "image_file": rel.removeprefix("pools/"), "id": f"mini-{i:05d}-Figure1-1",
            "caption": caption, "title": f"A synthetic {chart.kind} chart", "abstract": caption,
            "first_mention": f"Figure 1 shows a {chart.kind} chart.", "response": qa.reference,
            "conversations": [{"from": "human", "value": qa.question}, {"from": "gpt", "value": qa.reference}],
            "q_a_pairs": [[qa.question, qa.reference]], "answer_key": qa.answer,
        })
    return out


def build_lrv_pool(imgs: _Images, rng: random.Random, n: int, negative_rate: float = 0.5) -> list[dict]:
    """LRV-Instruction records (image_id, question, answer, task) with positive and negative instructions."""
    out = []
    for i in range(n):
        scene, im = imgs.scene(rng)
        qa = scene_qas(scene, rng, 1, negative_rate)[0]
        rel = imgs.save(im, f"pools/lrv_images/scene_{i:05d}.png")
        task = "negative" if qa.negative else {"exist": "object_existence", "color": "attribute_recognition",
                                               "count": "counting", "describe": "detailed_description"}[qa.qtype]
        out.append({"image_id": rel.removeprefix("pools/"), "question": qa.question, "answer": qa.reference,
                    "task": task, "answer_key": qa.answer})
    return out


def _pope_questions(scene: Scene, strategy: str, freq: Counter, cooc: Counter, rng: random.Random) -> list[tuple]:
    """POPE: one "yes" per present object and as many "no" objects chosen by the split's strategy."""
    present = scene.objects()
    absent = absent_objects(scene)
    if strategy == "random":
        negs = rng.sample(absent, len(present))
    elif strategy == "popular":
        negs = sorted(absent, key=lambda o: (-freq[o], OBJECTS.index(o)))[: len(present)]
    else:
        # Adversarial: absent objects that co-occur most with the present ones; in this world the confusable ones
        # share a shape or a colour with a present object (LRV's "existent element manipulation").
        def score(o):
            similar = sum(o[0] == p[0] or o[1] == p[1] for p in present)
            return (-similar, -sum(cooc[frozenset((o, p))] for p in present), OBJECTS.index(o))
        negs = sorted(absent, key=score)[: len(present)]
    return [(o, "yes") for o in present] + [(o, "no") for o in negs]


def build_pope(imgs: _Images, rng: random.Random, bench: Path, n_per_split: int) -> dict[str, int]:
    scenes = []
    total = 0
    while total < n_per_split:
        scene, im = imgs.scene(rng)
        name = f"pope_{len(scenes):04d}.png"
        imgs.save(im, f"benchmarks/pope/images/{name}")
        scenes.append((name, scene))
        total += 2 * len(scene.shapes)
    freq = Counter(o for _, s in scenes for o in s.objects())
    cooc = Counter(frozenset((a, b)) for _, s in scenes for a in s.objects() for b in s.objects() if a != b)
    counts = {}
    for split in ("random", "popular", "adversarial"):
        rows, qid = [], 1
        for name, scene in scenes:
            for (c, s), label in _pope_questions(scene, split, freq, cooc, rng):
                rows.append({"question_id": qid, "image": name, "text": f"Is there a {c} {s} in the image?",
                             "label": label})
                qid += 1
        write_jsonl(bench / "pope" / f"coco_pope_{split}.json", rows)
        counts[f"pope_{split}"] = len(rows)
    return counts


@dataclass
class McItem:
    """One MMBench-style multiple-choice question; ``options`` unshuffled, the correct one first."""
    image: Image.Image
    question: str
    correct: str
    options: list[str]
    category: str
    l2_category: str
    source: str               # "chart" | "scene"


def _mmbench_item(rng: random.Random, imgs: _Images) -> McItem:
    """One MMBench-style question about a fresh picture: a chart question or a scene colour/count/existence one."""
    if rng.random() < 0.5:
        chart, im = imgs.chart(rng)
        v = chart.values
        if chart.kind == "bar" and rng.random() < 0.5:
            correct = f"bar {v.index(max(v)) + 1}"
            opts = [f"bar {i + 1}" for i in range(len(v))]
            q = "Which bar is the tallest?"
        elif chart.kind == "bar":
            i = rng.randrange(len(v))
            q, correct = f"What is the value of bar {i + 1}?", str(v[i])
            opts = [correct] + rng.sample([str(x) for x in range(1, 10) if x != v[i]], rng.choice([1, 2, 3]))
        else:
            correct = "up" if v[-1] > v[0] else "down"
            q, opts = "Does the line go up or down?", ["up", "down"]
        return McItem(im, q, correct, opts, "structuralized_imagetext_understanding", "logic_reasoning", "chart")
    scene, im = imgs.scene(rng)
    kind = rng.choice(["color", "count", "exist"])
    if kind == "color":
        s = rng.choice(scene.shapes)
        opts = [s.color] + rng.sample([c for c in COLORS if c != s.color], rng.choice([1, 2, 3]))
        return McItem(im, f"What color is the {s.shape}?", s.color, opts, "attribute_recognition",
                      "finegrained_perception (instance-level)", "scene")
    if kind == "count":
        n = len(scene.shapes)
        opts = [str(n)] + rng.sample([str(x) for x in range(1, 5) if x != n], rng.choice([1, 2, 3]))
        return McItem(im, "How many shapes are there?", str(n), opts, "object_localization",
                      "finegrained_perception (instance-level)", "scene")
    present = rng.random() < 0.5
    obj = rng.choice(scene.objects()) if present else rng.choice(absent_objects(scene))
    return McItem(im, f"Is there a {obj[0]} {obj[1]} in the image?", "yes" if present else "no", ["yes", "no"],
                  "image_scene", "coarse_perception", "scene")


def _lettered(item: McItem, rng: random.Random) -> tuple[dict[str, str], str]:
    """Shuffle the options into letters A, B, ... (as many as there are options); return them and the right letter."""
    opts = list(item.options)
    rng.shuffle(opts)
    return dict(zip("ABCD", opts)), "ABCD"[opts.index(item.correct)]


def build_mmbench(imgs: _Images, rng: random.Random, bench: Path, n: int) -> int:
    path = bench / "mmbench" / "mmbench_dev.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"]
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, delimiter="\t", lineterminator="\n")
        w.writerow(cols)
        for i in range(n):
            item = _mmbench_item(rng, imgs)
            letters, answer = _lettered(item, rng)
            w.writerow([i, item.question, "", *(letters.get(k, "") for k in "ABCD"), answer, item.category,
                        item.l2_category, "dev", _png_b64(item.image)])
    return n


def build_mmvet(imgs: _Images, rng: random.Random, bench: Path, n: int) -> int:
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
    _write_json(bench / "mmvet" / "mm-vet.json", items)
    return n


def build_llava_bench(imgs: _Images, rng: random.Random, bench: Path, n: int) -> int:
    """LLaVA-Bench (in-the-wild) layout: three questions per picture — conv, detail, complex."""
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
        imgs.save(im, f"benchmarks/llava_bench/images/{name}")
        contexts.append({"id": name.removesuffix(".png"), "image": name, "caption": caption})
        for cat, qa in (("conv", conv), ("detail", detail), ("complex", complex_)):
            if len(questions) >= n:
                break
            qid = len(questions)
            questions.append({"question_id": qid, "image": name, "text": qa.question, "category": cat,
                              "answer_key": qa.answer})
            answers.append({"question_id": qid, "text": qa.reference})
        i += 1
    d = bench / "llava_bench"
    write_jsonl(d / "questions.jsonl", questions)
    write_jsonl(d / "answers_gpt4.jsonl", answers)
    write_jsonl(d / "context.jsonl", contexts)
    return len(questions)


def build_noise_images(imgs: _Images, rng: random.Random, bench: Path) -> int:
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
    """MT-Bench (two turns, reference + answer keys) and AlpacaEval (imperfect reference outputs).

    Returns the counts and the set of first turns that training must not contain."""
    held: set[str] = set()
    mt = []
    tasks = list(TEXT_TASKS)
    while len(mt) < n:
        item = sample_text_item(rng, two_turn=True, task=tasks[len(mt) % len(tasks)])
        if item["turns"][0] in held:
            continue
        held.add(item["turns"][0])
        mt.append({"question_id": 81 + len(mt), "category": MT_BENCH_CATEGORY[item["task"]], "turns": item["turns"],
                   "reference": item["references"], "answer_keys": item["answers"]})
    write_jsonl(bench / "mt_bench" / "question.jsonl", mt)
    alpaca = []
    while len(alpaca) < n:
        item = sample_text_item(rng, two_turn=False, task=tasks[len(alpaca) % len(tasks)])
        if item["turns"][0] in held:
            continue
        held.add(item["turns"][0])
        alpaca.append({"instruction": item["turns"][0], "output": imperfect_output(item, rng),
                       "generator": "text_davinci_003", "dataset": "mini", "answer_key": item["answers"][0],
                       "reference": item["references"][0]})
    _write_json(bench / "alpaca_eval" / "eval.json", alpaca)
    return len(mt), len(alpaca), held


def build_text_train(rng: random.Random, n: int, held_out: set[str]) -> list[dict]:
    rows = []
    while len(rows) < n:
        item = sample_text_item(rng)
        if item["turns"][0] not in held_out:
            rows.append(item)
    return rows


def build_world_data(out_dir: str | Path, seed: int, image_size: int = 48, n_visual_train: int = 3000,
                     n_text_train: int = 3000, n_pool: int = 400, n_bench: int = 60) -> dict:
    """Write the whole miniature world's data into out_dir (layout in the module docstring); return counts.

    ``n_pool`` records per pool source; ``n_bench`` items per benchmark (POPE: at least n_bench questions per split,
    balanced yes/no). The generated sub-folders (images/, pools/, benchmarks/) are replaced; nothing else in out_dir
    is touched.
    """
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    for name, value in (("n_visual_train", n_visual_train), ("n_text_train", n_text_train), ("n_pool", n_pool),
                        ("n_bench", n_bench)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "pools", "benchmarks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    bench = out / "benchmarks"
    imgs = _Images(out, image_size)
    counts: dict = {}

    # Benchmarks first, so the held-out text prompts are known before the training text is drawn.
    counts["mt_bench"], counts["alpaca_eval"], held = build_text_benchmarks(_rng(seed, "text-bench"), bench, n_bench)
    counts.update(build_pope(imgs, _rng(seed, "pope"), bench, n_bench))
    counts["mmbench"] = build_mmbench(imgs, _rng(seed, "mmbench"), bench, n_bench)
    counts["mmvet"] = build_mmvet(imgs, _rng(seed, "mmvet"), bench, n_bench)
    counts["llava_bench"] = build_llava_bench(imgs, _rng(seed, "llava_bench"), bench, n_bench)
    counts["noise_images"] = build_noise_images(imgs, _rng(seed, "noise"), bench)

    sci = build_scigraphqa_pool(imgs, _rng(seed, "pool-scigraphqa"), n_pool)
    _write_json(out / "pools" / "scigraphqa.json", sci)
    lrv = build_lrv_pool(imgs, _rng(seed, "pool-lrv"), n_pool)
    _write_json(out / "pools" / "lrv.json", lrv)
    counts["pool_scigraphqa"], counts["pool_lrv"] = len(sci), len(lrv)
    counts["pool_lrv_negative"] = sum(r["task"] == "negative" for r in lrv)

    visual = build_visual_train(imgs, _rng(seed, "visual-train"), n_visual_train)
    write_jsonl(out / "visual_train.jsonl", visual)
    write_jsonl(out / "image_tags.jsonl", imgs.tags)
    text = build_text_train(_rng(seed, "text-train"), n_text_train, held)
    write_jsonl(out / "text_train.jsonl", text)
    counts["visual_train"], counts["text_train"] = len(visual), len(text)
    counts["visual_train_negative"] = sum(r["negative"] for r in visual)
    for fmt in ("short", "multiple_choice"):
        counts[f"visual_train_{fmt}"] = sum(r["format"] == fmt for r in visual)
    counts["images"] = imgs.written
    counts["seconds"] = round(time.perf_counter() - start, 2)
    counts["ms_per_image"] = round(1000 * imgs.draw_seconds / max(1, imgs.written), 3)
    log.info("world data: %d images (%.2f ms each to draw+save), %d visual and %d text training items in %.1fs",
             imgs.written, counts["ms_per_image"], len(visual), len(text), counts["seconds"])
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Text for the tokenizer
# ----------------------------------------------------------------------------------------------------------------

def vocabulary_corpus(out_dir: str | Path) -> Iterator[str]:
    """Every text the world contains (training files, pools, benchmarks) — what the tiny tokenizer is trained on."""
    out = Path(out_dir)
    yield STEERLM_TEXT
    # Training conversations as the chat template renders them, so the role words become tokens of their own.
    for r in read_jsonl(out / "visual_train.jsonl"):
        yield f"USER: {r['question']} ASSISTANT: {r['reference']}"
    for r in read_jsonl(out / "text_train.jsonl"):
        yield " ".join(f"USER: {t} ASSISTANT: {a}" for t, a in zip(r["turns"], r["references"]))
    for r in json.loads((out / "pools" / "scigraphqa.json").read_text(encoding="utf-8")):
        yield r["caption"]
        yield r["title"]
        yield r["first_mention"]
        for turn in r["conversations"]:
            yield turn["value"]
    for r in json.loads((out / "pools" / "lrv.json").read_text(encoding="utf-8")):
        yield r["question"]
        yield r["answer"]
    bench = out / "benchmarks"
    for split in ("random", "popular", "adversarial"):
        for r in read_jsonl(bench / "pope" / f"coco_pope_{split}.json"):
            yield r["text"]
    with (bench / "mmbench" / "mmbench_dev.tsv").open(encoding="utf-8", newline="") as fh:
        for r in csv.DictReader(fh, delimiter="\t"):
            yield " ".join([r["question"]] + [r[k] for k in "ABCD" if r[k]])
    for r in json.loads((bench / "mmvet" / "mm-vet.json").read_text(encoding="utf-8")).values():
        yield r["question"]
        yield r["answer"]
    for name in ("questions", "answers_gpt4"):
        for r in read_jsonl(bench / "llava_bench" / f"{name}.jsonl"):
            yield r["text"]
    for r in read_jsonl(bench / "llava_bench" / "context.jsonl"):
        yield r["caption"]
    for r in read_jsonl(bench / "mt_bench" / "question.jsonl"):
        yield from r["turns"]
        yield from r["reference"]
    for r in json.loads((bench / "alpaca_eval" / "eval.json").read_text(encoding="utf-8")):
        yield r["instruction"]
        yield r["output"]

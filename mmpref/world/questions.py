"""Visual questions with ground truth: every item carries ``answer`` (the short key: "7", "yes", "blue",
"absent", ...) and ``reference`` (a full sentence in the house style: "The value of bar 2 is 7.")."""

from __future__ import annotations

import random
from dataclasses import dataclass

from PIL import Image

from mmpref.evaluate.pope import POPE_PROMPT_SUFFIX
from mmpref.world.scenes import COLORS, SHAPE_FAMILIES, SHAPES, Chart, Images, Scene, absent_shapes


@dataclass
class QA:
    question: str
    answer: str               # key
    reference: str            # house-style sentence
    qtype: str
    negative: bool = False


def caption(picture: Chart | Scene) -> str:
    """A brief caption naming everything the picture shows (LLaVA's stage-1 image-caption pairs): the objects of a
    scene, or a chart's kind and values."""
    if isinstance(picture, Scene):
        return describe_scene(picture)
    v = [str(x) for x in picture.values]
    return f"This is a {picture.kind} chart with the values {', '.join(v[:-1])} and {v[-1]}."


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


EXIST_Q = ["Is there a {s} in the image?", "Can you see a {s} in the picture?", "Does the image contain a {s}?"]
ATTR_EXIST_Q = ["Is there a {c} {s} in the image?", "Can you see a {c} {s} in the picture?"]
COLOR_Q = ["What color is the {s}?", "What is the color of the {s}?", "Which color does the {s} have?"]
COUNT_Q = ["How many shapes are there?", "How many shapes are in the image?", "Count the shapes in the image."]
DESCRIBE_Q = ["Describe the image.", "What is in the image?"]


def exist_qa(shape: str, present: bool, rng: random.Random) -> QA:
    """Is an object (a shape category) in the picture? POPE's question."""
    q = rng.choice(EXIST_Q).format(s=shape)
    if present:
        return QA(q, "yes", f"Yes, there is a {shape} in the image.", "exist")
    return QA(q, "no", f"No, there is no {shape} in the image.", "exist_absent", negative=True)


def cooccurring_absent(scene: Scene) -> list[str]:
    """Absent shapes of the present shapes' families: the ones a model that guesses from context would claim."""
    present = scene.shape_types()
    kin = {t for f in SHAPE_FAMILIES if present & set(f) for t in f}
    return [s for s in absent_shapes(scene) if s in kin]


def scene_positive_qas(scene: Scene, rng: random.Random) -> list[QA]:
    s = rng.choice(scene.shapes)
    n = len(scene.shapes)
    return [
        exist_qa(s.shape, True, rng),
        QA(rng.choice(COLOR_Q).format(s=s.shape), s.color, f"The {s.shape} is {s.color}.", "color"),
        QA(rng.choice(COUNT_Q), str(n), _shapes_sentence(n), "count"),
        QA(rng.choice(DESCRIBE_Q), " ".join(scene.objects()[0]), describe_scene(scene), "describe"),
    ]


def scene_negative_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """Questions about absent objects: a nonexistent shape (a co-occurring one when there is), a present shape in
    another colour (LRV's existent element manipulation), and the colour of a shape that is not there."""
    missing = absent_shapes(scene)
    out = []
    if missing:
        kin = cooccurring_absent(scene)
        out.append(exist_qa(rng.choice(kin if kin and rng.random() < 0.5 else missing), False, rng))
    s = rng.choice(scene.shapes)
    other = rng.choice([c for c in COLORS if c != s.color])
    out.append(QA(rng.choice(ATTR_EXIST_Q).format(c=other, s=s.shape), "no",
                  f"No, the {s.shape} is {s.color}, not {other}.", "attr_absent", negative=True))
    if missing:
        m = rng.choice(missing)
        out.append(QA(rng.choice(COLOR_Q).format(s=m), "absent", f"There is no {m} in the image.", "color_absent",
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


def short_answer_qas(scene: Scene, rng: random.Random) -> list[QA]:
    """VQAv2/GQA-style short-answer questions for a scene, in random order: a present object (yes), an absent one
    (no; half the time one that co-occurs with the present ones, like POPE's adversarial split), a colour and a
    count. The question carries the evaluation's POPE suffix; the reference is the single word ("Yes", "No", "Red",
    "3")."""
    s = rng.choice(scene.shapes)
    missing, kin = absent_shapes(scene), cooccurring_absent(scene)
    n = len(scene.shapes)
    qas = [
        QA(rng.choice(EXIST_Q).format(s=s.shape), "yes", "Yes", "exist"),
        QA(rng.choice(COLOR_Q).format(s=s.shape), s.color, s.color.capitalize(), "color"),
        QA(rng.choice(COUNT_Q), str(n), str(n), "count"),
    ]
    if missing:
        no = rng.choice(kin if kin and rng.random() < 0.5 else missing)
        qas.append(QA(rng.choice(EXIST_Q).format(s=no), "no", "No", "exist_absent", negative=True))
    rng.shuffle(qas)
    for qa in qas:
        qa.question += POPE_PROMPT_SUFFIX
    return qas


def chart_short_qas(chart: Chart, rng: random.Random) -> list[QA]:
    """DVQA/ChartQA-style short-answer questions for a chart, in random order: the chart's free-form questions
    (all but "describe") with the POPE suffix, answered by the key alone ("7", "Up", "3")."""
    qas = [q for q in chart_qas(chart, rng) if q.qtype != "chart_describe"]
    rng.shuffle(qas)
    for qa in qas:
        qa.question += POPE_PROMPT_SUFFIX
        qa.reference = qa.answer.capitalize()
    return qas


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


def mc_item(rng: random.Random, imgs: Images) -> McItem:
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
    present = rng.random() < 0.5 or not absent_shapes(scene)
    shape = rng.choice(sorted(scene.shape_types())) if present else rng.choice(absent_shapes(scene))
    return McItem(im, f"Is there a {shape} in the image?", "yes" if present else "no", ["yes", "no"],
                  "image_scene", "coarse_perception", "scene")


def lettered_options(item: McItem, rng: random.Random) -> tuple[dict[str, str], str]:
    """Shuffle the options into letters A, B, ... (as many as there are options); return them and the right letter."""
    opts = list(item.options)
    rng.shuffle(opts)
    return dict(zip("ABCD", opts)), "ABCD"[opts.index(item.correct)]

"""LLaVA-1.5's visual instruction mix (llava_v1_5_mix665k) in miniature: one row per conversation.

LLaVA-1.5 (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning", Table 7 and section 3.2) tunes on
665K conversations; about 70 % of them ask for short outputs, each dataset with its own *response format prompt*:

==================  =========================================================  =======  =====================
kind                LLaVA-1.5 datasets                                         share    format prompt
==================  =========================================================  =======  =====================
``vqa``             VQAv2 83K, GQA 72K, OKVQA 9K, OCR-VQA 80K                  0.37     VQA_PROMPT
``multiple_choice`` A-OKVQA 66K (50K in the released mix's letter format)      0.10     MMBENCH_PROMPT_SUFFIX
``region``          RefCOCO 48K, Visual Genome 86K                             0.20     REGION_PROMPT
``caption``         TextCaps 22K                                               0.03     CAPTION_PROMPT
``conversation``    LLaVA-Instruct conversations 58K                           0.09     none: full sentences
``detail``          LLaVA-Instruct detailed descriptions 23K                   0.03     none: several sentences
``reasoning``       LLaVA-Instruct complex reasoning 77K                       0.12     none: explained answers
``text``            ShareGPT 40K (text only)                                   0.06     none
==================  =========================================================  =======  =====================

All question-answer pairs of one image are merged into one multi-turn conversation, as LLaVA-1.5 does, each question
carrying its dataset's format prompt; section 3.2 of that paper warns that such short-answer data can overfit an LLM
*behaviourally* to short answers, which is what the miniature lets one measure. The reasoning rows combine the
picture with the LM's text skills ("What is the value of bar 2 plus 3?" -> "The value of bar 2 is 7. 7 plus 3 is
10."), and the text rows are a multi-turn rehearsal drawn with the training phrasings of the text tasks, never the
benchmarks' (`text_tasks.sample_text_item`).

Row layout (``visual_train.jsonl``)::

    {"image": "images/...png" | None, "turns": [...], "references": [...], "answers": [...], "qtypes": [...],
     "kind": one of MIX_KINDS, "source": "chart" | "scene" | "text", "negative": bool}
"""

from __future__ import annotations

import random

from mmpref.evaluate.mmbench import mmbench_prompt
from mmpref.evaluate.pope import POPE_PROMPT_SUFFIX
from mmpref.world.questions import (QA, caption, chart_qas, chart_short_qas, describe_scene, image_tags,
                                    lettered_options, mc_item, scene_qas, short_answer_qas)
from mmpref.world.scenes import Chart, Images, Scene
from mmpref.world.text_tasks import sample_text_item

# LLaVA-1.5's response format prompts (its Table 7; llava_v1_5_mix665k.json).
VQA_PROMPT = POPE_PROMPT_SUFFIX          # "\nAnswer the question using a single word or phrase."
REGION_PROMPT = "Provide a short description for this region."
CAPTION_PROMPT = "Provide a one-sentence caption for the provided image."
DETAIL_PROMPTS = ["Describe the image in detail.", "Give a detailed description of the image.",
                  "Explain what the image shows in detail."]

# Shares of conversations in llava_v1_5_mix665k (counts in the module docstring; they sum to 1).
LLAVA_15_SHARES = {"vqa": 0.37, "multiple_choice": 0.10, "region": 0.20, "caption": 0.03, "conversation": 0.09,
                   "detail": 0.03, "reasoning": 0.12, "text": 0.06}
MIX_KINDS = tuple(LLAVA_15_SHARES)
SHORT_KINDS = ("vqa", "multiple_choice", "region", "caption")   # the rows whose format prompt asks for short output
ORDINALS = ["first", "second", "third", "fourth", "fifth"]


def _picture(imgs: Images, rng: random.Random, chart_share: float) -> tuple[Chart | Scene, object, str]:
    if rng.random() < chart_share:
        chart, im = imgs.chart(rng)
        return chart, im, "chart"
    scene, im = imgs.scene(rng)
    return scene, im, "scene"


def vqa_turns(picture: Chart | Scene, rng: random.Random, prompt_first_only: bool = False) -> list[QA]:
    """VQAv2/GQA-style questions of one picture merged into one conversation, each with the format prompt: 2 to 4
    of a scene's presence (yes and no, balanced), colour and count questions, or of a chart's values. With
    ``prompt_first_only`` only the first question carries it and the later ones are plain questions answered just as
    briefly, as in the mix's OCR-VQA rows ("Who is the author of this book?\nAnswer the question using a single word
    or phrase." then "What is the title of this book?", "Is this book related to Travel?" -> "Yes")."""
    qas = short_answer_qas(picture, rng) if isinstance(picture, Scene) else chart_short_qas(picture, rng)
    qas = qas[: rng.randint(2, min(4, len(qas)))]
    if prompt_first_only:
        for qa in qas[1:]:
            qa.question = qa.question.removesuffix(VQA_PROMPT)
    return qas


def region_turns(scene: Scene, rng: random.Random) -> list[QA]:
    """RefCOCO/Visual Genome-style region descriptions: each object of a scene, named by its place from the left
    (the miniature's stand-in for a bounding box), described in a short phrase ("A red circle.")."""
    order = list(range(len(scene.shapes)))
    rng.shuffle(order)
    out = []
    for i in order:
        s = scene.shapes[i]
        out.append(QA(f"{REGION_PROMPT} The {ORDINALS[i]} object from the left.", f"{s.color} {s.shape}",
                      f"A {s.color} {s.shape}.", "region"))
    return out


def detail_answer(picture: Chart | Scene) -> str:
    """A detailed description in several sentences (LLaVA-Instruct's detailed-description answers)."""
    if isinstance(picture, Scene):
        n = len(picture.shapes)
        where = " ".join(f"The {s.shape} is {s.color}." for s in picture.shapes)
        count = "There is 1 shape." if n == 1 else f"There are {n} shapes."
        return f"{describe_scene(picture)} {count} {where}"
    v = [str(x) for x in picture.values]
    values = f"{', '.join(v[:-1])} and {v[-1]}"
    if picture.kind == "bar":
        hi, lo = picture.values.index(max(picture.values)) + 1, picture.values.index(min(picture.values)) + 1
        return (f"This is a bar chart with {len(v)} bars. The values of the bars are {values}. The tallest bar is bar "
                f"{hi} and the shortest bar is bar {lo}.")
    trend = "up" if picture.values[-1] > picture.values[0] else "down"
    return (f"This is a line chart with {len(v)} points. The values of the points are {values}. The line goes "
            f"{trend}, from {v[0]} to {v[-1]}.")


def reasoning_qa(picture: Chart | Scene, rng: random.Random) -> QA:
    """A complex-reasoning question: read something off the picture, then use a text skill on it; the answer says
    what it read and how it got the result, as LLaVA-Instruct's reasoning answers explain."""
    k = rng.randint(1, 9)
    if isinstance(picture, Chart):
        v = picture.values
        if picture.kind == "bar" and rng.random() < 0.5:
            hi, lo = max(v), min(v)
            return QA("What is the difference between the tallest and the shortest bar?", str(hi - lo),
                      f"The tallest bar is bar {v.index(hi) + 1} with {hi} and the shortest bar is bar "
                      f"{v.index(lo) + 1} with {lo}. {hi} minus {lo} is {hi - lo}.", "reason_difference")
        i = rng.randrange(len(v))
        what = "bar" if picture.kind == "bar" else "point"
        read = f"The value of bar {i + 1} is {v[i]}." if what == "bar" else f"The value at point {i + 1} is {v[i]}."
        return QA(f"What is the value of {what} {i + 1} plus {k}?", str(v[i] + k),
                  f"{read} {v[i]} plus {k} is {v[i] + k}.", "reason_add")
    s = rng.choice(picture.shapes)
    n = len(picture.shapes)
    kind = rng.choice(["capitals", "count_add", "first_letter"])
    if kind == "capitals":
        return QA(f"What color is the {s.shape}? Write the color in capitals.", s.color.upper(),
                  f"The {s.shape} is {s.color}. The word {s.color} in capitals is {s.color.upper()}.",
                  "reason_capitals")
    if kind == "count_add":
        have = "There is 1 shape." if n == 1 else f"There are {n} shapes."
        return QA(f"How many shapes are there? Add {k} to that number.", str(n + k),
                  f"{have} {n} plus {k} is {n + k}.", "reason_add")
    return QA(f"What is the first letter of the color of the {s.shape}?", s.color[0],
              f"The {s.shape} is {s.color}. The first letter of {s.color} is {s.color[0]}.", "reason_letter")


def conversation_turns(picture: Chart | Scene, rng: random.Random, negative_rate: float) -> list[QA]:
    """LLaVA-Instruct-style conversation: 2 or 3 open questions about the picture, answered in full sentences."""
    k = rng.randint(2, 3)
    if isinstance(picture, Chart):
        return rng.sample(chart_qas(picture, rng), k)
    return scene_qas(picture, rng, k, negative_rate)


def rehearsal_item(rng: random.Random) -> dict:
    """A ShareGPT-style text conversation: 2 or 3 turns of different text tasks in the training phrasings."""
    items = [sample_text_item(rng, two_turn=False, phrasings="train") for _ in range(rng.randint(2, 3))]
    return {"turns": [it["turns"][0] for it in items], "references": [it["references"][0] for it in items],
            "answers": [it["answers"][0] for it in items]}


def build_visual_mix(imgs: Images, rng: random.Random, n: int, shares: dict[str, float] | None = None,
                     negative_rate: float = 0.25, mc_answer: str = "letter", chart_share: float = 0.5,
                     vqa_prompt_first_only: float = 0.0) -> list[dict]:
    """n conversations of LLaVA-1.5's mix in random order, round(n * share) of each kind (the text rows take what
    rounding leaves). ``mc_answer``: a multiple-choice row is answered with its letter ("letter", LLaVA-1.5's
    A-OKVQA rows) or the option's text ("option"). ``chart_share``: the share of charts among the pictures of the
    kinds that take both (region rows take scenes: a chart has no objects). ``vqa_prompt_first_only``: the share of
    VQA conversations whose format prompt ends the first question only (`vqa_turns`)."""
    shares = dict(LLAVA_15_SHARES if shares is None else shares)
    if set(shares) - set(MIX_KINDS):
        raise ValueError(f"unknown mix kinds {sorted(set(shares) - set(MIX_KINDS))}; allowed: {list(MIX_KINDS)}")
    if any(v < 0 for v in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
        raise ValueError(f"the mix's shares must be >= 0 and sum to 1, got {shares}")
    if mc_answer not in ("letter", "option"):
        raise ValueError(f"mc_answer must be 'letter' or 'option', got {mc_answer!r}")
    counts = {k: round(n * shares.get(k, 0.0)) for k in MIX_KINDS if k != "text"}
    counts["text"] = max(0, n - sum(counts.values()))
    rows: list[dict] = []

    def add(kind: str, qas: list[QA], source: str, image: str | None) -> None:
        rows.append({"image": image, "turns": [q.question for q in qas], "references": [q.reference for q in qas],
                     "answers": [q.answer for q in qas], "qtypes": [q.qtype for q in qas], "kind": kind,
                     "source": source, "negative": any(q.negative for q in qas)})

    def save(picture, im, kind: str, i: int) -> str:
        return imgs.save(im, f"images/{kind}_{i:05d}.png", tags=image_tags(picture), caption=caption(picture))

    for i in range(counts["vqa"]):
        picture, im, source = _picture(imgs, rng, chart_share / 2)   # VQAv2/GQA are mostly photographs
        first_only = rng.random() < vqa_prompt_first_only
        add("vqa", vqa_turns(picture, rng, first_only), source, save(picture, im, "vqa", i))
    for i in range(counts["multiple_choice"]):
        item = mc_item(rng, imgs)
        letters, letter = lettered_options(item, rng)
        qa = QA(mmbench_prompt(item.question, None, letters), letter,
                letter if mc_answer == "letter" else item.correct, "multiple_choice")
        add("multiple_choice", [qa], item.source, imgs.save(item.image, f"images/mc_{i:05d}.png"))
    for i in range(counts["region"]):
        scene, im = imgs.scene(rng)
        add("region", region_turns(scene, rng), "scene", save(scene, im, "region", i))
    for i in range(counts["caption"]):
        picture, im, source = _picture(imgs, rng, chart_share)
        add("caption", [QA(CAPTION_PROMPT, "caption", caption(picture), "caption")], source,
            save(picture, im, "caption", i))
    for i in range(counts["conversation"]):
        picture, im, source = _picture(imgs, rng, chart_share)
        add("conversation", conversation_turns(picture, rng, negative_rate), source,
            save(picture, im, "conversation", i))
    for i in range(counts["detail"]):
        picture, im, source = _picture(imgs, rng, chart_share)
        add("detail", [QA(rng.choice(DETAIL_PROMPTS), "detail", detail_answer(picture), "detail")], source,
            save(picture, im, "detail", i))
    for i in range(counts["reasoning"]):
        picture, im, source = _picture(imgs, rng, chart_share)
        add("reasoning", [reasoning_qa(picture, rng)], source, save(picture, im, "reasoning", i))
    for _ in range(counts["text"]):
        item = rehearsal_item(rng)
        rows.append({"image": None, **item, "qtypes": ["text"] * len(item["turns"]), "kind": "text",
                     "source": "text", "negative": False})
    rng.shuffle(rows)
    return rows

"""Training data and prompt pools: visual instruction-tuning rows, text-only rows, and the SciGraphQA and
LRV-Instruction pools in their official formats (plus the miniature's ``answer_key``)."""

from __future__ import annotations

import random

from mmpref.evaluate.mmbench import mmbench_prompt
from mmpref.evaluate.pope import POPE_PROMPT_SUFFIX
from mmpref.world.questions import (QA, _lettered, _mmbench_item, caption, chart_qas, chart_short_qas,
                                    describe_chart, image_tags, scene_qas, short_answer_qas)
from mmpref.world.scenes import Images
from mmpref.world.text_tasks import sample_text_item


def build_visual_train(imgs: Images, rng: random.Random, n: int, per_image: int = 3, negative_rate: float = 0.25,
                       short_rate: float = 0.15, mc_rate: float = 0.10, short_prompted: float = 1.0,
                       mc_answer: str = "letter") -> list[dict]:
    """Visual instruction-tuning data, n rows in random order, in three formats (the "format" field):

    - "open" (the rest): half charts, half scenes, per_image free-form questions per picture;
    - "short" (round(n * short_rate) rows): LLaVA-1.5's VQAv2/GQA-style items with its suffix ("Answer the question
      using a single word or phrase."), answered by a single word: two scenes in three (a yes/no presence question,
      balanced, a colour or a count) and one chart in three (a value, the tallest bar, the trend, ...); per_image
      questions per picture; a share ``1 - short_prompted`` of them come without the suffix, as VQA data did before
      LLaVA-1.5 added it (InstructBLIP-style short answers to plain questions, which teach a model to answer
      tersely where no short answer was asked for);
    - "multiple_choice" (round(n * mc_rate) rows): A-OKVQA-style items built like the MMBench benchmark's, rendered
      with the evaluation's ``mmbench_prompt``; the answer key is the option letter, the reference the letter
      (``mc_answer="letter"``, LLaVA-1.5's A-OKVQA rows) or the option's text (``"option"``). One per picture.
    """
    if mc_answer not in ("letter", "option"):
        raise ValueError(f"mc_answer must be 'letter' or 'option', got {mc_answer!r}")
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
        picture = chart if source == "chart" else scene
        rel = imgs.save(im, f"images/{source}_{i:05d}.png", tags=image_tags(picture), caption=caption(picture))
        rows.extend(row(rel, qa, source, "open") for qa in qas[: n_open - len(rows)])
        i += 1
    i = 0
    while len(rows) < n_open + n_short:
        if i % 3 == 2:
            chart, im = imgs.chart(rng)
            picture, source, qas = chart, "chart", chart_short_qas(chart, rng)[:per_image]
        else:
            scene, im = imgs.scene(rng)
            picture, source, qas = scene, "scene", short_answer_qas(scene, rng)[:per_image]
        rel = imgs.save(im, f"images/short_{i:05d}.png", tags=image_tags(picture), caption=caption(picture))
        for qa in qas:
            if rng.random() >= short_prompted:
                qa.question = qa.question.removesuffix(POPE_PROMPT_SUFFIX)
        rows.extend(row(rel, qa, source, "short") for qa in qas[: n_open + n_short - len(rows)])
        i += 1
    for i in range(n_mc):
        item = _mmbench_item(rng, imgs)
        letters, letter = _lettered(item, rng)
        rel = imgs.save(item.image, f"images/mc_{i:05d}.png")
        qa = QA(mmbench_prompt(item.question, None, letters), letter,
                letter if mc_answer == "letter" else item.correct, "multiple_choice")
        rows.append(row(rel, qa, item.source, "multiple_choice"))
    rng.shuffle(rows)
    return rows


def build_scigraphqa_pool(imgs: Images, rng: random.Random, n: int) -> list[dict]:
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


def build_lrv_pool(imgs: Images, rng: random.Random, n: int, negative_rate: float = 0.5) -> list[dict]:
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


def build_text_train(rng: random.Random, n: int, held_out: set[str]) -> list[dict]:
    """The base LM's instruction data: n text items, none of them with a text benchmark's first turn."""
    rows = []
    while len(rows) < n:
        item = sample_text_item(rng)
        if item["turns"][0] not in held_out:
            rows.append(item)
    return rows

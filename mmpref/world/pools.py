"""The base LM's text data and the prompt pools: SciGraphQA and LRV-Instruction in their official formats (plus the
miniature's ``answer_key``). The visual instruction mix is `mmpref.world.mix`."""

from __future__ import annotations

import random

from mmpref.world.questions import chart_qas, describe_chart, scene_qas
from mmpref.world.scenes import Images
from mmpref.world.text_tasks import sample_text_item


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


def build_text_train(rng: random.Random, n: int, held_out: set[str], phrasings: str = "train") -> list[dict]:
    """The base LM's instruction data (its "ShareGPT"): n text items in the ``phrasings`` set (`text_tasks._phrase`),
    none of them with a text benchmark's first turn."""
    rows = []
    while len(rows) < n:
        item = sample_text_item(rng, phrasings=phrasings)
        if item["turns"][0] not in held_out:
            rows.append(item)
    return rows

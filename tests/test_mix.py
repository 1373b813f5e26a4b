"""World v3: LLaVA-1.5's visual instruction mix, the held-out benchmark phrasings, knowledge before format."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest

from mmpref.config import ParamsError, VisualMix, load_params
from mmpref.evaluate.mmbench import MMBENCH_PROMPT_SUFFIX
from mmpref.evaluate.pope import POPE_PROMPT_SUFFIX
from mmpref.io import read_jsonl
from mmpref.world import build, mix, questions, scenes, text_tasks


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("mix")
    return out, mix.build_visual_mix(scenes.Images(out, 48, 12), random.Random(3), 1000, mc_answer="option")


def test_kinds_come_in_llava_15_shares_and_are_mixed_in(rows):
    _, data = rows
    counts = Counter(r["kind"] for r in data)
    assert counts == {k: round(1000 * v) for k, v in mix.LLAVA_15_SHARES.items()}
    assert sum(counts[k] for k in mix.SHORT_KINDS) == 700          # about 70 % short output, as in LLaVA-1.5
    assert len({r["kind"] for r in data[:50]}) >= 5                 # mixed, not appended kind by kind
    assert set(VisualMix.model_fields) == set(mix.MIX_KINDS)        # the params name exactly the mix's kinds


def test_every_short_kind_carries_its_format_prompt_and_answers_short(rows):
    _, data = rows
    for r in data:
        for q, ref in zip(r["turns"], r["references"]):
            if r["kind"] == "vqa":
                assert q.endswith(POPE_PROMPT_SUFFIX) and len(ref.split()) == 1
            elif r["kind"] == "multiple_choice":
                assert q.endswith(MMBENCH_PROMPT_SUFFIX)
            elif r["kind"] == "region":
                assert q.startswith(mix.REGION_PROMPT) and re.fullmatch(r"A \w+ \w+\.", ref)
            elif r["kind"] == "caption":
                assert q == mix.CAPTION_PROMPT
            else:                          # LLaVA-Instruct and text: none of the visual format prompts
                assert POPE_PROMPT_SUFFIX not in q and mix.REGION_PROMPT not in q
                short = r["kind"] == "text" and q.startswith(text_tasks.FORMAT_INSTRUCTIONS)
                assert (len(ref.split()) == 1) if short else (len(ref.split()) >= 2)


def test_questions_about_one_picture_are_merged_into_one_conversation(rows):
    out, data = rows
    images = [r["image"] for r in data if r["image"]]
    assert len(images) == len(set(images))                          # one conversation per picture
    turns = Counter(len(r["turns"]) for r in data if r["kind"] == "vqa")
    assert set(turns) <= {2, 3, 4} and len(turns) >= 2
    assert max(len(r["turns"]) for r in data if r["kind"] == "conversation") == 3
    assert all(len(r["turns"]) >= 2 for r in data if r["kind"] == "text")


def test_answers_are_true_to_the_picture(rows, monkeypatch):
    """Region rows name the object at that place from the left; reasoning rows compute from what the picture shows."""
    rng = random.Random(5)
    for _ in range(300):
        scene = scenes.sample_scene(rng, 48, cell=12)
        for qa in mix.region_turns(scene, rng):
            k = mix.ORDINALS.index(re.search(r"The (\w+) object from the left", qa.question)[1])
            assert qa.answer == f"{scene.shapes[k].color} {scene.shapes[k].shape}"
        qa = mix.reasoning_qa(scene, rng)
        if qa.qtype == "reason_add":
            k = int(re.search(r"Add (\d)", qa.question)[1])
            assert qa.answer == str(len(scene.shapes) + k) and qa.reference.endswith(f"is {qa.answer}.")
        else:
            shape = re.search(r"the (\w+)\?", qa.question)[1]
            color = next(s.color for s in scene.shapes if s.shape == shape)
            assert qa.answer == (color.upper() if qa.qtype == "reason_capitals" else color[0])
        chart = scenes.sample_chart(rng)
        qa = mix.reasoning_qa(chart, rng)
        v = chart.values
        if qa.qtype == "reason_difference":
            assert qa.answer == str(max(v) - min(v))
        else:
            i, k = map(int, re.search(r"(\d) plus (\d)", qa.question).groups())
            assert qa.answer == str(v[i - 1] + k)
        assert len(qa.reference.split(". ")) >= 2                   # it says what it read, then how it got there
        detail = mix.detail_answer(chart)
        assert all(str(x) in detail for x in v)


def test_short_answer_questions_are_balanced_and_true():
    rng = random.Random(7)
    presence = Counter()
    for _ in range(300):
        scene = scenes.sample_scene(rng, 48)
        for qa in questions.short_answer_qas(scene, rng):
            q = qa.question.removesuffix(POPE_PROMPT_SUFFIX)
            assert qa.question.endswith(POPE_PROMPT_SUFFIX) and len(qa.reference.split()) == 1
            assert qa.reference.lower() == qa.answer
            m = re.fullmatch(r"(?:Is there a|Can you see a|Does the image contain a) (\w+)(?: in the (?:image|picture))?\?", q)
            if m:
                assert qa.answer == ("yes" if m[1] in scene.shape_types() else "no")
                assert qa.negative == (qa.answer == "no")
                presence[qa.answer] += 1
            elif qa.qtype == "color":
                assert scene.has(qa.answer, next(s for s in scenes.SHAPES if s in q))
            else:
                assert qa.qtype == "count" and qa.answer == str(len(scene.shapes))
    assert presence["yes"] == presence["no"] == 300


def test_bad_shares_are_rejected(tmp_path):
    imgs = scenes.Images(tmp_path, 48)
    with pytest.raises(ValueError, match="sum to 1"):
        mix.build_visual_mix(imgs, random.Random(0), 10, {**mix.LLAVA_15_SHARES, "vqa": 0.5})
    with pytest.raises(ValueError, match="unknown mix kinds \\['ocr'\\]"):
        mix.build_visual_mix(imgs, random.Random(0), 10, {"ocr": 1.0})
    with pytest.raises(ParamsError, match="sum to 1"):
        load_params("params/tiny.yaml", {"world": {"mix": {"vqa": 0.5}}})
    with pytest.raises(ParamsError, match="ocr"):
        load_params("params/tiny.yaml", {"world": {"mix": {"ocr": 0.1}}})


def _template(turn: str) -> str:
    """A first turn with its content words replaced, leaving the phrasing."""
    words = set(text_tasks.LIST_WORDS) | set(text_tasks.CAPITALS) | set(text_tasks.SOUNDS) | set(text_tasks.OPPOSITES)
    return re.sub(r"\d+", "N", " ".join("W" if w.strip(",.?:").lower() in {x.lower() for x in words} else w
                                        for w in turn.split()))


def test_no_benchmark_phrasing_occurs_in_any_training_text(tmp_path):
    """MT-Bench and AlpacaEval ask in phrasings of their own: no first-turn template of theirs is a template of the
    base LM's data or of the mix's text rehearsal (the format instructions aside, which both share)."""
    build.build_world_data(tmp_path, seed=2, n_visual_train=400, n_text_train=1500, n_pool=5, n_bench=6,
                           n_text_bench=120)
    bench = {q["turns"][0] for q in read_jsonl(tmp_path / "benchmarks" / "mt_bench" / "question.jsonl")}
    bench |= {a["instruction"] for a in json.loads((tmp_path / "benchmarks" / "alpaca_eval" / "eval.json").read_text())}
    train = [r["turns"][0] for r in read_jsonl(tmp_path / "text_train.jsonl")]
    train += [t for r in read_jsonl(tmp_path / "visual_train.jsonl") if r["kind"] == "text" for t in r["turns"]]
    plain = lambda ts: {_template(t) for t in ts if not t.startswith(text_tasks.FORMAT_INSTRUCTIONS)}  # noqa: E731
    assert plain(bench) and plain(train) and not plain(bench) & plain(train)
    # the same facts are asked in both
    assert {k for q in read_jsonl(tmp_path / "benchmarks" / "mt_bench" / "question.jsonl")
            if q["category"] == "humanities" for k in q["answer_keys"][:1]} & \
        {r["answers"][0] for r in read_jsonl(tmp_path / "text_train.jsonl") if r["task"] == "facts"}
    with pytest.raises(ValueError, match="phrasings must be one of"):
        text_tasks.sample_text_item(random.Random(0), phrasings="test")


def test_knowledge_statements_are_true_and_cover_every_fact():
    statements = text_tasks.knowledge_statements()
    assert len(statements) == len(set(statements))
    for country, city in text_tasks.CAPITALS.items():
        assert f"The capital of {country} is {city}." in statements
    for s in statements:
        m = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", s)
        if m:
            a, op, b, r = int(m[1]), m[2], int(m[3]), int(m[4])
            assert r == {"plus": a + b, "minus": a - b, "times": a * b}[op]
    rng = random.Random(1)        # every arithmetic first-turn answer of the tasks is stated
    for _ in range(300):
        item = text_tasks.task_arithmetic(rng, two_turn=False)
        assert item["references"][0] in statements or item["references"][0] == f"{item['answers'][0]}."


def test_the_base_lm_reads_the_facts_before_its_instruction_tuning(tmp_path, monkeypatch):
    """With world.knowledge_epochs the base LM first trains on the plain statements (no chat template), then on the
    instruction data; without, it skips the pass."""
    from mmpref.world import models

    calls = []

    def fake_train(model, examples, pad_id, epochs, lr, batch_size, seed, desc, stop_below=None):
        calls.append((desc, examples))
        raise StopIteration   # stop after the base LM's steps: the order is what is tested

    monkeypatch.setattr(models, "train_from_scratch", fake_train)
    params = load_params("params/tiny.yaml", {"world": {"knowledge_epochs": 2}})
    text = [{"turns": ["What is 2 plus 2?"], "references": ["2 plus 2 is 4."]}]
    corpus = text_tasks.knowledge_statements() + ["USER: What is 2 plus 2? ASSISTANT: 2 plus 2 is 4."]
    with pytest.raises(StopIteration):
        models.train_world_models(tmp_path, corpus, [], text, [], params.world, 0)
    desc, examples = calls[0]
    assert desc == "base LM on facts" and len(examples) == len(text_tasks.knowledge_statements())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert all(ex["labels"] == ex["input_ids"] for ex in examples)  # plain text: the loss on every token
    assert tok.decode(examples[0]["input_ids"], skip_special_tokens=True) == text_tasks.knowledge_statements()[0]
    calls.clear()
    params = load_params("params/tiny.yaml", {"world": {"knowledge_epochs": 0}})
    with pytest.raises(StopIteration):
        models.train_world_models(tmp_path, corpus, [], text, [], params.world, 0)
    assert calls[0][0] == "base LM on text tasks"


def test_ocr_vqa_style_conversations_carry_the_prompt_on_the_first_question_only(tmp_path):
    data = mix.build_visual_mix(scenes.Images(tmp_path, 48, 12), random.Random(4), 600, vqa_prompt_first_only=0.33)
    vqa = [r for r in data if r["kind"] == "vqa"]
    first_only = [r for r in vqa if not any(t.endswith(POPE_PROMPT_SUFFIX) for t in r["turns"][1:])]
    assert 0.2 < len(first_only) / len(vqa) < 0.45
    for r in vqa:
        assert r["turns"][0].endswith(POPE_PROMPT_SUFFIX)
        assert all(len(ref.split()) == 1 for ref in r["references"])     # answered as briefly either way
        assert r in first_only or all(t.endswith(POPE_PROMPT_SUFFIX) for t in r["turns"])


def test_pope_pictures_have_the_asked_number_of_shapes(tmp_path):
    from mmpref.evaluate.pope import build_pope

    build_pope(scenes.Images(tmp_path, 48, 12), random.Random(0), tmp_path / "b", 30, [3])
    rows = read_jsonl(tmp_path / "b" / "pope" / "coco_pope_random.json")
    per_image = Counter(r["image"] for r in rows)
    assert set(per_image.values()) == {6}                        # 3 present, 3 absent shapes asked per picture
    with pytest.raises(ParamsError, match="pope_shapes must be between 1 and 6"):
        load_params("params/tiny.yaml", {"world": {"pope_shapes": [7]}})

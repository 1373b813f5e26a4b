"""The miniature world's data: deterministic, truthful, held out, and in the official benchmark formats."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpref.world import build, mix, pools, questions, scenes, text_tasks
from mmpref.evaluate.mmbench import MMBENCH_PROMPT_SUFFIX
from mmpref.evaluate.pope import POPE_PROMPT_SUFFIX
from mmpref.io import read_jsonl

SMALL = dict(image_size=48, n_visual_train=60, n_text_train=80, n_pool=20, n_bench=12)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    counts = build.build_world_data(out, seed=3, **SMALL)
    return out, counts


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _pixels(path: Path) -> str:
    with Image.open(path) as im:
        return hashlib.sha256(im.convert("RGB").tobytes()).hexdigest()


def test_deterministic_for_a_seed_and_different_across_seeds(built, tmp_path):
    out, counts = built
    again = build.build_world_data(tmp_path / "a", seed=3, **SMALL)
    assert {k: v for k, v in again.items() if k not in ("seconds", "ms_per_image")} == \
        {k: v for k, v in counts.items() if k not in ("seconds", "ms_per_image")}
    assert _files(out) == _files(tmp_path / "a")
    build.build_world_data(tmp_path / "b", seed=4, **SMALL)
    assert (out / "visual_train.jsonl").read_bytes() != (tmp_path / "b" / "visual_train.jsonl").read_bytes()


def test_counts_and_images_decode(built):
    out, counts = built
    assert counts["visual_train"] == 60 and counts["text_train"] == 80
    assert counts["pool_scigraphqa"] == counts["pool_lrv"] == 20
    pngs = list(out.rglob("*.png"))
    assert len(pngs) == counts["images"]
    for p in pngs:
        with Image.open(p) as im:
            im.load()
            assert im.size == (48, 48) and im.mode == "RGB"


def test_visual_train_has_truth_and_negatives(built):
    out, _ = built
    rows = read_jsonl(out / "visual_train.jsonl")
    assert {r["source"] for r in rows} == {"chart", "scene", "text"}
    for r in rows:
        assert len(r["turns"]) == len(r["references"]) == len(r["answers"]) == len(r["qtypes"]) >= 1
        assert all(r["turns"]) and all(r["references"]) and all(r["answers"])
        assert (r["image"] is None) == (r["kind"] == "text")
        if r["image"]:
            assert (out / r["image"]).is_file()
        if r["negative"]:
            assert r["source"] == "scene" and {"no", "absent"} & set(r["answers"])
    assert 0 < sum(r["negative"] for r in rows) < len(rows)


def test_text_train_rows(built):
    out, _ = built
    rows = read_jsonl(out / "text_train.jsonl")
    assert {r["task"] for r in rows} == set(text_tasks.TEXT_TASKS)
    assert any(len(r["turns"]) == 2 for r in rows) and any(len(r["turns"]) == 1 for r in rows)
    for r in rows:
        assert len(r["turns"]) == len(r["references"]) == len(r["answers"])


def test_the_base_lm_reads_the_pictures_words():
    """The base LM's text data names every shape and colour the pictures show (a real LLM knows those words before
    visual instruction tuning), in list questions whose answer depends on finding the word among the items."""
    rows = pools.build_text_train(random.Random(0), 2000, set())
    words = Counter(t for r in rows if r["task"] == "list" for turn in r["turns"] for t in re.findall(r"[a-z]+", turn))
    assert all(words[w] for w in scenes.SHAPES + list(scenes.COLORS)), words
    member = [r for r in rows if r["task"] == "list" and r["answers"][0] in ("yes", "no")
              and any(w in r["turns"][0] for w in scenes.SHAPES)]
    assert {r["answers"][0] for r in member} == {"yes", "no"}


def test_arithmetic_and_follow_ups_are_true():
    rng = random.Random(0)
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    for _ in range(300):
        item = text_tasks.task_arithmetic(rng, two_turn=True)
        for ref, key in zip(item["references"], item["answers"]):
            m = re.fullmatch(r"(\d+) (plus|minus|times) (\d+) is (\d+)\.", ref)
            if m:
                assert ops[m[2]](int(m[1]), int(m[3])) == int(m[4]) == int(key)
            else:
                assert ref == f"{key}."
        # turn 2 builds on turn 1's answer
        assert item["references"][1].startswith(item["answers"][0] + " ")


def test_word_list_and_fact_tasks_are_true():
    rng = random.Random(1)
    for _ in range(200):
        w = text_tasks.task_word(rng, two_turn=True)
        assert all(k in ref for k, ref in zip(w["answers"], w["references"]))
        m = re.fullmatch(r"The word (\w+) reversed is (\w+)\.", w["references"][0])
        if m:
            assert m[1][::-1] == m[2]
        lst = text_tasks.task_list(rng, two_turn=False)
        nums = [int(x) for x in re.findall(r"\d+", lst["turns"][0])]
        if "order" in lst["turns"][0].lower() or "Sort" in lst["turns"][0]:
            assert lst["answers"][0] == ", ".join(str(x) for x in sorted(nums))
        elif "largest" in lst["turns"][0]:
            assert lst["answers"][0] == str(max(nums))
        elif "smallest" in lst["turns"][0]:
            assert lst["answers"][0] == str(min(nums))
        f = text_tasks.task_facts(rng, two_turn=False)
        assert f["answers"][0] in (set(text_tasks.CAPITALS.values()) | set(text_tasks.SOUNDS.values())
                                   | set(text_tasks.OPPOSITES.values()))


def test_bar_heights_follow_values():
    chart = scenes.Chart("bar", [1, 5, 9], (40, 90, 200))
    arr = np.asarray(scenes.draw_chart(chart, 48))
    colored = np.all(arr == np.array(chart.color, dtype=np.uint8), axis=-1)
    heights = []
    for i in range(3):
        slot = (48 - 2 - 5) / 3
        col = round(5 + 1 + i * slot + 0.5 * slot)
        heights.append(int(colored[:, col].sum()))
    assert heights[0] < heights[1] < heights[2] and heights[0] > 0


def test_scene_truth_and_negative_questions_are_absent():
    rng = random.Random(2)
    for _ in range(200):
        scene = scenes.sample_scene(rng, 48)
        types = [s.shape for s in scene.shapes]
        assert len(types) == len(set(types)) and 1 <= len(types) <= 3
        for a in scene.shapes:
            for b in scene.shapes:
                if a is not b:
                    assert abs(a.cx - b.cx) > 2 * a.r or abs(a.cy - b.cy) > 2 * a.r
        for qa in questions.scene_negative_qas(scene, rng):
            assert qa.negative
            shape = next(s for s in scenes.SHAPES if s in qa.question)
            m = re.search(r"(red|green|blue|yellow) " + shape, qa.question)
            if qa.qtype == "attr_absent":   # a present shape in another colour
                assert m and shape in scene.shape_types() and not scene.has(m[1], shape) and qa.answer == "no"
            elif qa.qtype == "exist_absent":
                assert shape not in scene.shape_types() and qa.answer == "no"
            else:
                assert qa.answer == "absent" and shape not in scene.shape_types()
        for qa in questions.scene_positive_qas(scene, rng):
            if qa.qtype == "color":
                shape = next(s for s in scenes.SHAPES if s in qa.question)
                assert scene.has(qa.answer, shape)
            if qa.qtype == "count":
                assert qa.answer == str(len(scene.shapes))


def test_pools_are_in_official_formats(built):
    out, counts = built
    sci = json.loads((out / "pools" / "scigraphqa.json").read_text())
    for r in sci:
        assert {"image_file", "id", "caption", "conversations", "q_a_pairs", "title", "abstract"} <= set(r)
        assert r["conversations"][0]["from"] == "human" and r["conversations"][1]["from"] == "gpt"
        assert (out / "pools" / r["image_file"]).is_file()
    lrv = json.loads((out / "pools" / "lrv.json").read_text())
    for r in lrv:
        assert {"image_id", "question", "answer", "task"} <= set(r)
        assert (out / "pools" / r["image_id"]).is_file()
        assert (r["task"] == "negative") == (r["answer_key"] in ("no", "absent"))
    assert 0 < counts["pool_lrv_negative"] < len(lrv)


def test_pope_splits(built):
    out, _ = built
    pope = out / "benchmarks" / "pope"
    splits = {s: read_jsonl(pope / f"coco_pope_{s}.json") for s in ("random", "popular", "adversarial")}
    for rows in splits.values():
        labels = Counter(r["label"] for r in rows)
        assert labels["yes"] == labels["no"] >= 6
        assert [r["question_id"] for r in rows] == list(range(1, len(rows) + 1))
        for r in rows:
            assert (pope / "images" / r["image"]).is_file()
            assert re.fullmatch(r"Is there a (\w+) in the image\?", r["text"])[1] in scenes.SHAPES
    yes = [[(r["image"], r["text"]) for r in rows if r["label"] == "yes"] for rows in splits.values()]
    assert yes[0] == yes[1] == yes[2]
    obj = lambda t: t.split()[3]  # noqa: E731
    present: dict[str, list] = {}
    for r in splits["random"]:
        if r["label"] == "yes":
            present.setdefault(r["image"], []).append(obj(r["text"]))
    # no negative is present; adversarial negatives co-occur with the present objects more than random ones
    cooc = Counter(frozenset((a, b)) for objs in present.values() for a in objs for b in objs if a != b)
    together = lambda split: np.mean([sum(cooc[frozenset((obj(r["text"]), p))] for p in present[r["image"]])  # noqa: E731
                                      for r in splits[split] if r["label"] == "no"])
    for rows in splits.values():
        assert all(obj(r["text"]) not in present[r["image"]] for r in rows if r["label"] == "no")
    assert together("adversarial") > together("random")
    # popular negatives are the most frequent objects of the benchmark
    freq = Counter(o for objs in present.values() for o in objs)
    mean = lambda split: np.mean([freq[obj(r["text"])] for r in splits[split] if r["label"] == "no"])  # noqa: E731
    assert mean("popular") >= mean("random")


def test_mmbench_tsv(built):
    out, counts = built
    with (out / "benchmarks" / "mmbench" / "mmbench_dev.tsv").open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == counts["mmbench"]
    assert list(rows[0]) == ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                             "split", "image"]
    for r in rows:
        options = [r[k] for k in "ABCD" if r[k]]
        assert 2 <= len(options) <= 4 and [r[k] for k in "ABCD"][: len(options)] == options
        assert r["answer"] in "ABCD"[: len(options)]
        with Image.open(io.BytesIO(base64.b64decode(r["image"]))) as im:
            assert im.format == "PNG" and im.size == (48, 48)


def test_mmvet_and_llava_bench(built):
    out, _ = built
    mmvet = json.loads((out / "benchmarks" / "mmvet" / "mm-vet.json").read_text())
    for key, item in mmvet.items():
        assert re.fullmatch(r"v1_\d+", key) and item["imagename"] == f"{key}.png"
        assert set(item["capability"]) <= {"rec", "ocr", "know", "gen", "spat", "math"}
        assert item["question"] and item["answer"] and item["answer_key"]
        assert (out / "benchmarks" / "mmvet" / "images" / item["imagename"]).is_file()
    lb = out / "benchmarks" / "llava_bench"
    qs, ans, ctx = (read_jsonl(lb / f"{n}.jsonl") for n in ("questions", "answers_gpt4", "context"))
    assert [q["question_id"] for q in qs] == [a["question_id"] for a in ans]
    assert {q["category"] for q in qs} == {"conv", "detail", "complex"}
    assert {q["image"] for q in qs} <= {c["image"] for c in ctx}
    assert all((lb / "images" / c["image"]).is_file() and c["caption"] for c in ctx)


def test_text_benchmarks(built):
    out, _ = built
    mt = read_jsonl(out / "benchmarks" / "mt_bench" / "question.jsonl")
    for q in mt:
        assert len(q["turns"]) == len(q["reference"]) == len(q["answer_keys"]) == 2
        assert q["category"] in {"math", "reasoning", "extraction", "humanities"}
    alpaca = json.loads((out / "benchmarks" / "alpaca_eval" / "eval.json").read_text())
    assert all(a["generator"] == "text_davinci_003" and a["instruction"] and a["output"] for a in alpaca)
    noise = {p.name for p in (out / "benchmarks" / "noise_images").iterdir()}
    assert "blank.png" in noise and any(n.startswith("noise_") for n in noise)


def test_reference_outputs_are_imperfect():
    rng = random.Random(0)
    right = 0
    for _ in range(1000):
        item = text_tasks.sample_text_item(rng, two_turn=False)
        out = text_tasks.imperfect_output(item, rng)
        right += out == item["references"][0]
        assert out
    assert 0.52 < right / 1000 < 0.68
    for task in text_tasks.TEXT_TASKS:     # a "wrong" answer never equals the reference
        for _ in range(100):
            item = text_tasks.sample_text_item(rng, two_turn=False, task=task)
            assert text_tasks._wrong_reference(item, rng) != item["references"][0]


def test_held_out_images_and_text(built):
    out, _ = built
    train = {_pixels(p) for p in (out / "images").glob("*.png")}
    others = [p for d in ("pools", "benchmarks") for p in (out / d).rglob("*.png")]
    assert others and not train & {_pixels(p) for p in others}
    trained_first_turns = {r["turns"][0] for r in read_jsonl(out / "text_train.jsonl")}
    bench_turns = {q["turns"][0] for q in read_jsonl(out / "benchmarks" / "mt_bench" / "question.jsonl")}
    bench_turns |= {a["instruction"] for a in json.loads((out / "benchmarks" / "alpaca_eval" / "eval.json").read_text())}
    assert not trained_first_turns & bench_turns


def test_vocabulary_corpus_covers_all_texts(built):
    out, _ = built
    texts = list(build.vocabulary_corpus(out))
    assert all(isinstance(t, str) for t in texts)
    joined = "\n".join(texts)
    for probe in ("Is there a", "The value of bar", "Helpfulness:4", "capital", "plus", POPE_PROMPT_SUFFIX,
                  MMBENCH_PROMPT_SUFFIX, "\nA. "):
        assert probe in joined


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        build.build_world_data(tmp_path, seed=0, image_size=8)
    with pytest.raises(ValueError, match="n_pool"):
        build.build_world_data(tmp_path, seed=0, n_pool=0)
    with pytest.raises(ValueError, match="mc_answer must be 'letter' or 'option', got 'text'"):
        mix.build_visual_mix(scenes.Images(tmp_path, 48), random.Random(0), 10, mc_answer="text")


def _mc_options(question: str) -> tuple[str, dict[str, str]]:
    """Split an MMBench-style prompt into its question and lettered options; asserts the evaluation's layout."""
    assert question.endswith(MMBENCH_PROMPT_SUFFIX)
    lines = question.removesuffix(MMBENCH_PROMPT_SUFFIX).split("\n")
    options = dict(re.fullmatch(r"([A-D])\. (.+)", line).groups() for line in lines[1:])
    assert list(options) == list("ABCD"[: len(options)]) and 2 <= len(options) <= 4
    return lines[0], options


@pytest.mark.parametrize("mc_answer", ["letter", "option"])
def test_multiple_choice_items_name_the_correct_option(tmp_path, monkeypatch, mc_answer):
    from mmpref.evaluate.mmbench import mmbench_match
    truth: dict[str, questions.McItem] = {}
    make = questions.mc_item

    def recording(rng, imgs):
        item = make(rng, imgs)
        truth[hashlib.sha256(item.image.tobytes()).hexdigest()] = item
        return item

    monkeypatch.setattr(mix, "mc_item", recording)
    rows = mix.build_visual_mix(scenes.Images(tmp_path, 48), random.Random(11), 300, mc_answer=mc_answer)
    mc = [r for r in rows if r["kind"] == "multiple_choice"]
    assert len(mc) == 30 == len(truth)
    letters = Counter()
    for r in mc:
        assert len(r["turns"]) == 1
        r = {"question": r["turns"][0], "answer": r["answers"][0], "reference": r["references"][0],
             "image": r["image"], "source": r["source"], "negative": r["negative"]}
        question, options = _mc_options(r["question"])
        item = truth[_pixels(tmp_path / r["image"])]
        assert question == item.question and sorted(options.values()) == sorted(item.options)
        assert r["answer"] == r["answer"].strip() and r["answer"] in options      # the key is always the letter
        assert options[r["answer"]] == item.correct
        # the trained answer: the letter, or the right option's text; MMBench's matcher reads either as the letter
        assert r["reference"] == (r["answer"] if mc_answer == "letter" else item.correct)
        assert mmbench_match(r["reference"], options) == r["answer"]
        assert r["source"] == item.source and not r["negative"]
        letters[r["answer"]] += 1
    assert len(letters) >= 2                                       # the right answer is not always "A"


def test_training_and_benchmark_multiple_choice_prompts_share_one_layout(built, tmp_path):
    out, _ = built
    from mmpref.evaluate.mmbench import mmbench_prompt
    from mmpref.evaluate.mmbench import load_mmbench
    bench = load_mmbench(out / "benchmarks" / "mmbench" / "mmbench_dev.tsv", image_dir=tmp_path)
    for it in bench:      # what the evaluation asks, parsed by the same rule as the training prompts
        question, options = _mc_options(mmbench_prompt(it.question, it.hint, dict(zip("ABCD", it.options))))
        assert question == it.question and list(options.values()) == it.options
    templates = lambda q: re.sub(r"\b(\d|red|green|blue|yellow|circle|square|triangle)\b", "_", q)  # noqa: E731
    bench_templates = {templates(it.question) for it in bench}
    train = [r["turns"][0] for r in read_jsonl(out / "visual_train.jsonl") if r["kind"] == "multiple_choice"]
    for prompt in train:
        question, options = _mc_options(prompt)
        assert prompt == mmbench_prompt(question, None, options)
    assert {templates(_mc_options(prompt)[0]) for prompt in train} & bench_templates


def test_image_tags_describe_the_pictures():
    scene = scenes.Scene([scenes.Shape("red", "circle", 10, 10, 5), scenes.Shape("blue", "square", 30, 30, 5)])
    tags = questions.image_tags(scene)
    assert {"scene", "2 shapes", "red circle", "blue square", "circle", "square", "red", "blue"} == set(tags)
    chart = scenes.Chart("bar", [3, 7, 1], (0, 0, 0))
    assert set(questions.image_tags(chart)) == {"chart", "bar", "3 values", "down", "highest 2", "lowest 3",
                                           "value 1 is 3", "value 2 is 7", "value 3 is 1"}


def test_tags_cover_the_training_pictures_only(built):
    out, _ = built
    tagged = {r["image"]: r["tags"] for r in read_jsonl(out / "image_tags.jsonl")}
    visual = read_jsonl(out / "visual_train.jsonl")
    assert {r["image"] for r in visual if r["kind"] not in ("multiple_choice", "text")} == set(tagged)
    assert all(rel.startswith("images/") for rel in tagged)
    for r in visual:
        for qtype, answer in zip(r["qtypes"], r["answers"]):
            if qtype == "color" and r["image"] in tagged:
                assert any(t.startswith(answer + " ") for t in tagged[r["image"]])


def test_objects_on_patch_cells():
    rng = random.Random(4)
    for _ in range(300):
        scene = scenes.sample_scene(rng, 48, cell=12)
        cells = []
        for s in scene.shapes:
            col, row = (s.cx - s.r) // 12, (s.cy - s.r) // 12
            assert (s.cx + s.r) // 12 == col and (s.cy + s.r) // 12 == row   # the whole shape in one cell
            cells.append((row, col))
        assert len(cells) == len(set(cells)) and len({s.shape for s in scene.shapes}) == len(scene.shapes)
    with pytest.raises(ValueError, match="cells"):
        scenes.sample_scene(rng, 24, n_shapes=3, cell=24)


def test_shape_families_make_cooccurrence():
    rng = random.Random(6)
    same = total = 0
    fam = {t: i for i, f in enumerate(scenes.SHAPE_FAMILIES) for t in f}
    for _ in range(2000):
        types = [s.shape for s in scenes.sample_scene(rng, 48, n_shapes=2, cell=12).shapes]
        same += fam[types[0]] == fam[types[1]]
        total += 1
    assert same / total > 0.5   # about 0.6 + chance; at random two shapes share a family about a quarter of the time


def test_dev_split_has_its_own_pictures(built):
    out, counts = built
    dev, test = out / "benchmarks" / "llava_bench_dev", out / "benchmarks" / "llava_bench"
    assert counts["llava_bench_dev"] == counts["llava_bench"]
    assert len(read_jsonl(dev / "questions.jsonl")) == len(read_jsonl(test / "questions.jsonl"))
    dev_px = {_pixels(p) for p in (dev / "images").iterdir()}
    assert dev_px and not dev_px & {_pixels(p) for p in (test / "images").iterdir()}


def test_text_benchmarks_hold_out_prompts_not_facts(tmp_path):
    build.build_world_data(tmp_path, seed=1, n_visual_train=20, n_text_train=3000, n_pool=10, n_bench=10,
                           n_text_bench=200)
    mt = read_jsonl(tmp_path / "benchmarks" / "mt_bench" / "question.jsonl")
    train = read_jsonl(tmp_path / "text_train.jsonl")
    first = {r["turns"][0] for r in train}
    assert not first & {q["turns"][0] for q in mt}
    topics = {r.get("topic") for r in train}
    cities = {k for q in mt if q["category"] == "humanities" for k in q["answer_keys"][:1]}
    known = {r["answers"][0] for r in train if r["task"] == "facts"}
    assert len(cities - known) <= 2   # nearly every fact the benchmark asks is taught under another phrasing
    assert len(topics) > 40


def test_membership_questions_are_true():
    rng = random.Random(5)
    seen = Counter()
    for _ in range(400):
        item = text_tasks.task_list(rng, two_turn=True)
        if item["answers"][0] not in ("yes", "no"):
            continue
        q = item["turns"][0]
        m = (re.fullmatch(r"Is (\w+) in the list (.+)\?", q) or re.fullmatch(r"Does the list (.+) contain (\w+)\?", q)
             or re.fullmatch(r"In the list (.+), is there a (\w+)\?", q))
        assert m, q
        word, listed = (m[1], m[2]) if q.startswith("Is ") else (m[2], m[1])
        items = listed.split(", ")
        assert item["answers"][0] == ("yes" if word in items else "no")
        assert item["references"][0].startswith("Yes" if word in items else "No")
        assert item["answers"][1] == str(len(items))
        seen[item["answers"][0]] += 1
    assert seen["yes"] > 20 and seen["no"] > 20


def test_a_world_with_the_same_params_is_reused_from_the_shared_folder(tmp_path, monkeypatch):
    """build_world keeps each world in runs/.worlds/<fingerprint>; a new run with the same world params, seed and
    world code copies it instead of training (a student's 'Try this' with a new run name costs minutes)."""
    from mmpref.config import WorldParams
    from mmpref.world import build

    calls = []

    def fake_data(out_dir, **kw):
        calls.append(("data", str(out_dir)))
        (Path(out_dir) / "images").mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "images" / "a.png").write_bytes(b"png")
        for name in ("visual_train.jsonl", "text_train.jsonl", "image_tags.jsonl"):
            (Path(out_dir) / name).write_text("")
        return {"visual_train": 1}

    def fake_models(world_dir, *a, **kw):
        calls.append(("models", str(world_dir)))
        for m in ("base-lm", "vit"):
            (world_dir / m).mkdir(parents=True, exist_ok=True)
            (world_dir / m / "model.safetensors").write_bytes(f"{m} weights".encode())
        return {"vocab": 7}

    monkeypatch.setattr(build, "build_world_data", fake_data)
    monkeypatch.setattr(build, "train_world_models", fake_models)
    monkeypatch.setattr(build, "vocabulary_corpus", lambda d: [])
    shared = tmp_path / "runs" / ".worlds"
    first = build.build_world(tmp_path / "runs" / "a" / "world", WorldParams(), seed=0, shared_dir=shared)
    assert [c[0] for c in calls] == ["data", "models"] and "reused_from" not in first
    kept = shared / first["fingerprint"]
    assert (kept / "vit" / "model.safetensors").read_bytes() == b"vit weights"
    assert not list(shared.glob(".*.part"))

    second = build.build_world(tmp_path / "runs" / "b" / "world", WorldParams(), seed=0, shared_dir=shared)
    assert len(calls) == 2 and second["reused_from"] == str(kept)            # copied, not trained
    assert (tmp_path / "runs" / "b" / "world" / "images" / "a.png").read_bytes() == b"png"

    # a copy killed half-way (no marker, a torn weights file) is copied again, never trusted
    torn = tmp_path / "runs" / "e" / "world"
    (torn / "vit").mkdir(parents=True)
    (torn / "vit" / "model.safetensors").write_bytes(b"vit wei")
    again = build.build_world(torn, WorldParams(), seed=0, shared_dir=shared)
    assert again["reused_from"] == str(kept) and (torn / "vit" / "model.safetensors").read_bytes() == b"vit weights"
    assert len(calls) == 2
    build.build_world(tmp_path / "runs" / "c" / "world", WorldParams(), seed=1, shared_dir=shared)  # another seed
    build.build_world(tmp_path / "runs" / "d" / "world", WorldParams(n_pool=7), seed=0, shared_dir=shared)
    assert len(calls) == 6 and len(list(shared.iterdir())) == 3
    # the world's code is part of its fingerprint: a changed world module is a new world
    fp = build.world_fingerprint(WorldParams(), 0)
    real = build.sha256_file
    monkeypatch.setattr(build, "sha256_file", lambda f: "changed" if Path(f).name == "mix.py" else real(f))
    assert build.world_fingerprint(WorldParams(), 0) != fp

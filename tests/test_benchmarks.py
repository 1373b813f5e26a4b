"""Benchmark loaders (official formats) and the protocol (fake generate, fake judge functions, resume)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from pathlib import Path

import pytest
from PIL import Image

import mmpref.judges
from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, llava_bench as ev_llava_bench, mmvet as ev_mmvet, mt_bench as ev_mt_bench
from mmpref.evaluate import registry
from mmpref.evaluate.alpaca_eval import alpaca_switch, load_alpaca_eval
from mmpref.evaluate.llava_bench import load_llava_bench
from mmpref.evaluate.mmbench import load_mmbench
from mmpref.evaluate.mmvet import load_mmvet
from mmpref.evaluate.mt_bench import load_mt_bench, noise_image_for, noise_images
from mmpref.evaluate.pope import load_pope
from mmpref.evaluate.protocol import run_benchmark
from mmpref.io import read_jsonl, write_jsonl

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


def png(path: Path, colour=(255, 0, 0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def png_b64(colour) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class FakeJudge:
    judge_id = "fake-judge"
    max_concurrency = 4


def headline(rows, bench):
    return next(r["value"] for r in rows if r["metric"] == registry.get(bench).headline)


def metric(rows, name):
    return next(r for r in rows if r["metric"] == name)


# ---- miniature files in the official formats --------------------------------------------------------------------

def make_pope(root: Path) -> Path:
    d = root / "pope"
    for i in range(3):
        png(d / "images" / f"p{i}.png", (i * 50, 0, 0))
    for split in ("random", "popular", "adversarial"):
        write_jsonl(d / f"coco_pope_{split}.json", [
            {"question_id": 1, "image": "p0.png", "text": "Is there a red circle in the image?", "label": "yes"},
            {"question_id": 2, "image": "p1.png", "text": f"Is there a {split} cat in the image?", "label": "no"},
            {"question_id": 3, "image": "p2.png", "text": "Is there a blue square in the image?", "label": "yes"},
            {"question_id": 4, "image": "p2.png", "text": "Is there a green star in the image?", "label": "no"},
        ])
    return d


MMB_ROWS = [  # index, question, hint, options, answer letter
    (0, "What color is the circle?", "", ["red", "blue", "green", "yellow"], "A"),
    (1, "Is there a cat?", "Look closely.", ["yes", "no", "", ""], "B"),
    (2, "How many shapes?", "", ["1", "2", "3", ""], "C"),
]


def make_mmbench(root: Path, rows=MMB_ROWS) -> Path:
    path = root / "mmbench" / "mmbench_dev.tsv"
    path.parent.mkdir(parents=True)
    lines = ["\t".join(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                        "split", "image"])]
    for idx, q, hint, opts, ans in rows:
        lines.append("\t".join([str(idx), q, hint, *opts, ans, "cat", "l2", "dev", png_b64((idx * 40, 9, 9))]))
    path.write_text("\n".join(lines) + "\n")
    return path


def make_mmvet(root: Path) -> Path:
    d = root / "mmvet"
    items = {}
    for i, (q, a, caps) in enumerate([("What is 3 plus 5?", "8", ["ocr", "math"]),
                                      ("What color is the circle?", "red", ["rec"]),
                                      ("How many bars?", "4", ["rec", "math"])]):
        png(d / "images" / f"v1_{i}.png", (i, i, i))
        items[f"v1_{i}"] = {"imagename": f"v1_{i}.png", "capability": caps, "question": q, "answer": a}
    items["v1_2"]["answer_key"] = "4"
    (d / "mm-vet.json").write_text(json.dumps(items))
    # a stand-in for MM-Vet's evaluator: mmpref reads only its top-level `prompt` string
    (d / "mm-vet_evaluator.py").write_text('prompt = """Compare the ground truth and prediction from AI models, to '
                                           'give a correctness score for the prediction. STAND-IN\n"""\n')
    return d


def make_llava_bench(root: Path) -> Path:
    d = root / "llava_bench"
    png(d / "images" / "000.png")
    png(d / "images" / "001.png", (0, 0, 255))
    write_jsonl(d / "questions.jsonl", [
        {"question_id": 0, "image": "000.png", "text": "What color is the circle?", "category": "conv",
         "answer_key": "red"},
        {"question_id": 1, "image": "000.png", "text": "Describe the image in detail.", "category": "detail"},
        {"question_id": 2, "image": "001.png", "text": "Why is the sky blue?", "category": "complex"},
    ])
    write_jsonl(d / "answers_gpt4.jsonl", [{"question_id": i, "text": f"reference {i}"} for i in range(3)])
    write_jsonl(d / "context.jsonl", [{"id": "000", "image": "000.png", "caption": "A red circle."},
                                      {"id": "001", "image": "001.png", "caption": ["A blue sky.", "Clouds."]}])
    return d


def make_mt_bench(root: Path) -> Path:
    path = root / "mt_bench" / "question.jsonl"
    write_jsonl(path, [
        {"question_id": 81, "category": "math", "turns": ["What is 3 plus 5?", "Now add 2 to your answer."],
         "reference": ["3 plus 5 is 8.", "8 plus 2 is 10."], "answer_keys": ["8", "10"]},
        {"question_id": 82, "category": "humanities", "turns": ["Name a colour.", "Name another."],
         "reference": ["Red.", "Blue."], "answer_keys": ["red", "blue"]},
        {"question_id": 83, "category": "reasoning", "turns": ["List 1 to 3.", "Reverse it."],
         "reference": ["1, 2, 3.", "3, 2, 1."], "answer_keys": ["1, 2, 3", "3, 2, 1"]},
    ])
    return path


def make_alpaca(root: Path, n=12) -> Path:
    path = root / "alpaca_eval" / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{"instruction": f"Task number {i}?", "output": f"reference output {i}",
                                 "generator": "text_davinci_003", "dataset": "mini", "answer_key": str(i)}
                                for i in range(n)]))
    return path


# ---- loaders ----------------------------------------------------------------------------------------------------

def test_load_pope_folder_file_and_limit(tmp_path):
    d = make_pope(tmp_path)
    items = load_pope(d)
    assert len(items) == 12 and {i.split for i in items} == {"random", "popular", "adversarial"}
    assert Path(items[0].image).is_file()
    assert len(load_pope(d, limit=2)) == 6
    one = load_pope(d / "coco_pope_popular.json")
    assert {i.split for i in one} == {"popular"} and len(one) == 4


def test_load_pope_bad_files(tmp_path):
    d = make_pope(tmp_path)
    (d / "coco_pope_random.json").write_text('{"question_id": 1, "image": "p0.png", "text": "?", "label": "maybe"}\n')
    with pytest.raises(ValueError, match=r"coco_pope_random\.json: item 1: label"):
        load_pope(d)
    (d / "coco_pope_random.json").write_text('{"question_id": 1, "image": "gone.png", "text": "?", "label": "no"}\n')
    with pytest.raises(ValueError, match="gone.png not found"):
        load_pope(d)
    (d / "coco_pope_random.json").write_text("{not json\n")
    with pytest.raises(ValueError, match=r"coco_pope_random\.json:1"):
        load_pope(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no coco_pope"):
        load_pope(empty)


def test_load_mmbench_decodes_images_and_options(tmp_path):
    path = make_mmbench(tmp_path)
    items = load_mmbench(path)
    assert [len(i.options) for i in items] == [4, 2, 3]
    assert items[1].hint == "Look closely." and items[0].hint is None
    assert [i.answer_index for i in items] == [0, 1, 2]
    assert all(Path(i.image).is_file() and Image.open(i.image).size == (4, 4) for i in items)
    assert load_mmbench(path.parent, limit=1)[0].index == 0  # the folder works too; images are reused


def test_load_mmbench_bad_rows(tmp_path):
    path = make_mmbench(tmp_path, [(0, "q", "", ["a", "b", "", ""], "C")])
    with pytest.raises(ValueError, match=r"mmbench_dev\.tsv:2 \(index 0\): answer 'C'"):
        load_mmbench(path)
    path.write_text(path.read_text().replace("\tC\t", "\tA\t").rsplit("\t", 1)[0] + "\t%%%not-base64\n")
    with pytest.raises(ValueError, match="not valid base64"):
        load_mmbench(path)
    path.write_text("index\tquestion\n0\tq\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\)"):
        load_mmbench(path)


def test_load_mmvet_and_llava_bench(tmp_path):
    mv = load_mmvet(make_mmvet(tmp_path))
    assert [i.id for i in mv] == ["v1_0", "v1_1", "v1_2"]
    assert mv[0].capabilities == ["ocr", "math"] and mv[2].answer_key == "4" and mv[0].answer_key is None
    assert len(load_mmvet(tmp_path / "mmvet" / "mm-vet.json", limit=2)) == 2
    lb = load_llava_bench(make_llava_bench(tmp_path))
    assert [i.reference for i in lb] == ["reference 0", "reference 1", "reference 2"]
    assert lb[2].context == "A blue sky.\nClouds." and lb[0].context == "A red circle."
    assert lb[0].answer_key == "red" and lb[1].answer_key is None
    write_jsonl(tmp_path / "llava_bench" / "answers_gpt4.jsonl", [{"question_id": 0, "text": "r"}])
    with pytest.raises(ValueError, match="question_id 1 has no answer"):
        load_llava_bench(tmp_path / "llava_bench")
    (tmp_path / "mmvet" / "mm-vet.json").write_text(json.dumps({"v1_0": {"imagename": "v1_0.png"}}))
    with pytest.raises(ValueError, match=r"mm-vet\.json: item 'v1_0': missing key"):
        load_mmvet(tmp_path / "mmvet")


def test_load_mt_bench_miniature_references_only_for_math_reasoning(tmp_path):
    items = load_mt_bench(make_mt_bench(tmp_path))
    assert [i.reference is not None for i in items] == [True, False, True]
    assert items[1].answer_keys == ["red", "blue"] and items[1].references_all == ["Red.", "Blue."]
    write_jsonl(tmp_path / "bad.jsonl", [{"question_id": 1, "category": "math"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl: line 1: missing key\(s\) \['turns'\]"):
        load_mt_bench(tmp_path / "bad.jsonl")


def test_load_real_mt_bench_with_fastchat_references():
    if not (BENCH / "mt_bench" / "question.jsonl").is_file():
        pytest.skip("official MT-Bench files absent")
    items = load_mt_bench(BENCH / "mt_bench" / "question.jsonl")
    assert len(items) == 80 and all(len(i.turns) == 2 for i in items)
    with_ref = [i for i in items if i.reference]
    assert len(with_ref) == 30 and {i.category for i in with_ref} == {"math", "reasoning", "coding"}
    refs = [json.loads(line) for line in (BENCH / "mt_bench" / "reference_answer_gpt-4.jsonl").open()]
    by_id = {r["question_id"]: r["choices"][0]["turns"] for r in refs}
    assert all(i.reference == by_id[i.question_id] for i in with_ref)  # the GPT-4 file wins over the question field
    assert all(i.answer_keys is None for i in items)
    assert [i.question_id for i in load_mt_bench(BENCH / "mt_bench", limit=3)] == [81, 82, 83]


def test_load_real_alpaca_eval_and_bad_files(tmp_path):
    path = BENCH / "alpaca_eval" / "text_davinci_003_outputs.json"
    if not path.is_file():
        pytest.skip("official AlpacaEval file absent")
    items = load_alpaca_eval(path)
    assert len(items) == 805 and all(i.generator == "text_davinci_003" for i in items)
    assert items[0].answer_key is None and items[0].output
    assert len(load_alpaca_eval(BENCH / "alpaca_eval", limit=5)) == 5
    mini = load_alpaca_eval(make_alpaca(tmp_path, 2))
    assert mini[1].answer_key == "1"
    (tmp_path / "x.json").write_text(json.dumps({"instruction": "a"}))
    with pytest.raises(ValueError, match=r"x\.json must be a non-empty JSON list"):
        load_alpaca_eval(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps([{"instruction": "a"}]))
    with pytest.raises(ValueError, match=r"y\.json: record 0: missing key\(s\) \['output'\]"):
        load_alpaca_eval(tmp_path / "y.json")


# ---- protocol ---------------------------------------------------------------------------------------------------

class Recorder:
    """A fake GenerateFn: answers with `answer(request)` and keeps every request."""

    def __init__(self, answer):
        self.answer = answer
        self.requests = []

    def __call__(self, requests):
        self.requests += requests
        return [self.answer(r) for r in requests]


def fail_generate(requests):
    raise AssertionError(f"generate called for {len(requests)} requests; everything should be reused")


def test_pope_protocol_scores_and_resumes(tmp_path):
    d = make_pope(tmp_path)
    labels = {"red circle": "Yes, there is.", "blue square": "No, there is not.", "cat": "No.", "green star": "Yes"}

    def answer(req):
        assert req.image and req.turns[0].endswith("Answer the question using a single word or phrase.")
        return next(a for k, a in labels.items() if k in req.turns[0])

    gen = Recorder(answer)
    out = tmp_path / "eval" / "pope.jsonl"
    rows = run_benchmark("pope", d, gen, None, out, "vit")
    # every split: TP 1 (red), FN 1 (blue), TN 1 (cat), FP 1 (green star) -> P = R = F1 = 0.5
    assert headline(rows, "pope") == pytest.approx(0.5)
    assert metric(rows, "yes_ratio_random")["value"] == 0.5 and metric(rows, "f1")["n"] == 12
    assert all(r["model"] == "vit" and r["benchmark"] == "pope" and r["judge"] == "rule" for r in rows)
    recs = read_jsonl(out)
    assert len(recs) == 12 and len(gen.requests) == 12
    assert {"question_id", "split", "label", "answers"} <= set(recs[0])
    assert run_benchmark("pope", d, fail_generate, None, out, "vit") == rows
    # another model is not served from vit's records
    other = Recorder(lambda r: "No")
    rows2 = run_benchmark("pope", d, other, None, out, "dpo")
    assert len(other.requests) == 12 and headline(rows2, "pope") == 0.0
    # a changed question is asked again; the rest is reused
    rows_file = d / "coco_pope_adversarial.json"
    rows_file.write_text(rows_file.read_text().replace("green star", "red circle"))
    again = Recorder(answer)
    run_benchmark("pope", d, again, None, out, "vit")
    assert len(again.requests) == 1 and "red circle" in again.requests[0].turns[0]


def test_mmbench_protocol_circular(tmp_path):
    path = make_mmbench(tmp_path)
    correct = {"What color is the circle?": "red", "Is there a cat?": "no", "How many shapes?": "3"}

    def answer(req):
        prompt = req.turns[0]
        assert prompt.endswith("Answer with the option's letter from the given choices directly.")
        options = dict(re.findall(r"^([A-D])\. (.*)$", prompt, flags=re.M))
        question = next(q for q in correct if q in prompt)
        letter = next(k for k, v in options.items() if v == correct[question])
        if question == "How many shapes?":
            return "A"  # right only in the rotation where "3" is option A
        return letter if question == "Is there a cat?" else f"It is {correct[question]}."

    gen = Recorder(answer)
    out = tmp_path / "mmbench.jsonl"
    rows = run_benchmark("mmbench", path, gen, None, out, "vit")
    assert len(gen.requests) == 4 + 2 + 3
    assert "Look closely.\nIs there a cat?\nA. yes\nB. no" in gen.requests[4].turns[0]
    assert metric(rows, "circular_accuracy")["value"] == pytest.approx(200 / 3)
    assert metric(rows, "vanilla_accuracy")["value"] == pytest.approx(200 / 3)
    assert metric(rows, "circular_accuracy")["n"] == 3
    recs = read_jsonl(out)
    assert recs[2]["correct"] == ["C", "B", "A"] and recs[2]["answers"] == ["A", "A", "A"]
    assert run_benchmark("mmbench", path, fail_generate, None, out, "vit") == rows


def test_mmvet_protocol_with_patched_grader(tmp_path, monkeypatch):
    calls = []

    def grade_mmvet(judge, question, gt_answer, prediction, truth=None, header=None):
        calls.append((question, gt_answer, prediction, truth))
        return (1.0 if gt_answer in prediction else 0.0), f"graded {prediction}"

    monkeypatch.setattr(ev_mmvet, "grade_mmvet", grade_mmvet)
    d = make_mmvet(tmp_path)
    gen = Recorder(lambda r: {"What is 3 plus 5?": "It is 8.", "What color is the circle?": "blue"}.get(r.turns[0], "4"))
    out = tmp_path / "mmvet.jsonl"
    rows = run_benchmark("mmvet", d, gen, FakeJudge(), out, "vit")
    assert metric(rows, "total")["value"] == 66.7  # MM-Vet's table: one decimal
    assert metric(rows, "judge_failures")["value"] == 0 and metric(rows, "judge_failures")["n"] == 3
    assert metric(rows, "cap_math")["value"] == 100.0 and metric(rows, "cap_rec")["value"] == 50.0
    assert metric(rows, "cap_ocr")["value"] == 100.0 and metric(rows, "total")["judge"] == "fake-judge"
    assert sorted(c[3] for c in calls if c[3]) == [{"answer": "4"}]  # miniature key passed as rubric truth
    rec = read_jsonl(out)[0]
    assert rec["judge_raw"] == "graded It is 8." and rec["score"] == 1.0 and rec["judge"] == "fake-judge"
    with pytest.raises(ValueError, match="judge-graded"):
        run_benchmark("mmvet", d, gen, None, tmp_path / "x.jsonl", "vit")


def test_judge_change_regrades_without_generating(tmp_path, monkeypatch):
    monkeypatch.setattr(ev_mmvet, "grade_mmvet",
                        lambda judge, q, gt, pred, truth=None, header=None: (0.5, judge.judge_id))
    d = make_mmvet(tmp_path)
    out = tmp_path / "mmvet.jsonl"
    run_benchmark("mmvet", d, Recorder(lambda r: "x"), FakeJudge(), out, "vit")

    class OtherJudge(FakeJudge):
        judge_id = "other"

    rows = run_benchmark("mmvet", d, fail_generate, OtherJudge(), out, "vit")
    assert {r["judge"] for r in rows} == {"other"}
    assert {r["judge_raw"] for r in read_jsonl(out)} == {"other"} and len(read_jsonl(out)) == 3


def test_llava_bench_protocol_uses_category_rule(tmp_path, monkeypatch):
    seen = []

    def grade_llava_bench(judge, question, context, reference_answer, answer, rule=None, truth=None):
        seen.append((question, context, reference_answer, rule, truth))
        return 8.0, {"conv": 6.0, "detail": 8.0, "complex": 2.0}[answer], f"8 {answer}"

    monkeypatch.setattr(ev_llava_bench, "grade_llava_bench", grade_llava_bench)
    d = make_llava_bench(tmp_path)
    rules = {f"llava_bench_{c}": {"role": "Assistant", "prompt": f"rule for {c}"} for c in ("conv", "detail", "complex")}
    (tmp_path / "rule.json").write_text(json.dumps(rules))
    categories = {"What color is the circle?": "conv", "Describe the image in detail.": "detail"}
    gen = Recorder(lambda r: categories.get(r.turns[0], "complex"))
    rows = run_benchmark("llava_bench", d, gen, FakeJudge(), tmp_path / "lb.jsonl", "vit",
                         judge_templates={"llava_bench": str(tmp_path / "rule.json")})
    # summarize_gpt_review: means rounded to 3 decimals (5.333), then relative 5.333 / 8 x 100 = 66.66 -> 66.7
    assert metric(rows, "relative_score")["value"] == 66.7
    assert metric(rows, "model_score")["value"] == 53.3 and metric(rows, "reference_score")["value"] == 80.0
    assert metric(rows, "relative_score_conv")["value"] == 75.0
    assert metric(rows, "relative_score_complex")["value"] == 25.0
    assert [s[3]["prompt"] for s in seen] == ["rule for conv", "rule for detail", "rule for complex"]
    assert seen[0][4] == {"answer": "red", "reference": "reference 0"} and seen[1][4] == {}
    assert seen[2][1] == "A blue sky.\nClouds."
    del rules["llava_bench_complex"]
    (tmp_path / "rule.json").write_text(json.dumps(rules))
    with pytest.raises(ValueError, match="llava_bench_complex"):
        run_benchmark("llava_bench", d, fail_generate, FakeJudge(), tmp_path / "lb2.jsonl", "vit",
                      judge_templates={"llava_bench": str(tmp_path / "rule.json")})


def test_llava_bench_with_official_rule_file(tmp_path, monkeypatch):
    if not (BENCH / "llava_bench" / "rule.json").is_file():
        pytest.skip("official rule.json absent")
    seen = []
    monkeypatch.setattr(ev_llava_bench, "grade_llava_bench",
                        lambda judge, q, c, ref, ans, rule=None, truth=None: seen.append(rule) or (7.0, 7.0, "7 7"))
    rows = run_benchmark("llava_bench", make_llava_bench(tmp_path), Recorder(lambda r: "a"), FakeJudge(),
                         tmp_path / "lb.jsonl", "vit", judge_templates={"llava_bench": BENCH / "llava_bench" / "rule.json"})
    official = json.loads((BENCH / "llava_bench" / "rule.json").read_text())
    assert seen == [official["llava_bench_conv"], official["llava_bench_detail"], official["llava_bench_complex"]]
    assert headline(rows, "llava_bench") == 100.0


def fake_grade_single(calls):
    def grade_single(judge, question_turns, answers, reference=None, truth=None, templates=None, multi_turn=False):
        calls.append({"turns": question_turns, "answers": answers, "reference": reference, "truth": truth,
                      "templates": templates, "multi_turn": multi_turn})
        graded = answers[-1] if multi_turn else answers[0]
        if graded == "garbled":
            return -1.0, "no rating"
        return (9.0 if truth and truth.get("answer") in graded else 3.0), f"Rating: [[{graded}]]"
    return grade_single


def test_mt_bench_protocol_two_turns(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single(calls))
    path = make_mt_bench(tmp_path)
    answers = {"What is 3 plus 5?": "It is 8.", "Now add 2 to your answer.": "It is 11.",
               "Name a colour.": "red", "Name another.": "blue", "List 1 to 3.": "1, 2, 3", "Reverse it.": "garbled"}
    gen = Recorder(lambda r: answers[r.turns[-1]])
    out = tmp_path / "mt.jsonl"
    rows = run_benchmark("mt_bench", path, gen, FakeJudge(), out, "vit")
    turn2 = [r for r in gen.requests if len(r.turns) == 2]
    assert len(gen.requests) == 6 and len(turn2) == 3
    first = next(r for r in turn2 if r.turns[0] == "What is 3 plus 5?")
    assert first.turns[1] == "Now add 2 to your answer." and first.answers == ["It is 8."] and first.image is None
    # turn 1: 9, 9, 9 ; turn 2: 3 (11 is wrong), 9, -1 (dropped)
    assert metric(rows, "turn1")["value"] == 9.0 and metric(rows, "turn1")["n"] == 3
    assert metric(rows, "turn2")["value"] == 6.0 and metric(rows, "turn2")["n"] == 2
    assert metric(rows, "overall")["value"] == pytest.approx(39 / 5) and metric(rows, "overall")["n"] == 5
    math_calls = [c for c in calls if c["turns"][0] == "What is 3 plus 5?"]
    assert all(c["reference"] == ["3 plus 5 is 8.", "8 plus 2 is 10."] for c in math_calls)
    assert all(c["reference"] is None for c in calls if c["turns"][0] == "Name a colour.")
    assert [c["multi_turn"] for c in math_calls] == [False, True]
    assert math_calls[1]["truth"] == {"answer": "10", "reference": "8 plus 2 is 10."}
    assert math_calls[1]["answers"] == ["It is 8.", "It is 11."]
    rec = read_jsonl(out)[0]
    assert rec["scores"] == [9.0, 3.0] and rec["answers"] == ["It is 8.", "It is 11."] and len(rec["judge_raw"]) == 2
    assert run_benchmark("mt_bench", path, fail_generate, FakeJudge(), out, "vit") == rows


def test_mt_bench_official_judge_prompts_are_loaded(tmp_path, monkeypatch):
    if not (BENCH / "mt_bench" / "judge_prompts.jsonl").is_file():
        pytest.skip("official judge_prompts.jsonl absent")
    calls = []
    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single(calls))
    run_benchmark("mt_bench", make_mt_bench(tmp_path), Recorder(lambda r: "x"), FakeJudge(), tmp_path / "mt.jsonl",
                  "vit", judge_templates={"mt_bench": BENCH / "mt_bench" / "judge_prompts.jsonl"}, limit=1)
    assert {"single-v1", "single-math-v1-multi-turn"} <= set(calls[0]["templates"])


def test_noisy_mt_bench_images_are_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single([]))
    noise = tmp_path / "noise"
    for name, colour in (("blank.png", (255, 255, 255)), ("noise_0.png", (1, 2, 3)), ("scene_0.png", (9, 9, 9))):
        png(noise / name, colour)
    (noise / "README.txt").write_text("not an image")
    pool = noise_images(noise)
    assert [p.name for p in pool] == ["blank.png", "noise_0.png", "scene_0.png"]
    picks = [noise_image_for(q, pool).name for q in range(81, 120)]
    assert picks == [noise_image_for(q, pool).name for q in range(81, 120)] and len(set(picks)) == 3
    gen = Recorder(lambda r: "8")
    out = tmp_path / "noisy.jsonl"
    path = make_mt_bench(tmp_path)
    rows = run_benchmark("mt_bench_noisy", path, gen, FakeJudge(), out, "vit", noise_images_dir=noise)
    assert {r["benchmark"] for r in rows} == {"mt_bench_noisy"} and headline(rows, "mt_bench_noisy") > 0
    assert all(r.image and r.image_every_turn for r in gen.requests)  # the image goes with every user turn
    for rec in read_jsonl(out):
        assert rec["image"] == noise_image_for(rec["question_id"], pool).name
        mine = [r for r in gen.requests if r.turns[0] == rec["turns"][0]]
        assert len(mine) == 2 and {Path(r.image).name for r in mine} == {rec["image"]}
    with pytest.raises(ValueError, match="noise_images_dir"):
        run_benchmark("mt_bench_noisy", path, gen, FakeJudge(), out, "vit")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        noise_images(tmp_path / "empty")


def test_noisy_mt_bench_prompt_has_the_image_in_every_turn(tmp_path, monkeypatch):
    from mmpref.models import chat_messages

    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single([]))
    png(tmp_path / "noise" / "blank.png", (255, 255, 255))
    gen = Recorder(lambda r: "8")
    out = tmp_path / "noisy.jsonl"
    run_benchmark("mt_bench_noisy", make_mt_bench(tmp_path), gen, FakeJudge(), out, "vit",
                  noise_images_dir=tmp_path / "noise", limit=1)
    second = next(r for r in gen.requests if len(r.turns) == 2)
    messages = chat_messages(second.turns, second.answers, second.image is not None, every_turn=second.image_every_turn)
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert [c[0] for c in users] == [{"type": "image"}, {"type": "image"}]
    assert [c[1]["text"] for c in users] == second.turns
    # the plain MT-Bench and every other benchmark keep the image (if any) in the first turn only
    assert [m["content"][0]["type"] for m in chat_messages(["q1", "q2"], ["a1"], True) if m["role"] == "user"] \
        == ["image", "text"]
    # records answered with the image in the first turn only are answered again; other benchmarks' records stay valid
    from mmpref.evaluate.protocol import request_signature as _signature
    from mmpref.io import sha256_json
    from mmpref.sampling import ChatRequest

    plain = ChatRequest(turns=["q"], image="/x/blank.png")
    assert _signature([plain]) == sha256_json({"requests": [{"turns": ["q"], "answers": [], "temperature": None,
                                                             "image": "blank.png"}], "extra": None})
    assert _signature([plain.model_copy(update={"image_every_turn": True})]) != _signature([plain])


def test_grading_protocol_change_regrades_without_generating(tmp_path, monkeypatch):
    graded = []
    monkeypatch.setattr(ev_mmvet, "grade_mmvet", lambda judge, q, gt, pred, truth=None, header=None:
                        graded.append(q) or (1.0, "1.0"))
    d, out = make_mmvet(tmp_path), tmp_path / "mmvet.jsonl"
    run_benchmark("mmvet", d, Recorder(lambda r: "x"), FakeJudge(), out, "vit")
    assert len(graded) == 3 and {r["grading"] for r in read_jsonl(out)} == {"mm-vet@acde843#2"}
    run_benchmark("mmvet", d, fail_generate, FakeJudge(), out, "vit")
    assert len(graded) == 3  # same judge, same protocol: reused
    old = [{k: v for k, v in r.items() if k != "grading"} | {"score": 0.0} for r in read_jsonl(out)]
    write_jsonl(out, old)  # records graded before the official protocol (e.g. a failure filled in with 0.0)
    rows = run_benchmark("mmvet", d, fail_generate, FakeJudge(), out, "vit")
    assert len(graded) == 6 and metric(rows, "total")["value"] == 100.0


def test_mmvet_prompt_comes_from_the_configured_evaluator_file(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(ev_mmvet, "grade_mmvet", lambda judge, q, gt, pred, truth=None, header=None:
                        seen.append(header) or (1.0, "1.0"))
    evaluator = tmp_path / "mm-vet_evaluator.py"
    evaluator.write_text('prompt = """Compare the ground truth and prediction. FEW-SHOT\n"""\n')
    d = make_mmvet(tmp_path)
    run_benchmark("mmvet", d, Recorder(lambda r: "x"), FakeJudge(), tmp_path / "a.jsonl", "vit",
                  judge_templates={"mmvet": str(evaluator)})
    run_benchmark("mmvet", d, Recorder(lambda r: "x"), FakeJudge(), tmp_path / "b.jsonl", "vit")
    assert seen == ["Compare the ground truth and prediction. FEW-SHOT\n"] * 3 + [None] * 3


def test_alpaca_eval_switches_sides_and_maps_back(tmp_path, monkeypatch):
    seen = []

    def grade_pairwise_alpaca(judge, instruction, output_1, output_2, truth=None, template=None):
        seen.append((instruction, output_1, output_2, truth, template))
        if "TIE" in (output_1, output_2):
            return 1.5, "tie"
        return (1.0 if output_1 == "MODEL" else 2.0), "[...]"  # the judge always prefers the model

    monkeypatch.setattr(ev_alpaca_eval, "grade_pairwise_alpaca", grade_pairwise_alpaca)
    path = make_alpaca(tmp_path, 12)
    gen = Recorder(lambda r: "TIE" if r.turns[0] == "Task number 0?" else "MODEL")
    out = tmp_path / "alpaca.jsonl"
    rows = run_benchmark("alpaca_eval", path, gen, FakeJudge(), out, "vit")
    switched = [alpaca_switch(f"Task number {i}?") for i in range(12)]
    assert 0 < sum(switched) < 12  # both sides occur
    for (instruction, o1, o2, truth, _), sw in zip(seen, switched):
        if instruction != "Task number 0?":
            assert (o1 == "MODEL") == sw and (o2 == "MODEL") == (not sw)
    assert metric(rows, "win_rate")["value"] == pytest.approx((11 + 0.5) / 12 * 100)
    x = [1.0] * 11 + [0.5]
    mean = sum(x) / 12
    assert metric(rows, "standard_error")["value"] == pytest.approx(
        math.sqrt(sum((v - mean) ** 2 for v in x) / 11 / 12) * 100)
    assert seen[3][3] == {"answer": "3"}
    recs = read_jsonl(out)
    assert all(r["preference"] in (2.0, 1.5) for r in recs) and any(r["switched"] for r in recs)
    assert run_benchmark("alpaca_eval", path, fail_generate, FakeJudge(), out, "vit") == rows


def test_alpaca_eval_official_template_passed(tmp_path, monkeypatch):
    tpl = BENCH / "alpaca_eval" / "alpaca_eval_gpt4_prompt.txt"
    if not tpl.is_file():
        pytest.skip("official AlpacaEval prompt absent")
    seen = []
    monkeypatch.setattr(ev_alpaca_eval, "grade_pairwise_alpaca",
                        lambda judge, i, o1, o2, truth=None, template=None: seen.append(template) or (2.0, ""))
    run_benchmark("alpaca_eval", make_alpaca(tmp_path, 2), Recorder(lambda r: "x"), FakeJudge(),
                  tmp_path / "a.jsonl", "vit", judge_templates={"alpaca_eval": tpl})
    assert seen == [tpl.read_text()] * 2


def test_with_the_rubric_judge(tmp_path):
    """End to end through the real judge task functions (the miniature's rubric judge, no network)."""
    judge = mmpref.judges.make_judge("rubric", cache_dir=tmp_path / "cache")
    right = {"What is 3 plus 5?": "3 plus 5 is 8.", "Now add 2 to your answer.": "8 plus 2 is 10.",
             "Name a colour.": "Red.", "Name another.": "Blue.", "List 1 to 3.": "1, 2, 3.", "Reverse it.": "3, 2, 1."}
    good = run_benchmark("mt_bench", make_mt_bench(tmp_path), Recorder(lambda r: right[r.turns[-1]]), judge,
                         tmp_path / "good.jsonl", "good")
    bad = run_benchmark("mt_bench", make_mt_bench(tmp_path / "b"), Recorder(lambda r: "I do not know."), judge,
                        tmp_path / "bad.jsonl", "bad")
    assert headline(good, "mt_bench") > headline(bad, "mt_bench")
    assert {r["judge"] for r in good} == {"rubric-v4"}
    alpaca = run_benchmark("alpaca_eval", make_alpaca(tmp_path, 4), Recorder(lambda r: "I do not know."), judge,
                           tmp_path / "alpaca.jsonl", "bad")
    assert 0.0 <= headline(alpaca, "alpaca_eval") <= 100.0
    mv = run_benchmark("mmvet", make_mmvet(tmp_path), Recorder(lambda r: "8"), judge, tmp_path / "mv.jsonl", "m")
    assert metric(mv, "cap_ocr")["value"] == 100.0


def test_failed_gradings_are_left_out_and_counted(tmp_path, monkeypatch):
    """A judge reply the official parser rejects is never a default score: the item is recorded as failed, left out
    of every metric and counted in the judge_failures row."""
    monkeypatch.setattr(ev_mmvet, "grade_mmvet", lambda judge, q, gt, pred, truth=None, header=None:
                        (None, "not a grade") if q == "How many bars?" else (1.0 if gt in pred else 0.0, "1.0"))
    mv = run_benchmark("mmvet", make_mmvet(tmp_path), Recorder(lambda r: "It is 8."), FakeJudge(),
                       tmp_path / "mv.jsonl", "vit")
    assert metric(mv, "total")["value"] == 50.0 and metric(mv, "total")["n"] == 2  # 0.0 filled in would give 33.3
    assert metric(mv, "cap_math")["value"] == 100.0 and metric(mv, "cap_math")["n"] == 1
    assert (metric(mv, "judge_failures")["value"], metric(mv, "judge_failures")["n"]) == (1, 3)
    assert metric(mv, "judge_failures")["judge"] == "fake-judge"
    failed = [r for r in read_jsonl(tmp_path / "mv.jsonl") if r["failed"]]
    assert len(failed) == 1 and failed[0]["score"] is None and failed[0]["judge_raw"] == "not a grade"

    monkeypatch.setattr(ev_llava_bench, "grade_llava_bench", lambda judge, q, c, ref, ans, rule=None, truth=None:
                        (None, None, "Scores: 8 and 6") if q == "Why is the sky blue?" else (8.0, 6.0, "8 6"))
    lb = run_benchmark("llava_bench", make_llava_bench(tmp_path), Recorder(lambda r: "a"), FakeJudge(),
                       tmp_path / "lb.jsonl", "vit")
    assert metric(lb, "relative_score")["value"] == 75.0 and metric(lb, "relative_score")["n"] == 2
    assert "relative_score_complex" not in {r["metric"] for r in lb}
    assert metric(lb, "judge_failures")["value"] == 1

    monkeypatch.setattr(ev_alpaca_eval, "grade_pairwise_alpaca", lambda judge, i, o1, o2, truth=None, template=None:
                        (None, "Model 2.") if i == "Task number 0?" else ((1.0 if o1 == "MODEL" else 2.0), "[...]"))
    al = run_benchmark("alpaca_eval", make_alpaca(tmp_path, 4), Recorder(lambda r: "MODEL"), FakeJudge(),
                       tmp_path / "al.jsonl", "vit")
    assert metric(al, "win_rate")["value"] == 100.0 and metric(al, "win_rate")["n"] == 3
    assert (metric(al, "judge_failures")["value"], metric(al, "judge_failures")["n"]) == (1, 4)
    rec = next(r for r in read_jsonl(tmp_path / "al.jsonl") if r["instruction"] == "Task number 0?")
    assert rec["failed"] and rec["preference"] is None

    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single([]))
    mt = run_benchmark("mt_bench", make_mt_bench(tmp_path), Recorder(lambda r: "garbled" if r.turns[-1] ==
                                                                     "Reverse it." else "x"),
                       FakeJudge(), tmp_path / "mt.jsonl", "vit")
    assert metric(mt, "overall")["n"] == 5 and metric(mt, "turn2")["n"] == 2  # FastChat's -1 is dropped
    assert (metric(mt, "judge_failures")["value"], metric(mt, "judge_failures")["n"]) == (1, 6)


def test_unknown_benchmark(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'mmmu'"):
        run_benchmark("mmmu", tmp_path, fail_generate, None, tmp_path / "x.jsonl", "vit")

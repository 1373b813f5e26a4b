"""Resumable annotation and gold-answer stages."""

from __future__ import annotations

import json

import pytest

from mmpref.annotate import annotate_samples, collect_gold
from mmpref.io import read_jsonl
from mmpref.judges import make_judge
from mmpref.judges.base import Judge, JudgeReply
from mmpref.judges.rubric import RubricJudge


class CountingRubric(RubricJudge):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list = []

    def _call(self, req):
        self.seen.append(req)
        return super()._call(req)


class GarbageJudge(Judge):
    judge_id = "garbage"
    model = "g"

    def _call(self, req):
        return JudgeReply(text="I cannot decide.", judge_id=self.judge_id)


@pytest.fixture()
def world(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    prompts, samples = [], []
    for i in range(3):
        img = run_dir / "images" / f"{i}.png"
        img.write_bytes(f"image {i}".encode())
        prompts.append({"id": f"p{i}", "source": "scigraphqa", "image": f"images/{i}.png",
                        "question": f"What is {i} plus 5?", "answer": str(i + 5),
                        "reference": f"{i} plus 5 is {i + 5}.", "negative": False, "meta": {}})
        samples.append({"prompt_id": f"p{i}", "responses": [f"{i} plus 5 is {i + 5}.", f"{i} plus 5 is {i + 6}."],
                        "model": "vit", "temperature": 0.7, "seed": 0})
    prompts.append({"id": "neg", "source": "lrv", "image": "images/0.png", "question": "Is there a triangle?",
                    "answer": "absent", "reference": "There is no triangle in the image.", "negative": True,
                    "meta": {}})
    return run_dir, prompts, samples


def test_annotate_writes_records_and_resumes(world):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    j = CountingRubric()
    first = annotate_samples(j, prompts, samples[:2], run_dir, out, max_workers=2)
    assert [r["prompt_id"] for r in first] == ["p0", "p1"] and len(j.seen) == 2
    # the judge saw the absolute image path, the record format matches the spec
    assert all(str(run_dir / "images") in r.images[0] for r in j.seen)
    rec = first[0]
    assert set(rec) == {"prompt_id", "judge", "status", "reasoning", "raw", "scores", "error", "responses_hash"}
    assert rec["judge"] == "rubric-v4" and rec["status"] == "ok" and rec["error"] is None
    assert rec["scores"][0]["correctness"] == 4 and rec["scores"][1]["correctness"] == 0
    # resume: only the new prompt is judged; the file grows by one line
    j2 = CountingRubric()
    all_recs = annotate_samples(j2, prompts, samples, run_dir, out, max_workers=2)
    assert len(j2.seen) == 1 and j2.seen[0].inputs["responses"] == samples[2]["responses"]
    assert [r["prompt_id"] for r in all_recs] == ["p0", "p1", "p2"]
    assert len(read_jsonl(out)) == 3
    assert annotate_samples(CountingRubric(), prompts, samples, run_dir, out) == all_recs


def test_failed_annotations_are_recorded_not_zeroed(world):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    recs = annotate_samples(GarbageJudge(), prompts, samples[:1], run_dir, out, max_workers=1, max_retries=1)
    assert recs[0]["status"] == "failed" and recs[0]["scores"] is None
    assert recs[0]["raw"] == "I cannot decide." and "no JSON" in recs[0]["error"]


def test_annotate_bad_input_is_clear(world):
    run_dir, prompts, samples = world
    out = run_dir / "a.jsonl"
    with pytest.raises(ValueError, match="'ghost' is not in prompts"):
        annotate_samples(make_judge("rubric"), prompts, [{"prompt_id": "ghost", "responses": ["x"]}], run_dir, out)
    with pytest.raises(ValueError, match="needs 'prompt_id' and 'responses'"):
        annotate_samples(make_judge("rubric"), prompts, [{"prompt_id": "p0"}], run_dir, out)
    broken = [dict(prompts[0], image="images/missing.png")]
    with pytest.raises(ValueError, match="missing.png"):
        annotate_samples(make_judge("rubric"), broken, samples[:1], run_dir, out)
    assert not out.exists()


def test_collect_gold_resumable(world):
    run_dir, prompts, _ = world
    out = run_dir / "gold.jsonl"
    j = CountingRubric()
    collect_gold(j, prompts[:2], run_dir, out, max_workers=2)
    rows = collect_gold(j, prompts, run_dir, out, max_workers=2)
    assert len(j.seen) == 4
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2", "neg"]
    assert rows[3] == {"prompt_id": "neg", "answer": "There is no triangle in the image.", "judge": "rubric-v4"}
    assert [json.loads(line)["prompt_id"] for line in out.read_text().splitlines()].count("p0") == 1

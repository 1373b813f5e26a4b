"""Pairing rules on hand-made annotation sets with known outcomes."""

from __future__ import annotations

import pytest

from mmpref import methods
from mmpref.io import read_jsonl
from mmpref.pairing import build_datasets as _build_datasets
from mmpref.pairing import dpo_pair, prompt_seed, steerlm_inference_question, subsample
from mmpref.ratings import STEERLM_SUFFIX, quality, steerlm_question


def build_datasets(*args, **kwargs):
    """Stage 04's call: every registered method's dataset."""
    return _build_datasets(*args, builders=methods.datasets(), **kwargs)


def s(h, c, o, x=2, v=2):
    return {"helpfulness": h, "correctness": c, "coherence": o, "complexity": x, "verbosity": v}


def test_quality_sums_three_attributes():
    assert quality(s(4, 3, 2, x=4, v=4)) == 9
    with pytest.raises(ValueError, match="correctness"):
        quality({"helpfulness": 1, "coherence": 1})
    with pytest.raises(ValueError, match="0..4"):
        quality(s(5, 0, 0))


def test_gap_of_two_pairs_and_gap_of_one_skips():
    # qualities 6, 5, 4, 5 -> gap 2 exactly: boundary is included; only index 2 (q=4 = 6-2) may be rejected
    scores = [s(2, 2, 2), s(2, 2, 1), s(2, 1, 1), s(1, 2, 2)]
    for seed in range(20):
        assert dpo_pair(scores, seed, 2) == (0, 2)
    # qualities 6, 5, 5, 5 -> gap 1 < 2: skipped
    assert dpo_pair([s(2, 2, 2), s(2, 2, 1), s(2, 1, 2), s(1, 2, 2)], 0, 2) is None
    # with min_gap 1 the same prompt pairs
    assert dpo_pair([s(2, 2, 2), s(2, 2, 1), s(2, 1, 2), s(1, 2, 2)], 0, 1)[0] == 0


def test_all_equal_skipped_and_ties_at_top_go_to_lowest_index():
    assert dpo_pair([s(3, 3, 3)] * 4, 0, 2) is None
    scores = [s(0, 0, 0), s(4, 4, 4), s(4, 4, 4), s(1, 1, 1)]  # tie at top between 1 and 2
    for seed in range(20):
        chosen, rejected = dpo_pair(scores, seed, 2)
        assert chosen == 1
        assert rejected in (0, 3)


def test_random_rejected_is_seeded_reproducible_and_varies():
    scores = [s(4, 4, 4), s(0, 0, 0), s(1, 0, 0), s(0, 1, 0), s(0, 0, 1), s(1, 1, 0)]
    picks = [dpo_pair(scores, seed, 2)[1] for seed in range(50)]
    assert picks == [dpo_pair(scores, seed, 2)[1] for seed in range(50)]
    assert set(picks) == {1, 2, 3, 4, 5}
    assert prompt_seed(0, "p1") == prompt_seed(0, "p1") != prompt_seed(1, "p1") != prompt_seed(0, "p2")


def test_steerlm_suffix_exact_text():
    expected = ("What is 3 plus 5?\nPlease answer the question such that your response is in the following "
                "attributes in 5-point Likert scale:\nHelpfulness:4,Correctness:3,Coherence:2,Complexity:1,"
                "Verbosity:0")
    assert steerlm_question("What is 3 plus 5?", s(4, 3, 2, x=1, v=0)) == expected
    assert steerlm_inference_question("Q?") == ("Q?\nPlease answer the question such that your response is in the "
                                                "following attributes in 5-point Likert scale:\nHelpfulness:4,"
                                                "Correctness:4,Coherence:4,Complexity:4,Verbosity:4")
    assert STEERLM_SUFFIX.startswith("\nPlease answer")


def test_subsample_nested_and_deterministic():
    rows = [{"prompt_id": f"p{i}"} for i in range(40)]
    sub = {f: subsample(rows, f, seed=3) for f in (0.25, 0.5, 0.75, 1.0)}
    assert [len(sub[f]) for f in (0.25, 0.5, 0.75, 1.0)] == [10, 20, 30, 40]
    ids = {f: {r["prompt_id"] for r in sub[f]} for f in sub}
    assert ids[0.25] < ids[0.5] < ids[0.75] < ids[1.0]
    assert subsample(rows, 0.5, seed=3) == sub[0.5]
    assert subsample(list(reversed(rows)), 0.5, seed=3) == list(reversed(sub[0.5]))  # order-independent choice
    assert {r["prompt_id"] for r in subsample(rows, 0.5, seed=4)} != ids[0.5]
    assert subsample(rows, 0.0, seed=3) == []
    with pytest.raises(ValueError):
        subsample(rows, 1.5, seed=3)


def _world():
    prompts = [
        {"id": f"p{i}", "source": "lrv" if i % 2 else "scigraphqa", "image": f"images/{i}.png",
         "question": f"Question {i}?", "answer": None, "reference": None, "negative": False, "meta": {}}
        for i in range(6)
    ]
    samples = [{"prompt_id": f"p{i}", "responses": [f"r{i}.{j}" for j in range(4)], "model": "vit",
                "temperature": 0.7, "seed": 0} for i in range(6)]
    ok = lambda pid, scores: {"prompt_id": pid, "judge": "rubric-v3", "status": "ok", "reasoning": "", "raw": "",
                              "scores": scores, "error": None}
    annotations = [
        ok("p0", [s(1, 1, 1), s(4, 4, 4), s(2, 2, 2), s(0, 0, 0)]),  # pairs: chosen 1
        ok("p1", [s(3, 3, 3)] * 4),                                  # all equal: no DPO pair
        {"prompt_id": "p2", "judge": "rubric-v3", "status": "failed", "reasoning": "", "raw": "garbage",
         "scores": None, "error": "unparsable"},
        ok("p3", [s(4, 4, 4), s(0, 0, 0)]),                          # 2 scores for 4 responses: mismatch
        ok("p4", [s(4, 4, 4), s(4, 4, 4), s(1, 1, 1), s(2, 2, 2)]),  # tie at top -> 0
        # p5 has no annotation
        ok("ghost", [s(0, 0, 0)] * 4),                               # unknown prompt id
    ]
    gold = [{"prompt_id": f"p{i}", "answer": f"gold {i}", "judge": "rubric-v3"} for i in range(5)]
    return prompts, samples, annotations, gold


def test_build_datasets_end_to_end(tmp_path):
    prompts, samples, annotations, gold = _world()
    summary = build_datasets(prompts, samples, annotations, gold, tmp_path / "datasets", seed=7)
    d = tmp_path / "datasets"
    assert summary["counts"] == {"sft_gold": 5, "steerlm": 12, "rejection_sampling": 3, "dpo": 2}
    assert summary["filtered"]["dpo"] == {"annotation_failed": 1, "missing_annotation": 1,
                                          "quality_gap_below_min_gap": 1, "response_count_mismatch": 1}
    assert summary["filtered"]["sft_gold"] == {"missing_gold": 1}
    assert summary["unknown"] == {"unknown_prompt_id": {"annotations": 1}}
    dpo = read_jsonl(d / "dpo.jsonl")
    assert [(r["prompt_id"], r["chosen_index"]) for r in dpo] == [("p0", 1), ("p4", 0)]
    assert dpo[0]["chosen"] == "r0.1" and dpo[0]["chosen_quality"] == 12
    assert dpo[0]["rejected_index"] in (0, 2, 3) and dpo[0]["rejected_quality"] <= 10
    assert dpo[0]["image"] == "images/0.png" and dpo[0]["question"] == "Question 0?"
    assert set(dpo[0]) == {"prompt_id", "image", "question", "chosen", "rejected", "chosen_quality",
                           "rejected_quality", "chosen_index", "rejected_index"}
    rs = read_jsonl(d / "rejection_sampling.jsonl")
    assert [r["response"] for r in rs] == ["r0.1", "r1.0", "r4.0"]
    steer = read_jsonl(d / "steerlm.jsonl")
    assert steer[1]["question"].endswith("Helpfulness:4,Correctness:4,Coherence:4,Complexity:2,Verbosity:2")
    assert steer[1]["attributes"] == s(4, 4, 4)
    sft = read_jsonl(d / "sft_gold.jsonl")
    assert sft[0] == {"prompt_id": "p0", "image": "images/0.png", "question": "Question 0?", "response": "gold 0"}
    card = (d / "card.md").read_text()
    for text in ("## Filtered out", "annotation_failed", "quality_gap_below_min_gap", "| score | helpfulness",
                 "scigraphqa", "## Quality gap"):
        assert text in card
    assert summary["counts_by_source"]["dpo"] == {"scigraphqa": 2}
    assert summary["quality_gaps"] == {0: 1, 9: 1, 12: 1}


def test_build_datasets_order_independent_and_seeded(tmp_path):
    prompts = [{"id": f"p{i}", "source": "lrv", "image": None, "question": "q"} for i in range(30)]
    samples = [{"prompt_id": f"p{i}", "responses": ["a", "b", "c", "d"]} for i in range(30)]
    annotations = [{"prompt_id": f"p{i}", "status": "ok", "scores": [s(4, 4, 4), s(0, 0, 0), s(1, 0, 0), s(0, 1, 1)]}
                   for i in range(30)]
    a = build_datasets(prompts, samples, annotations, [], tmp_path / "a", seed=1)
    b = build_datasets(prompts[::-1], samples, annotations[::-1], [], tmp_path / "b", seed=1)
    c = build_datasets(prompts, samples, annotations, [], tmp_path / "c", seed=2)
    key = lambda p: sorted((r["prompt_id"], r["rejected_index"]) for r in read_jsonl(p))
    assert key(tmp_path / "a" / "dpo.jsonl") == key(tmp_path / "b" / "dpo.jsonl")
    assert key(tmp_path / "a" / "dpo.jsonl") != key(tmp_path / "c" / "dpo.jsonl")
    assert a["filtered"]["sft_gold"] == {"missing_gold": 30} and a["counts"]["dpo"] == 30 == c["counts"]["dpo"]


def test_build_datasets_reads_paths_and_rejects_duplicate_prompts(tmp_path):
    from mmpref.io import write_jsonl

    prompts, samples, annotations, gold = _world()
    for name, rows in [("prompts", prompts), ("samples", samples), ("annotations", annotations), ("gold", gold)]:
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    summary = build_datasets(*(tmp_path / f"{n}.jsonl" for n in ("prompts", "samples", "annotations", "gold")),
                             tmp_path / "datasets", seed=7)
    assert summary["counts"]["dpo"] == 2
    with pytest.raises(ValueError, match="duplicate prompt ids"):
        build_datasets(prompts + prompts[:1], samples, annotations, gold, tmp_path / "x", seed=7)

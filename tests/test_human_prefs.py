"""Figure 3 from real human labels (issue 9): LLaVA-RLHF's human preference pairs (LLaVA-Human-Preference-10K's
format) are loaded, scored by the annotation judge through the real google-genai SDK against the loopback server, and
turned into Figure 3's frame with the human label the right way round."""

from __future__ import annotations

import json

import pytest

from mmpref.figures import figure3
from mmpref.human_prefs import load_llava_rlhf_preferences, score_human_pairs
from mmpref.judges import make_judge
from tests.loopback import GeminiServer, gemini_request_text

N = 6


def write_file(tmp_path):
    """A small LLaVA-Human-Preference-10K file: one output says 'correct', the other 'wrong'; the human prefers the
    correct one, which is output_1 in even records and output_2 in odd ones; record 1 is two turns long."""
    (tmp_path / "coco").mkdir()
    records = []
    for i in range(N):
        (tmp_path / "coco" / f"{i:012d}.jpg").write_bytes(b"\xff\xd8 fake jpeg " + bytes([i]))
        good, bad = {"from": "llava", "value": f"GOODOUT answer {i}"}, {"from": "llava", "value": f"BADOUT answer {i}"}
        conv = [{"from": "human", "value": f"<image>\nWhat is in picture h{i}x?"}]
        if i == 1:
            conv += [{"from": "gpt", "value": "A dog."}, {"from": "human", "value": "What colour is it h1x?"}]
        records.append({"id": f"q{i}", "image": f"{i:012d}.jpg", "conversations": conv,
                        "output_1": good if i % 2 == 0 else bad, "output_2": bad if i % 2 == 0 else good,
                        "preference": 1 if i % 2 == 0 else 2})
    path = tmp_path / "human_preference_10k.json"
    path.write_text(json.dumps(records))
    return path


def test_loader_reads_the_format_and_draws_n(tmp_path):
    path = write_file(tmp_path)
    recs = load_llava_rlhf_preferences(path)
    assert [r["preferred"] for r in recs] == [0, 1, 0, 1, 0, 1]
    assert recs[0]["question"] == "What is in picture h0x?" and recs[0]["responses"][0] == "GOODOUT answer 0"
    assert "User: What is in picture h1x?" in recs[1]["question"] and "Assistant: A dog." in recs[1]["question"]
    assert recs[1]["question"].endswith("What colour is it h1x?") and "<image>" not in recs[1]["question"]
    drawn = load_llava_rlhf_preferences(path, n=4, seed=1)
    assert len(drawn) == 4 and drawn == load_llava_rlhf_preferences(path, n=4, seed=1)
    jsonl = tmp_path / "as.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in json.loads(path.read_text())))
    assert load_llava_rlhf_preferences(jsonl) == recs
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversations": [], "output_1": {}, "image": "x"}]))
    with pytest.raises(ValueError, match="lacks"):
        load_llava_rlhf_preferences(bad)


def test_pairs_scored_by_the_judge_give_figure3(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    path = write_file(tmp_path)
    recs = load_llava_rlhf_preferences(path)

    def responder(body):  # a judge that rates the 'correct' output 4 and the 'wrong' one 1 on every attribute
        _, prompt = gemini_request_text(body)
        first_correct = prompt.index("GOODOUT") < prompt.index("BADOUT")
        hi = {a: 4 for a in ("helpfulness", "correctness", "coherence", "complexity", "verbosity")}
        lo = {a: 1 for a in hi}
        return json.dumps({"reasoning": "r", "responses": [hi, lo] if first_correct else [lo, hi]})

    with GeminiServer(responder=responder) as g:
        judge = make_judge("gemini", "gemini-fake", cache_dir=tmp_path / "cache", base_url=g.url)
        out = tmp_path / "run" / "human_preferences" / "annotations.jsonl"
        pairs = score_human_pairs(judge, recs, tmp_path / "coco", out)
        assert len(g.requests) == N and len(pairs) == N
        assert all(len(gemini_request_text(r["body"])) and r["body"]["contents"][0]["parts"][0].get("inlineData")
                   for r in g.requests)  # each pair is judged with its image
        # the human label is 1 when output_1 was preferred; the judge agrees, so every correlation is +1
        assert list(pairs["human_preference"]) == [1, 0, 1, 0, 1, 0]
        assert list(pairs["d_correctness"]) == [3, -3, 3, -3, 3, -3]
        corr = figure3(pairs, tmp_path / "fig3.png")
        assert corr.loc["d_helpfulness", "human_preference"] == pytest.approx(1.0)
        assert (tmp_path / "fig3.png").stat().st_size > 0
        g.clear()  # a rerun reads the written records: no call
        assert score_human_pairs(judge, recs, tmp_path / "coco", out).equals(pairs) and not g.requests
        assert not (tmp_path / "coco" / "batch_jobs").exists()

"""Official-format loaders and stage 01's prompt collection."""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from PIL import Image

from mmpref import data
from mmpref.world import build
from mmpref.io import read_jsonl, sha256_file


def _img(path, color, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), color).save(path, format=fmt)
    return path


def _scigraphqa_record(i, image_file):
    return {"image_file": image_file, "id": f"1702.0{i}v1-Figure{i}-1", "caption": "Figure: loss curve.",
            "title": "A paper", "abstract": "We study things.", "first_mention": "Fig. 1 shows ...",
            "response": "The loss goes down.",
            "conversations": [{"from": "human", "value": f"<image>\nWhat does figure {i} show?"},
                              {"from": "gpt", "value": f"Figure {i} shows a loss curve."},
                              {"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."}],
            "q_a_pairs": [[f"What does figure {i} show?", f"Figure {i} shows a loss curve."]]}


def test_load_scigraphqa_json_and_parquet(tmp_path):
    _img(tmp_path / "imgs" / "a.png", "red")
    rows = [_scigraphqa_record(i, "a.png") for i in range(3)]
    rows[2]["conversations"] = []  # falls back to q_a_pairs
    (tmp_path / "sci.json").write_text(json.dumps(rows))
    recs = data.load_scigraphqa(tmp_path / "sci.json", image_root=tmp_path / "imgs")
    assert len(recs) == 3
    r = recs[0]
    assert r["source"] == "scigraphqa" and r["question"] == "What does figure 0 show?"
    assert r["reference"] == "Figure 0 shows a loss curve." and r["answer"] is None and r["negative"] is False
    assert r["image_path"] == str(tmp_path / "imgs" / "a.png") and r["meta"]["id"] == "1702.00v1-Figure0-1"
    assert recs[2]["question"] == "What does figure 2 show?"
    assert len(data.load_scigraphqa(tmp_path / "sci.json", image_root=tmp_path / "imgs", limit=2)) == 2

    pd.DataFrame(rows[:2]).to_parquet(tmp_path / "sci.parquet")
    from_parquet = data.load_scigraphqa(tmp_path / "sci.parquet", image_root=tmp_path / "imgs")
    assert [r["question"] for r in from_parquet] == [r["question"] for r in recs[:2]]


def test_load_scigraphqa_rejects_bad_input(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"id": "x"}]))
    with pytest.raises(ValueError, match="image_file"):
        data.load_scigraphqa(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="broken.json"):
        data.load_scigraphqa(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text(json.dumps([{"image_file": "a.png", "conversations": []}]))
    with pytest.raises(ValueError, match="record 0"):
        data.load_scigraphqa(tmp_path / "empty.json")
    with pytest.raises(ValueError, match="no such file"):
        data.load_scigraphqa("does_not_exist.json")


def test_load_lrv_instruct_detects_negatives(tmp_path):
    _img(tmp_path / "image" / "2392588.jpg", "blue", "JPEG")
    _img(tmp_path / "image" / "17.png", "blue")
    rows = [
        {"image_id": "2392588", "question": "Can you see a blue teapot on the stove?",
         "answer": "There is no mention of a teapot on the white electric stove in the kitchen.", "task": "negative"},
        {"image_id": "2392588", "question": "Is the man wearing a hat?", "answer": "No, the man is not wearing a hat.",
         "task": "existence"},
        {"image_id": "17", "question": "What color is the car?", "answer": "The car is red.", "task": "attribute"},
        {"image_id": "2392588", "question": "Describe the image.", "answer": "A kitchen with a stove.",
         "task": "detailed description"},
    ]
    (tmp_path / "filter_cap.json").write_text(json.dumps({"annotations": rows}))
    recs = data.load_lrv_instruct(tmp_path / "filter_cap.json", image_root=tmp_path / "image")
    assert [r["negative"] for r in recs] == [True, True, False, False]
    assert recs[0]["image_path"].endswith("2392588.jpg") and recs[2]["image_path"].endswith("17.png")
    assert recs[0]["reference"].startswith("There is no mention") and recs[0]["answer"] is None
    assert recs[0]["meta"] == {"image_id": "2392588", "task": "negative"}
    with pytest.raises(ValueError, match="image_id"):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q"}) + "\n")
        data.load_lrv_instruct(tmp_path / "bad.jsonl")


def test_negative_phrasing():
    assert data.is_negative_lrv(None, "There is no triangle in the image.")
    assert data.is_negative_lrv("object_existence", "No, there is no green triangle.")
    assert not data.is_negative_lrv("counting", "There are 2 shapes.")
    assert not data.is_negative_lrv("color", "Yes, there is a red circle.")
    assert not data.is_negative_lrv("x", "Nothing unusual; the notebook is open.")


def _records(tmp_path, source, n_good, colors):
    recs = []
    for i in range(n_good):
        p = _img(tmp_path / source / f"{i}.png", colors[i % len(colors)])
        recs.append({"source": source, "question": f"{source} question {i}?", "answer": str(i),
                     "reference": f"The answer is {i}.", "negative": i % 2 == 0, "image_path": str(p),
                     "meta": {"i": i}})
    corrupt = tmp_path / source / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    recs.append({"source": source, "question": "corrupt?", "answer": None, "reference": None, "negative": False,
                 "image_path": str(corrupt), "meta": {}})
    recs.append({"source": source, "question": "missing?", "answer": None, "reference": None, "negative": False,
                 "image_path": str(tmp_path / source / "missing.png"), "meta": {}})
    return recs


def test_collect_prompts_hashes_skips_and_is_idempotent(tmp_path, caplog):
    records = {"scigraphqa": _records(tmp_path, "scigraphqa", 5, ["red", "green", "blue", "white", "black"]),
               "lrv": _records(tmp_path, "lrv", 5, ["red", "yellow", "gray", "purple", "orange"])}
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="mmpref.data"):
        summary = data.collect_prompts(records, 6, run, seed=0)  # more than the 5 usable: every record is tried
    assert summary["by_source"] == {"lrv": 5, "scigraphqa": 5} and summary["prompts"] == 10
    reasons = {(s["source"], s["image"].rsplit("/", 1)[-1]): s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {(src, f) for src in records for f in ("corrupt.png", "missing.png")}
    assert "FileNotFoundError" in reasons[("lrv", "missing.png")]
    assert "corrupt.png" in caplog.text and "missing.png" in caplog.text
    assert "only 5 usable prompts" in caplog.text

    rows = read_jsonl(run / "prompts.jsonl")
    assert len(rows) == 10 and {r["source"] for r in rows} == {"lrv", "scigraphqa"}
    for r in rows:
        assert set(r) == {"id", "source", "image", "question", "answer", "reference", "negative", "meta"}
        path = run / r["image"]
        assert path.suffix == ".png" and sha256_file(path) == path.stem
        assert r["id"] == data.prompt_id(r["source"], r["question"], path.stem)
    # red appears in both sources: one content-hash file serves both
    assert len(list((run / "images").glob("*.png"))) == 9
    first = (run / "prompts.jsonl").read_bytes()
    again = data.collect_prompts(records, {"scigraphqa": 6, "lrv": 6}, run, seed=0)
    assert (run / "prompts.jsonl").read_bytes() == first and again["images_written"] == 0

    fewer = data.collect_prompts(records, {"scigraphqa": 2, "lrv": 2}, tmp_path / "run2", seed=1)
    assert fewer["by_source"] == {"lrv": 2, "scigraphqa": 2}


def test_collect_reencodes_jpeg_to_png(tmp_path):
    p = _img(tmp_path / "x.jpg", "red", "JPEG")
    recs = {"lrv": [{"source": "lrv", "question": "q?", "answer": None, "reference": None, "negative": False,
                     "image_path": str(p), "meta": {}}]}
    data.collect_prompts(recs, 1, tmp_path / "run", seed=0)
    row = read_jsonl(tmp_path / "run" / "prompts.jsonl")[0]
    with Image.open(tmp_path / "run" / row["image"]) as im:
        assert im.format == "PNG"


def test_miniature_pools_round_trip(tmp_path):
    """The world's pools load with the official loaders (as stage 01 calls them) and split half/half."""
    wd = tmp_path / "world"
    build.build_world_data(wd, seed=0, n_visual_train=10, n_text_train=10, n_pool=30, n_bench=6)
    records = {"scigraphqa": data.load_scigraphqa(str(wd / "pools" / "scigraphqa.json"), image_root=wd / "pools"),
               "lrv": data.load_lrv_instruct(str(wd / "pools" / "lrv.json"), image_root=wd / "pools")}
    lrv_pool = json.loads((wd / "pools" / "lrv.json").read_text())
    assert [r["negative"] for r in records["lrv"]] == [r["task"] == "negative" for r in lrv_pool]
    assert all(r["answer"] and r["reference"] for rs in records.values() for r in rs)
    summary = data.collect_prompts(records, 12, tmp_path / "run", seed=0)
    assert summary["by_source"] == {"lrv": 12, "scigraphqa": 12} and not summary["skipped"]
    rows = read_jsonl(tmp_path / "run" / "prompts.jsonl")
    assert any(r["negative"] for r in rows if r["source"] == "lrv")
    assert not any(r["negative"] for r in rows if r["source"] == "scigraphqa")

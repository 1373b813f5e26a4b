"""`mmpref check`: missing and malformed data, the environment, the judge cost estimate, the recorded spend."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, mt_bench as ev_mt_bench
from mmpref import preflight
from mmpref.cli import main
from mmpref.config import dotted_to_nested, load_params
from mmpref.io import write_jsonl
from mmpref.judges import prompts
from test_benchmarks import BENCH, make_alpaca, make_llava_bench, make_mmbench, make_mmvet, make_mt_bench, make_pope

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "params" / "paper-13b.yaml"
TINY = ROOT / "params" / "tiny.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("MMPREF_RUN_DIR", "MMPREF_DATA_DIR", "GEMINI_API_KEY", "GOOGLE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)


def load(path: Path, tmp_path: Path, *sets: str, overrides: dict | None = None):
    base = dotted_to_nested([f"run.data_dir={tmp_path / 'data'}", f"run.run_dir={tmp_path / 'run'}", *sets])
    if overrides:
        base = {**base, **{k: {**base.get(k, {}), **v} for k, v in overrides.items()}}
    return load_params(path, base)


def image(path: Path, colour=(200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def populate(data: Path) -> dict:
    """Small files in the official formats for every item; returns params overrides pointing at them."""
    # prompt sources: SciGraphQA columns (a local JSON copy) and LRV-Instruction's filter_cap.json with VG images
    sci = [{"image_file": f"fig{i}.png", "id": f"s{i}", "caption": "c",
            "conversations": [{"from": "human", "value": f"<image>\nWhat does figure {i} show?"},
                              {"from": "gpt", "value": "A rising line."}]} for i in range(4)]
    (data / "scigraphqa").mkdir(parents=True)
    (data / "scigraphqa" / "train.json").write_text(json.dumps(sci))
    for i in range(4):
        image(data / "scigraphqa" / "imgs" / f"fig{i}.png", (i, 0, 0))
    lrv = [{"image_id": str(10 + i), "question": "Is there a teapot?", "answer": "There is no teapot.",
            "task": "negative"} for i in range(4)]
    (data / "lrv").mkdir()
    (data / "lrv" / "filter_cap.json").write_text(json.dumps(lrv))
    for i in range(4):
        image(data / "lrv" / "images" / f"{10 + i}.jpg", (0, i, 0))
    # benchmarks, with the writers of tests/test_benchmarks.py
    make_pope(data)
    make_mmbench(data)
    make_mmvet(data)
    make_llava_bench(data)
    make_mt_bench(data)
    write_jsonl(data / "mt_bench" / "reference_answer" / "gpt-4.jsonl",
                [{"question_id": q, "model_id": "gpt-4", "choices": [{"index": 0, "turns": ["a", "b"]}]}
                 for q in (81, 83)])
    make_alpaca(data)
    # judge templates and noise images
    write_jsonl(data / "mt_bench" / "judge_prompts.jsonl",
                [{**rec, "name": name} for name, rec in ev_mt_bench.FALLBACK_FASTCHAT_TEMPLATES.items()])
    (data / "alpaca_eval" / "prompt.txt").write_text(ev_alpaca_eval.FALLBACK_ALPACA_TEMPLATE)
    (data / "llava_bench" / "rule.json").write_text(json.dumps(
        {f"llava_bench_{c}": {"role": "Assistant", "prompt": "Score both."} for c in ("conv", "detail", "complex")}))
    image(data / "noise" / "blank.png", (255, 255, 255))
    return {
        "prompts": {"sources": [
            {"name": "scigraphqa", "path": "{data_dir}/scigraphqa/train.json",
             "image_root": "{data_dir}/scigraphqa/imgs", "n": 4},
            {"name": "lrv", "path": "{data_dir}/lrv/filter_cap.json", "image_root": "{data_dir}/lrv/images", "n": 4}]},
        "evaluate": {
            "benchmarks": {"pope": "{data_dir}/pope", "mmbench": "{data_dir}/mmbench/mmbench_dev.tsv",
                           "mmvet": "{data_dir}/mmvet", "llava_bench": "{data_dir}/llava_bench",
                           "mt_bench": "{data_dir}/mt_bench/question.jsonl",
                           "alpaca_eval": "{data_dir}/alpaca_eval/eval.json",
                           "mt_bench_noisy": "{data_dir}/mt_bench/question.jsonl"},
            "judge_templates": {"mt_bench": "{data_dir}/mt_bench/judge_prompts.jsonl",
                                "alpaca_eval": "{data_dir}/alpaca_eval/prompt.txt",
                                "llava_bench": "{data_dir}/llava_bench/rule.json",
                                "mmvet": "{data_dir}/mmvet/mm-vet_evaluator.py"},
            "noise_images": "{data_dir}/noise",
            "judge": {"backend": "openai", "model": "gpt-4-0613", "price_input_per_mtok": 30.0,
                      "price_output_per_mtok": 60.0}},
    }


# ---- the table --------------------------------------------------------------------------------------------------

def test_table_is_where_paper_params_point():
    params = load_params(PAPER)
    assert {d.key for d in preflight.DATASETS} >= {"scigraphqa", "lrv", *params.evaluate.benchmarks, "noise_images",
                                                    "judge_mt_bench", "judge_alpaca_eval", "judge_llava_bench",
                                                    "judge_mmvet"}
    for d in preflight.DATASETS:
        assert params.path(preflight.param_value(params, d.param)) == params.data_dir / d.path, d.key
        assert d.source and d.layout


def test_readme_holds_the_generated_table():
    assert preflight.markdown_table() in (ROOT / "README.md").read_text(encoding="utf-8")


# ---- data -------------------------------------------------------------------------------------------------------

def test_empty_data_dir_lists_every_configured_item_as_missing(tmp_path):
    rows = preflight.check_data(load(PAPER, tmp_path))
    by_key = {r["key"]: r for r in rows}
    assert set(by_key) == {"scigraphqa", "lrv", "pope", "mmbench", "mmvet", "llava_bench", "mt_bench", "alpaca_eval",
                           "mt_bench_noisy", "judge_mt_bench", "judge_alpaca_eval", "judge_llava_bench",
                           "judge_mmvet", "noise_images"}
    for r in rows:
        assert not r["ok"] and r["required"] and r["status"] == "missing", r
        assert r["source"] == preflight.BY_KEY[r["key"]].source
    assert by_key["pope"]["path"] == str(tmp_path / "data" / "pope")
    assert "hub dataset alexshengzhili/SciGraphQA-295K-train" in by_key["scigraphqa"]["problem"]


def test_official_format_files_turn_the_rows_ok(tmp_path):
    overrides = populate(tmp_path / "data")
    rows = preflight.check_data(load(PAPER, tmp_path, overrides=overrides))
    assert len(rows) == 14
    assert [r for r in rows if not r["ok"]] == []
    assert all(r["status"] == "ok" and r["note"] for r in rows)
    assert not (tmp_path / "data" / "mmbench" / "mmbench_dev_images").exists()  # the check decodes into a temp dir


def test_hub_source_is_not_missing_when_its_image_folder_is_there(tmp_path):
    image(tmp_path / "data" / "scigraphqa" / "imgs" / "a.png")
    row = preflight.check_data(load(PAPER, tmp_path))[0]
    assert row["key"] == "scigraphqa" and row["ok"] and "not checkable offline" in row["note"]


def test_corrupt_files_are_reported_not_raised(tmp_path):
    data = tmp_path / "data"
    overrides = populate(data)
    (data / "alpaca_eval" / "eval.json").write_text("[{not json")
    (data / "mmvet" / "images" / "v1_0.png").unlink()
    (data / "pope" / "coco_pope_popular.json").unlink()
    (data / "mt_bench" / "reference_answer" / "gpt-4.jsonl").unlink()
    write_jsonl(data / "mt_bench" / "judge_prompts.jsonl", [{"name": "single-v1", "prompt_template": "{question}",
                                                            "system_prompt": ""}])
    (data / "lrv" / "images" / "10.jpg").unlink()
    (data / "mmbench" / "mmbench_dev.tsv").write_text("index\tquestion\n0\twhat?\n")
    (data / "noise" / "blank.png").unlink()
    rows = {r["key"]: r for r in preflight.check_data(load(PAPER, tmp_path, overrides=overrides))}
    expect = {"alpaca_eval": "not valid JSON", "mmvet": "v1_0.png not found", "pope": "coco_pope_popular.json",
              "mt_bench": "missing reference answers", "judge_mt_bench": "single-math-v1",
              "lrv": "image not found", "mmbench": "lacks column(s)", "noise_images": "holds no images"}
    for key, text in expect.items():
        assert not rows[key]["ok"] and text in rows[key]["problem"], rows[key]
    assert rows["llava_bench"]["ok"] and rows["scigraphqa"]["ok"]


def test_miniature_world_files_are_made_by_stage_00(tmp_path):
    rows = preflight.check_data(load(TINY, tmp_path))
    assert rows and all(r["ok"] and r["note"] == "made by 00_world" for r in rows)
    assert {r["key"] for r in rows} == {"scigraphqa", "lrv", "pope", "mmbench", "mmvet", "llava_bench", "mt_bench",
                                        "alpaca_eval", "mt_bench_noisy", "noise_images"}
    # once stage 00 wrote them they are checked; the miniature's MT-Bench carries its references inline
    make_mt_bench(tmp_path / "run" / "world" / "benchmarks")
    rows = {r["key"]: r for r in preflight.check_data(load(TINY, tmp_path))}
    assert rows["mt_bench"]["ok"] and rows["mt_bench"]["note"] == "3 questions read; 2 with reference answers"


# ---- environment ------------------------------------------------------------------------------------------------

def test_environment_names_missing_deepspeed_and_keys_never_values(tmp_path, monkeypatch, capsys):
    secret = "sk-fake-0123456789-secret"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    rows = {r["what"].split(" (")[0]: r for r in preflight.check_environment(load(PAPER, tmp_path))}
    ds = rows["deepspeed"]
    if importlib.util.find_spec("deepspeed") is None:
        assert not ds["ok"] and ds["required"] and ds["fix"] == "pip install -e '.[gpu]'"
    assert rows["deepspeed config"]["ok"]
    assert rows["annotation judge"]["ok"] and rows["annotation judge"]["detail"] == "GEMINI_API_KEY is set"
    assert not rows["evaluation judge"]["ok"] and "OPENAI_API_KEY" in rows["evaluation judge"]["detail"]
    assert not rows["CUDA"]["required"]  # a warning only
    assert main(["check", str(PAPER), "--set", f"run.data_dir={tmp_path / 'data'}",
                 "--set", f"run.run_dir={tmp_path / 'run'}"]) == 1
    out = capsys.readouterr()
    assert secret not in out.out + out.err and "GEMINI_API_KEY is set" in out.out


def test_local_openai_server_needs_no_key(tmp_path):
    params = load(PAPER, tmp_path, "evaluate.judge.base_url=http://localhost:8000/v1", "train.deepspeed=null")
    rows = preflight.check_environment(params)
    assert next(r for r in rows if r["what"].startswith("evaluation judge"))["ok"]
    assert not any(r["what"].startswith("deepspeed") for r in rows)


# ---- cost -------------------------------------------------------------------------------------------------------

def test_cost_estimate_by_hand(tmp_path):
    write_jsonl(tmp_path / "data" / "mt_bench" / "question.jsonl",
                [{"question_id": q, "category": "writing", "turns": ["t1", "t2"]} for q in (1, 2, 3)])
    sets = ["prompts.sources=[{name: scigraphqa, path: alexshengzhili/SciGraphQA-295K-train, n: 10}, "
            "{name: lrv, path: '{data_dir}/lrv/filter_cap.json', n: 10}]",
            "judge.price_input_per_mtok=1.0", "judge.price_output_per_mtok=2.0", "sampling.k=4",
            "sampling.max_new_tokens=100", "train.methods=[dpo]", "evaluate.judge_templates={}",
            "evaluate.benchmarks={mt_bench: '{data_dir}/mt_bench/question.jsonl', pope: '{data_dir}/pope'}",
            "evaluate.judge.price_input_per_mtok=10.0", "evaluate.judge.price_output_per_mtok=30.0",
            "evaluate.max_new_tokens=50"]
    cost = preflight.estimate_cost(load(PAPER, tmp_path, *sets)).set_index("job")
    q = "x" * preflight.DEFAULT_CHARS["question"]  # no prompt files: n questions of the default length
    gold_in = 20 * ((len(prompts.GOLD_SYSTEM) + len(prompts.render_gold_prompt(q))) / 4 + 258)
    gold_out = 20 * (60 + 1000)  # gemini-2.5-pro: visible reply + thinking tokens
    gold = cost.loc["gold answers"]
    assert (gold.calls, gold.input_tokens, gold.output_tokens) == (20, round(gold_in), gold_out)
    assert gold.usd == pytest.approx((round(gold_in) * 1.0 + gold_out * 2.0) / 1e6, rel=1e-6)
    ann = cost.loc["annotation"]
    ann_in = 20 * ((len(prompts.ANNOTATION_SYSTEM) + len(prompts.render_annotation_prompt(q, ["x" * 400] * 4))) / 4
                   + 258)
    assert (ann.calls, ann.input_tokens, ann.output_tokens) == (20, round(ann_in), 20 * 1600)
    # MT-Bench: 3 questions x 2 turns for base-lm, vit, dpo and the three DPO fractions
    mt = cost.loc["judge mt_bench"]
    assert (mt.models, mt["items"], mt.calls, mt.output_tokens) == (6, 3, 36, 36 * 250)
    one = [ev_mt_bench.render_fastchat_single(["t1"], ["x" * 200]),
           ev_mt_bench.render_fastchat_single(["t1", "t2"], ["x" * 200] * 2, multi_turn=True)]
    mt_in = 6 * 3 * sum((len(s) + len(p)) / 4 for s, p, _ in one)
    assert mt.input_tokens == round(mt_in)
    assert mt.usd == pytest.approx((mt_in * 10 + 36 * 250 * 30) / 1e6, rel=1e-6)
    pope = cost.loc["judge pope"]
    assert (pope.calls, pope.usd) == (0, 0.0)
    # twice the prompts, twice the calls, tokens and dollars; twice the price, twice the dollars
    double = preflight.estimate_cost(load(PAPER, tmp_path, *[s.replace("n: 10", "n: 20") for s in sets],
                                          "judge.price_input_per_mtok=2.0", "judge.price_output_per_mtok=4.0"))
    d = double.set_index("job").loc["annotation"]
    assert (d.calls, d.output_tokens) == (40, 2 * ann.output_tokens) and abs(d.input_tokens - 2 * ann_in) <= 1
    assert d.usd == pytest.approx(4 * ann.usd, rel=1e-6)


def test_unknown_price_is_nan_with_a_note_and_rubric_is_free(tmp_path):
    cost = preflight.estimate_cost(load(PAPER, tmp_path, "judge.price_input_per_mtok=null")).set_index("job")
    assert math.isnan(cost.loc["annotation"].usd) and "price unknown" in cost.loc["annotation"].note
    tiny = preflight.estimate_cost(load(TINY, tmp_path))
    assert (tiny["usd"] == 0).all() and tiny.loc[tiny.job == "annotation", "calls"].item() == 300


# ---- the command and the recorded spend -------------------------------------------------------------------------

def test_check_exit_codes(tmp_path, capsys):
    assert main(["check", str(TINY), "--set", f"run.run_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "made by 00_world" in out and "ready" in out and "Judge cost estimate" in out
    assert main(["check", str(PAPER), "--set", f"run.data_dir={tmp_path / 'data'}"]) == 1
    out = capsys.readouterr().out
    assert "AoiDragon/POPE" in out and "missing" in out
    assert main(["check", str(PAPER), "--set", "nope.key=1"]) == 2


def test_judge_spend_and_manifest_total(tmp_path):
    from mmpref.runner import Stage, judge_spend

    params = load(PAPER, tmp_path)
    cache = params.run_dir / "judge_cache"
    for i, (task, n_in, n_out) in enumerate([("annotate", 1000, 500), ("annotate", 3000, 1500),
                                              ("answer", 7, 7)]):
        path = cache / f"{i:02d}" / f"{i:02d}key.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"task": task, "judge_id": "gemini:gemini-2.5-pro",
                                    "reply": {"text": "", "input_tokens": n_in, "output_tokens": n_out}}))
    usage = judge_spend(params.run_dir, ["annotate"], params.judge)
    assert (usage["calls"], usage["input_tokens"], usage["output_tokens"]) == (2, 4000, 2000)
    assert usage["cost_usd"] == pytest.approx((4000 * 1.25 + 2000 * 10.0) / 1e6)
    assert usage["judge_ids"] == ["gemini:gemini-2.5-pro"]
    unpriced = judge_spend(params.run_dir, ["annotate"], params.judge.model_copy(update={"price_input_per_mtok": None}))
    assert unpriced["cost_usd"] is None
    for name in ("prompts.jsonl", "samples.jsonl", "gold.jsonl"):  # what 01 and 02 write, which 03 reads
        (params.run_dir / name).write_text("{}\n")
    stage = Stage(str(PAPER), {"run": {"run_dir": str(params.run_dir)}}, "03_annotate")
    stage.done(annotations=2, judge_usage=usage)
    spent = preflight.spent(params)
    assert spent["stage"].tolist() == ["03_annotate"] and spent["usd"].item() == pytest.approx(0.025)


def test_real_benchmark_files_pass_the_check(tmp_path):
    if not (BENCH / "mt_bench" / "question.jsonl").is_file():
        pytest.skip("official benchmark files absent")
    data = tmp_path / "data"
    (data / "mt_bench" / "reference_answer").mkdir(parents=True)
    shutil.copy(BENCH / "mt_bench" / "question.jsonl", data / "mt_bench" / "question.jsonl")
    shutil.copy(BENCH / "mt_bench" / "judge_prompts.jsonl", data / "mt_bench" / "judge_prompts.jsonl")
    shutil.copy(BENCH / "mt_bench" / "reference_answer_gpt-4.jsonl",
                data / "mt_bench" / "reference_answer" / "gpt-4.jsonl")
    shutil.copytree(BENCH / "alpaca_eval", data / "alpaca_eval")
    (data / "llava-bench-in-the-wild").mkdir()
    shutil.copy(BENCH / "llava_bench" / "rule.json", data / "llava-bench-in-the-wild" / "rule.json")
    rows = {r["key"]: r for r in preflight.check_data(load(PAPER, tmp_path))}
    for key in ("mt_bench", "mt_bench_noisy", "alpaca_eval", "judge_mt_bench", "judge_alpaca_eval",
                "judge_llava_bench"):
        assert rows[key]["ok"], rows[key]
    cost = preflight.estimate_cost(load(PAPER, tmp_path)).set_index("job")
    assert cost.loc["judge alpaca_eval", "items"] == 805 and cost.loc["judge mt_bench", "items"] == 80
    note = cost.loc["judge mt_bench", "note"]
    assert "from the file" in note and "fallback" not in note

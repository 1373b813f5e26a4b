"""The registries: a benchmark module registered at run time flows through run_benchmark, config validation, stage
09's plan, the tables and the bootstrap, the miniature world's build (its builder) and the rubric judge (its
grading); a method added to the registry flows into config validation and the stage
plan; repeated judge runs report mean and standard deviation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from mmpref import stages as stage_table
from mmpref import figures, methods, pairing, runner, stats
from mmpref.config import ParamsError, load_params
from mmpref.evaluate import registry, suite
from mmpref.evaluate.benchmark import Benchmark, DataFile, Score
from mmpref.evaluate.protocol import (RULE_JUDGE, ItemProtocol, judge_run_rows, run_benchmark, run_items, score_records,
                                      tidy_rows)
from mmpref.io import read_jsonl, write_jsonl
from mmpref.judges.base import Judge, JudgeReply, JudgeRequest, judge_tasks
from mmpref.judges.rubric import RubricJudge
from mmpref.sampling import ChatRequest
from mmpref.world import build

import pandas as pd


# ---- a toy benchmark: one module's worth of parts --------------------------------------------------------------

def _toy_load(path, limit=None):
    rows = read_jsonl(Path(path))
    return rows[:limit] if limit else rows


def _toy_score(recs):
    n = len(recs)
    return {"accuracy": Score(100.0 * sum(r["answers"][0] == r["truth"] for r in recs) / n, n)}


def _toy_run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
             **options):
    items = _toy_load(data_path, limit)
    protocol = ItemProtocol("toy", key=lambda it: it["id"], requests=lambda it: [ChatRequest(turns=[it["q"]])],
                            describe=lambda it: {"truth": it["a"]})
    recs = run_items(protocol, items, generate, out_jsonl, model)
    return tidy_rows(model, "toy", score_records("toy", recs), RULE_JUDGE)


def _toy_build_miniature(build):
    """The miniature world's copy: n_bench sums drawn from the build's generator for this benchmark."""
    rng = build.rng("toy")
    rows = []
    for i in range(build.n_bench):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        rows.append({"id": f"t{i}", "q": f"{a}+{b}?", "a": str(a + b)})
    write_jsonl(build.folder / "toy" / "toy.jsonl", rows)
    return {"toy": len(rows)}


def _toy_miniature_texts(folder):
    return [r["q"] for r in read_jsonl(folder / "toy" / "toy.jsonl")]


def _toy_rubric_grade(inputs, truth):
    return f"toy verdict: {'right' if inputs['answer'] == truth['answer'] else 'wrong'}"


TOY = Benchmark(
    name="toy", display="Toy", headline="accuracy", headline_name="Toy accuracy", order=9, text_only=True,
    run=_toy_run, score=_toy_score, load=_toy_load, check=lambda p, params=None: "ok",
    build_miniature=_toy_build_miniature, miniature_texts=_toy_miniature_texts,
    judge_task="grade_toy", rubric_grade=_toy_rubric_grade,
    data=DataFile("toy", "Toy questions", "09_evaluate", "evaluate.benchmarks.toy", "toy.jsonl",
                  ("toy.jsonl",), "made here"))


@pytest.fixture
def toy(tmp_path):
    registry.register(TOY)
    path = tmp_path / "toy.jsonl"
    write_jsonl(path, [{"id": f"t{i}", "q": f"{i}+1?", "a": str(i + 1)} for i in range(4)])
    yield path
    registry.unregister("toy")


def test_a_registered_benchmark_runs_through_the_suite(toy, tmp_path):
    answers = {"0+1?": "1", "1+1?": "2", "2+1?": "4", "3+1?": "4"}
    generate = lambda reqs: [answers[r.turns[0]] for r in reqs]
    rows = run_benchmark("toy", toy, generate, None, tmp_path / "out.jsonl", "vit")
    assert rows == [{"model": "vit", "benchmark": "toy", "metric": "accuracy", "value": 75.0, "n": 4,
                     "judge": "rule"}]
    # config accepts it, stage 09 plans it (text-only: the base LM too), tables and the bootstrap read its headline
    params = load_params("params/tiny.yaml", {"evaluate": {"benchmarks": {"toy": str(toy)}},
                                              "run": {"run_dir": str(tmp_path / "run")}})
    plan = {name: benches for name, _, benches in suite.plan(params, tmp_path)}
    assert "toy" in plan["base-lm"] and "toy" in plan["vit"]
    frame = pd.DataFrame([{**r, "model": "vit"} for r in rows])
    assert figures.headline_values(frame) == {("vit", "toy"): 75.0}
    got = stats.bootstrap("toy", read_jsonl(tmp_path / "out.jsonl"), n_resamples=50)
    assert got["value"] == 75.0 and got["lo"] <= 75.0 <= got["hi"]
    # rule-scored: one run, no sd
    assert suite.score_runs(lambda r: rows, False, 3)[0]["judge_runs"] == 0


def test_the_world_builds_a_registered_benchmarks_miniature_copy(tmp_path):
    """build_world_data runs every registered builder (after the paper's benchmarks), the tokenizer's corpus reads its
    texts, and the world's fingerprint hashes the builder's module, so a changed builder builds the world again."""
    small = dict(n_visual_train=20, n_text_train=20, n_pool=5, n_bench=6, n_text_bench=8)
    world = load_params("params/tiny.yaml").world
    without = build.world_fingerprint(world, 0)
    registry.register(TOY)
    try:
        counts = build.build_world_data(tmp_path / "world", seed=0, **small)
        with_toy = build.world_fingerprint(world, 0)
        corpus = list(build.vocabulary_corpus(tmp_path / "world"))
    finally:
        registry.unregister("toy")
    rows = read_jsonl(tmp_path / "world" / "benchmarks" / "toy" / "toy.jsonl")
    assert counts["toy"] == 6 == len(rows) and list(counts)[:2] == ["mt_bench", "alpaca_eval"]
    assert list(counts).index("toy") == list(counts).index("noise_images") + 1   # built last
    assert all(int(r["a"]) == sum(map(int, r["q"].rstrip("?").split("+"))) for r in rows)
    assert _toy_load(tmp_path / "world" / "benchmarks" / "toy" / "toy.jsonl") == rows   # its loader reads it
    assert corpus[-6:] == [r["q"] for r in rows]
    assert with_toy != without


def test_the_rubric_judge_grades_a_registered_benchmarks_task(tmp_path):
    """A registered benchmark's judge task is a valid JudgeRequest task, and the rubric judge answers it with the
    benchmark's own rubric grading; unregistered, the task is unknown again."""
    def ask():
        return JudgeRequest(task="grade_toy", prompt="Is 2 right?", inputs={"answer": "2"}, truth={"answer": "2"})

    with pytest.raises(ValidationError, match="unknown judge task 'grade_toy'"):
        ask()
    registry.register(TOY)
    try:
        assert "grade_toy" in judge_tasks()
        assert RubricJudge(cache_dir=tmp_path / "cache").complete(ask()).text == "toy verdict: right"
    finally:
        registry.unregister("toy")
    with pytest.raises(ValidationError, match="unknown judge task"):
        ask()


def test_judge_requests_validated_from_many_threads_at_once_see_every_benchmarks_task():
    """Grading threads validate their requests against the registry: the first ones to ask wait for its discovery
    instead of seeing it half-filled (a fresh interpreter, where nothing is discovered yet)."""
    code = ("from concurrent.futures import ThreadPoolExecutor\n"
            "from mmpref.judges.base import JudgeRequest\n"
            "with ThreadPoolExecutor(8) as pool:\n"
            "    done = list(pool.map(lambda i: JudgeRequest(task='grade_mmvet', prompt=str(i)), range(8)))\n"
            "print(len(done))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "8", out.stderr[-2000:]


def test_unregistered_benchmark_is_a_config_error():
    with pytest.raises(ParamsError, match="unknown benchmark"):
        load_params("params/tiny.yaml", {"evaluate": {"benchmarks": {"toy": "x"}}})


def test_a_registered_method_flows_into_config_and_the_stage_plan(monkeypatch, tmp_path):
    with pytest.raises(ParamsError, match="unknown method"):
        load_params("params/tiny.yaml", {"train": {"methods": ["ipo"]}})
    monkeypatch.setattr(methods, "METHODS", [*methods.METHODS, methods.Method("ipo", "IPO", "dpo", "08c_train_ipo",
                                                                            "dpo", pairing.dpo_rows)])
    params = load_params("params/tiny.yaml", {"train": {"methods": ["dpo", "ipo"]},
                                              "run": {"run_dir": str(tmp_path / "run")}})
    stages = stage_table.active(params)
    assert "08c_train_ipo" in stages and "05_train_sft_gold" not in stages
    assert stage_table.get("08c_train_ipo").sections == ("run", "models", "train", "evaluate")
    assert "08c_train_ipo" in stage_table.get("09_evaluate").upstream
    assert ("ipo", str(tmp_path / "adapters" / "ipo")) in [(n, a) for n, a, _ in suite.plan(params, tmp_path)]
    assert figures.fraction_model(0.5) == "dpo_frac0.5" == methods.fraction_adapter("dpo", 0.5)


# ---- judge runs ------------------------------------------------------------------------------------------------

class VaryingJudge(Judge):
    """Grades every MM-Vet answer 0.5 in run 1, 1.0 in run 2 and 0.0 in run 3 (replies read by the first token)."""

    judge_id = "varying-v1"

    def __init__(self, cache_dir=None):
        super().__init__(cache_dir=cache_dir, max_concurrency=1)
        self.calls: list[JudgeRequest] = []

    def _call(self, req: JudgeRequest) -> JudgeReply:
        self.calls.append(req)
        return JudgeReply(text={1: "0.5", 2: "1.0", 3: "0.0"}[req.judge_run], judge_id=self.judge_id)


def _mmvet(root: Path) -> Path:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(root / "images" / "a.png")
    import json

    (root / "mm-vet.json").write_text(json.dumps({f"v{i}": {"imagename": "a.png", "capability": ["rec"],
                                                           "question": f"q{i}", "answer": "a"} for i in range(3)}))
    return root


def test_judge_runs_report_mean_and_sd_and_reuse_the_answers(tmp_path):
    data, out = _mmvet(tmp_path / "mmvet"), tmp_path / "eval" / "mmvet.jsonl"
    generated = []

    def generate(reqs):
        generated.extend(reqs)
        return ["an answer"] * len(reqs)

    judge = VaryingJudge(cache_dir=tmp_path / "cache")
    score = lambda r: run_benchmark("mmvet", data, generate, judge, out, "vit", judge_run=r)
    rows = {r["metric"]: r for r in suite.score_runs(score, True, 3)}
    assert len(generated) == 3                      # answered once, graded three times
    assert rows["total"]["value"] == pytest.approx(50.0)
    assert rows["total"]["sd"] == pytest.approx(math.sqrt(((50 - 50) ** 2 + 50 ** 2 + 50 ** 2) / 3))
    assert rows["total"]["judge_runs"] == 3 and rows["total"]["judge"] == "varying-v1"
    assert rows["judge_failures"]["value"] == 0 and rows["judge_failures"]["n"] == 9
    assert out.with_name("mmvet.judge2.jsonl").exists() and out.with_name("mmvet.judge3.jsonl").exists()
    # run 1 keeps today's cache keys; runs 2 and 3 are distinct calls
    keys = [judge.cache_key(r) for r in judge.calls]
    assert len(set(keys)) == 9
    plain = judge.calls[0].model_copy(update={"judge_run": 1})
    assert judge.cache_key(plain) == judge.cache_key(JudgeRequest(**{k: v for k, v in plain.model_dump().items()
                                                                      if k != "judge_run"}))
    # a rerun hits the cache for every run
    before = len(judge.calls)
    suite.score_runs(score, True, 3)
    assert len(judge.calls) == before


def test_the_rubric_judge_has_no_variance():
    rows = judge_run_rows([[{"model": "m", "benchmark": "b", "metric": "total", "value": 40.0, "n": 3,
                             "judge": "rubric-v3"}]] * 2)
    assert rows[0]["sd"] == 0.0 and rows[0]["value"] == 40.0 and rows[0]["judge_runs"] == 2


def test_judge_runs_param_and_cli_flag(monkeypatch):
    assert load_params("params/tiny.yaml").evaluate.judge_runs == 1
    with pytest.raises(ParamsError, match="judge_runs"):
        load_params("params/tiny.yaml", {"evaluate": {"judge_runs": 0}})
    seen = {}
    monkeypatch.setattr(runner, "run", lambda params, stages=None, force=None, overrides=None, retry_failed=False:
                        seen.update(overrides) or [])
    from mmpref.cli import main

    assert main(["run", "params/tiny.yaml", "--judge-runs", "3", "--set", "run.name=x"]) == 0
    assert seen == {"evaluate": {"judge_runs": 3}, "run": {"name": "x"}}

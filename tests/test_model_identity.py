"""Results belong to the model that made them (issue 19, "Results that belong to the wrong model"):

- stage 09 and the DPO sweep key every saved answer by the content identity of the model that answered (adapter file
  hashes + decoding settings), so a retrained adapter answers again, and an unchanged one reuses everything;
- an adapter is finished only when its files load and are the ones saved; a damaged one is named and trained again,
  and `mmpref run --force STAGE` makes the training stage train again;
- a stage's inputs are the files it reads (04 reads 02's gold.jsonl; 09 reads the world's checkpoints);
- annotation and gold answers made by another judge are asked again of the current one.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import pytest
from PIL import Image

from mmpref import stages as stage_table
from mmpref import methods, runner, train
from mmpref.annotate import annotate_samples, collect_gold
from mmpref.config import LoraParams, SFTParams, TrainOptions, load_params
from mmpref.evaluate import suite
from mmpref.io import read_jsonl, write_jsonl
from mmpref.judges.rubric import RubricJudge
from mmpref.train import TrainSettings, train_sft
from tests.test_moved_run import build_run

ROWS = [{"prompt_id": "p0", "image": "images/0.png", "question": "What color is the square?",
         "response": "The square is blue."}]


def settings(lr: float = 1e-3, save_steps: int | None = None) -> TrainSettings:
    return TrainSettings(method="sft_gold", trainer=SFTParams(learning_rate=lr, batch_size=1, grad_accum=1, epochs=1,
                                                              max_length=64, train_projector=False),
                         lora=LoraParams(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                         # no warm-up: the step moves it
                         options=TrainOptions(warmup_ratio=0.0, logging_steps=1, save_steps=save_steps))


def make_pope(folder: Path, n: int = 4) -> Path:
    """A POPE folder in the official layout (coco_pope_random.json, JSON lines) with its pictures."""
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        Image.new("RGB", (16, 16), ("blue", "red")[i % 2]).save(folder / "images" / f"{i}.png")
        rows.append({"question_id": i, "image": f"{i}.png", "text": f"Is there a {('square', 'circle')[i % 2]}?",
                     "label": ("yes", "no")[i % 2]})
    write_jsonl(folder / "coco_pope_random.json", rows)
    return folder


class Generations:
    """Counts the requests the run's models are asked (HF generate of mmpref.sampling.Policy)."""

    def __init__(self, monkeypatch):
        from mmpref.sampling import Policy

        self.n = 0
        real = Policy.generate

        def counted(policy, requests, **kw):
            self.n += len(requests)
            return real(policy, requests, **kw)

        monkeypatch.setattr(Policy, "generate", counted)


# ---- stage 09: answers keyed by the adapter that gave them ------------------------------------------------------

def test_09_answers_again_for_a_retrained_adapter_and_reuses_an_unchanged_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    vit, adapter = run / "models" / "vit", run / "adapters" / "sft_gold"
    pope = make_pope(tmp_path / "pope")
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(run)}, "models": {"policy": str(vit)},
                                              "evaluate": {"benchmarks": {"pope": str(pope)}}})
    monkeypatch.setattr(suite, "plan", lambda params, run_dir: [("sft_gold", str(adapter), ["pope"])])
    asked = Generations(monkeypatch)

    train_sft(str(vit), ROWS, run, adapter, settings(1e-3))
    suite.evaluate_all(params, run)
    assert asked.n == 4
    first = read_jsonl(run / "eval" / "sft_gold" / "pope.jsonl")

    # nothing changed: every answer and the rows are reused
    suite.evaluate_all(params, run)
    assert asked.n == 4

    # `--set train.sft.learning_rate=...`: 05 retrains the adapter under the same name; 09 must answer again
    train_sft(str(vit), ROWS, run, adapter, settings(0.5))
    suite.evaluate_all(params, run)
    assert asked.n == 8, "09 reused the answers of the adapter trained before"
    again = read_jsonl(run / "eval" / "sft_gold" / "pope.jsonl")
    assert {r["answered_by"] for r in again} == {suite.answer_identity(params, "sft_gold", str(adapter))}
    assert {r["answered_by"] for r in again}.isdisjoint({r["answered_by"] for r in first})

    # a decoding setting that changes the answers is part of the identity too
    longer = load_params("params/tiny.yaml", {"run": {"run_dir": str(run)}, "models": {"policy": str(vit)},
                                              "evaluate": {"benchmarks": {"pope": str(pope)}, "max_new_tokens": 8}})
    suite.evaluate_all(longer, run)
    assert asked.n == 12


def test_the_dpo_sweep_answers_again_for_a_retrained_trial(tmp_path, monkeypatch):
    from mmpref.sampling import Policy
    from mmpref.evaluate.llava_bench import build_llava_bench
    from mmpref.world.scenes import Images

    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    bench = tmp_path / "world" / "benchmarks"  # as the world builds it: world/benchmarks/<name>/
    build_llava_bench(Images(tmp_path / "world", 48), random.Random(0), bench, 3, name="dev")
    sweep = {"betas": [0.1], "average_log_prob": [False], "learning_rates": [0.0005], "dev_path": str(bench / "dev")}
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(run)},
                                              "models": {"policy": str(run / "models" / "vit")},
                                              "train": {"dpo": {"sweep": sweep}}})
    weights = {"version": 0}

    def trained(policy_ref, rows, run_dir, out_dir, settings, **kw):  # a trial's training: its adapter files
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter_model.safetensors").write_bytes(f"weights {weights['version']}".encode())
        (out_dir / "adapter_config.json").write_text("{}")
        (out_dir / "mmpref_train.json").write_text(json.dumps({"fingerprint": "same inputs"}))
        return {"final_loss": 0.5}

    asked = []

    class Answers:
        def greedy_fn(self, *args):
            return lambda reqs: asked.extend(reqs) or ["The answer is 3." for _ in reqs]

    monkeypatch.setattr(train, "train_dpo", trained)
    monkeypatch.setattr(Policy, "from_params", classmethod(lambda cls, *a, **k: Answers()))
    base = train.settings_from_params(params, "dpo")
    ref_cache = run / "adapters" / "reference_logps.jsonl"

    train.dpo_sweep(params, [], base, ref_cache)
    assert len(asked) == 6  # the trial's 3 dev items and the untrained policy's (the sweep's reference row)
    train.dpo_sweep(params, [], base, ref_cache)  # the same trial adapter: its dev answers are reused
    assert len(asked) == 6
    weights["version"] = 1  # the trial trained again (e.g. --force 08), other weights under the same tag
    train.dpo_sweep(params, [], base, ref_cache)
    assert len(asked) == 9, "the sweep scored the new trial adapter with the old adapter's dev answers"


# ---- adapters: finished only when whole; --force trains again --------------------------------------------------

def test_a_damaged_adapter_is_named_and_trained_again_and_force_retrains(tmp_path, monkeypatch, caplog):
    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    vit, out = str(run / "models" / "vit"), run / "adapters" / "sft_gold"
    trained = []
    real = train.sft_trainer
    monkeypatch.setattr(train, "sft_trainer", lambda *a, **k: trained.append(1) or real(*a, **k))

    train_sft(vit, ROWS, run, out, settings(save_steps=1))  # a checkpoint per step, as a long training keeps
    weights = out / "adapter_model.safetensors"
    assert len(trained) == 1 and list((out / "trainer").glob("checkpoint-*"))
    train_sft(vit, ROWS, run, out, settings(save_steps=1))  # unchanged: reused
    assert len(trained) == 1

    # a truncated adapter file (a copy cut short): named in a warning and trained again from the start (its
    # checkpoints may be damaged too), not "skipped, exists"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="mmpref.train"):
        train_sft(vit, ROWS, run, out, settings(save_steps=1))
    assert len(trained) == 2
    assert any(str(weights) in r.getMessage() and "does not load" in r.getMessage() for r in caplog.records)
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    assert weights.read_bytes() == data  # whole again (CPU training is deterministic)

    # same size, one byte of the weights changed: only the sha256 recorded at save time tells
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mmpref.train"):
        train_sft(vit, ROWS, run, out, settings())
    assert len(trained) == 3 and any("sha256 differs" in r.getMessage() for r in caplog.records)

    # an adapter saved before the hashes were recorded: checked by loading, kept, its hashes recorded now
    record = json.loads((out / "mmpref_train.json").read_text())
    del record["adapter_sha256"]
    (out / "mmpref_train.json").write_text(json.dumps(record))
    train_sft(vit, ROWS, run, out, settings())
    assert len(trained) == 3
    assert json.loads((out / "mmpref_train.json").read_text())["adapter_sha256"] == train.adapter_hashes(out)

    # forced (`mmpref run --force 05`): trained again although finished
    train_sft(vit, ROWS, run, out, settings(), force=True)
    assert len(trained) == 4


def test_run_force_tells_the_forced_stage_to_redo_its_work(tmp_path, monkeypatch):
    import papermill

    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    seen = {}

    def execute(src, dst, parameters=None, **kw):  # the kernel's environment, as papermill starts it
        seen[Path(src).stem] = os.environ.get(runner.FORCE_ENV, "")
        Path(dst).write_text(Path(src).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    runner.run("params/tiny.yaml", stages="05")
    runner.run("params/tiny.yaml", stages="05", force=["05"])
    assert seen == {"05_train_sft_gold": "05_train_sft_gold"}
    runner.run("params/tiny.yaml", stages="05")
    assert seen == {"05_train_sft_gold": ""}
    # what the stage's notebook reads: Stage.force
    monkeypatch.setenv(runner.FORCE_ENV, "00_world")
    assert runner.Stage("params/tiny.yaml", {}, "00_world").force
    monkeypatch.setenv(runner.FORCE_ENV, "05_train_sft_gold")
    assert not runner.Stage("params/tiny.yaml", {}, "00_world").force


# ---- a stage's inputs are the files it reads ---------------------------------------------------------------------

def complete_run(run_dir: Path, params):
    """Every stage from 00 to 09 recorded complete over stand-in files."""
    for m in ("base-lm", "vit"):
        (run_dir / "world" / m).mkdir(parents=True, exist_ok=True)
        (run_dir / "world" / m / "model.safetensors").write_bytes(f"{m} weights".encode())
    for name in ("prompts", "samples", "gold", "annotations"):
        write_jsonl(run_dir / f"{name}.jsonl", [{"prompt_id": "p0", "what": name}])
    for name in methods.datasets():
        write_jsonl(run_dir / "datasets" / f"{name}.jsonl", [{"prompt_id": "p0"}])
    for name in methods.names():  # every registered method's stand-in adapter
        (run_dir / "adapters" / name).mkdir(parents=True)
        (run_dir / "adapters" / name / "adapter_model.safetensors").write_bytes(f"{name} adapter".encode())
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "results.csv").write_text("model,benchmark,metric,value\n")
    for stage in stage_table.active(params)[:-1]:  # any other output a stage names (03b's reward model)
        for path in stage_table.outputs(params, stage):
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(f"{stage} stand-in".encode())
    for stage in stage_table.active(params)[:-1]:  # all but 10
        runner.Stage("params/tiny.yaml", {}, stage).done()
        assert runner.stage_state(params, stage) == "complete", stage


def test_04_reads_the_gold_answers_and_09_the_world_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    params = load_params("params/tiny.yaml")
    complete_run(tmp_path, params)

    # gold answers re-asked by --retry-failed: 04 (which turns them into sft_gold.jsonl) must run again
    write_jsonl(tmp_path / "gold.jsonl", [{"prompt_id": "p0", "what": "gold", "answer": "re-asked"}])
    state, why = runner.stage_why(params, "04_pair")
    assert state == "stale" and "02_sample" in why
    assert runner.stage_state(params, "03_annotate") == "complete"  # 03 does not read gold.jsonl
    runner.Stage("params/tiny.yaml", {}, "04_pair").done()
    assert runner.stage_state(params, "04_pair") == "complete"

    # the visually tuned checkpoint changed (the world rebuilt): 09 answers with it, so it must run again
    (tmp_path / "world" / "vit" / "model.safetensors").write_bytes(b"other weights")
    state, why = runner.stage_why(params, "09_evaluate")
    assert state == "stale" and "00_world" in why
    # a training stage reads only its own dataset
    write_jsonl(tmp_path / "datasets" / "steerlm.jsonl", [{"prompt_id": "p1"}])
    runner.Stage("params/tiny.yaml", {}, "00_world").done()
    assert runner.stage_state(params, "05_train_sft_gold") == "stale"  # the world changed under it
    for stage in ("05_train_sft_gold", "07_train_rejection_sampling", "08_train_dpo"):
        runner.Stage("params/tiny.yaml", {}, stage).done()
    assert runner.stage_state(params, "06_train_steerlm") == "stale"
    assert runner.stage_state(params, "05_train_sft_gold") == "complete"


# ---- the judge's identity ---------------------------------------------------------------------------------------

class OtherJudge(RubricJudge):
    """Another judge (another backend or model id), counting its calls."""

    judge_id = "other-judge"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = 0

    def _call(self, req):
        self.calls += 1
        return super()._call(req)


def test_a_switched_judge_annotates_and_answers_again(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    prompts, samples = [], []
    for i in range(3):
        (run_dir / "images" / f"{i}.png").write_bytes(f"image {i}".encode())
        prompts.append({"id": f"p{i}", "source": "scigraphqa", "image": f"images/{i}.png",
                        "question": f"What is {i} plus 5?", "answer": str(i + 5), "reference": f"{i} plus 5 is {i + 5}.",
                        "negative": False, "meta": {}})
        samples.append({"prompt_id": f"p{i}", "responses": [f"{i} plus 5 is {i + 5}.", f"{i} plus 5 is {i + 6}."]})
    annotations, gold = run_dir / "annotations.jsonl", run_dir / "gold.jsonl"
    annotate_samples(RubricJudge(), prompts, samples, run_dir, annotations)
    collect_gold(RubricJudge(), prompts, run_dir, gold)

    other = OtherJudge()
    got = annotate_samples(other, prompts, samples, run_dir, annotations)
    assert other.calls == 3, "the old judge's annotations were kept"
    assert {r["judge"] for r in got} == {"other-judge"}
    answered = collect_gold(other, prompts, run_dir, gold)
    assert other.calls == 6 and {r["judge"] for r in answered} == {"other-judge"}

    # the same judge again: everything reused, no call
    again = OtherJudge()
    annotate_samples(again, prompts, samples, run_dir, annotations)
    collect_gold(again, prompts, run_dir, gold)
    assert again.calls == 0

    # and the stages that ask the judge are stale when its backend or model changes
    for stage in ("02_sample", "03_annotate"):
        hashes = {runner.expected(load_params("params/tiny.yaml", {"judge": judge}), stage)["params_hash"]
                  for judge in ({"backend": "rubric"}, {"backend": "gemini", "model": "gemini-2.5-pro"},
                                {"backend": "gemini", "model": "gemini-2.5-flash"})}
        assert len(hashes) == 3


def test_02_samples_again_for_another_policy_and_reuses_its_own(tmp_path):
    """Stage 02 keys its rows by the sampler's identity (`sampling.sampler_identity`): `--set models.policy=OTHER`
    or another decoding setting draws new samples (annotations and pairs never mix two models' answers); the same
    policy and settings reuse every row."""
    from mmpref.sampling import sample_responses, sampler_identity
    from tests.test_torn_files import Echo, _prompts

    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    other = tmp_path / "other"
    other.mkdir()
    build_run(other)  # a second checkpoint: same shape, other weights (a fresh random init)
    prompts = _prompts(run, 3)
    out = run / "samples.jsonl"

    def sample(policy_dir: Path, **sampling) -> Echo:
        params = load_params("params/tiny.yaml", {"run": {"run_dir": str(run)},
                                                  "models": {"policy": str(policy_dir / "models" / "vit")},
                                                  "sampling": sampling})
        s, gen = params.sampling, Echo()
        sample_responses(gen, prompts, run, out, k=s.k, temperature=s.temperature, top_p=s.top_p,
                         max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=params.run.seed,
                         sampled_by=sampler_identity(params))
        return gen

    assert len(sample(run).asked) == 3
    assert sample(run).asked == []  # nothing changed: every row reused
    assert sample(run, batch_size=1).asked == []  # how prompts are batched is not what the policy is
    assert len(sample(other).asked) == 3, "kept the samples of the policy sampled before"
    assert len(sample(other, max_new_tokens=7).asked) == 3
    assert {r["sampled_by"] for r in read_jsonl(out)} == {sampler_identity(load_params("params/tiny.yaml", {
        "run": {"run_dir": str(run)}, "models": {"policy": str(other / "models" / "vit")},
        "sampling": {"max_new_tokens": 7}}))}

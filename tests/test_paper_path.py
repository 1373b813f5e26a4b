"""The paper path, rehearsed: what a researcher runs with params/paper-13b.yaml, on hub-shaped checkpoints.

A LLaVA-1.5-shaped checkpoint (random weights, small dimensions, llava-hf's processor configuration and hub chat
template, 576 image tokens per picture) and a Vicuna-shaped base LM with no chat template are built locally; prompt
files are written in SciGraphQA's and LRV-Instruct's official formats, POPE/MMBench/MM-Vet/LLaVA-Bench in theirs, and
the real MT-Bench and AlpacaEval files come from ../shared/benchmarks. The params are paper-13b.yaml's own, with only
sizes, paths and the judges' base URLs changed: annotation goes through google-genai to a loopback server speaking
`generateContent`, benchmark judging through the openai SDK to a loopback `/v1/chat/completions`. Every process of the
run (each papermill kernel included) refuses any connection that is not loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from loopback import GeminiServer, OpenAIServer
from test_benchmarks import make_llava_bench, make_mmbench, make_mmvet, make_pope

from mmpref.config import deep_merge, load_params
from mmpref.families import FAMILIES, VICUNA_SYSTEM
from mmpref.io import read_jsonl, write_jsonl
from mmpref.shaped_checkpoints import (build_llava15_shaped, build_llava_next_shaped, build_qwen2vl_shaped,
                           build_vicuna_shaped, write_image)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "benchmarks"
BIN = Path(sys.executable).parent
GEMINI_KEY, OPENAI_KEY = "gm-rehearsal-key-0123456789", "sk-rehearsal-key-0123456789"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs the public benchmark files in ../shared/benchmarks")

GUARD = '''
import atexit, json, os, sys
sys.path.insert(0, os.environ["MMPREF_TEST_DIR"])
import loopback
_guard = loopback.only_loopback().__enter__()

@atexit.register
def _report():
    if _guard.blocked:
        with open(os.environ["MMPREF_GUARD_LOG"], "a") as fh:
            fh.write(json.dumps([[w, repr(a)] for w, a in _guard.blocked]) + "\\n")
'''


def write_prompt_sources(data: Path, n: int = 6) -> None:
    """SciGraphQA (the hub's parquet columns + img folder) and LRV-Instruct (filter_cap.json + VG-style jpgs)."""
    imgs = data / "scigraphqa" / "imgs"
    rows = []
    for i in range(n):
        write_image(imgs / f"{i:04d}.png", size=(480, 360), seed=i)
        q = f"What trend does the curve in figure {i} show?"
        rows.append({"image_file": f"{i:04d}.png", "id": f"2308.0{i}v1-Figure{i}-1", "caption": "Figure: loss.",
                     "title": "A paper", "abstract": "We study things.", "first_mention": "Fig. 1 shows ...",
                     "response": "It decreases.",
                     "conversations": [{"from": "human", "value": f"<image>\n{q}"},
                                       {"from": "gpt", "value": "The curve decreases steadily."}],
                     "q_a_pairs": [[q, "The curve decreases steadily."]]})
    pd.DataFrame(rows).to_parquet(data / "scigraphqa" / "train.parquet")
    lrv = []
    for i in range(n):
        image = write_image(data / "lrv" / "images" / f"23925{i}.png", size=(500, 333), seed=100 + i)
        Image.open(image).convert("RGB").save(image.with_suffix(".jpg"))
        image.unlink()
        neg = i % 2 == 1
        lrv.append({"image_id": f"23925{i}", "question": f"Is there a {'blue teapot' if neg else 'red shape'} here?",
                    "answer": "There is no teapot in the image." if neg else "Yes, there is a red shape.",
                    "task": "negative" if neg else "detail"})
    (data / "lrv" / "filter_cap.json").write_text(json.dumps(lrv))


def paper_shaped_params(root: Path, data: Path, gemini_url: str, openai_url: str, *, name: str, policy: str,
                        methods=("sft_gold", "steerlm", "rejection_sampling", "dpo", "mm_dpo"), fractions=(0.5,),
                        family: str = "llava", base_lm: str | None = "{data_dir}/checkpoints/vicuna-shaped",
                        extra: dict | None = None) -> Path:
    """params/paper-13b.yaml with only sizes, paths and the judges' base URLs changed."""
    params = yaml.safe_load((ROOT / "params" / "paper-13b.yaml").read_text())
    over = {
        "run": {"name": name, "run_dir": str(root / "runs" / "{name}"), "data_dir": str(data)},
        "models": {"policy": policy, "base_lm": base_lm, "family": family, "dtype": "float32", "device": "cpu"},
        "prompts": {"sources": [
            {"name": "scigraphqa", "path": "{data_dir}/scigraphqa/train.parquet",
             "image_root": "{data_dir}/scigraphqa/imgs", "n": 6},
            {"name": "lrv", "path": "{data_dir}/lrv/filter_cap.json", "image_root": "{data_dir}/lrv/images", "n": 6}]},
        "sampling": {"max_new_tokens": 12, "batch_size": 6},
        "reward_model": {"max_new_tokens": 12, "batch_size": 4},
        "judge": {"base_url": gemini_url, "requests_per_minute": None, "max_workers": 4},
        "train": {"methods": list(methods), "lora": {"r": 4, "alpha": 8},
                  "sft": {"batch_size": 2, "grad_accum": 1, "epochs": 1},
                  "dpo": {"batch_size": 2, "grad_accum": 1, "epochs": 1, "fractions": list(fractions)},
                  "deepspeed": None, "bf16": False, "gradient_checkpointing": False, "save_steps": 4,
                  "logging_steps": 1},
        "evaluate": {
            "benchmarks": {"pope": "{data_dir}/pope", "mmbench": "{data_dir}/mmbench/mmbench_dev.tsv",
                           "mmvet": "{data_dir}/mmvet", "llava_bench": "{data_dir}/llava_bench",
                           "mt_bench": str(SHARED / "mt_bench" / "question.jsonl"),
                           "alpaca_eval": str(SHARED / "alpaca_eval" / "text_davinci_003_outputs.json"),
                           "mt_bench_noisy": str(SHARED / "mt_bench" / "question.jsonl")},
            "judge_templates": {"mt_bench": str(SHARED / "mt_bench" / "judge_prompts.jsonl"),
                                "alpaca_eval": str(SHARED / "alpaca_eval" / "alpaca_eval_gpt4_prompt.txt"),
                                "llava_bench": str(SHARED / "llava_bench" / "rule.json"),
                                "mmvet": "{data_dir}/mmvet/mm-vet_evaluator.py"},  # make_mmvet's stand-in
            "judge": {"base_url": openai_url, "requests_per_minute": None, "max_workers": 4},
            "limit": 2, "max_new_tokens": 12, "batch_size": 8},
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(deep_merge(deep_merge(params, over), extra or {}), sort_keys=False))
    return path


def run_mmpref(root: Path, params: Path, stages: str) -> subprocess.CompletedProcess:
    guard_dir = root / "guard"
    guard_dir.mkdir(exist_ok=True)
    (guard_dir / "sitecustomize.py").write_text(GUARD)
    env = dict(os.environ, GEMINI_API_KEY=GEMINI_KEY, OPENAI_API_KEY=OPENAI_KEY, HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1", MMPREF_TEST_DIR=str(Path(__file__).parent),
               MMPREF_GUARD_LOG=str(root / "guard.log"),
               PYTHONPATH=os.pathsep.join([str(guard_dir), os.environ.get("PYTHONPATH", "")]))
    for key in ("GOOGLE_API_KEY", "MMPREF_RUN_DIR", "MMPREF_DATA_DIR"):
        env.pop(key, None)
    proc = subprocess.run([str(BIN / "mmpref"), "run", str(params), "--stages", stages], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1500)
    (root / f"{params.stem}.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, f"mmpref run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper-path")
    data = root / "data"
    build_llava15_shaped(data / "checkpoints" / "llava-1.5-shaped")
    build_vicuna_shaped(data / "checkpoints" / "vicuna-shaped")
    write_prompt_sources(data)
    make_pope(data), make_mmbench(data), make_mmvet(data), make_llava_bench(data)
    for i in range(2):
        write_image(data / "noise_images" / f"noise{i}.png", seed=900 + i)
    with GeminiServer(api_key=GEMINI_KEY) as gemini, OpenAIServer(api_key=OPENAI_KEY) as openai:
        params = paper_shaped_params(root, data, gemini.url, openai.url, name="rehearsal",
                                     policy="{data_dir}/checkpoints/llava-1.5-shaped")
        proc = run_mmpref(root, params, "01-10")
        yield {"root": root, "data": data, "params": params, "run": root / "runs" / "rehearsal", "proc": proc,
               "gemini": list(gemini.requests), "openai": list(openai.requests)}


def _rows(path: Path) -> list[dict]:
    return read_jsonl(path) if path.exists() else []


# ---- the whole run ----------------------------------------------------------------------------------------------

def test_every_stage_ran_without_network(paper):
    lines = read_jsonl(paper["run"] / "manifest.jsonl")
    ok = {line["stage"] for line in lines if line["status"] == "ok"}
    assert ok == {"01_collect", "02_sample", "03_annotate", "03b_reward_model", "04_pair", "05_train_sft_gold",
                  "06_train_steerlm",
                  "07_train_rejection_sampling", "08_train_dpo", "08b_train_mm_dpo", "09_evaluate", "10_analyse"}
    assert not (paper["root"] / "guard.log").exists(), (paper["root"] / "guard.log").read_text()


def test_the_reward_model_learned_geminis_critiques_and_trains_from_the_cli(paper):
    """03b trained the critique reward model on the LLaVA-shaped policy from Gemini's critiques (one paragraph per
    prompt, split at its mentions of each response) and annotated the held-out prompts with it; `mmpref train
    PARAMS reward_model`, the command `accelerate launch` runs on a GPU node, finds that adapter and reuses it."""
    adapter = paper["run"] / "reward_model" / "adapter"
    trained = json.loads((adapter / "mmpref_train.json").read_text())
    assert trained["rows"] > 0 and trained["settings"]["method"] == "reward_model"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"].endswith(
        "llava-1.5-shaped")
    rows = read_jsonl(paper["run"] / "reward_model" / "annotations.jsonl")
    assert rows and all(r["judge"].startswith("reward-model-") for r in rows)
    assert set(pd.read_csv(paper["run"] / "reward_model" / "agreement.csv")["metric"]) == {"pearson_r",
                                                                                        "pairwise_accuracy"}
    before = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMPREF_RUN_DIR", "MMPREF_DATA_DIR"))}
    proc = subprocess.run([str(BIN / "mmpref"), "train", str(paper["params"]), "reward_model"], cwd=ROOT,
                          env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"reward_model: {trained['rows']} rows" in proc.stdout
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == before  # the finished adapter, reused


def test_annotation_went_through_google_genai_with_images(paper):
    samples = read_jsonl(paper["run"] / "samples.jsonl")
    assert len(samples) == 12 and all(len(s["responses"]) == 4 for s in samples)
    generate = [r for r in paper["gemini"] if r["path"].endswith(":generateContent")]
    assert len(generate) >= 24  # 12 gold answers + 12 annotations (one call sees all four responses)
    for req in generate:
        assert req["headers"].get("x-goog-api-key") == GEMINI_KEY
        parts = [p for c in req["body"]["contents"] for p in c["parts"]]
        assert any("inline_data" in p or "inlineData" in p for p in parts), "the judge must see the image"
    annotations = read_jsonl(paper["run"] / "annotations.jsonl")
    assert len(annotations) == 12 and all("gemini" in a["judge"] for a in annotations)
    pairs = read_jsonl(paper["run"] / "datasets" / "dpo.jsonl")
    assert pairs, "the loopback judge's varied ratings must give DPO pairs"


def test_training_used_the_family_prompt_format_and_cached_reference(paper):
    info = json.loads((paper["run"] / "adapters" / "dpo" / "mmpref_train.json").read_text())
    assert info["settings"]["family"] == "llava"
    assert info["settings"]["chat_template"] == FAMILIES["llava"].chat_template  # conv_vicuna_v1, not the hub's
    dpo = info["settings"]["trainer"]  # train.dpo as trained
    assert dpo["train_projector"] and dpo["projector_learning_rate"] == 2e-5
    assert info["reference_logps"]["computed"] == info["rows"]
    frac = json.loads((paper["run"] / "adapters" / "dpo_frac0.5" / "mmpref_train.json").read_text())
    assert frac["reference_logps"] == {"computed": 0, "cached": frac["rows"]}  # the fraction reuses dpo's
    # MM-DPO: DPO's pairs, settings and cached reference, with the 13B params' beta scaling
    mm = json.loads((paper["run"] / "adapters" / "mm_dpo" / "mmpref_train.json").read_text())
    assert mm["settings"]["mm_dpo"] == {"w": 0.5, "k": 0.5, "scaling": "per_sample", "margin": "judge_quality"}
    assert mm["rows"] == info["rows"] and mm["reference_logps"] == {"computed": 0, "cached": mm["rows"]}
    assert {k: v for k, v in mm["settings"].items() if k not in ("method", "mm_dpo")} == \
        {k: v for k, v in info["settings"].items() if k not in ("method", "mm_dpo")}


def test_evaluation_judged_through_openai_and_table2_made(paper):
    results = pd.read_csv(paper["run"] / "eval" / "results.csv")
    models = {"base-lm", "vit", "sft_gold", "steerlm", "rejection_sampling", "dpo", "mm_dpo", "dpo_frac0.5",
              "mm_dpo_frac0.5"}
    assert set(results["model"]) == models
    judged = results[results["benchmark"].isin(["mt_bench", "alpaca_eval", "mmvet", "llava_bench"])]
    assert not judged.empty and judged["judge"].str.contains("gpt-4-0613").all()
    chats = [r for r in paper["openai"] if r["path"].endswith("/chat/completions")]
    assert chats and all(r["headers"].get("authorization") == f"Bearer {OPENAI_KEY}" for r in chats)
    table2 = pd.read_csv(paper["run"] / "tables" / "table2.csv")
    assert len(table2) >= 6
    assert not (paper["run"] / "figures" / "figure3_attribute_correlation.png").exists()
    nb = json.loads((paper["run"] / "notebooks" / "10_analyse.ipynb").read_text())
    outputs = json.dumps([c.get("outputs", []) for c in nb["cells"]])
    assert "Figure 3 was not made" in outputs and "Traceback" not in outputs


def test_no_key_in_any_run_file(paper):
    for path in paper["run"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".ipynb", ".csv", ".md", ".txt", ".log"):
            text = path.read_text(errors="ignore")
            assert GEMINI_KEY not in text and OPENAI_KEY not in text, path


# ---- what the trainers see --------------------------------------------------------------------------------------

def _params(paper, **over):
    return load_params(paper["params"], over or None)


def _pairs(paper, n=2) -> list[dict]:
    prompts = {p["id"]: p for p in read_jsonl(paper["run"] / "prompts.jsonl")}
    rows = read_jsonl(paper["run"] / "datasets" / "dpo.jsonl")[:n]
    for r in rows:
        r["chosen"], r["rejected"] = "A short clear answer.", "Wrong."
        assert r["image"] == prompts[r["prompt_id"]]["image"]
    return rows


def _text(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def test_sft_batch_has_bos_system_prompt_image_tokens_and_eos(paper, tmp_path):
    from mmpref.train import settings_from_params, sft_trainer

    params = _params(paper)
    rows = [{**r, "response": "The curve decreases."} for r in _pairs(paper)]
    settings = settings_from_params(params, "sft_gold")
    trainer, processor = sft_trainer(params.model_ref(params.models.policy), rows, params.run_dir, tmp_path, settings)
    tok = processor.tokenizer
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(2)])
    for ids, labels, mask in zip(batch["input_ids"].tolist(), batch["labels"].tolist(),
                                 batch["attention_mask"].tolist()):
        real = [t for t, m in zip(ids, mask) if m]
        assert real[0] == tok.bos_token_id and real.count(tok.bos_token_id) == 1
        assert _text(tok, real[1:]).startswith(VICUNA_SYSTEM + " USER:")
        assert real.count(tok.convert_tokens_to_ids("<image>")) == 576
        assert real[-1] == tok.eos_token_id
        learned = [t for t, lab in zip(ids, labels) if lab != -100]
        assert _text(tok, learned).strip() == "The curve decreases.</s>"  # loss on the answer and its EOS only


@pytest.mark.parametrize("share_prefix", [False, True])
def test_dpo_batch_has_bos_system_prompt_image_tokens_and_eos(paper, tmp_path, share_prefix):
    from mmpref.train import dpo_trainer, settings_from_params

    params = _params(paper, train={"dpo": {"share_prefix": share_prefix}})
    rows = _pairs(paper)
    settings = settings_from_params(params, "dpo")
    assert settings.trainer.share_prefix is share_prefix
    trainer, processor = dpo_trainer(params.model_ref(params.models.policy), rows, params.run_dir, tmp_path,
                                     settings, ref_cache=tmp_path / "ref.jsonl")
    tok = processor.tokenizer
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(2)])
    assert "ref_chosen_logps" in batch
    if share_prefix:  # one packed row per pair: prompt (image tokens once), chosen, prompt's last token again, rejected
        rows_ = [[t for t, m in zip(ids, mask) if m] for ids, mask in
                 zip(batch["packed_input_ids"].tolist(), batch["packed_attention_mask"].tolist())]
    else:  # TRL's rows: [prompt + chosen; prompt + rejected]
        rows_ = [[t for t, m in zip(ids, mask) if m] for ids, mask in
                 zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist())]
    for real in rows_:
        assert real[0] == tok.bos_token_id and real.count(tok.bos_token_id) == 1
        assert _text(tok, real[1:]).startswith(VICUNA_SYSTEM + " USER:")
        assert real.count(tok.convert_tokens_to_ids("<image>")) == 576
    completions = []  # TRL's [chosen; rejected] completion layout, which both give TRL's loss code
    for ids, comp in zip(batch["input_ids"].tolist(), batch["completion_mask"].tolist()):
        completions.append(_text(tok, [t for t, c in zip(ids, comp) if c]).strip())
        assert [t for t, c in zip(ids, comp) if c][-1] == tok.eos_token_id
    assert completions == ["A short clear answer.</s>"] * 2 + ["Wrong.</s>"] * 2  # [chosen; rejected]


def test_reference_cache_misses_on_any_change_of_its_inputs(paper, tmp_path):
    from mmpref.train import dpo_trainer, settings_from_params

    ckpt = tmp_path / "policy"
    shutil.copytree(paper["data"] / "checkpoints" / "llava-1.5-shaped", ckpt)
    params = _params(paper)
    rows = _pairs(paper)
    for r in rows:  # a private copy of the run's images, changed below
        (tmp_path / r["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(params.run_dir / r["image"], tmp_path / r["image"])
    cache = tmp_path / "ref.jsonl"

    def stats(settings, ref=str(ckpt)):
        trainer, _ = dpo_trainer(ref, rows, tmp_path, tmp_path / "out", settings, ref_cache=cache)
        return trainer.reference_stats, list(trainer.train_dataset["ref_chosen_logps"])

    base = settings_from_params(params, "dpo")
    first, logps = stats(base)
    assert first == {"computed": 2, "cached": 0}
    assert stats(base)[0] == {"computed": 0, "cached": 2}
    assert stats(base.with_trainer(max_length=2900))[0]["computed"] == 2
    assert stats(dataclasses.replace(base, chat_template=None))[0]["computed"] == 2  # hub template
    build_llava15_shaped(ckpt, seed=1)  # another checkpoint in the same folder
    changed, new_logps = stats(base)
    assert changed == {"computed": 2, "cached": 0}
    assert max(abs(a - b) for a, b in zip(logps, new_logps)) > 1e-3
    write_image(tmp_path / rows[0]["image"], seed=4242)  # same file name, other pixels
    assert stats(base)[0] == {"computed": 1, "cached": 1}


def test_killed_training_resumes_from_its_last_checkpoint(paper, tmp_path, monkeypatch):
    from transformers import Trainer

    from mmpref.train import settings_from_params, train_sft

    params = _params(paper)
    rows = [{**r, "response": "The curve decreases."} for r in _pairs(paper)] * 4  # 8 rows: 4 steps of 2
    settings = settings_from_params(params, "rejection_sampling")
    settings.options.save_steps, settings.options.logging_steps = 2, 1
    ref = params.model_ref(params.models.policy)
    real_step = Trainer.training_step
    calls = {"n": 0}

    def dies_after_three(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt("killed")
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        train_sft(ref, rows, params.run_dir, tmp_path / "rs", settings)
    assert (tmp_path / "rs" / "trainer" / "checkpoint-2").is_dir()
    calls["n"] = -100
    info = train_sft(ref, rows, params.run_dir, tmp_path / "rs", settings)
    assert info["resumed_from"].endswith("checkpoint-2")
    assert calls["n"] == -100 + 2  # only the two steps after the checkpoint were run again
    assert (tmp_path / "rs" / "adapter_model.safetensors").exists()


def test_base_lm_speaks_vicuna_v11_and_vlm_conv_vicuna_v1(paper):
    from mmpref.sampling import ChatRequest, Policy

    params = _params(paper)
    base = Policy.from_params(params, "base-lm", base_lm=True)
    assert base._render(ChatRequest(turns=["Hi", "More?"], answers=["Hello."])) == (
        f"<s>{VICUNA_SYSTEM} USER: Hi ASSISTANT: Hello.</s>USER: More? ASSISTANT:")
    vlm = Policy.from_params(params, "vit")
    assert vlm._render(ChatRequest(turns=["What is it?"], image="x.png")) == (
        f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT:")


def test_reference_log_probs_under_two_processes_one_writer(paper, tmp_path):
    """`torchrun` with 2 CPU processes (gloo): each rank scores its share of the pairs, rank 0 alone writes the cache,
    and every rank ends with the same values a single process computes."""
    import socket

    from mmpref.train import dpo_trainer, settings_from_params

    params = _params(paper)
    base = _pairs(paper, 1)[0]
    rows = [{**base, "chosen": f"Answer number {i}.", "rejected": "No."} for i in range(5)]
    settings = settings_from_params(params, "dpo")
    settings.trainer.batch_size = 2
    ref = params.model_ref(params.models.policy)
    single, _ = dpo_trainer(ref, rows, params.run_dir, tmp_path / "single", settings, ref_cache=tmp_path / "one.jsonl")
    expected = list(single.train_dataset["ref_chosen_logps"])
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    (tmp_path / "settings.json").write_text(json.dumps(settings.record()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMPREF_RUN_DIR", "MMPREF_DATA_DIR"))}
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(port), str(Path(__file__).parent / "dist_reference.py"), ref, str(params.run_dir),
         str(tmp_path / "rows.json"), str(tmp_path / "two.jsonl"), str(out), str(tmp_path / "settings.json")],
        cwd=ROOT, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["processes"] == 2 for r in ranks)
    assert all(0 < r["pairs_scored"] < 5 for r in ranks)  # a share each (the last batch is padded by accelerate)
    lines = read_jsonl(tmp_path / "two.jsonl")
    assert len(lines) == 5 and len({line["key"] for line in lines}) == 5  # one writer, no duplicates
    for r in ranks:
        assert r["ref_chosen"] == pytest.approx(expected, abs=1e-4)


# ---- a second VLM family, by params only --------------------------------------------------------------------------

def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401  (transformers' Qwen2-VL processor builds a video processor with it)
    except Exception:  # noqa: BLE001 - a CUDA-only build next to CPU torch fails at import
        return False
    return True


@pytest.mark.parametrize("family", [
    "llava_next",
    pytest.param("qwen2_vl", marks=pytest.mark.skipif(
        not _torchvision_works(), reason="transformers' Qwen2VLProcessor needs torchvision, which has no CPU build "
                                         "for this torch on PyPI; runs where torchvision imports (GPU nodes)")),
])
def test_second_family_runs_stages_01_to_09_by_params_only(paper, family):
    builders = {"llava_next": build_llava_next_shaped, "qwen2_vl": build_qwen2vl_shaped}
    root, data = paper["root"], paper["data"]
    builders[family](data / "checkpoints" / f"{family}-shaped")
    with GeminiServer(api_key=GEMINI_KEY) as gemini, OpenAIServer(api_key=OPENAI_KEY) as openai:
        params = paper_shaped_params(root, data, gemini.url, openai.url, name=f"rehearsal-{family}",
                                     policy=f"{{data_dir}}/checkpoints/{family}-shaped", family=family,
                                     base_lm=None, methods=("sft_gold", "dpo"), fractions=(),
                                     # LLaVA-NeXT's anyres turns a 480x360 picture into 2,340 image tokens: the
                                     # paper's SFT max_length 2048 would cut them (mmpref refuses), so raise it
                                     extra={"train": {"sft": {"max_length": 4096}}})
        run_mmpref(root, params, "01-09")
    run = root / "runs" / f"rehearsal-{family}"
    ok = {line["stage"] for line in read_jsonl(run / "manifest.jsonl") if line["status"] == "ok"}
    assert ok == {"01_collect", "02_sample", "03_annotate", "03b_reward_model", "04_pair", "05_train_sft_gold",
                  "08_train_dpo", "09_evaluate"}  # the reward model trains on this family too
    info = json.loads((run / "adapters" / "dpo" / "mmpref_train.json").read_text())
    assert info["settings"]["family"] == family
    assert info["settings"]["chat_template"] == FAMILIES[family].chat_template
    results = pd.read_csv(run / "eval" / "results.csv")
    assert set(results["model"]) == {"vit", "sft_gold", "dpo"}
    assert not (root / "guard.log").exists()

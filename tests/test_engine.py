"""Sampling and benchmark answers on a serving engine (issue 11): mmpref.engine through the real `openai` client
against a loopback stand-in of vLLM's OpenAI-compatible server whose answers come from real tiny HF checkpoints
(tests.loopback.PolicyResponder); and the HF backend's shared prefill (one prefill per prompt for k samples)."""

from __future__ import annotations

import random

import pytest
import torch

from mmpref import engine, sampling
from mmpref.config import ParamsError, Params, load_params
from mmpref.engine import EngineError, ServedPolicy, load_generator
from mmpref.io import read_jsonl
from mmpref.sampling import ChatRequest, Policy, batch_seed, sample_responses
from tests.loopback import OpenAIServer, PolicyResponder, decode_data_url, killed_after_writes
from tests.test_models import checkpoint  # noqa: F401  (the tiny LLaVA fixture)
from tests.test_resume import _prompts  # the same small prompt set and pictures

K = 3


@pytest.fixture(scope="module")
def policies(checkpoint, tmp_path_factory):  # noqa: F811
    """The tiny LLaVA ("llava") and the same with a trained-looking adapter merged in ("dpo": random LoRA on the
    language model + a fully trained projector, as mmpref's DPO saves it), plus that adapter's folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint.vit)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(v_proj|o_proj|down_proj)",
                                            init_lora_weights=False, modules_to_save=["multi_modal_projector"]))
    with torch.no_grad():  # far from the base model, so that its answers differ
        for name, p in peft.named_parameters():
            if "modules_to_save" in name or "lora_B" in name:
                p.add_(torch.randn_like(p) * 2.0)
    peft.save_pretrained(root / "dpo")
    base = Policy.load(checkpoint.vit, "policy", dtype="float32", device="cpu")
    tuned = Policy.load(checkpoint.vit, "dpo", adapter=root / "dpo", dtype="float32", device="cpu")
    return {"llava": base, "dpo-merged": tuned, "adapter": root / "dpo"}


@pytest.fixture()
def served(policies, tmp_path):
    """A loopback vLLM stand-in serving "llava" and "dpo-merged"."""
    responder = PolicyResponder({"llava": policies["llava"], "dpo-merged": policies["dpo-merged"]}, tmp_path / "in")
    with OpenAIServer(responder=responder, models=["llava", "dpo-merged"]) as server:
        server.policy_responder = responder
        yield server


def _sample(policy, prompts, run_dir, out, batch_size=2):
    return sample_responses(policy, prompts, run_dir, out, k=K, temperature=1.0, top_p=0.9, max_new_tokens=6,
                            batch_size=batch_size, seed=7)


def _served(server, model="llava", **kw):
    return ServedPolicy("policy", model, server.url, **kw)


# ---- the HF backend: one prefill for k samples ------------------------------------------------------------------

@pytest.mark.parametrize("which", ["tiny", "llava15_shaped", "text"])
def test_shared_prefill_samples_what_stock_generate_samples(which, checkpoint, tmp_path):  # noqa: F811
    """Greedy: every one of the k rows is the stock path's greedy answer. Sampling with a seed: the very samples
    stock `generate(num_return_sequences=k)` draws with that seed (same logits, same RNG draws), so the
    distribution is the stock one; and the same seed gives the same samples again."""
    if which == "llava15_shaped":
        from mmpref.shaped_checkpoints import build_llava15_shaped, write_image

        policy = Policy.load(str(build_llava15_shaped(tmp_path / "ck")), "p", dtype="float32", device="cpu")
        images = [str(write_image(tmp_path / f"{i}.png", size=(336 + 50 * i, 300), seed=i)) for i in range(2)]
    elif which == "tiny":
        policy = Policy.load(checkpoint.vit, "p", dtype="float32", device="cpu")
        images = [str(checkpoint.image)] * 2
    else:
        policy = Policy.load(checkpoint.base, "p", text_only=True, dtype="float32", device="cpu")
        images = [None, None]
    assert policy.shared_prefill  # on by default for LLaVA and Llama
    reqs = [ChatRequest(turns=["What color is the square?"], image=images[0]),
            ChatRequest(turns=["Is there a red circle in the image? Tell me."], image=images[1])]  # padded: longer

    def run(shared, **kw):
        policy.shared_prefill = shared
        return policy.generate(reqs, max_new_tokens=8, batch_size=2, desc=False, **kw)

    greedy = run(False, num_return_sequences=1, temperature=0.0)
    assert run(True, num_return_sequences=K, temperature=0.0) == [[g[0]] * K for g in greedy]
    stock = run(False, num_return_sequences=K, temperature=1.0, seed=3)
    shared = run(True, num_return_sequences=K, temperature=1.0, seed=3)
    assert shared == stock
    assert len({t for row in shared for t in row}) > 1  # really sampled
    assert run(True, num_return_sequences=K, temperature=1.0, seed=3) == shared
    assert run(True, num_return_sequences=K, temperature=1.0, seed=4) != shared


def test_shared_prefill_encodes_each_prompt_once(checkpoint):  # noqa: F811
    """The language model's prefill: stock generate runs it on k copies of every prompt (image tokens included);
    the shared path on one, then k single-token rows."""
    policy = Policy.load(checkpoint.vit, "p", dtype="float32", device="cpu")
    seen = []
    hook = policy.model.model.language_model.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        req = [ChatRequest(turns=["What color is the square?"], image=str(checkpoint.image))] * 2
        policy.shared_prefill = False
        policy.generate(req, num_return_sequences=4, temperature=1.0, max_new_tokens=3, desc=False)
        stock = list(seen)
        seen.clear()
        policy.shared_prefill = True
        policy.generate(req, num_return_sequences=4, temperature=1.0, max_new_tokens=3, desc=False)
    finally:
        hook.remove()
    length = stock[0][1]
    assert stock[0] == (8, length) and length > 4  # 2 prompts x k=4, the whole prompt
    assert seen[:2] == [(2, length - 1), (8, 1)]  # once per prompt, then the last prompt token of each sample
    prefill = lambda calls: sum(b * n for b, n in calls if n > 1)  # noqa: E731  (tokens run through in prefills)
    assert prefill(stock) == 4 * prefill(seen) + 4 * 2


# ---- the engine backend ------------------------------------------------------------------------------------------

def test_engine_samples_jsonl_matches_hf_backend(policies, served, tmp_path):
    prompts = _prompts(tmp_path, 5)
    hf = _sample(policies["llava"], prompts, tmp_path, tmp_path / "hf.jsonl")
    eng = _sample(_served(served), prompts, tmp_path, tmp_path / "engine.jsonl")
    assert [r["prompt_id"] for r in eng] == [r["prompt_id"] for r in hf] == [p["id"] for p in prompts]
    for h, e in zip(hf, eng):
        assert set(e) == set(h) and e["model"] == h["model"] == "policy" and e["temperature"] == 1.0
        assert len(e["responses"]) == K and all(isinstance(t, str) for t in e["responses"])
    assert read_jsonl(tmp_path / "engine.jsonl") == eng
    # one request per prompt, n = k, the prompt's own seed, its image as a PNG data URL, the sampling settings
    reqs = [r["body"] for r in served.requests if r["path"] == "/v1/chat/completions"]
    assert len(reqs) == len(prompts)
    by_seed = {r["seed"]: r for r in reqs}
    for p, row in zip(prompts, eng):
        assert row["seed"] == batch_seed(7, [p["id"]])
        body = by_seed[row["seed"]]
        assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (K, 1.0, 0.9, 6)
        content = body["messages"][0]["content"]
        assert [c["type"] for c in content] == ["image_url", "text"] and content[1]["text"] == p["question"]
        mime, data = decode_data_url(content[0]["image_url"]["url"])
        assert mime == "image/png" and data == (tmp_path / p["image"]).read_bytes()
    # the engine's samples are the HF checkpoint's own samples for that seed (the stand-in runs it)
    direct = policies["llava"].generate([ChatRequest(turns=[prompts[0]["question"]],
                                                     image=str(tmp_path / prompts[0]["image"]))],
                                        num_return_sequences=K, temperature=1.0, top_p=0.9, max_new_tokens=6,
                                        seed=eng[0]["seed"], desc=False)
    assert eng[0]["responses"] == direct[0]


def test_engine_greedy_answers_equal_hf_answers(policies, served, checkpoint):  # noqa: F811
    """Benchmark answers: the wire format carries the conversation faithfully (multi-turn with answers, the image
    in every turn, text only, MT-Bench temperatures), so greedy answers equal the HF backend's."""
    img = str(checkpoint.image)
    reqs = [ChatRequest(turns=["What color is the square?"], image=img),
            ChatRequest(turns=["What is 3 plus 5?", "Now add 2."], answers=["3 plus 5 is 8."]),
            ChatRequest(turns=["Is there a red circle in the image?", "And a square?"], answers=["Yes."], image=img,
                        image_every_turn=True),
            ChatRequest(turns=["What is 3 plus 5?"], temperature=0.0)]
    hf = policies["llava"].greedy_fn(max_new_tokens=8)(reqs)
    assert _served(served).greedy_fn(max_new_tokens=8)(reqs) == hf
    bodies = [r["body"] for r in served.requests if r["path"] == "/v1/chat/completions"]
    assert all(b["temperature"] == 0.0 and b["n"] == 1 for b in bodies)
    every = next(b for b in bodies if len(b["messages"]) == 3 and any(
        isinstance(m["content"], list) and m["content"][0]["type"] == "image_url" for m in b["messages"][2:]))
    assert [m["role"] for m in every["messages"]] == ["user", "assistant", "user"]


def test_engine_resume_asks_only_missing_prompts(served, tmp_path):
    prompts = _prompts(tmp_path, 7)
    ref = tmp_path / "ref.jsonl"
    _sample(_served(served), prompts, tmp_path, ref)
    assert len({tuple(r["responses"]) for r in read_jsonl(ref)}) > 1
    rng = random.Random(0)
    for trial in range(2):
        out = tmp_path / f"cut{trial}.jsonl"
        kill_after = rng.randint(1, 6)
        with killed_after_writes(sampling, kill_after):
            _sample(_served(served, max_concurrency=2), prompts, tmp_path, out)
        served.clear()
        _sample(_served(served), prompts, tmp_path, out, batch_size=3)  # batching does not matter to the engine
        asked = [r["body"]["seed"] for r in served.requests if r["path"] == "/v1/chat/completions"]
        done = {r["prompt_id"] for r in read_jsonl(ref)[:kill_after]}
        assert sorted(asked) == sorted(batch_seed(7, [p["id"]]) for p in prompts if p["id"] not in done)
        assert out.read_bytes() == ref.read_bytes(), f"kill after {kill_after} rows"


def test_adapters_route_to_their_served_names(policies, served, tmp_path, checkpoint):  # noqa: F811
    params = Params.model_validate({"models": {"policy": checkpoint.vit, "base_lm": checkpoint.base,
                                               "chat_template": "checkpoint"},
                                    "engine": {"backend": "openai_server", "base_url": served.url, "model": "llava",
                                               "adapters": {"dpo": "dpo-merged"}}})
    req = [ChatRequest(turns=["What color is the square?"], image=str(checkpoint.image))]
    vit = load_generator(params, "vit", stage="evaluate")
    dpo = load_generator(params, "dpo", stage="evaluate", adapter=policies["adapter"])
    assert isinstance(dpo, ServedPolicy) and (vit.served_model, dpo.served_model) == ("llava", "dpo-merged")
    served.clear()
    assert dpo.greedy_fn(8)(req) == policies["dpo-merged"].greedy_fn(8)(req)
    assert vit.greedy_fn(8)(req) == policies["llava"].greedy_fn(8)(req)
    assert policies["dpo-merged"].greedy_fn(8)(req) != policies["llava"].greedy_fn(8)(req)  # the routing shows
    assert [r["model"] for r in served.requests if r["method"] == "POST"] == ["dpo-merged", "llava"]
    # an adapter without a served name, a served name the server does not serve: errors that name them
    with pytest.raises(EngineError, match=r"engine.adapters has no served name for 'sft_gold'"):
        load_generator(params, "sft_gold", stage="evaluate", adapter=tmp_path)
    params.engine.adapters = {"dpo": "dpo-typo"}
    with pytest.raises(EngineError, match=r"does not serve 'dpo-typo'.*\['llava', 'dpo-merged'\]"):
        load_generator(params, "dpo", stage="evaluate", adapter=policies["adapter"])
    # a merged checkpoint on a server of its own: its own URL; the policy's server is elsewhere (nobody there)
    params.engine.base_url = "http://127.0.0.1:9/v1"
    params.engine.adapters = {"dpo": {"model": "dpo-merged", "base_url": served.url}}
    assert load_generator(params, "dpo", stage="evaluate", adapter=policies["adapter"]).greedy_fn(8)(req) == \
        policies["dpo-merged"].greedy_fn(8)(req)
    with pytest.raises(EngineError, match="cannot reach the serving engine at http://127.0.0.1:9/v1"):
        load_generator(params, "vit", stage="evaluate")
    # the base LM without a served name, and stages the engine is not used for, load with HF
    assert isinstance(load_generator(params, "base", stage="evaluate", base_lm=True), Policy)
    params.engine.use_for = ["evaluate"]
    assert isinstance(load_generator(params, "policy", stage="sampling"), Policy)


def test_engine_errors_are_clear(served, tmp_path, checkpoint):  # noqa: F811
    policy = _served(served, max_retries=0)
    good = ChatRequest(turns=["What color is the square?"], image=str(checkpoint.image))
    # a bad image fails before anything is sent, naming the file
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        policy.generate([ChatRequest(turns=["q"], image=str(bad))], desc=False)
    with pytest.raises(ValueError, match="missing.png"):
        policy.generate([ChatRequest(turns=["q"], image=str(tmp_path / "missing.png"))], desc=False)
    assert not served.requests
    # the server refuses: its status and message, the model and the image
    served.error(400, message="Failed to load image: truncated")
    with pytest.raises(EngineError, match=r"model 'llava' \(image .*img.png\): HTTP 400: .*truncated"):
        policy.generate([good], desc=False)
    served.error(500, message="CUDA out of memory")
    with pytest.raises(EngineError, match="HTTP 500.*CUDA out of memory"):
        policy.generate([good], desc=False)
    # a model the server does not serve: vLLM's 404, with the hint
    with pytest.raises(EngineError, match=r"HTTP 404: The model `nope` does not exist.*--lora-modules"):
        _served(served, "nope", max_retries=0).generate([good], desc=False)
    # fewer choices than n
    served.ok("only one")
    with pytest.raises(EngineError, match=r"n=3 completions, got choices \[0\]"):
        policy.generate([good], num_return_sequences=3, temperature=1.0, desc=False)
    # retried 5xx succeed when the server recovers (the SDK's backoff)
    served.error(503, headers={"retry-after": "0"})
    assert len(_served(served, max_retries=2).generate([good], num_return_sequences=2, temperature=1.0,
                                                        desc=False)[0]) == 2
    # nobody listening
    port = served.port
    served.close()
    with pytest.raises(EngineError, match=f"cannot reach the serving engine at http://127.0.0.1:{port}/v1"):
        _served(served, max_retries=0).generate([good], desc=False)


def test_text_only_served_model_refuses_images(served, checkpoint):  # noqa: F811
    text = ServedPolicy("base", "llava", served.url, is_vlm=False)
    with pytest.raises(ValueError, match="text-only"):
        text.generate([ChatRequest(turns=["q"], image=str(checkpoint.image))], desc=False)


# ---- params, and what to serve -----------------------------------------------------------------------------------

def test_engine_params_validate_and_hash(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {backend: openai_server, model: llava}\n")
    with pytest.raises(ParamsError, match="engine.*needs base_url"):
        load_params(bad)
    bad.write_text("engine: {backend: openai_server, base_url: 'http://h/v1', model: m, lora: {}}\n")
    with pytest.raises(ParamsError, match=r"unknown key 'engine.lora'.*adapters.*base_url"):
        load_params(bad)
    plain = load_params("params/tiny.yaml")
    hf = load_params("params/tiny.yaml", {"engine": {"backend": "hf"}})
    on = {"engine": {"backend": "openai_server", "base_url": "http://a/v1", "model": "m"}}
    eng = load_params("params/tiny.yaml", on)
    moved = load_params("params/tiny.yaml", {"engine": {**on["engine"], "base_url": "http://b/v1",
                                                        "max_concurrency": 64, "api_key_env": "K"}})
    other = load_params("params/tiny.yaml", {"engine": {**on["engine"], "model": "m2"}})
    h = lambda p: p.section_hash("run", "models", "sampling", "judge", "engine")  # noqa: E731  (02_sample's)
    assert h(plain) == h(hf) != h(eng) == h(moved) != h(other)


def test_api_key_comes_from_the_named_environment_variable(monkeypatch):
    params = Params.model_validate({"engine": {"backend": "openai_server", "base_url": "http://h/v1", "model": "m",
                                               "api_key_env": "MY_ENGINE_KEY"}})
    monkeypatch.delenv("MY_ENGINE_KEY", raising=False)
    with pytest.raises(EngineError, match="MY_ENGINE_KEY"):
        engine.api_key(params)
    monkeypatch.setenv("MY_ENGINE_KEY", "sk-123")
    assert engine.api_key(params) == "sk-123"


def test_export_for_serving_merges_what_vllm_cannot_load_as_lora(policies, checkpoint, tmp_path):  # noqa: F811
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    # the projector trained in full: not a vLLM LoRA module -> a merged checkpoint that answers like the adapter
    assert any("modules_to_save" in p for p in engine.lora_problems(policies["adapter"]))
    params = Params.model_validate({"models": {"policy": checkpoint.vit, "dtype": "float32",
                                               "chat_template": "checkpoint"}})
    kind, path = engine.export_for_serving(params, policies["adapter"], tmp_path / "merged")
    assert kind == "merged"
    req = [ChatRequest(turns=["What color is the square?"], image=str(checkpoint.image))]
    merged = Policy.load(str(path), "m", dtype="float32", device="cpu")
    assert merged.greedy_fn(8)(req) == policies["dpo-merged"].greedy_fn(8)(req)
    # LoRA on the language model only: served as a LoRA module as it is
    lm_only = get_peft_model(AutoModelForImageTextToText.from_pretrained(checkpoint.vit),
                             LoraConfig(r=2, target_modules=r".*language_model.*\.(q_proj|v_proj)"))
    lm_only.save_pretrained(tmp_path / "lm_only")
    assert engine.lora_problems(tmp_path / "lm_only") == []
    assert engine.export_for_serving(params, tmp_path / "lm_only", tmp_path / "x") == ("lora", tmp_path / "lm_only")
    assert not (tmp_path / "x").exists()


def test_written_chat_template_is_the_hf_backends(checkpoint, tmp_path):  # noqa: F811
    """The Jinja file for `vllm serve --chat-template` is the template the HF backend renders prompts with."""
    for choice in ("family", "checkpoint"):
        params = Params.model_validate({"models": {"policy": checkpoint.vit, "base_lm": checkpoint.base,
                                                   "dtype": "float32", "device": "cpu", "chat_template": choice}})
        vlm = Policy.from_params(params, "policy")
        written = engine.write_chat_template(params, tmp_path / f"{choice}.jinja").read_text()
        assert written == vlm.processor.chat_template
        base = Policy.from_params(params, "base", base_lm=True)
        assert engine.write_chat_template(params, tmp_path / "b.jinja", base_lm=True).read_text() == \
            base.processor.chat_template
    assert "A chat between a curious user" in (tmp_path / "family.jinja").read_text()  # LLaVA's conv_vicuna_v1


def test_sampling_benchmark_runs_every_path(policies, tmp_path, monkeypatch):
    """bench/sampling_throughput.py scaled down (tiny shape, 2 prompts, k=2, 4 tokens), with the engine path
    against the loopback stand-in: stock and shared sample the same tokens; the engine gets one request per
    prompt with n = k."""
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))  # children import it by name
    bench = importlib.import_module("sampling_throughput")
    responder = PolicyResponder({"bench": policies["llava"]}, tmp_path / "in")
    with OpenAIServer(responder=responder, models=["bench"]) as server:
        results = bench.main(["--shape", "tiny", "--prompts", "2", "--k", "2", "--max-new-tokens", "4",
                              "--threads", "1", "--base-url", server.url])
    by = {r["path"]: r for r in results}
    assert set(by) == {"stock", "shared", "engine"}
    assert by["stock"]["tokens"] == by["shared"]["tokens"] > 0
    assert all(r["tokens_per_s"] > 0 for r in results) and by["shared"]["peak_memory_bytes"] > 0
    assert by["engine"]["requests"] == 2 and [c[1] for c in responder.calls] == [2, 2, 2]  # warm-up + 2 prompts

"""Sampling throughput: k samples per prompt with stock HF `generate` vs mmpref's paths, same prompts, one run (issue 11;
goal on GPU: >= 5x stock HF `generate` at the same memory).

Paths, each on the same prompts (one image each, LLaVA-1.5 geometry: 336 px -> 576 image tokens), k samples at
temperature T, top_p 1, `--max-new-tokens`:

    stock    HF `model.generate(num_return_sequences=k)` in mmpref's batches (`Policy(shared_prefill=False)`): the
             inputs are repeated k times before the prefill, so every prompt is encoded k times
    shared   mmpref's HF path (`Policy`, default for LLaVA): one prefill per prompt, its KV cache repeated k times
    engine   mmpref's serving-engine backend (`mmpref.engine.ServedPolicy`): one chat-completions request per prompt
             with n = k against a running server (`--base-url`, `--served-model`); only with --base-url

The model is LLaVA-1.5-shaped with random weights: `--shape small` (default; built by mmpref.shaped_checkpoints, runs on 2 CPU
cores in about 2 minutes), `--shape 7b` / `--shape 13b` (llava-1.5-7b/13b sizes: Vicuna + CLIP ViT-L/14-336, built
from config on the GPU in bfloat16; the processor and tokenizer are the small one's, whose ids fit the vocabulary).
`--save DIR` writes the checkpoint (with mmpref's LLaVA prompt format as its chat template) so that a server can load
the same weights:  vllm serve DIR --served-model-name bench ... ; then rerun with --base-url/--served-model.

Each HF path runs in a fresh child process (after a warm-up call), so its peak memory is its own: peak RSS on CPU,
torch.cuda.max_memory_allocated on GPU. Tokens are the generated tokens counted from the ids (`generate` outputs
up to EOS); the engine's come from the server's `usage`. Prints one JSON line per path, then one with the ratios.

    python bench/sampling_throughput.py                                   # CPU, small shape
    python bench/sampling_throughput.py --shape 7b --prompts 64 --max-new-tokens 256          # GPU check
    python bench/sampling_throughput.py --shape 7b --prompts 64 --max-new-tokens 256 \\
        --base-url http://127.0.0.1:8000/v1 --served-model bench                             # + the engine
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {  # LLaVA-1.5: Vicuna-7B/13B v1.5 text model, CLIP ViT-L/14-336 tower (config.json of llava-hf/llava-1.5-*-hf)
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, vision_hidden_size=32,
                 vision_intermediate_size=64, vision_layers=2, vision_heads=2),  # what the tests run
    "small": dict(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, vision_hidden_size=128,
                  vision_intermediate_size=512, vision_layers=4, vision_heads=4),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, vision_hidden_size=1024,
               vision_intermediate_size=4096, vision_layers=24, vision_heads=16),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, vision_hidden_size=1024,
                vision_intermediate_size=4096, vision_layers=24, vision_heads=16),
}
QUESTIONS = ["What is shown in this chart?", "Describe the picture in detail.", "Which bar has the highest value?",
             "What color is the largest shape?", "How many objects are there, and where are they?",
             "Is there a circle to the left of the square?", "What does the figure tell us about the trend?",
             "Summarise the image in one sentence."]


def build(shape: str, root: Path) -> Path:
    """The LLaVA-1.5-shaped checkpoint of a CPU shape (mmpref.shaped_checkpoints); for 7b/13b the small one, whose processor
    they use."""
    from mmpref.shaped_checkpoints import build_llava15_shaped

    return build_llava15_shaped(root / "ckpt", **SHAPES[shape if shape in ("tiny", "small") else "small"])


def load_policy(shape: str, ckpt: Path, device: str):
    """(Policy, dtype) of the shape: the small checkpoint as saved, or a 7B/13B-sized model from config."""
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    from mmpref.families import FAMILIES
    from mmpref.models import load_processor
    from mmpref.sampling import Policy

    processor = load_processor(str(ckpt), FAMILIES["llava"].chat_template)  # mmpref's LLaVA prompt format
    if shape in ("tiny", "small"):
        model = LlavaForConditionalGeneration.from_pretrained(str(ckpt), dtype=torch.float32)
    else:
        s = SHAPES[shape]
        config = AutoConfig.from_pretrained(str(ckpt))
        t, v = config.text_config, config.vision_config
        t.hidden_size, t.intermediate_size, t.num_hidden_layers = s["hidden_size"], s["intermediate_size"], s["num_layers"]
        t.num_attention_heads = t.num_key_value_heads = s["num_heads"]
        t.head_dim = s["hidden_size"] // s["num_heads"]
        t.vocab_size = 32064  # llava-hf's padded vocabulary
        v.hidden_size, v.intermediate_size, v.num_hidden_layers = (s["vision_hidden_size"],
                                                                   s["vision_intermediate_size"], s["vision_layers"])
        v.num_attention_heads, v.projection_dim = s["vision_heads"], s["vision_hidden_size"]
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        torch.manual_seed(0)
        with torch.device(device):
            model = LlavaForConditionalGeneration._from_config(config, dtype=dtype)
    model.to(device).eval()
    return Policy(model, processor, "bench", is_vlm=True)


def requests(n: int, image_dir: Path):
    from mmpref.sampling import ChatRequest
    from mmpref.shaped_checkpoints import write_image

    return [ChatRequest(turns=[QUESTIONS[i % len(QUESTIONS)]],
                        image=str(write_image(image_dir / f"{i}.png", size=(336 + 16 * (i % 5), 336), seed=i)))
            for i in range(n)]


def _peak_memory(device: str) -> int:
    import torch

    if device == "cuda":
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _hf_child(path: str, a: dict, ckpt: str, image_dir: str, out) -> None:
    """One HF path in its own process: load, warm up, then time the sampling of every prompt."""
    import torch

    torch.set_num_threads(a["threads"]) if a["threads"] else None
    policy = load_policy(a["shape"], Path(ckpt), a["device"])
    policy.shared_prefill = path == "shared"
    reqs = requests(a["prompts"], Path(image_dir))
    counted = {"tokens": 0}
    real = policy.model.generate

    def generate(*args, **kw):  # count the generated tokens: after the prompt, up to EOS (pad after it)
        ids = real(*args, **kw)
        prompt = kw["input_ids"].shape[1]
        new = ids[:, prompt:]
        eos = (new == policy.tokenizer.eos_token_id).int()
        after_eos = eos.cumsum(-1) - eos > 0
        counted["tokens"] += int((~after_eos).sum())
        return ids

    policy.model.generate = generate
    kw = dict(num_return_sequences=a["k"], temperature=a["temperature"], top_p=1.0, batch_size=a["batch_size"],
              desc=False)
    policy.generate(reqs[:1], max_new_tokens=2, seed=0, **kw)  # warm-up
    counted["tokens"] = 0
    if a["device"] == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    outs = policy.generate(reqs, max_new_tokens=a["max_new_tokens"], seed=1, **kw)
    if a["device"] == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    assert len(outs) == len(reqs) and all(len(o) == a["k"] for o in outs)
    out.put({"path": path, "seconds": round(seconds, 3), "tokens": counted["tokens"],
             "tokens_per_s": round(counted["tokens"] / seconds, 2), "peak_memory_bytes": _peak_memory(a["device"]),
             "memory": "cuda max_memory_allocated" if a["device"] == "cuda" else "peak RSS"})


def run_hf(path: str, a: dict, ckpt: Path, image_dir: Path) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_hf_child, args=(path, a, str(ckpt), str(image_dir), q))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{path}: the child process failed (exit {proc.exitcode})")
    return q.get()


def run_engine(a: dict, image_dir: Path) -> dict:
    from mmpref.engine import ServedPolicy

    policy = ServedPolicy("bench", a["served_model"], a["base_url"], max_concurrency=a["concurrency"])
    policy.check_served()
    reqs = requests(a["prompts"], image_dir)
    kw = dict(num_return_sequences=a["k"], temperature=a["temperature"], top_p=1.0, desc=False)
    policy.generate(reqs[:1], max_new_tokens=2, **kw)  # warm-up
    policy.usage.update(requests=0, prompt_tokens=0, completion_tokens=0)
    start = time.perf_counter()
    outs = policy.generate(reqs, max_new_tokens=a["max_new_tokens"], seed=1, **kw)
    seconds = time.perf_counter() - start
    assert len(outs) == len(reqs) and all(len(o) == a["k"] for o in outs)
    tokens = policy.usage["completion_tokens"]
    return {"path": "engine", "seconds": round(seconds, 3), "tokens": tokens,
            "tokens_per_s": round(tokens / seconds, 2), "requests": policy.usage["requests"],
            "peak_memory_bytes": None, "memory": "the server's (see its --gpu-memory-utilization)"}


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per HF generate call (params sampling.batch_size)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--paths", default="stock,shared", help="HF paths to run, comma-separated")
    ap.add_argument("--base-url", default=None, help="a running server's OpenAI-compatible URL (adds the engine path)")
    ap.add_argument("--served-model", default="bench")
    ap.add_argument("--concurrency", type=int, default=64, help="engine requests in flight")
    ap.add_argument("--save", default=None, help="write the checkpoint here (for vllm serve) and exit")
    a = ap.parse_args(argv)
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if a.shape in ("7b", "13b") and device != "cuda" and not a.save:
        raise SystemExit(f"--shape {a.shape} is a GPU benchmark (random {a.shape} weights); use --device cuda")
    args = {**vars(a), "device": device}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpt = build(a.shape, root)
        if a.save:
            policy = load_policy(a.shape, ckpt, device)
            policy.model.save_pretrained(a.save)
            policy.processor.save_pretrained(a.save)
            print(json.dumps({"saved": a.save, "shape": a.shape}))
            return []
        image_dir = root / "images"
        for path in [p for p in a.paths.split(",") if p]:
            results.append({"shape": a.shape, "device": device, "prompts": a.prompts, "k": a.k,
                            "max_new_tokens": a.max_new_tokens, **run_hf(path, args, ckpt, image_dir)})
            print(json.dumps(results[-1]), flush=True)
        if a.base_url:
            requests(a.prompts, image_dir)
            results.append({"shape": a.shape, "device": "server", "prompts": a.prompts, "k": a.k,
                            "max_new_tokens": a.max_new_tokens, **run_engine(args, image_dir)})
            print(json.dumps(results[-1]), flush=True)
    by = {r["path"]: r for r in results}
    if "stock" in by:
        base = by["stock"]
        ratios = {f"{p}_vs_stock": {"tokens_per_s": round(r["tokens_per_s"] / base["tokens_per_s"], 2),
                                    "peak_memory": (round(r["peak_memory_bytes"] / base["peak_memory_bytes"], 2)
                                                    if r["peak_memory_bytes"] else None)}
                  for p, r in by.items() if p != "stock"}
        print(json.dumps({"ratios": ratios}), flush=True)
    return results


if __name__ == "__main__":
    main()

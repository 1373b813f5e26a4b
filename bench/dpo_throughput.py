"""DPO pairs/s and peak memory: mmpref's shared-prefix DPO against stock TRL `DPOTrainer`, same pairs, same model.

Every variant trains the same LoRA (r128/alpha256 on all linear layers of the language model, projector trained at its
own learning rate, as params/paper-7b.yaml) from the same random weights on the same pairs, in its own process (so
peak memory is its own), through `mmpref.train.dpo_trainer`:

    trl          stock TRL: [prompt+chosen; prompt+rejected] rows, reference forward on the fly (TRL's default)
    trl-cached   stock TRL rows, reference log-probs precomputed once (mmpref's cache; TRL refuses it for images)
    mmpref       one row per pair, image and prompt once (mmpref/shared_prefix.py), reference precomputed the same way
    mmpref-fly   one row per pair, reference on the fly (also packed)

Printed per variant: pairs/s over the timed optimizer steps (after `--warmup` steps), the process's CPU seconds per
pair over the same steps (fairer when other jobs share the CPUs), the FLOPs of one step per pair
(torch.utils.flop_counter: the work itself, whatever else runs), the seconds the trainer took to
build (for the cached variants: the reference pass over all pairs), peak memory (GPU: torch.cuda.max_memory_allocated
during training; CPU: the process's peak RSS), what training added to the memory it started with, and the loss of
every step; then each variant's ratio against `trl` and `trl-cached`, and the largest loss difference between the
variants (LoRA dropout is 0 by default, so the losses are the same computation and must agree to float tolerance).

    python bench/dpo_throughput.py                        # CPU default: small LLaVA-1.5 shape, 576 image tokens,
                                                          # 1 torch thread (--threads 2 on an idle 2-core machine)
    python bench/dpo_throughput.py --shape 7b             # one GPU: LLaVA-1.5-7B shape, random weights, bf16
    python bench/dpo_throughput.py --shape 13b --batch-size 4
    python bench/dpo_throughput.py --config /path/llava-1.5-7b-hf/config.json   # sizes from a hub config.json

The 7b/13b sizes are llava-hf/llava-1.5-{7b,13b}-hf's config.json: Vicuna-v1.5 (Llama-2) text model (hidden
4096/5120, MLP 11008/13824, 32/40 layers and heads, vocabulary 32064) and CLIP ViT-L/14-336 (hidden 1024, MLP 4096,
24 layers, 16 heads; 576 image tokens). The tokenizer and processor are the LLaVA-1.5-shaped miniature's
(mmpref/shaped_checkpoints.py), so token ids stay below its 1002 entries of the 32064 embedding rows. On a GPU the run uses bf16
and gradient checkpointing (params/paper-7b.yaml), on CPU float32 without.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {"trl": (False, False), "trl-cached": (False, True), "mmpref": (True, True), "mmpref-fly": (True, False)}
# (text: hidden, intermediate, layers, heads, vocab; vision: hidden, intermediate, layers, heads)
SHAPES = {
    "small": dict(hidden_size=256, intermediate_size=688, num_layers=4, num_heads=4, vocab_size=None,
                  vision_hidden_size=64, vision_intermediate_size=256, vision_layers=2, vision_heads=2),
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, vocab_size=32064,
               vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, vision_heads=16),
    "13b": dict(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, vocab_size=32064,
                vision_hidden_size=1024, vision_intermediate_size=4096, vision_layers=24, vision_heads=16),
}
WORDS = ("the chart shows a steady rise in the value of each bar from left to right while the red line stays flat "
         "near the bottom and the blue circle marks the highest point of the curve at about forty percent").split()


def shape_from_config(path: Path) -> dict:
    c = json.loads(Path(path).read_text())
    t, v = c["text_config"], c["vision_config"]
    return dict(hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
                num_layers=t["num_hidden_layers"], num_heads=t["num_attention_heads"],
                vocab_size=t.get("vocab_size"), vision_hidden_size=v["hidden_size"],
                vision_intermediate_size=v["intermediate_size"], vision_layers=v["num_hidden_layers"],
                vision_heads=v["num_attention_heads"])


def make_data(work: Path, n: int, completion_tokens: int, tokenizer, seed: int = 0) -> list[dict]:
    """n (image, question, chosen, rejected) rows; completions of 0.6-1.4 x `completion_tokens` tokens (mean
    `completion_tokens`), so chosen and rejected differ in length and batches carry padding."""
    from mmpref.shaped_checkpoints import write_image

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        write_image(work / "images" / f"{i}.png", size=(336, 336), seed=i)

        def text():
            k = max(1, round(completion_tokens * rng.uniform(0.6, 1.4)))
            words = " ".join(rng.choice(WORDS) for _ in range(k)).capitalize()
            return tokenizer.decode(tokenizer(words, add_special_tokens=False)["input_ids"][:k]).strip() + "."

        rows.append({"prompt_id": f"p{i}", "image": f"images/{i}.png",
                     "question": f"What does figure {i} show about the {rng.choice(WORDS)}?",
                     "chosen": text(), "rejected": text()})
    return rows


def build_model(ckpt: Path, shape: dict, device: str):
    import torch
    from transformers import AutoConfig, LlavaForConditionalGeneration

    config = AutoConfig.from_pretrained(ckpt)
    t, v = config.text_config, config.vision_config
    t.hidden_size, t.intermediate_size = shape["hidden_size"], shape["intermediate_size"]
    t.num_hidden_layers, t.num_attention_heads = shape["num_layers"], shape["num_heads"]
    t.num_key_value_heads, t.head_dim = shape["num_heads"], shape["hidden_size"] // shape["num_heads"]
    t.vocab_size = shape["vocab_size"] or t.vocab_size
    v.hidden_size, v.intermediate_size = shape["vision_hidden_size"], shape["vision_intermediate_size"]
    v.num_hidden_layers, v.num_attention_heads = shape["vision_layers"], shape["vision_heads"]
    v.projection_dim = shape["vision_hidden_size"]
    config._attn_implementation = "sdpa"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


class RssSampler:
    """Peak resident memory of this process while training, sampled from /proc every 5 ms (ru_maxrss cannot be
    reset, so it also holds what model building took)."""

    def __init__(self):
        import threading

        self.peak, self.done = 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def start(self) -> int:
        self.peak = self.rss()
        self.thread.start()
        return self.peak

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return max(self.peak, self.rss())


def worker(a) -> dict:
    """One variant in this process: build, train warmup + steps optimizer steps, report."""
    import resource

    import torch
    from transformers import TrainerCallback
    from transformers.utils import logging as hf_logging

    from mmpref.config import DPOParams, LoraParams, TrainOptions
    from mmpref.families import FAMILIES
    from mmpref.train import TrainSettings, dpo_trainer

    hf_logging.set_verbosity_error()
    torch.set_num_threads(a.threads)
    share, precompute = VARIANTS[a.variant]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(a.workdir)
    shape = json.loads((work / "shape.json").read_text())
    rows = json.loads((work / "rows.json").read_text())
    model = build_model(work / "ckpt", shape, device)
    settings = TrainSettings(
        method="dpo", chat_template=FAMILIES["llava"].chat_template, seed=0,
        trainer=DPOParams(learning_rate=5e-5, batch_size=a.batch_size, grad_accum=1, epochs=1, max_length=a.max_length,
                          train_projector=True, projector_learning_rate=2e-5, beta=0.1,
                          precompute_ref_log_probs=precompute, share_prefix=share),
        lora=LoraParams(r=128, alpha=256, dropout=a.dropout),
        options=TrainOptions(bf16=True, gradient_checkpointing=True, logging_steps=1, warmup_ratio=0.0,
                             lr_scheduler="constant", save_steps=None))
    start = time.perf_counter()
    trainer, _ = dpo_trainer(str(work / "ckpt"), rows, work, work / f"out-{a.variant}", settings, model=model)
    setup_s = time.perf_counter() - start
    trainer.args.max_steps = a.warmup + a.steps
    trainer.args.disable_tqdm = True
    marks: list[tuple[float, float]] = []  # (wall, this process's CPU time) at the end of each optimizer step

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if device == "cuda":
                torch.cuda.synchronize()
            marks.append((time.perf_counter(), time.process_time()))

    trainer.add_callback(Clock())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss = RssSampler() if device == "cpu" else None
    base = rss.start() if rss else base
    begin = (time.perf_counter(), time.process_time())
    trainer.train()
    rss_peak = rss.stop() if rss else None
    first = marks[a.warmup - 1] if a.warmup else begin
    timed, cpu = marks[-1][0] - first[0], marks[-1][1] - first[1]
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    # the work itself, independent of what else runs on the machine: FLOPs of one step's loss and backward
    # (torch.utils.flop_counter; on-the-fly variants include their reference forward)
    from torch.utils.flop_counter import FlopCounterMode

    inputs = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    with FlopCounterMode(display=False) as flops:
        trainer.compute_loss(trainer.model, inputs).backward()
    trainer.model.zero_grad()
    return {"variant": a.variant, "device": device, "pairs_per_s": a.steps * a.batch_size / timed,
            "step_s": timed / a.steps, "cpu_s_per_pair": cpu / (a.steps * a.batch_size),
            "gflop_per_pair": flops.get_total_flops() / 1e9 / a.batch_size, "setup_s": setup_s,
            "peak_mem_gib": peak / 2**30,
            "peak_kind": "cuda max_memory_allocated" if device == "cuda" else "peak RSS",
            "train_mem_gib": ((rss_peak if rss else torch.cuda.max_memory_allocated()) - base) / 2**30,
            "losses": losses}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small")
    ap.add_argument("--config", type=Path, help="a llava-hf config.json whose sizes replace --shape's")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    ap.add_argument("--steps", type=int, default=2, help="timed optimizer steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    ap.add_argument("--completion-tokens", type=int, default=200, help="about this many tokens per completion")
    ap.add_argument("--max-length", type=int, default=3000, help="params/paper-7b.yaml's train.dpo.max_length")
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="train.lora.dropout: 0 (default) makes every variant's loss the same computation; the paper used 0.05")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads per variant (default 1: on CPUs shared with other jobs, OpenMP threads "
                         "spin-wait at every op, which measures the number of ops rather than the work; 2 on an "
                         "idle 2-core machine)")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print("RESULT " + json.dumps(worker(a)), flush=True)
        return
    variants = [v.strip() for v in a.variants.split(",")]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "trl" not in variants and "trl-cached" not in variants:
        sys.exit(f"--variants: choose from {list(VARIANTS)} including trl or trl-cached (got {variants})")
    shape = shape_from_config(a.config) if a.config else SHAPES[a.shape]
    results = {}
    with tempfile.TemporaryDirectory(prefix="dpo-bench-") as tmp:
        from mmpref.shaped_checkpoints import build_llava15_shaped

        work = Path(tmp)
        build_llava15_shaped(work / "ckpt")  # processor, tokenizer and config layout; weights are made per worker
        (work / "shape.json").write_text(json.dumps(shape))
        from transformers import AutoTokenizer

        rows = make_data(work, a.batch_size * (a.warmup + a.steps), a.completion_tokens,
                         AutoTokenizer.from_pretrained(work / "ckpt"))
        (work / "rows.json").write_text(json.dumps(rows))
        for v in variants:
            cmd = [sys.executable, __file__, "--variant", v, "--workdir", str(work)] + [
                f"--{k.replace('_', '-')}={getattr(a, k)}" for k in
                ("batch_size", "steps", "warmup", "max_length", "dropout", "threads")]
            print(f"[{v}] running ...", file=sys.stderr, flush=True)
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"[{v}] failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            results[v] = json.loads(line[len("RESULT "):])
    print(f"DPO throughput, shape {a.config or a.shape}, {a.batch_size} pairs/step, {a.steps} timed steps, "
          f"~{a.completion_tokens} tokens per completion, device {results[variants[0]]['device']}, "
          f"{results[variants[0]]['peak_kind']}")
    print(f"{'variant':<12} {'pairs/s':>9} {'step s':>8} {'CPU s/pair':>10} {'GFLOP/pair':>10} {'setup s':>8} "
          f"{'peak GiB':>9} {'+train GiB':>10}  losses")
    for v, r in results.items():
        print(f"{v:<12} {r['pairs_per_s']:9.3f} {r['step_s']:8.2f} {r['cpu_s_per_pair']:10.2f} "
              f"{r['gflop_per_pair']:10.1f} {r['setup_s']:8.2f} {r['peak_mem_gib']:9.2f} {r['train_mem_gib']:10.2f}  "
              + " ".join(f"{x:.6f}" for x in r["losses"]))
    ratios = {}
    for base in ("trl", "trl-cached"):
        if base not in results:
            continue
        for v, r in results.items():
            if v.startswith("mmpref"):
                ratios[f"{v}/{base}"] = {"pairs_per_s": r["pairs_per_s"] / results[base]["pairs_per_s"],
                                         "cpu_per_pair": results[base]["cpu_s_per_pair"] / r["cpu_s_per_pair"],
                                         "flop_per_pair": results[base]["gflop_per_pair"] / r["gflop_per_pair"],
                                         "peak_mem": r["peak_mem_gib"] / results[base]["peak_mem_gib"],
                                         "train_mem": r["train_mem_gib"] / results[base]["train_mem_gib"]}
    for k, r in ratios.items():
        print(f"ratio {k:<24} pairs/s x{r['pairs_per_s']:.2f}   pairs per CPU-second x{r['cpu_per_pair']:.2f}   "
              f"fewer FLOPs per pair x{r['flop_per_pair']:.2f}   peak memory x{r['peak_mem']:.2f} "
              f"(training's own x{r['train_mem']:.2f})")
    losses = [r["losses"] for r in results.values()]
    loss_gap = max(abs(x - y) for ls in losses for x, y in zip(ls, losses[0]))
    print(f"largest loss difference between variants: {loss_gap:.2e}; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs (pairs/s is wall time: on a shared machine, trust the CPU-second ratio)")
    print(json.dumps({"shape": str(a.config or a.shape), "batch_size": a.batch_size, "steps": a.steps,
                      "results": results, "ratios": ratios, "max_loss_diff": loss_gap}))


if __name__ == "__main__":
    main()

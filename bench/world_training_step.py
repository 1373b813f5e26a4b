"""Seconds per training step of the miniature world's models: `_backward_batch` against stock `model(**batch).loss`.

Both compute the same loss and gradient (tests/test_models.py checks it); `_backward_batch` runs a batch whose rows
differ in length as two halves sorted by length, each padded to its own longest row, and applies the output layer only
where an answer token is predicted. The benchmark loads a built world's checkpoints (`mmpref run params/tiny.yaml
--stages 00` makes one), draws batches of 64 rows as 00_world trains them, and times forward + backward + AdamW step
for both ways on the same batches, alternating them round by round so both see the same machine:

    base LM      text rows of the base LM's data (lengths about 10-69 tokens)
    mixture      rows of the visual instruction-tuning mixture (visual rows and its text-only share)
    warm-up      the perception warm-up's "is there a <shape>?" rows (all about the same length)

    python bench/world_training_step.py runs/tiny/world            # 3 rounds of 10 batches per way and kind
    python bench/world_training_step.py runs/tiny/world --rounds 5 --batches 20
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor

from mmpref.world.models import _backward_batch, _collate, encode_example, encode_text_with_image


def stock_backward(model, batch: list[dict], pad_id: int) -> float:
    loss = model(**_collate(batch, pad_id)).loss
    loss.backward()
    return loss.item()


def time_steps(model, batches: list[list[dict]], pad_id: int, fn) -> float:
    """Mean seconds per step (forward, backward, AdamW step) over the batches."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)  # lr 0: the model stays put
    start = time.perf_counter()
    for batch in batches:
        fn(model, batch, pad_id)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("world", type=Path, help="a built world directory (runs/<name>/world)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", type=int, default=10, help="batches per way, kind and round")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    rng = random.Random(0)
    proc = AutoProcessor.from_pretrained(args.world / "vit")
    pad = proc.tokenizer.pad_token_id
    text_rows = [json.loads(line) for line in (args.world / "text_train.jsonl").open()]
    visual_rows = [json.loads(line) for line in (args.world / "visual_train.jsonl").open()]

    def pixels(rel: str):
        with Image.open(args.world / rel) as im:
            return proc.image_processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"][0]

    def text(r):
        return encode_example(proc.tokenizer, r["turns"], r["references"], max_length=192)

    def visual(r):
        if r["image"] is None:
            return text(r)
        return encode_text_with_image(proc, r["turns"], r["references"], pixels(r["image"]), 192)

    def warm_up(r, q, ref):
        return encode_text_with_image(proc, q, ref, pixels(r["image"]), 192)

    n = args.batches * args.batch_size
    warm = [(r, q, ref) for r in visual_rows if r["kind"] == "vqa"
            for q, ref, qtype in zip(r["turns"], r["references"], r["qtypes"]) if qtype in ("exist", "exist_absent")]
    kinds = {
        "base LM": ("base-lm", [text(r) for r in rng.sample(text_rows, n)]),
        "mixture": ("vit", [visual(r) for r in rng.sample(visual_rows, n)]),
        "warm-up": ("vit", [warm_up(*w) for w in rng.sample(warm, n)]),
    }
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds x {args.batches} batches per way and kind")
    for kind, (ckpt, rows) in kinds.items():
        rng.shuffle(rows)
        batches = [rows[i:i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
        if ckpt == "base-lm":
            model = AutoModelForCausalLM.from_pretrained(args.world / ckpt)
        else:
            model = AutoModelForImageTextToText.from_pretrained(args.world / ckpt)
            model.model.vision_tower.requires_grad_(False)
        model.train()
        time_steps(model, batches[:2], pad, _backward_batch)  # warm both paths up once
        time_steps(model, batches[:2], pad, stock_backward)
        times = {"stock": [], "mmpref": []}
        for _ in range(args.rounds):
            times["stock"].append(time_steps(model, batches, pad, stock_backward))
            times["mmpref"].append(time_steps(model, batches, pad, _backward_batch))
        s, m = statistics.median(times["stock"]), statistics.median(times["mmpref"])
        lengths = [len(r["input_ids"]) for r in rows]
        print(f"{kind:8s} rows {min(lengths)}-{max(lengths)} tokens: stock {s * 1000:.0f} ms/step, "
              f"mmpref {m * 1000:.0f} ms/step, speed-up {s / m:.2f}x "
              f"(rounds: stock {', '.join(f'{t * 1000:.0f}' for t in times['stock'])}; "
              f"mmpref {', '.join(f'{t * 1000:.0f}' for t in times['mmpref'])})")


if __name__ == "__main__":
    main()

"""Noisy-image MT-Bench (the paper's Table 3): MT-Bench with an irrelevant image that goes with every user turn.

The questions, answer generation, judge prompts, parser and metric are MT-Bench's (mt_bench.py, FastChat commit
0e6d3e4beaab66f4d3f93db72541a4abab8af28d); the image for a question is chosen from `evaluate.noise_images` by a hash of
the question id (`noise_image_for`), the same on every run and machine; the judge sees text only.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from mmpref.evaluate import mt_bench
from mmpref.evaluate.benchmark import Benchmark, DataFile
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.scenes import Images


def _run(data_path, generate, judge, out_jsonl, model, *, template=None, limit=None, noise_images_dir=None,
         **options: Any) -> list[dict]:
    if noise_images_dir is None:
        raise ValueError("mt_bench_noisy needs noise_images_dir (a folder of irrelevant images)")
    return mt_bench.run_mt_bench(mt_bench.load_mt_bench(data_path, limit), generate, judge, out_jsonl, model,
                                 templates_path=template, noise_images_dir=noise_images_dir, **options)


# --------------------------------------------------------------------------------------------------------------
# the miniature world's copy (its official layout, so the loader above reads it)

def build_noise_images(imgs: Images, rng: random.Random, bench: Path) -> int:
    """Irrelevant images for noisy-image MT-Bench: blank, uniform noise, landscapes and unrelated world pictures."""
    size = imgs.size
    nrng = np.random.default_rng(rng.randrange(2**32))
    pics = [("blank.png", Image.new("RGB", (size, size), "white"))]
    for k in range(4):
        pics.append((f"noise_{k}.png", Image.fromarray(nrng.integers(0, 256, (size, size, 3), dtype=np.uint8))))
    for k in range(3):
        im = Image.new("RGB", (size, size), (120 + 30 * k, 180, 235))
        d = ImageDraw.Draw(im)
        horizon = rng.randint(size // 2, 3 * size // 4)
        d.rectangle([0, horizon, size, size], fill=(60, 140 - 20 * k, 50))
        r = rng.randint(3, size // 6)
        x = rng.randint(r, size - r)
        d.ellipse([x - r, 4, x + r, 4 + 2 * r], fill=(250, 220, 80))
        pics.append((f"landscape_{k}.png", im))
    pics.append(("scene_0.png", imgs.scene(rng)[1]))
    pics.append(("chart_0.png", imgs.chart(rng)[1]))
    for name, im in pics:
        if name.startswith(("blank", "noise", "landscape")):
            imgs.unique(im)
        imgs.save(im, f"benchmarks/noise_images/{name}")
    return len(pics)


def build_miniature(build: MiniatureBuild) -> dict[str, int]:
    return {"noise_images": build_noise_images(build.imgs, build.rng("noise"), build.folder)}


BENCHMARK = Benchmark(
    name="mt_bench_noisy", display="Noisy-image MT-Bench", headline="overall",
    headline_name="noisy-image MT-Bench overall", order=6, unit="1–10", paper_key="mt_bench_noisy", grading=mt_bench.GRADING,
    judge_template="mt_bench", uses_noise_images=True, run=_run, score=mt_bench.score,
    failures=mt_bench.count_failed_turns, load=mt_bench.load_mt_bench, check=mt_bench.check,
    check_template=mt_bench.check_judge_prompts, options=lambda ev: {"decoding": ev.mt_bench_decoding},
    cost_inputs=mt_bench.cost_inputs, output_tokens=mt_bench.BENCHMARK.output_tokens, default_items=80,
    build_miniature=build_miniature, build_order=6, judge_task=mt_bench.JUDGE_TASK, rubric_grade=mt_bench.rubric_grade,
    data=DataFile("mt_bench_noisy", "Noisy-image MT-Bench questions", "09_evaluate",
                  "evaluate.benchmarks.mt_bench_noisy", "mt_bench/question.jsonl",
                  ("mt_bench/question.jsonl (the MT-Bench file)",),
                  "github lm-sys/FastChat `fastchat/llm_judge/data/mt_bench/question.jsonl`"),
)

"""The miniature world's synthetic data: charts, shape scenes, text tasks, prompt pools and benchmarks.

Everything is deterministic from one seed and held out by construction:

- every image in the world (train, pools, benchmarks, noise) has a unique pixel content — a generator that draws an
  image already used anywhere else draws again;
- no benchmark text prompt (MT-Bench turn 1, AlpacaEval instruction) occurs as a first turn in ``text_train.jsonl``.

Images are drawn with PIL primitives straight into ``image_size``² RGB pictures (no matplotlib: at 48 px a vector
renderer only adds antialiasing blur, and PIL draws a picture in well under a millisecond, so the default world of a
few thousand images builds in seconds). Bar heights and line points sit on a faint integer grid so values 1–9 can be
read off the picture.

Ground truth follows the spec's conventions: every item carries ``answer`` (the short key: "7", "yes", "blue",
"absent", ...) and ``reference`` (a full sentence in the house style: "The value of bar 2 is 7.").

Output layout of :func:`build_world_data` (``out_dir`` is ``<run_dir>/world``)::

    visual_train.jsonl        LLaVA-1.5's mix, one conversation a row: {"image" (None for text rows), "turns",
                               "references", "answers", "qtypes", "kind", "source", "negative"} (world/mix.py)
    text_train.jsonl          {"turns", "references", "answers", "task"}
    image_tags.jsonl          {"image", "tags"} for the training pictures (see image_tags)
    images/                   training images (paths in visual_train.jsonl are relative to out_dir)
    pools/scigraphqa.json     SciGraphQA-295K records (image_file, id, caption, title, abstract, first_mention,
                              response, conversations, q_a_pairs) + miniature extra "answer_key"
    pools/scigraphqa_images/
    pools/lrv.json            LRV-Instruction records (image_id, question, answer, task) + "answer_key"
    pools/lrv_images/
    benchmarks/pope/coco_pope_{random,popular,adversarial}.json + pope/images/
    benchmarks/mmbench/mmbench_dev.tsv
    benchmarks/mmvet/mm-vet.json + mmvet/images/
    benchmarks/llava_bench/{questions,answers_gpt4,context}.jsonl + llava_bench/images/
    benchmarks/llava_bench_dev/           the same layout, other pictures: the dev split of the DPO search
    benchmarks/mt_bench/question.jsonl
    benchmarks/alpaca_eval/eval.json
    benchmarks/noise_images/*.png
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Iterator

from mmpref.evaluate import registry
from mmpref.evaluate.benchmark import Benchmark
from mmpref.io import read_json, read_jsonl, sha256_file, sha256_json, write_json, write_jsonl
from mmpref.world.benchmarks import MiniatureBuild
from mmpref.world.mix import MIX_KINDS, build_visual_mix
from mmpref.world.pools import build_lrv_pool, build_scigraphqa_pool, build_text_train
from mmpref.world.models import ALIGN_INSTRUCTION, train_world_models
from mmpref.world.scenes import Images
from mmpref.world.text_tasks import knowledge_statements

log = logging.getLogger(__name__)

STEERLM_TEXT = ("Please answer the question such that your response is in the following attributes in 5-point "
                "Likert scale:\nHelpfulness:4,Correctness:4,Coherence:4,Complexity:4,Verbosity:4")


def _rng(seed: int, part: str) -> random.Random:
    return random.Random(f"mmpref-world:{seed}:{part}")


def build_world_data(out_dir: str | Path, seed: int, image_size: int = 48, n_visual_train: int = 3000,
                     n_text_train: int = 3000, n_pool: int = 400, n_bench: int = 60, n_text_bench: int | None = None,
                     cell: int | None = None, mix: dict[str, float] | None = None, mc_answer: str = "letter",
                     pope_shapes: list[int] | None = None, base_lm_phrasings: str = "train",
                     vqa_prompt_first_only: float = 0.0) -> dict:
    """Write the whole miniature world's data into out_dir (layout in the module docstring); return counts.

    ``n_pool`` records per pool source; ``n_bench`` items per visual benchmark (POPE: at least n_bench questions per
    split, balanced yes/no); ``n_text_bench`` MT-Bench questions and AlpacaEval instructions (default n_bench).
    ``cell``: scenes put every shape inside one cell of that many pixels (the tower's patch size). ``mix``: the
    shares of LLaVA-1.5's mix kinds among the ``n_visual_train`` conversations (default `mix.LLAVA_15_SHARES`),
    ``mc_answer`` what a multiple-choice row is answered with ("letter" or "option": its text), ``pope_shapes`` the
    numbers of shapes a POPE picture may have, ``base_lm_phrasings`` the phrasings of the base LM's text data
    ("train": none of the benchmarks'; "all"), ``vqa_prompt_first_only`` the share of VQA conversations with the
    format prompt on their first question only. The generated
    sub-folders (images/, pools/, benchmarks/) are replaced; nothing else in out_dir is touched.
    """
    n_text_bench = n_bench if n_text_bench is None else n_text_bench
    if image_size < 16:
        raise ValueError(f"image_size must be at least 16 pixels, got {image_size}")
    for name, value in (("n_visual_train", n_visual_train), ("n_text_train", n_text_train), ("n_pool", n_pool),
                        ("n_bench", n_bench), ("n_text_bench", n_text_bench)):
        if value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("images", "pools", "benchmarks"):
        shutil.rmtree(out / sub, ignore_errors=True)
    bench = out / "benchmarks"
    imgs = Images(out, image_size, cell)
    counts: dict = {}

    # Benchmarks first (each registered benchmark's own builder, in build order), so the held-out text prompts are
    # known before the training text is drawn.
    miniature = MiniatureBuild(imgs=imgs, folder=bench, rng=lambda part: _rng(seed, part), n_bench=n_bench,
                               n_text_bench=n_text_bench, pope_shapes=pope_shapes)
    for spec in _miniature_builders():
        counts.update(spec.build_miniature(miniature))
    held = miniature.held_out.held

    sci = build_scigraphqa_pool(imgs, _rng(seed, "pool-scigraphqa"), n_pool)
    write_json(out / "pools" / "scigraphqa.json", sci)
    lrv = build_lrv_pool(imgs, _rng(seed, "pool-lrv"), n_pool)
    write_json(out / "pools" / "lrv.json", lrv)
    counts["pool_scigraphqa"], counts["pool_lrv"] = len(sci), len(lrv)
    counts["pool_lrv_negative"] = sum(r["task"] == "negative" for r in lrv)

    visual = build_visual_mix(imgs, _rng(seed, "visual-train"), n_visual_train, mix, mc_answer=mc_answer,
                              vqa_prompt_first_only=vqa_prompt_first_only)
    write_jsonl(out / "visual_train.jsonl", visual)
    write_jsonl(out / "image_tags.jsonl", imgs.tags)
    text = build_text_train(_rng(seed, "text-train"), n_text_train, held, base_lm_phrasings)
    write_jsonl(out / "text_train.jsonl", text)
    counts["visual_train"], counts["text_train"] = len(visual), len(text)
    counts["visual_train_negative"] = sum(r["negative"] for r in visual)
    for kind in MIX_KINDS:
        counts[f"visual_train_{kind}"] = sum(r["kind"] == kind for r in visual)
    counts["visual_train_turns"] = sum(len(r["turns"]) for r in visual)
    counts["images"] = imgs.written
    counts["seconds"] = round(time.perf_counter() - start, 2)
    counts["ms_per_image"] = round(1000 * imgs.draw_seconds / max(1, imgs.written), 3)
    log.info("world data: %d images (%.2f ms each to draw+save), %d visual and %d text training items in %.1fs",
             imgs.written, counts["ms_per_image"], len(visual), len(text), counts["seconds"])
    return counts


def _miniature_builders() -> list[Benchmark]:
    """The registered benchmarks that build a miniature copy, in build order."""
    return sorted((b for b in registry.benchmarks() if b.build_miniature is not None),
                  key=lambda b: (b.build_order, b.name))


def vocabulary_corpus(out_dir: str | Path) -> Iterator[str]:
    """Every text the world contains (training files, pools, benchmarks) — what the tiny tokenizer is trained on."""
    out = Path(out_dir)
    yield STEERLM_TEXT
    yield ALIGN_INSTRUCTION
    yield from knowledge_statements()
    for r in read_jsonl(out / "image_tags.jsonl"):
        if r.get("caption"):
            yield r["caption"]
    # Training conversations as the chat template renders them, so the role words become tokens of their own.
    for r in read_jsonl(out / "visual_train.jsonl"):
        yield " ".join(f"USER: {t} ASSISTANT: {a}" for t, a in zip(r["turns"], r["references"]))
    for r in read_jsonl(out / "text_train.jsonl"):
        yield " ".join(f"USER: {t} ASSISTANT: {a}" for t, a in zip(r["turns"], r["references"]))
    for r in json.loads((out / "pools" / "scigraphqa.json").read_text(encoding="utf-8")):
        yield r["caption"]
        yield r["title"]
        yield r["first_mention"]
        for turn in r["conversations"]:
            yield turn["value"]
    for r in json.loads((out / "pools" / "lrv.json").read_text(encoding="utf-8")):
        yield r["question"]
        yield r["answer"]
    for spec in _miniature_builders():  # each benchmark's own texts (the tokenizer's merges do not depend on order)
        if spec.miniature_texts is not None:
            yield from spec.miniature_texts(out / "benchmarks")


def world_fingerprint(world_params, seed: int) -> str:
    """What a built world depends on: its params, the seed and the code that builds it (every module of
    mmpref/world/ and the benchmark modules whose miniature builders it calls): two runs with the same fingerprint
    get the same world."""
    code = {f.name: sha256_file(f) for f in sorted(Path(__file__).parent.glob("*.py"))}
    for spec in _miniature_builders():
        module = Path(sys.modules[spec.build_miniature.__module__].__file__)
        code[f"{module.parent.name}/{module.name}"] = sha256_file(module)
    return sha256_json({"world": world_params.model_dump(mode="json"), "seed": seed, "code": code})[:16]


def _built(folder: Path, fingerprint: str) -> dict | None:
    """The marker of a world built in `folder` with this fingerprint, or None."""
    marker = folder / "world.json"
    if marker.exists():
        info = read_json(marker)
        if info.get("fingerprint") == fingerprint and (folder / "vit" / "model.safetensors").exists():
            return info
    return None


def build_world(world_dir: Path, world_params, seed: int, shared_dir: Path | None = None) -> dict:
    """Data + tokenizer + base LM + visually tuned LLaVA into world_dir; skipped when already built with these params.

    `shared_dir` (the runs folder's `.worlds/`): worlds are kept there by fingerprint (`world_fingerprint`), so a
    new run whose world params, seed and world code are those of a world built before copies it (36 MB, a second)
    instead of training it again (about 8 minutes on 2 cores): a student's experiment with a new run name costs
    only the stages it changes."""
    fingerprint = world_fingerprint(world_params, seed)
    info = _built(world_dir, fingerprint)
    if info is not None:
        log.info("world already built in %s with these params; skipping", world_dir)
        return info
    kept = shared_dir / fingerprint if shared_dir is not None else None
    if kept is not None and _built(kept, fingerprint) is not None:
        for sub in ("images", "pools", "benchmarks", "tokenizer", "base-lm", "vit"):
            shutil.rmtree(world_dir / sub, ignore_errors=True)
        # the marker last: a copy killed half-way has none, so the next run copies again instead of trusting it
        (world_dir / "world.json").unlink(missing_ok=True)
        shutil.copytree(kept, world_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("world.json"))
        shutil.copy2(kept / "world.json", world_dir / "world.json")
        log.info("world %s reused from %s (same params, seed and world code)", fingerprint, kept)
        return {**read_json(world_dir / "world.json"), "reused_from": str(kept)}
    timings = {}
    start = time.time()
    counts = build_world_data(
        world_dir, seed=seed, image_size=world_params.image_size, n_visual_train=world_params.n_visual_train,
        n_text_train=world_params.n_text_train, n_pool=world_params.n_pool, n_bench=world_params.n_bench,
        n_text_bench=world_params.n_text_bench,
        cell=world_params.vision.patch_size if world_params.objects_on_patches else None,
        mix=world_params.mix.model_dump(), mc_answer=world_params.mc_answer, pope_shapes=world_params.pope_shapes,
        base_lm_phrasings=world_params.base_lm_phrasings, vqa_prompt_first_only=world_params.vqa_prompt_first_only,
    )
    timings["data_seconds"] = round(time.time() - start, 1)
    start = time.time()
    trained = train_world_models(world_dir, vocabulary_corpus(world_dir),
                                 read_jsonl(world_dir / "visual_train.jsonl"), read_jsonl(world_dir / "text_train.jsonl"),
                                 read_jsonl(world_dir / "image_tags.jsonl"), world_params, seed)
    timings["models_seconds"] = round(time.time() - start, 1)
    info = {"fingerprint": fingerprint, **{f"n_{k}": v for k, v in counts.items() if isinstance(v, int)},
            **timings, **trained}
    write_json(world_dir / "world.json", info)
    if kept is not None:  # kept for later runs: copied whole, then renamed into place (a reader never sees half)
        part = kept.with_name(f".{fingerprint}.part")
        shutil.rmtree(part, ignore_errors=True)
        if kept.exists() and _built(kept, fingerprint) is None:
            shutil.rmtree(kept)  # a damaged copy (a killed copy of an older mmpref): replaced
        shutil.copytree(world_dir, part)
        try:
            part.rename(kept)
        except OSError:  # another run kept the same world first
            shutil.rmtree(part, ignore_errors=True)
        log.info("world %s kept in %s for later runs", fingerprint, kept)
    return info

"""Stage 00: build the miniature world once per world params (data, then the tiny checkpoints)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from mmpref import world as world_data
from mmpref.io import read_jsonl, sha256_json
from mmpref.models import train_world_models

log = logging.getLogger(__name__)


def build_world(world_dir: Path, world_params, seed: int) -> dict:
    """Data + tokenizer + base LM + visually tuned LLaVA into world_dir; skipped when already built with these params."""
    fingerprint = sha256_json({"world": world_params.model_dump(mode="json"), "seed": seed})[:16]
    marker = world_dir / "world.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("fingerprint") == fingerprint and (world_dir / "vit" / "model.safetensors").exists():
            log.info("world already built in %s with these params; skipping", world_dir)
            return info
    timings = {}
    start = time.time()
    counts = world_data.build_world_data(
        world_dir, seed=seed, image_size=world_params.image_size, n_visual_train=world_params.n_visual_train,
        n_text_train=world_params.n_text_train, n_pool=world_params.n_pool, n_bench=world_params.n_bench,
    )
    timings["data_seconds"] = round(time.time() - start, 1)
    start = time.time()
    trained = train_world_models(world_dir, world_data.vocabulary_corpus(world_dir),
                                 read_jsonl(world_dir / "visual_train.jsonl"), read_jsonl(world_dir / "text_train.jsonl"),
                                 read_jsonl(world_dir / "image_tags.jsonl"), world_params, seed)
    timings["models_seconds"] = round(time.time() - start, 1)
    info = {"fingerprint": fingerprint, **{f"n_{k}": v for k, v in counts.items() if isinstance(v, int)},
            **timings, **trained}
    marker.write_text(json.dumps(info))
    return info

"""What the benchmarks' miniature builders share. Each benchmark module builds its own small instance in its official
file format (its `Benchmark.build_miniature`, so the real loader reads it); `world/build.py` runs them in build order
with one `MiniatureBuild`: the world's pictures, the benchmarks folder, the sizes, seeded generators and the text
benchmarks' held-out prompts."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from mmpref.world.scenes import Images
from mmpref.world.text_tasks import sample_text_item


@dataclass
class HeldOutPrompts:
    """The text benchmarks' prompts (MT-Bench, AlpacaEval), drawn one after another from one seeded generator.

    First turns are in the benchmarks' own phrasings (`text_tasks._phrase`), which no training text uses; no first
    turn occurs twice, and a fact (``topic``) is asked at most twice over all text benchmarks, so it stays in training
    under the training phrasings: the benchmarks hold out prompts, not knowledge. `held` is the set of first turns
    that training must not contain."""

    rng: random.Random
    n: int                    # prompts per text benchmark (for the error message)
    held: set[str] = field(default_factory=set)
    topics: Counter = field(default_factory=Counter)

    def draw(self, two_turn: bool, task: str) -> dict:
        """A text item of `task` (two turns or one) whose first turn is new and whose fact is asked at most twice."""
        for _ in range(10_000):
            item = sample_text_item(self.rng, two_turn=two_turn, task=task, phrasings="bench")
            topic = item.get("topic")
            if item["turns"][0] in self.held or (topic is not None and self.topics[topic] >= 2):
                continue
            self.held.add(item["turns"][0])
            if topic is not None:
                self.topics[topic] += 1
            return item
        raise ValueError(f"the world's {task} tasks cannot give {self.n} held-out prompts per text benchmark; lower "
                         f"world.n_text_bench")


@dataclass
class MiniatureBuild:
    """What a benchmark's `build_miniature(build)` reads. It writes its files under `folder/<name>/` and its pictures
    through `imgs` (every picture of the world unique: a builder's pictures differ from those drawn before it), draws
    from `rng(<its part>)` and returns its counts ({name: items}) for world.json."""

    imgs: Images
    folder: Path                         # <world>/benchmarks
    rng: Callable[[str], random.Random]  # a generator seeded by the world's seed and a part name
    n_bench: int                         # items per visual benchmark (POPE: questions per split)
    n_text_bench: int                    # items per text benchmark
    pope_shapes: list[int] | None = None  # the numbers of shapes a POPE picture may have (None: the training ones)

    @cached_property
    def held_out(self) -> HeldOutPrompts:
        """The text benchmarks' prompts, shared by every text benchmark of this build (one generator, in order)."""
        return HeldOutPrompts(self.rng("text-bench"), self.n_text_bench)

"""The stage table: the one place that says, for every stage, which params sections it reads, which files of which
upstream stages it reads, which files make its result, and what its executed notebook must show. The runner
(`mmpref run`, `mmpref status`, the staleness rules) and nbcheck read it; config's stage list comes from it.

The fixed stages are rows of `FIXED`; each registered method (mmpref.methods) adds one training stage, built by
`_training_stage` from the method's entry (a new method needs no row here; `TRAINING_EXTRAS` holds what a training
notebook reads or shows beyond the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmpref import methods

WORLD = "00_world"  # the miniature world is built as one unit from its params: every stage that reads any part of it
#                     (pools, checkpoints, benchmarks) hashes its checkpoints, which change whenever it is rebuilt
REWARD_MODEL = "03b_reward_model"  # only where params have a reward_model section
PROMPTS, SAMPLES, GOLD, ANNOTATIONS = "prompts.jsonl", "samples.jsonl", "gold.jsonl", "annotations.jsonl"


@dataclass(frozen=True)
class Stage:
    """One stage. `sections`: the params sections it reads (their hash makes it stale). `reads`: the files it reads,
    by the stage that writes them ({upstream stage: paths relative to the run directory, globs allowed; () = all
    that stage's outputs}). `optional`: upstream stages whose files it reads when they are there (a notebook's side
    remark): hashed but not required. `outputs`: the files whose content is its result (run dir -> paths). `png`,
    `tables`: at least this many plots and pandas tables in its executed notebook of the tiny run (nbcheck)."""

    name: str
    sections: tuple[str, ...]
    reads: dict[str, tuple[str, ...]]
    outputs: Callable[[Path], list[Path]]
    png: int = 0
    tables: int = 0
    optional: tuple[str, ...] = ()

    @property
    def upstream(self) -> tuple[str, ...]:
        return tuple(self.reads)


def _files(*names: str) -> Callable[[Path], list[Path]]:
    return lambda rd: [rd / n for n in names]


def _glob(folder: str, pattern: str) -> Callable[[Path], list[Path]]:
    return lambda rd: sorted((rd / folder).glob(pattern))


FIXED: list[Stage] = [
    Stage("00_world", ("run", "world"), {},
          lambda rd: [rd / "world" / m / "model.safetensors" for m in ("base-lm", "vit")], png=2, tables=3),
    Stage("01_collect", ("run", "prompts"), {WORLD: ()}, _files(PROMPTS), tables=2),
    Stage("02_sample", ("run", "models", "sampling", "judge", "engine"), {WORLD: (), "01_collect": (PROMPTS,)},
          _files(SAMPLES, GOLD), tables=2),
    Stage("03_annotate", ("run", "judge"), {"01_collect": (PROMPTS,), "02_sample": (SAMPLES,)},
          _files(ANNOTATIONS), png=1, tables=2),
    # the critique reward model (params `reward_model`; absent: no stage): trained on 03's judge outputs, compared with
    # the judge on held-out prompts
    Stage("03b_reward_model", ("run", "models", "train", "reward_model"), {
        WORLD: (), "01_collect": (PROMPTS,), "02_sample": (SAMPLES,), "03_annotate": (ANNOTATIONS,)},
        _files("reward_model/adapter/adapter_model.safetensors", "reward_model/annotations.jsonl",
               "reward_model/agreement.csv"), png=2, tables=4),
    Stage("04_pair", ("run", "pairing"), {"01_collect": (PROMPTS,), "02_sample": (SAMPLES, GOLD),
                                          "03_annotate": (ANNOTATIONS,)}, _glob("datasets", "*.jsonl"), tables=1),
    # the training stages come here, one per method; 09 also reads every training stage's adapters
    Stage("09_evaluate", ("run", "models", "evaluate", "train", "engine"), {WORLD: ()}, _files("eval/results.csv"),
          tables=4),
    # the miniature's Figure 3 and anatomy tables read 01-04; a paper run's Figure 3 asks `judge` about human pairs
    Stage("10_analyse", ("run", "world", "judge", "human_preferences"), {
        WORLD: (), "01_collect": (PROMPTS,), "02_sample": (SAMPLES,), "03_annotate": (ANNOTATIONS,),
        "04_pair": ("datasets/dpo.jsonl",), "08_train_dpo": ("adapters/dpo/trainer_state.json",),
        "09_evaluate": ("eval/results.csv", "eval/*/*.jsonl")}, _glob("tables", "*.csv"), png=2, tables=17,
        optional=("08_train_dpo",)),
]

# what a training notebook reads besides its world and dataset, to show it, and what it shows (default: one plot)
TRAINING_EXTRAS: dict[str, dict] = {
    "06_train_steerlm": {"reads": {"01_collect": (PROMPTS,)}},
    "07_train_rejection_sampling": {"reads": {"03_annotate": (ANNOTATIONS,),
                                              "05_train_sft_gold": ("adapters/sft_gold/trainer_state.json",)}},
    # the pair browser shows the judge's scores and reasoning of a few pairs: a table and one rendered pair
    "08_train_dpo": {"png": 3, "tables": 3, "reads": {"03_annotate": (ANNOTATIONS,)}},
    # MM-DPO's margins come from the reward model's annotations when train.mm_dpo.margin is reward_model
    "08b_train_mm_dpo": {"png": 2, "tables": 3, "reads": {"08_train_dpo": ("adapters/dpo/mmpref_train.json",),
                                                          REWARD_MODEL: ("reward_model/annotations.jsonl",)}},
}


def _training_stage(method: methods.Method) -> Stage:
    """A method's training stage: it reads the world's checkpoint and its own dataset; DPO-kind methods score the
    sweep's trials on a dev split with the evaluation judge (train.dpo.sweep), so they read `evaluate` too."""
    extra = TRAINING_EXTRAS.get(method.stage, {})
    reads = {WORLD: (), "04_pair": (f"datasets/{method.dataset}.jsonl",), **extra.get("reads", {})}
    sections = ("run", "models", "train", "evaluate") if method.trainer == "dpo" else ("run", "models", "train")
    trained = {m.stage for m in methods.METHODS}
    return Stage(method.stage, sections, reads,
                 lambda rd: sorted([*(rd / "adapters").glob(f"{method.name}/adapter_model.safetensors"),
                                    *(rd / "adapters").glob(f"{method.name}_frac*/adapter_model.safetensors")]),
                 png=extra.get("png", 1), tables=extra.get("tables", 0),
                 optional=tuple(s for s in extra.get("reads", {}) if s in trained or s == REWARD_MODEL))


def table() -> list[Stage]:
    """Every stage in run order, with one training stage per registered method (read anew: tests register some)."""
    training = [_training_stage(m) for m in methods.METHODS]
    at = next(i for i, s in enumerate(FIXED) if s.name == "09_evaluate")
    evaluate = FIXED[at]
    evaluate = Stage(evaluate.name, evaluate.sections, {**evaluate.reads, **{t.name: () for t in training}},
                     evaluate.outputs, evaluate.png, evaluate.tables)
    return [*FIXED[:at], *training, evaluate, *FIXED[at + 1:]]


def names() -> list[str]:
    """The stages in run order."""
    return [s.name for s in table()]


def get(name: str) -> Stage:
    for s in table():
        if s.name == name:
            return s
    raise ValueError(f"unknown stage {name!r}; stages: {names()}")


def active(params) -> list[str]:
    """Stages this run has: no 00_world without a miniature world, no training stage for an unlisted method, no
    03b_reward_model without a reward_model section."""
    train = methods.by_stage()
    return [s for s in names()
            if not (s == WORLD and params.world is None) and not (s in train and train[s] not in params.train.methods)
            and not (s == REWARD_MODEL and params.reward_model is None)]


def outputs(params, stage: str) -> list[Path]:
    """The files whose content defines a stage's result (hashed into downstream stages' inputs)."""
    return get(stage).outputs(params.run_dir)

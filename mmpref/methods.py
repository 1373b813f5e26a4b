"""The registry of alignment methods: the one place that names each method and says what it is.

A method's rows are made by its row builder (`rows`, called by stage 04 once per prompt: mmpref.pairing) into
`datasets/<dataset>.jsonl`; stage `stage` (its notebook) trains it from there into `adapters/<name>/` with the trainer
of its kind (`mmpref.train.TRAINERS`: "sft" or "dpo"), and stage 09 evaluates it as model `<name>`. Adding a method is
one entry in METHODS (plus its row builder when its data are new, its trainer when it is of a new kind, and its stage
notebook); config validation, the stage plan, stage 04's datasets, the CLI, stage 09's model list and the tables read
it. CONTRIBUTING.md walks through one.

Also here, each with one home: the two reference models every table compares against ("base-lm", "vit"), and the
names of the data-fraction adapters (Figure 2). The ratings and the pairing quality live in mmpref.ratings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Literal

from mmpref import pairing
from mmpref.io import read_jsonl


@dataclass(frozen=True)
class Method:
    name: str                           # train.methods entry, adapters/<name>, results.csv model
    display: str                        # its row name in the paper's tables
    trainer: Literal["sft", "dpo"]      # mmpref.train.TRAINERS key
    stage: str                          # the stage (notebook) that trains it
    dataset: str                        # datasets/<dataset>.jsonl
    rows: pairing.RowBuilder            # makes the dataset's rows of one prompt (methods sharing a dataset share it)
    # given the run's params, the question as the model sees it at inference (SteerLM asks for its
    # train.steerlm.inference_condition); None: unchanged
    inference_question: Callable[[Any], Callable[[str], str]] | None = None
    trains_fractions: bool = False      # also trains adapters on train.dpo.fractions of its data (Figure 2's curves)
    # given the run's params, the mmpref.train.TrainSettings fields this method sets on top of its trainer's (MM-DPO:
    # its section train.mm_dpo, the beta scaling); None: its trainer's settings as they are
    settings: Callable[[Any], dict] | None = None


def steerlm_run_condition(params) -> dict[str, int]:
    """This run's SteerLM inference condition: `train.steerlm.inference_condition` resolved against the run's SteerLM
    training rows (<run_dir>/datasets/steerlm.jsonl, read only for ``top_quality``)."""
    setting = params.train.steerlm.inference_condition
    if setting != "top_quality":
        return pairing.steerlm_condition(setting)
    path = params.run_dir / "datasets" / f"{get('steerlm').dataset}.jsonl"
    if not path.is_file():
        raise ValueError(f"train.steerlm.inference_condition 'top_quality' reads the SteerLM training rows, but {path} "
                         f"does not exist; run stage 04_pair first")
    return pairing.steerlm_condition(setting, read_jsonl(path))


def _steerlm_question(params) -> Callable[[str], str]:
    return partial(pairing.steerlm_inference_question, condition=steerlm_run_condition(params))


def inference_question(params, model: str) -> Callable[[str], str] | None:
    """The question transform `model` answers with in this run (a method's `inference_question`), or None."""
    method = get(model) if model in names() else None
    return method.inference_question(params) if method is not None and method.inference_question else None


METHODS: list[Method] = [
    Method("sft_gold", "Standard SFT", "sft", "05_train_sft_gold", "sft_gold", pairing.sft_gold_rows),
    Method("steerlm", "SteerLM", "sft", "06_train_steerlm", "steerlm", pairing.steerlm_rows,
           inference_question=_steerlm_question),
    Method("rejection_sampling", "Rejection-sampling", "sft", "07_train_rejection_sampling", "rejection_sampling",
           pairing.rejection_sampling_rows),
    Method("dpo", "DPO", "dpo", "08_train_dpo", "dpo", pairing.dpo_rows, trains_fractions=True),
    # MM-RLHF's Dynamic Reward Scaling (mmpref/mm_dpo.py): DPO's pairs and settings, beta scaled by each pair's margin
    Method("mm_dpo", "MM-DPO", "dpo", "08b_train_mm_dpo", "dpo", pairing.dpo_rows, trains_fractions=True,
           settings=lambda params: {"mm_dpo": params.train.mm_dpo.model_copy()}),
]

# the models every run has besides its methods: the text-only base LM and the visually instruction-tuned policy
BASE_LM, POLICY = "base-lm", "vit"
BASELINES = {BASE_LM: "Vicuna (base LM)", POLICY: "LLaVA-1.5 (visual instruction tuned)"}

# the benchmark the data-fraction adapters are scored on (Figure 2: MT-Bench vs the share of DPO data)
FRACTIONS_BENCHMARK = "mt_bench"


def names() -> list[str]:
    return [m.name for m in METHODS]


def get(name: str) -> Method:
    for m in METHODS:
        if m.name == name:
            return m
    raise ValueError(f"unknown method {name!r}; choose one of {names()}")


def datasets() -> dict[str, pairing.RowBuilder]:
    """{dataset: its row builder}: the files stage 04 writes, one per dataset (methods may share one)."""
    out: dict[str, pairing.RowBuilder] = {}
    for m in METHODS:
        if out.setdefault(m.dataset, m.rows) is not m.rows:
            raise ValueError(f"methods sharing dataset {m.dataset!r} must share its row builder")
    return out


def by_stage() -> dict[str, str]:
    """{training stage: method name}."""
    return {m.stage: m.name for m in METHODS}


def model_order() -> list[str]:
    """Models in table order: the base LM, the policy, then every method."""
    return [*BASELINES, *names()]


def display_name(model: str) -> str:
    return BASELINES.get(model) or get(model).display


def fraction_adapter(method: str, fraction: float) -> str:
    """The adapter (and model) name of `method` trained on `fraction` of its data: "dpo_frac0.25"."""
    return f"{method}_frac{fraction:g}"


def fraction_methods() -> list[Method]:
    """The methods whose data-fraction adapters are trained (DPO, MM-DPO): one Figure 2 curve each."""
    return [m for m in METHODS if m.trains_fractions]


def method_of(model: str) -> Method:
    """The method a model name belongs to: the method itself or one of its data-fraction adapters."""
    for m in METHODS:
        if model == m.name or model.startswith(f"{m.name}_frac"):
            return m
    raise ValueError(f"model {model!r} belongs to no method; methods: {names()}")

"""The registry of alignment methods: the one place that names each method and says what it is.

A method is trained by stage `stage` (its notebook) from `datasets/<dataset>.jsonl` (written by stage 04) into
`adapters/<name>/` with the trainer of its kind (mmpref.train.TRAINERS: "sft" or "dpo"), and evaluated in stage 09
as model `<name>`. Adding a method is one entry in METHODS (plus its trainer function when it is of a new kind, and
its stage notebook); config validation, the stage plan, the CLI, stage 09's model list and the tables read it.

Also here, each with one home: the pairing quality (helpfulness + correctness + coherence), the two reference models
every table compares against ("base-lm", "vit"), and the names of the DPO data-fraction adapters (Figure 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal


@dataclass(frozen=True)
class Method:
    name: str                           # train.methods entry, adapters/<name>, results.csv model
    display: str                        # its row name in the paper's tables
    trainer: Literal["sft", "dpo"]      # mmpref.train.TRAINERS key
    stage: str                          # the stage (notebook) that trains it
    dataset: str                        # datasets/<dataset>.jsonl
    # given the run's params, the question as the model sees it at inference (SteerLM asks for its
    # train.steerlm.inference_condition); None: unchanged
    inference_question: Callable[[Any], Callable[[str], str]] | None = None
    trains_fractions: bool = False      # also trains the data-fraction adapters of train.dpo.fractions (Figure 2)


def _steerlm_question(params) -> Callable[[str], str]:
    from functools import partial

    from mmpref.pairing import steerlm_inference_question, steerlm_run_condition

    return partial(steerlm_inference_question, condition=steerlm_run_condition(params))


def inference_question(params, model: str) -> Callable[[str], str] | None:
    """The question transform `model` answers with in this run (a method's `inference_question`), or None."""
    method = get(model) if model in names() else None
    return method.inference_question(params) if method is not None and method.inference_question else None


METHODS: list[Method] = [
    Method("sft_gold", "Standard SFT", "sft", "05_train_sft_gold", "sft_gold"),
    Method("steerlm", "SteerLM", "sft", "06_train_steerlm", "steerlm", inference_question=_steerlm_question),
    Method("rejection_sampling", "Rejection-sampling", "sft", "07_train_rejection_sampling", "rejection_sampling"),
    Method("dpo", "DPO", "dpo", "08_train_dpo", "dpo", trains_fractions=True),
]

# the models every run has besides its methods: the text-only base LM and the visually instruction-tuned policy
BASE_LM, POLICY = "base-lm", "vit"
BASELINES = {BASE_LM: "Vicuna (base LM)", POLICY: "LLaVA-1.5 (visual instruction tuned)"}

# the paper's pairing quality (DPO chosen/rejected, rejection sampling's top response)
QUALITY_ATTRIBUTES = ("helpfulness", "correctness", "coherence")
# the benchmark the data-fraction adapters are scored on (Figure 2: MT-Bench vs the share of DPO data)
FRACTIONS_BENCHMARK = "mt_bench"


def names() -> list[str]:
    return [m.name for m in METHODS]


def get(name: str) -> Method:
    for m in METHODS:
        if m.name == name:
            return m
    raise ValueError(f"unknown method {name!r}; choose one of {names()}")


def by_stage() -> dict[str, str]:
    """{training stage: method name}."""
    return {m.stage: m.name for m in METHODS}


def model_order() -> list[str]:
    """Models in table order: the base LM, the policy, then every method."""
    return [*BASELINES, *names()]


def display_name(model: str) -> str:
    return BASELINES.get(model) or get(model).display


def quality(scores: Any) -> int:
    """helpfulness + correctness + coherence of one response's ratings (a dict or an object with those fields)."""
    get_ = scores.get if isinstance(scores, dict) else lambda a: getattr(scores, a)
    return sum(int(get_(a)) for a in QUALITY_ATTRIBUTES)


def fraction_adapter(method: str, fraction: float) -> str:
    """The adapter (and model) name of `method` trained on `fraction` of its data: "dpo_frac0.25"."""
    return f"{method}_frac{fraction:g}"


def fraction_method() -> Method | None:
    """The method whose data-fraction adapters are trained (DPO), if it is registered."""
    return next((m for m in METHODS if m.trains_fractions), None)


def method_of(model: str) -> Method:
    """The method a model name belongs to: the method itself or one of its data-fraction adapters."""
    for m in METHODS:
        if model == m.name or model.startswith(f"{m.name}_frac"):
            return m
    raise ValueError(f"model {model!r} belongs to no method; methods: {names()}")

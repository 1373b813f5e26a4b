"""Run parameters: one YAML file describes a whole run, validated here.

Every model forbids unknown keys, so a typo is an error that names the key, where it is and which keys are allowed.
Defaults follow the paper's appendix (Table 5); `params/tiny.yaml` shrinks them for the miniature world.
API keys are never parameters: judges read them from the environment.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmpref.io import sha256_json

from mmpref import methods as _methods
from mmpref.world import mix as _mix



class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunParams(Strict):
    name: str = "run"
    run_dir: str = "runs/{name}"
    # Downloaded datasets and benchmarks live apart from the run directory, so `make clean-runs` or a new run.name
    # never loses them; `{data_dir}` in any path expands to this folder (see README "Get the data").
    data_dir: str = "data"
    seed: int = 0


class LMShape(Strict):
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    max_positions: int = 192


class VisionShape(Strict):
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    patch_size: int = 12


class VisualMix(Strict):
    """Shares of LLaVA-1.5's mix kinds (mmpref/world/mix.py, which cites each); they sum to 1."""

    vqa: float = Field(_mix.LLAVA_15_SHARES["vqa"], ge=0.0, le=1.0)
    multiple_choice: float = Field(_mix.LLAVA_15_SHARES["multiple_choice"], ge=0.0, le=1.0)
    region: float = Field(_mix.LLAVA_15_SHARES["region"], ge=0.0, le=1.0)
    caption: float = Field(_mix.LLAVA_15_SHARES["caption"], ge=0.0, le=1.0)
    conversation: float = Field(_mix.LLAVA_15_SHARES["conversation"], ge=0.0, le=1.0)
    detail: float = Field(_mix.LLAVA_15_SHARES["detail"], ge=0.0, le=1.0)
    reasoning: float = Field(_mix.LLAVA_15_SHARES["reasoning"], ge=0.0, le=1.0)
    text: float = Field(_mix.LLAVA_15_SHARES["text"], ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self):
        total = sum(self.model_dump().values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"the shares of world.mix must sum to 1, got {total:.4f}")
        return self


class WorldParams(Strict):
    """The miniature world (stage 00). Absent (null) for runs on real checkpoints."""

    image_size: int = 48
    n_visual_train: int = 3000          # conversations of the visual instruction mix (world.mix)
    n_text_train: int = 3000
    n_pool: int = 400
    n_bench: int = 60                   # items per visual benchmark
    n_text_bench: int = 60              # MT-Bench questions and AlpacaEval instructions
    vocab_size: int = 700
    lm: LMShape = LMShape()
    vision: VisionShape = VisionShape()
    lm_epochs: float = 3.0
    lm_lr: float = 2e-3
    vision_pretrain_steps: int = Field(800, ge=0)   # tag pretraining of the tower (CLIP's stand-in); 0 skips it
    vision_pretrain_lr: float = 3e-3
    # RMS the tower's patch features are held to in its pretraining (0: unconstrained); see pretrain_vision_tower
    vision_feature_rms: float = Field(0.0, ge=0.0)
    align_steps: int = Field(0, ge=0)   # LLaVA-1.5 stage 1: the projector alone learns image captions; 0 skips it
    align_lr: float = 1e-3
    perception_warmup_steps: int = Field(0, ge=0)  # "is there a <shape>?" alone before the mixture (a curriculum)
    perception_warmup_lr: float = 5e-4
    # trained to a criterion: at a constant rate until the mean loss of 50 steps is below this (at most
    # perception_warmup_steps); None: all the steps, on a cosine
    perception_warmup_stop_loss: float | None = Field(None, gt=0.0)
    vit_epochs: float = 4.0
    vit_lr: float = 1e-3
    # LLaVA-1.5's visual instruction mix in shares of conversations (mmpref/world/mix.py: each kind's datasets, format
    # prompt and count in llava_v1_5_mix665k); QA pairs of one image are merged into one conversation.
    mix: VisualMix = Field(default_factory=lambda: VisualMix())
    # The share of VQA conversations whose format prompt ends only their first question; the later questions are
    # plain and answered as briefly. So are the mix's OCR-VQA rows (80K of its 244K VQA conversations: 0.33); its
    # VQAv2 and GQA rows carry the prompt on every question.
    vqa_prompt_first_only: float = Field(0.0, ge=0.0, le=1.0)
    # What a multiple-choice row is answered with: "letter" (LLaVA-1.5's A-OKVQA rows: the option's letter) or
    # "option" (the option's text, which MMBench's matcher maps to its letter, as it does for models that answer in
    # words). A letter bound to content the model works out from the picture is a skill a 4-layer LM from scratch
    # did not learn within the world's budget (README, "The miniature world").
    mc_answer: Literal["letter", "option"] = "letter"
    # The phrasings of the base LM's instruction data (mmpref/world/text_tasks._phrase): "train" keeps MT-Bench's and
    # AlpacaEval's phrasings out of every training text; "all" lets the base LM (the "Vicuna") read them too, under
    # other prompts (the benchmarks still hold out their exact prompts). The mix's text rehearsal always uses the
    # training phrasings.
    base_lm_phrasings: Literal["train", "all"] = "train"
    # Knowledge before format: epochs of plain-text statements of the world's facts before the base LM's instruction
    # tuning (a real LLM's pretraining); 0 skips the pass.
    knowledge_epochs: float = Field(0.0, ge=0.0)
    # Shapes in each POPE picture: POPE draws its 500 COCO images from those with at least three annotated objects
    # (Li et al. 2023, section 4.1), busier than the average training picture (1-3 shapes here).
    pope_shapes: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)

    @field_validator("pope_shapes")
    @classmethod
    def _pope_has_absent_shapes(cls, value: list[int]) -> list[int]:
        from mmpref.world.scenes import SHAPES

        bad = [n for n in value if not 1 <= n < len(SHAPES)]
        if bad:  # a picture with every shape type has no absent object to ask about
            raise ValueError(f"pope_shapes must be between 1 and {len(SHAPES) - 1} (there are {len(SHAPES)} shape "
                             f"types and POPE asks about absent ones), got {bad}")
        return value
    objects_on_patches: bool = False    # every scene object inside one patch cell of the vision tower
    batch_size: int = 32
    human_flip_prob: float = Field(0.3, ge=0.0, le=0.5)


class ModelParams(Strict):
    """Checkpoints: hub ids or paths. `{run_dir}` expands to the run directory."""

    policy: str = "llava-hf/llava-1.5-13b-hf"
    base_lm: str | None = "lmsys/vicuna-13b-v1.5"
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"
    # The VLM family (mmpref/families.py: LoRA targets, projector, image token, chat templates); "auto" reads the
    # checkpoint's config.model_type.
    family: Literal["auto", "llava", "llava_next", "qwen2_vl", "qwen2_5_vl"] = "auto"
    # "family": sample, train and evaluate in the prompt format the family was trained with (LLaVA-1.5: vicuna_v1
    # with its system prompt, BOS, </s> after each answer; the base LLM: Vicuna v1.1); "checkpoint": the template
    # the checkpoint ships (the miniature world's own).
    chat_template: Literal["family", "checkpoint"] = "family"
    # How a picture becomes pixels, in sampling, training and evaluation alike. "family": as the family was trained
    # (LLaVA-1.5: padded to a square of the image processor's mean colour before CLIP's resize and crop, LLaVA's
    # `--image_aspect_ratio pad` in haotian-liu/LLaVA scripts/v1_5/finetune.sh and in every training script of the
    # authors, e.g. findalexli/mllm-dpo scripts/v1_5/finetune_dpo.sh; llava-hf's processor does not pad, so it crops
    # the sides of a wide picture away); "pad": always padded; "processor": the checkpoint's image processor as is
    image_aspect_ratio: Literal["family", "pad", "processor"] = "family"


class PromptSource(Strict):
    name: Literal["scigraphqa", "lrv"]
    path: str
    image_root: str | None = None
    n: int = Field(3000, ge=1)


class PromptParams(Strict):
    sources: list[PromptSource] = [
        PromptSource(name="scigraphqa", path="alexshengzhili/SciGraphQA-295K-train"),
        PromptSource(name="lrv", path="{run_dir}/data/lrv/filter_cap.json"),
    ]


class SamplingParams(Strict):
    k: int = Field(4, ge=2)
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 8


class JudgeParams(Strict):
    backend: str = "gemini"  # a key of mmpref.judges.BACKENDS
    model: str | None = "gemini-2.5-pro"
    base_url: str | None = None
    max_workers: int = Field(4, ge=1)
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None  # input + output tokens per minute (None: no limit)
    max_retries: int = Field(2, ge=0)  # re-asks after an unparsable reply (each a new call)
    # the network: retries of one call on 429/5xx/timeouts (Retry-After honoured), their backoff, the call timeout
    network_retries: int = Field(6, ge=0)
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    timeout_s: float = Field(300.0, gt=0)
    # a judging stage writes every finished item and records the ones the judge gave up on as failed; it fails
    # (non-zero exit) only when more than this fraction failed. retry_failed: re-ask exactly the failed items
    # (`mmpref run ... --retry-failed`)
    max_failed_fraction: float = Field(0.05, ge=0, le=1)
    retry_failed: bool = False
    # a judge whose calls fail this many times in a row (wrong key, model name or endpoint) stops the stage instead of
    # failing every remaining item (None: never stop); what was finished is kept
    max_consecutive_failures: int | None = Field(20, ge=1)
    # Gemini Batch API (half price, hours of latency): submit the stage's requests as one batch job, keep its id in
    # the run directory, poll every batch_poll_s seconds (a restarted stage resumes polling)
    # the Batch API bills batch_price_factor of the prices below (0.5: half). A job that ends expired, cancelled or
    # failed is reported; its items are then asked one by one (per_request), submitted once more in a new job
    # (resubmit), or the stage stops with the error (fail)
    batch: bool = False
    batch_poll_s: float = Field(30.0, gt=0)
    batch_price_factor: float = Field(0.5, ge=0)
    batch_expired: Literal["per_request", "resubmit", "fail"] = "per_request"
    # USD per million tokens, for `mmpref check`'s estimate and the spend recorded in the manifest (None: unknown)
    price_input_per_mtok: float | None = Field(None, ge=0)
    price_output_per_mtok: float | None = Field(None, ge=0)

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, v: str) -> str:
        from mmpref.judges import BACKENDS  # the judges read no params: importing them here makes no cycle

        if v not in BACKENDS:
            raise ValueError(f"unknown judge backend {v!r}; allowed: {list(BACKENDS)}")
        return v

    @model_validator(mode="after")
    def _batch_api(self):
        from mmpref.judges import BACKENDS

        if self.batch and not hasattr(BACKENDS[self.backend], "prefetch"):
            raise ValueError(f"batch: true, but the {self.backend} backend has no batch API (these have: "
                             f"{[n for n, c in BACKENDS.items() if hasattr(c, 'prefetch')]})")
        return self


class ServedModel(Strict):
    """A model on another server than engine.base_url (vLLM serves one base model per process: the base LM, or an
    adapter merged into a checkpoint of its own, each on its own port)."""

    model: str
    base_url: str


class EngineParams(Strict):
    """Sampling and benchmark answers on a serving engine (vLLM, SGLang) through its OpenAI-compatible API
    (mmpref/engine.py; README "Serving engine"). Absent or `backend: hf`: HF `generate` in the stage's process."""

    backend: Literal["hf", "openai_server"] = "hf"
    base_url: str | None = None            # e.g. http://127.0.0.1:8000/v1
    model: str | None = None               # served name of models.policy (`--served-model-name`)
    # served name of models.base_lm (on base_url, or {model, base_url}); None: the base LM is evaluated with HF
    base_lm_model: str | ServedModel | None = None
    # evaluated model (method or data-fraction adapter) -> served name on base_url (a LoRA module), or
    # {model, base_url} (a merged checkpoint served by its own server)
    adapters: dict[str, str | ServedModel] = {}
    use_for: list[Literal["sampling", "evaluate"]] = ["sampling", "evaluate"]
    api_key_env: str | None = None         # NAME of the environment variable with the key (None: no key)
    max_concurrency: int = Field(16, ge=1)  # requests in flight
    timeout_s: float = Field(600.0, gt=0)
    max_retries: int = Field(3, ge=0)       # the SDK's retries of 429/5xx/connection errors, with backoff

    @model_validator(mode="after")
    def _server_named(self) -> "EngineParams":
        if self.backend == "openai_server":
            missing = [k for k in ("base_url", "model") if not getattr(self, k)]
            if missing:
                raise ValueError(f"engine.backend openai_server needs {' and '.join(missing)} (the server's URL, "
                                 f"e.g. http://127.0.0.1:8000/v1, and the policy's served model name)")
        return self


OPTIONAL_SECTIONS = {"human_preferences", "engine", "reward_model"}
# engine settings that change how requests are made, not what is generated: not part of any stage's params hash
ENGINE_OPERATIONAL = {"base_url", "api_key_env", "max_concurrency", "timeout_s", "max_retries"}

# judge settings that change how calls are made, not what the judge answers: not part of any stage's params hash
JUDGE_OPERATIONAL = {"tokens_per_minute", "network_retries", "backoff_initial_s", "backoff_max_s", "timeout_s",
                     "max_failed_fraction", "retry_failed", "max_consecutive_failures", "batch", "batch_poll_s",
                     "batch_price_factor", "batch_expired"}


class PairingParams(Strict):
    min_gap: int = Field(2, ge=1)


class LoraParams(Strict):
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class SFTParams(Strict):
    """SFT-gold, SteerLM, rejection sampling. Defaults: the paper's Table 5 and the authors' finetune_steer*.sh
    (findalexli/mllm-dpo scripts/v1_5/: lr 4e-4, batch 16 x grad-accum 2 per GPU, 3 epochs, model_max_length 2048,
    mm_projector_lr 2e-5, freeze_mm_mlp_adapter False)."""

    learning_rate: float = 4e-4
    batch_size: int = 16
    grad_accum: int = 2
    epochs: float = 3.0
    max_length: int = 2048
    train_projector: bool = True
    projector_learning_rate: float | None = 2e-5   # None: the projector uses learning_rate


class SteerLMParams(Strict):
    """SteerLM at inference. `inference_condition`: the ratings every evaluated question asks for --
    "all_4" (default: the authors' evaluation, findalexli/mllm-dpo llava/eval/gen_model_answer.py and
    scripts/v1_5/eval/mmvet_steer_all4.sh, and NVIDIA NeMo's SteerLM prompts: every attribute at 4),
    "top_quality" (the ratings most training rows of the highest quality carry: a condition the model was trained
    on), or an explicit {helpfulness, correctness, coherence, complexity, verbosity: 0..4} mapping
    (mmpref.pairing.steerlm_condition)."""

    inference_condition: Literal["all_4", "top_quality"] | dict[str, int] = "all_4"

    @field_validator("inference_condition")
    @classmethod
    def _valid_condition(cls, v):
        from mmpref.pairing import steerlm_condition

        if isinstance(v, dict):
            steerlm_condition(v)  # names exactly the five attributes, each 0..4, or a ValueError that says so
        return v


class DPOSweep(Strict):
    """The paper's DPO search (its section 4: beta in {0.1, 0.2, 0.3} x summed/averaged log-probs x lr in
    {5e-5, 5e-6}, chosen on LLaVA-Bench), run on a dev split that is not the reported benchmark: every combination
    is trained on all pairs, scored on `dev_path` (LLaVA-Bench layout), and the best relative score wins (ties: the
    earlier combination). The chosen settings then train `dpo` and its data-fraction runs."""

    betas: list[float] = Field([0.1, 0.2, 0.3], min_length=1)
    average_log_prob: list[bool] = Field([False, True], min_length=1)
    learning_rates: list[float] = Field([5e-5, 5e-6], min_length=1)
    dev_path: str


class DPOParams(Strict):
    """Defaults: Table 5 and the authors' finetune_dpo.sh (beta 0.1, lr 5e-5, batch 8 x grad-accum 4, 3 epochs,
    dpo_use_average False, model_max_length 3000, mm_projector_lr 2e-5; their llava_arch.py leaves the projector
    trainable under LoRA, so DPO tunes it too)."""

    beta: float = 0.1
    learning_rate: float = 5e-5
    batch_size: int = 8
    grad_accum: int = 4
    epochs: float = 3.0
    max_length: int = 3000
    average_log_prob: bool = False
    precompute_ref_log_probs: bool = True
    # each pair's image and prompt computed once, chosen and rejected packed after them (mmpref/shared_prefix.py;
    # equal to stock TRL's log-probs, loss and gradients to float tolerance: tests/test_shared_prefix.py).
    # auto: on for families with 1D text positions (LLaVA-1.5, LLaVA-NeXT), stock TRL rows for Qwen2-VL's
    # multimodal RoPE; true: required (refused for Qwen2-VL); false: stock TRL rows
    share_prefix: Literal["auto"] | bool = "auto"
    # TRL's DPOConfig(disable_dropout=True) sets every dropout of the policy to 0, LoRA's (train.lora.dropout)
    # included; the authors' DPO trainer (findalexli/mllm-dpo llava/train/llava_trainer.py LLavaDPOTrainer, a plain
    # transformers Trainer) keeps LLaVA's lora_dropout 0.05 (llava/train/train.py), so the default keeps it too
    disable_dropout: bool = False
    train_projector: bool = True
    projector_learning_rate: float | None = 2e-5
    fractions: list[float] = [0.25, 0.5, 0.75]
    sweep: DPOSweep | None = None   # the paper's hyper-parameter search; None trains the settings above

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0.0 < f < 1.0]
        if bad:
            raise ValueError(f"data fractions must lie strictly between 0 and 1 (0 is the policy, 1 is 'dpo'): {bad}")
        return sorted(v)


class MMDPOParams(Strict):
    """MM-DPO (mmpref/mm_dpo.py): DPO at `train.dpo`'s settings (the sweep's winner when it is on) with beta scaled per
    pair, beta(delta) = beta_0 * (1 + w * (1 - exp(-k * delta))). w = 0.5, k = 0.5: MM-RLHF's defaults (Appendix F,
    Figure 12b; its released script uses w = 0.1). scaling: "per_sample" (the paper's formula) or "released_batch"
    (the released code's one beta per batch from the policy's margins). margin: where delta comes from
    ("judge_quality": the annotation judge's quality difference of the pair, in quality points 2..12;
    "reward_model": the critique reward model's, 0..12, which needs `reward_model.annotate: all`)."""

    w: float = Field(0.5, ge=0.0)
    k: float = Field(0.5, gt=0.0)
    scaling: Literal["per_sample", "released_batch"] = "per_sample"
    margin: Literal["judge_quality", "reward_model"] = "judge_quality"


class TrainOptions(Strict):
    """The run-wide training options, every trainer's: the fields of `train` that are not sections."""

    lr_scheduler: str = "cosine"
    # Table 5 prints 0.003; every training script of the authors (and LLaVA-1.5's own) passes --warmup_ratio 0.03
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = 0.0
    bf16: bool = True
    gradient_checkpointing: bool = True
    deepspeed: str | None = None
    logging_steps: int = 10
    # checkpoints every save_steps optimizer steps (None: none); a killed training stage resumes from the last one
    save_steps: int | None = Field(200, ge=1)
    save_total_limit: int = Field(2, ge=1)


class TrainParams(TrainOptions):
    methods: list[str] = Field(default_factory=_methods.names)   # names in mmpref.methods
    lora: LoraParams = LoraParams()
    sft: SFTParams = SFTParams()
    steerlm: SteerLMParams = SteerLMParams()
    dpo: DPOParams = DPOParams()
    mm_dpo: MMDPOParams = MMDPOParams()

    def options(self) -> TrainOptions:
        """The run-wide options (`TrainOptions`) of this section, as given."""
        return TrainOptions(**{k: getattr(self, k) for k in TrainOptions.model_fields})

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in _methods.names()]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; allowed: {_methods.names()}")
        return v


class EvalParams(Strict):
    benchmarks: dict[str, str] = {}
    judge: JudgeParams = JudgeParams(model="gpt-4")
    judge_templates: dict[str, str] = {}
    noise_images: str | None = None
    limit: int | None = None
    max_new_tokens: int = 512
    batch_size: int = 8
    # MT-Bench answers: "fastchat" samples with FastChat's per-category temperatures (gen_model_answer.py, as the
    # authors' LLaVA port does); "greedy" decodes every category greedily
    mt_bench_decoding: Literal["fastchat", "greedy"] = "fastchat"
    # grade every judge-graded benchmark this many times (distinct judge calls; the answers are kept) and report the
    # mean and standard deviation over runs (`mmpref run ... --judge-runs N`)
    judge_runs: int = Field(1, ge=1)

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: dict[str, str]) -> dict[str, str]:
        from mmpref.evaluate import registry

        unknown = sorted(set(v) - set(registry.names()))
        if unknown:
            raise ValueError(f"unknown benchmark(s) {unknown}; allowed: {registry.names()}")
        return v

    @field_validator("judge_templates")
    @classmethod
    def _known_templates(cls, v: dict[str, str]) -> dict[str, str]:
        from mmpref.evaluate import registry

        allowed = registry.judge_templates()
        unknown = sorted(set(v) - set(allowed))
        if unknown:
            raise ValueError(f"unknown judge template(s) {unknown}; allowed: {allowed}")
        return v


class HumanPreferenceParams(Strict):
    """Figure 3 from real human labels: LLaVA-RLHF's LLaVA-Human-Preference-10K (records with `conversations`,
    `output_1`, `output_2`, `preference` 1 or 2, `image`), `n` pairs drawn with `seed` (the paper shows 500), scored
    by the annotation judge (params `judge`) in stage 10. The miniature world keeps its simulated labels."""
    path: str  # the JSON (a list) or JSONL file of records
    images: str  # the folder its `image` names are relative to (COCO train2017 for LLaVA-RLHF)
    n: int | None = Field(500, ge=3)  # None: every record
    seed: int = 0


class RewardModelParams(Strict):
    """Stage 03b: a critique-based reward model (mmpref/reward_model.py; MM-RLHF section 4.1) trained with LoRA on the
    annotation judge's critiques and ratings of the train split, then compared with the judge on the `held_out`
    share of prompts (never trained on). Each row's critique is the judge's reasoning about that response, its
    leading sentences within `critique_words` words. `sft`: its training settings, `train.sft`'s where unset
    (a reward model is an SFT run on the judge's outputs, as MM-RLHF's is on its critiques). `max_new_tokens`: the
    critique and ratings it writes per response."""

    held_out: float = Field(0.2, gt=0.0, lt=1.0)
    # which prompts it annotates: the held-out ones (its agreement with the judge), or all (also MM-DPO's margins,
    # train.mm_dpo.margin: reward_model; on the train prompts it rates responses it was trained on)
    annotate: Literal["held_out", "all"] = "held_out"
    critique_words: int = Field(40, ge=1)
    max_new_tokens: int = Field(96, ge=8)
    batch_size: int = Field(16, ge=1)
    sft: dict[str, Any] = {}

    @field_validator("sft")
    @classmethod
    def _sft_keys(cls, v: dict) -> dict:
        unknown = sorted(set(v) - set(SFTParams.model_fields))
        if unknown:
            raise ValueError(f"unknown reward_model.sft key(s) {unknown}; allowed: {sorted(SFTParams.model_fields)}")
        SFTParams(**v)  # its values checked now, as train.sft's are, not when 03b starts training
        return v


class Params(Strict):
    run: RunParams = RunParams()
    world: WorldParams | None = None
    models: ModelParams = ModelParams()
    prompts: PromptParams = PromptParams()
    sampling: SamplingParams = SamplingParams()
    judge: JudgeParams = JudgeParams()
    pairing: PairingParams = PairingParams()
    train: TrainParams = TrainParams()
    evaluate: EvalParams = EvalParams()
    human_preferences: HumanPreferenceParams | None = None
    engine: EngineParams | None = None
    reward_model: RewardModelParams | None = None

    @model_validator(mode="after")
    def _judges_answer_their_tasks(self) -> "Params":
        from mmpref.judges import BACKENDS

        if not BACKENDS[self.evaluate.judge.backend].grades_benchmarks:
            raise ValueError(f"evaluate.judge.backend {self.evaluate.judge.backend!r} only annotates; "
                             f"benchmarks need a grading judge (e.g. rubric, gemini, openai)")
        if self.train.mm_dpo.margin == "reward_model" and "mm_dpo" in self.train.methods and (
                self.reward_model is None or self.reward_model.annotate != "all"):
            raise ValueError("train.mm_dpo.margin: reward_model takes each pair's margin from the reward model's "
                             "annotations of every prompt: add a reward_model section with annotate: all")
        if not BACKENDS[self.judge.backend].writes_gold and "sft_gold" in self.train.methods:
            raise ValueError(f"judge.backend {self.judge.backend!r} only annotates (stage 03), but train.methods has "
                             f"sft_gold, whose gold answers the judge writes in stage 02: use another judge for that "
                             f"run, or leave sft_gold out")
        return self

    # resolved at load time, not part of the YAML
    _root: Path = Path(".")

    @property
    def run_dir(self) -> Path:
        return self.path(self.run.run_dir)

    @property
    def data_dir(self) -> Path:
        return self.path(self.run.data_dir)

    def path(self, value: str) -> Path:
        """Expand `{run_dir}`/`{data_dir}`/`{name}` and resolve a relative path against the project root."""
        text = value.replace("{name}", self.run.name)
        if "{run_dir}" in text:
            text = text.replace("{run_dir}", str(self.run_dir))
        if "{data_dir}" in text:
            if "{data_dir}" in self.run.data_dir:
                raise ParamsError("run.data_dir cannot refer to {data_dir}")
            text = text.replace("{data_dir}", str(self.data_dir))
        p = Path(text).expanduser()
        return p if p.is_absolute() else (self._root / p).resolve()

    def model_ref(self, value: str) -> str:
        """A checkpoint reference: a local path when it names one (or uses {run_dir}), else a hub id as given."""
        if ("{run_dir}" in value or "{data_dir}" in value or value.startswith((".", "/", "~"))
                or self.path(value).exists()):
            return str(self.path(value))
        return value

    def section_hash(self, *sections: str) -> str:
        """Hash of the given top-level sections: a stage reruns only when its own params change."""
        return sha256_json(self.section_values(*sections))[:16]

    def section_values(self, *sections: str) -> dict:
        """The given top-level sections as `section_hash` hashes them (what a stage's result depends on; the manifest
        keeps them so `mmpref status` can name the key that changed)."""
        data = self.model_dump(mode="json")
        for judge in (data.get("judge"), (data.get("evaluate") or {}).get("judge")):
            for key in JUDGE_OPERATIONAL & set(judge or {}):
                del judge[key]
        if data.get("engine") is not None:  # HF generate, however the section is spelled, hashes as no section
            data["engine"] = None if data["engine"]["backend"] == "hf" else {
                k: v for k, v in data["engine"].items() if k not in ENGINE_OPERATIONAL}
        # where the run lies is not what it computes: run.run_dir never counts (a `{run_dir}` path names the run's own
        # files, which move with it and are hashed as stage outputs), so a moved or copied run directory keeps its
        # stages complete; run.name and run.data_dir count only for a stage whose paths use them ({name},
        # {data_dir}): nothing hashes the downloaded files, and another data folder may hold other data
        used = repr([data.get(s) for s in sections if s != "run"])
        if "{data_dir}" in used:
            used += data["run"]["data_dir"]
        where = {"run_dir"} | {k for k in ("name", "data_dir") if f"{{{k}}}" not in used}
        data["run"] = {k: v for k, v in data["run"].items() if k not in where}
        # a section added later enters the hash only when set, so runs made before it keep their hashes
        return {s: data.get(s) for s in sections if not (s in OPTIONAL_SECTIONS and data.get(s) is None)}


class ParamsError(ValueError):
    """A params file that cannot be used; the message says what and where."""


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(err["loc"][:-1])
            lines.append(f"  - unknown key '{loc}'; allowed keys here: {', '.join(allowed)}")
        else:
            lines.append(f"  - {loc}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = Params
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        ann = field.annotation
        model = _model_in(ann)
        if model is None:
            return []
    return sorted(model.model_fields)


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dotted_to_nested(assignments: list[str]) -> dict:
    """['train.dpo.beta=0.2', 'run.name=x'] -> nested dict; values parsed as YAML scalars."""
    out: dict = {}
    for item in assignments:
        if "=" not in item:
            raise ParamsError(f"override '{item}' must look like section.key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(value)
    return out


def find_project_root(start: Path) -> Path:
    for d in [start, *start.parents]:
        if (d / "pyproject.toml").exists() and (d / "mmpref").is_dir():
            return d
    return start


def resolve_params_path(params_path: str | Path) -> Path:
    """Find a params file given relative to the cwd or to the project root (notebooks run from notebooks/)."""
    p = Path(params_path).expanduser()
    if p.exists():
        return p.resolve()
    root = find_project_root(Path.cwd().resolve())
    if (root / p).exists():
        return (root / p).resolve()
    here = find_project_root(Path(__file__).resolve().parent)
    if (here / p).exists():
        return (here / p).resolve()
    raise ParamsError(f"params file not found: {params_path} (looked in {Path.cwd()} and {root})")


# DPO settings the search chooses (train.dpo -> train.dpo.sweep): an override of one of them would be ignored
SWEPT_DPO_SETTINGS = {"beta": "betas", "learning_rate": "learning_rates", "average_log_prob": "average_log_prob"}


def _refuse_swept_overrides(params: "Params", overrides: dict) -> None:
    """An override of a DPO setting that the DPO search chooses is an error naming the search, not a value that is
    silently replaced by the search's choice."""
    dpo = (overrides.get("train") or {}).get("dpo") or {}
    if params.train.dpo.sweep is None or not isinstance(dpo, dict):
        return
    for key, grid in SWEPT_DPO_SETTINGS.items():
        if key in dpo:
            raise ParamsError(
                f"train.dpo.{key} is chosen by the DPO search (train.dpo.sweep.{grid}), so this override would be "
                f"ignored; search only your value with --set train.dpo.sweep.{grid}=[{dpo[key]}], or switch the "
                f"search off with --set train.dpo.sweep=null to train with train.dpo.{key}")


def load_params(params_path: str | Path, overrides: dict | None = None) -> Params:
    """Load, merge overrides and validate a params file.

    The environment variable MMPREF_RUN_DIR, when set, replaces run.run_dir (used by the notebook tests to point every
    notebook at one finished run).
    """
    path = resolve_params_path(params_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    data = deep_merge(data, overrides or {})
    if os.environ.get("MMPREF_RUN_DIR"):
        data = deep_merge(data, {"run": {"run_dir": os.environ["MMPREF_RUN_DIR"]}})
    if os.environ.get("MMPREF_DATA_DIR"):
        data = deep_merge(data, {"run": {"data_dir": os.environ["MMPREF_DATA_DIR"]}})
    try:
        params = Params.model_validate(data)
    except ValidationError as exc:
        raise ParamsError(_format_errors(exc, str(path))) from None
    _refuse_swept_overrides(params, overrides or {})
    root = find_project_root(path.parent)
    if not (root / "pyproject.toml").exists():  # a params file outside the project: paths resolve against mmpref's
        root = find_project_root(Path(__file__).resolve().parent)
    params._root = root
    return params

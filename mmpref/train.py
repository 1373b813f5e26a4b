"""LoRA fine-tuning of the VLM by the paper's four methods, with TRL.

SFT-gold, SteerLM and rejection sampling are `SFTTrainer` runs on (image, question, response) rows; DPO is a
`DPOTrainer` run on (image, question, chosen, rejected) rows. LoRA goes on the language model's linear layers; the
projector (per family: mmpref/families.py) is trained in full where params say so, at its own learning rate, as the
authors' scripts do (`--mm_projector_lr 2e-5`).

Prompt format: every processor gets the chat template `models.chat_template` asks for before TRL sees it, so the
batches carry BOS, the family's system prompt and an EOS after every answer (TRL renders prompt and completion with
the processor's template and tokenizes with add_special_tokens=False).

TRL refuses `precompute_ref_log_probs` for vision data. The paper's trainer reads precomputed reference log-probs,
so `DPOWithCachedReference` adds it: reference log-probs (the policy with the adapter disabled) are stored in
`adapters/reference_logps.jsonl` under a content key (reference checkpoint identity, processor and template,
max_length, dtype, image bytes, prompt, both responses), so the data-fraction runs reuse them and any change of those
misses the cache. They are computed the way TRL's own `_precompute_ref_logps` does: a dataloader prepared by
accelerate (each rank its share), a DeepSpeed inference engine under ZeRO-3, `gather_for_metrics`, and one writer.

Training writes checkpoints every `train.save_steps` steps; a killed training stage resumes from the last checkpoint
made for the same data and settings. Multi-GPU: the same functions run under `accelerate launch`.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel

from mmpref import methods
from mmpref import reward_model as rm
from mmpref.config import SWEPT_DPO_SETTINGS, DPOParams, LoraParams, MMDPOParams, SFTParams, TrainOptions
from mmpref.families import Family, family_for_checkpoint, processor_identity
from mmpref.io import append_jsonl, read_json, read_jsonl, sha256_file, sha256_json, write_json
from mmpref.mm_dpo import MARGIN_COLUMN, pair_margins
from mmpref.models import chat_messages, chat_templates, checkpoint_identity, image_padding, load_processor
from mmpref.pairing import subsample
from mmpref.sampling import open_image

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Everything a training run depends on (recorded next to the adapter; a change retrains). The params sections
    flow in whole, under their params names: `trainer` is `train.sft` or `train.dpo` as the method's trainer reads it
    (with the DPO sweep's winner, or `reward_model.sft`, over it; `share_prefix` resolved from "auto"), `lora` is
    `train.lora`, `options` the run-wide `train` fields (`deepspeed` resolved to a path), `mm_dpo` MM-DPO's
    `train.mm_dpo` (None: plain DPO and SFT). The rest comes from no train section."""

    method: str
    trainer: SFTParams | DPOParams
    lora: LoraParams
    options: TrainOptions = dataclasses.field(default_factory=TrainOptions)
    family: str = "llava"
    chat_template: str | None = None
    pad_images: bool | None = None  # pictures padded to square (models.image_aspect_ratio); None: as saved
    seed: int = 0
    mm_dpo: MMDPOParams | None = None  # MM-DPO's per-pair beta (mmpref.mm_dpo: w, k, scaling, margin)
    reward_model_annotations: str | None = None  # sha256 of the reward model's annotations MM-DPO's margins come from

    def __post_init__(self):
        if isinstance(self.trainer, DPOParams):  # "auto" (or a true the family refuses) resolved for this family
            self.trainer = self.trainer.model_copy(
                update={"share_prefix": _share_prefix(self.trainer.share_prefix, self.family)})

    @property
    def family_row(self) -> Family:
        from mmpref.families import FAMILIES

        return FAMILIES[self.family]

    def with_trainer(self, **update) -> "TrainSettings":
        """These settings with the trainer's section changed (`train.dpo` fields: the sweep's trials and winner)."""
        return dataclasses.replace(self, trainer=self.trainer.model_copy(update=update))

    def record(self) -> dict:
        """The settings as JSON values (mmpref_train.json's "settings"; `from_record` reads them back)."""
        return {f.name: v.model_dump(mode="json") if isinstance(v := getattr(self, f.name), BaseModel) else v
                for f in dataclasses.fields(self)}

    @classmethod
    def from_record(cls, record: dict) -> "TrainSettings":
        sections = {"trainer": DPOParams if "beta" in record["trainer"] else SFTParams, "lora": LoraParams,
                    "options": TrainOptions, "mm_dpo": MMDPOParams}
        return cls(**{k: sections[k].model_validate(v) if k in sections and v is not None else v
                      for k, v in record.items()})

    def fingerprint_fields(self) -> dict:
        """The settings that change what is learned (not how often it is logged or checkpointed, nor the DPO stage's
        plan: its data fractions and sweep)."""
        out = self.record()
        # share_prefix changes how the DPO log-probs are computed, not their values (equal to float tolerance:
        # tests/test_shared_prefix.py), so switching it keeps a trained adapter and its checkpoints
        out["trainer"] = {k: v for k, v in out["trainer"].items() if k not in ("share_prefix", "fractions", "sweep")}
        out["options"] = {k: v for k, v in out["options"].items()
                          if k not in ("logging_steps", "save_steps", "save_total_limit", "deepspeed")}
        del out["pad_images"]  # it changes the processor, whose identity the fingerprint holds already
        return {k: v for k, v in out.items() if v is not None or k not in ("mm_dpo", "reward_model_annotations")}


def lora_config(s: TrainSettings):
    from peft import LoraConfig

    fam = s.family_row
    return LoraConfig(
        r=s.lora.r,
        lora_alpha=s.lora.alpha,
        lora_dropout=s.lora.dropout,
        target_modules=fam.lora_target_regex(s.lora.target_modules),
        modules_to_save=[fam.projector] if s.trainer.train_projector else None,
        task_type="CAUSAL_LM",
    )


def _images(rows: list[dict], run_dir: Path) -> list:
    return [open_image(run_dir / r["image"]) for r in rows]


def _prompt_ids(processor, question: str, image) -> list[int]:
    """The token ids of one question with its image, rendered with the processor's chat template (image tokens
    expanded, so the count is right where it depends on the picture: Qwen2-VL)."""
    prompt = processor.apply_chat_template(chat_messages([question], [], True), add_generation_prompt=True,
                                           tokenize=False)
    ids = processor(images=[image], text=[prompt], add_special_tokens=False)["input_ids"][0]
    return ids.tolist() if hasattr(ids, "tolist") else list(ids)


def check_lengths(processor, rows: list[dict], images: list, max_length: int, completion_keys: list[str],
                  image_token: str = "<image>") -> None:
    """Fail clearly, before training, if max_length would cut into a prompt (and so into its image tokens).

    Each prompt is rendered with the processor's chat template and processed with its own image, so the count is
    right for processors whose image token count depends on the picture (Qwen2-VL)."""
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(image_token)
    for r, image in zip(rows, images):
        ids = _prompt_ids(processor, r["question"], image)
        n_prompt, n_image = len(ids), ids.count(image_id)
        if n_image == 0:
            raise ValueError(f"prompt {r.get('prompt_id')}: the chat template rendered no {image_token!r} for the "
                             f"image; the template does not fit this processor")
        if n_prompt >= max_length:
            raise ValueError(
                f"prompt {r.get('prompt_id')} needs {n_prompt} tokens ({n_image} of them image tokens) but max_length "
                f"is {max_length}: truncation would cut the prompt; raise max_length or drop the prompt"
            )
        spelled = [k for k in completion_keys if image_token in r[k]]
        if spelled:
            raise ValueError(f"prompt {r.get('prompt_id')}: the {spelled} text contains the image placeholder "
                             f"{image_token!r}, which the processor would expand without a picture; remove it")
        longest = max(len(tok(r[k], add_special_tokens=False)["input_ids"]) for k in completion_keys)
        if n_prompt + longest + 1 > max_length:
            log.warning("prompt %s: a completion will be truncated to fit max_length %d", r.get("prompt_id"), max_length)


def _common_args(s: TrainSettings, out_dir: Path) -> dict:
    cuda = torch.cuda.is_available()
    t, o = s.trainer, s.options
    return dict(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs,
        learning_rate=t.learning_rate,
        lr_scheduler_type=o.lr_scheduler,
        warmup_steps=o.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=o.weight_decay,
        bf16=bool(o.bf16 and cuda),
        activation_checkpointing=bool(o.gradient_checkpointing and cuda),
        use_cpu=not cuda,
        logging_steps=o.logging_steps,
        save_strategy="steps" if o.save_steps else "no",
        save_steps=o.save_steps or 500,
        save_total_limit=o.save_total_limit,
        report_to=[],
        seed=s.seed,
        max_length=t.max_length,
        dataloader_num_workers=0,
        deepspeed=o.deepspeed,
        remove_unused_columns=True,
    )


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")  # what PEFT loads from an adapter folder


def adapter_hashes(out_dir: Path) -> dict[str, str]:
    """sha256 of the files PEFT loads from an adapter folder: recorded in mmpref_train.json when it is saved, and the
    adapter's content identity (stage 09 keys its answers by it)."""
    return {name: sha256_file(Path(out_dir) / name) for name in ADAPTER_FILES}


def _adapter_problem(out_dir: Path, recorded: dict | None) -> str | None:
    """Why the adapter in out_dir cannot be used, else None: a file PEFT loads is missing or does not load, or is
    not the file saved (its sha256 differs from the one recorded at save time)."""
    for name in ADAPTER_FILES:
        path = out_dir / name
        if not path.is_file():
            return f"{path} is missing"
        try:
            if name.endswith(".safetensors"):
                from safetensors import safe_open

                with safe_open(str(path), "pt") as fh:
                    fh.keys()
            else:
                read_json(path)
        except Exception as exc:  # noqa: BLE001 - safetensors, JSON and OS errors alike: the file is unusable
            return f"{path} does not load ({type(exc).__name__}: {exc})"
        if recorded and name in recorded and sha256_file(path) != recorded[name]:
            return f"{path} is not the file saved with this adapter (its sha256 differs): damaged or replaced"
    return None


def _finished(out_dir: Path, fingerprint: str) -> bool:
    """Whether out_dir holds the whole finished adapter of this fingerprint (`_adapter_state`)."""
    return _adapter_state(out_dir, fingerprint) == "finished"


def _adapter_state(out_dir: Path, fingerprint: str) -> str:
    """"finished" when out_dir holds the whole adapter of this fingerprint (data, settings, checkpoint):
    mmpref_train.json names the fingerprint, and the adapter's files load and are the ones saved; "damaged" when
    that adapter was finished but its record or files are unreadable or not the ones saved (named in a warning);
    "" when none of this fingerprint was finished. An adapter saved before its hashes were recorded is checked by
    loading, and its hashes are recorded now."""
    path = out_dir / "mmpref_train.json"
    if not path.exists():
        return ""
    try:
        info = read_json(path)
    except (OSError, ValueError) as exc:
        log.warning("%s; the adapter in %s is trained again", exc, out_dir)
        return "damaged"
    if info.get("fingerprint") != fingerprint:
        return ""
    problem = _adapter_problem(out_dir, info.get("adapter_sha256"))
    if problem is not None:
        log.warning("%s; the adapter in %s is trained again", problem, out_dir)
        return "damaged"
    if not info.get("adapter_sha256"):
        write_json(path, {**info, "adapter_sha256": adapter_hashes(out_dir)})
    return "finished"


def _skip_or_start(out_dir: Path, fingerprint: str, force: bool, what: str) -> tuple[dict | None, bool]:
    """(the record of the finished adapter in out_dir to reuse, or None to train; whether to train from the start).
    Forced or damaged: trained from the start, its checkpoints dropped (a damaged adapter's may be damaged too), and
    its record removed first, so that an interrupted run is not taken for finished."""
    state = "forced" if force else _adapter_state(out_dir, fingerprint)
    if state == "finished":
        log.info("%s: adapter for these rows and settings exists in %s; skipping", what, out_dir)
        return read_json(out_dir / "mmpref_train.json"), False
    if state:
        log.info("%s: %s: training again from the start into %s", what, state, out_dir)
        (out_dir / "mmpref_train.json").unlink(missing_ok=True)
    return None, bool(state)


def resume_checkpoint(out_dir: Path, fingerprint: str, fresh: bool = False) -> str | None:
    """The last checkpoint a killed run of the same data and settings left, else None (stale ones are removed);
    `fresh`: remove every checkpoint (a forced run, or one replacing a damaged adapter, trains from the start)."""
    from transformers.trainer_utils import get_last_checkpoint

    trainer_dir = out_dir / "trainer"
    stamp = trainer_dir / "mmpref_fingerprint.json"
    if trainer_dir.is_dir():
        same = not fresh and stamp.exists() and read_json(stamp).get("fingerprint") == fingerprint
        if not same:
            shutil.rmtree(trainer_dir)
        else:
            last = get_last_checkpoint(str(trainer_dir))
            if last is not None:
                return last
    trainer_dir.mkdir(parents=True, exist_ok=True)
    write_json(stamp, {"fingerprint": fingerprint})
    return None


def _save(trainer, processor, out_dir: Path, settings: TrainSettings, fingerprint: str, n_rows: int, seconds: float,
          resumed_from: str | None = None):
    trainer.model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    history = trainer.state.log_history
    write_json(out_dir / "trainer_state.json", history)
    plot_training(history, out_dir / "loss.png", title=out_dir.name, rows=n_rows)
    info = {"fingerprint": fingerprint, "settings": settings.record(), "rows": n_rows, "seconds": round(seconds, 1),
            "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None),
            "resumed_from": resumed_from, "adapter_sha256": adapter_hashes(out_dir)}
    write_json(out_dir / "mmpref_train.json", info)
    return info


TRAINING_PANELS = [  # (trainer_state key, y label); a panel is drawn when the history logs its key
    ("loss", "training loss (nats)"),
    ("rewards/margins", "reward margin, chosen − rejected (nats)"),
    ("rewards/accuracies", "share of pairs, chosen reward > rejected"),
]


def training_figure(history: list[dict], title: str, rows: int | None = None):
    """The training curves of one run from its trainer log history: loss, and for DPO the implicit reward margin
    β·(log π/π_ref(chosen) − log π/π_ref(rejected)) and the share of pairs it orders right, per logged training step
    (the trainer's end-of-training summary, which carries `train_loss` and no `loss`, is not a step). DPO's loss
    panel marks ln 2, its value where the policy is the reference. A bare Figure, so a kernel's matplotlib backend is
    never switched."""
    import math

    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    steps = [h for h in history if "loss" in h and "step" in h]
    panels = [(k, label) for k, label in TRAINING_PANELS if any(k in h for h in steps)] or [TRAINING_PANELS[0]]
    dpo = any("rewards/margins" in h for h in steps)
    fig = Figure(figsize=(max(5.0, 4.3 * len(panels)), 3.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (key, label) in zip(axes, panels):
        pts = [(h["step"], h[key]) for h in steps if key in h]
        if pts:
            ax.plot(*zip(*pts), marker=".")
        if key == "loss" and dpo:
            ax.axhline(math.log(2), color="0.4", linestyle="--", linewidth=1)
            ax.annotate("ln 2: policy = reference", (0.98, math.log(2)), xycoords=("axes fraction", "data"),
                        ha="right", va="bottom", fontsize=8, color="0.3")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        if key == "rewards/accuracies":
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    n = f", n = {rows} training rows" if rows is not None else ""
    fig.suptitle(f"{title}: training curves\n(this run{n})", fontsize=10)
    return fig


def plot_training(history: list[dict], out_png: Path, title: str, rows: int | None = None) -> dict[str, Path]:
    """`training_figure` saved as PNG (200 dpi) and PDF (figures.save_figure)."""
    from mmpref.figures import save_figure

    return save_figure(training_figure(history, title, rows), out_png)


def _with_projector_lr(trainer_cls):
    """A trainer class whose optimizer gives the projector its own learning rate (LLaVA's `mm_projector_lr`)."""

    class WithProjectorLR(trainer_cls):
        projector_key: str | None = None
        projector_lr: float | None = None

        def create_optimizer(self, model=None):
            opt_model = self.model if model is None else model
            if self.optimizer is not None or self.projector_lr is None or self.projector_key is None:
                return super().create_optimizer(model)
            decay = set(self.get_decay_parameter_names(opt_model))
            groups: dict[tuple[bool, bool], list] = {}
            for name, p in opt_model.named_parameters():
                if p.requires_grad:
                    groups.setdefault((self.projector_key in name, name in decay), []).append(p)
            param_groups = [{"params": ps, "weight_decay": self.args.weight_decay if d else 0.0,
                             **({"lr": self.projector_lr} if proj else {})} for (proj, d), ps in groups.items()]
            cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = cls(param_groups, **kwargs)
            return self.optimizer

    WithProjectorLR.__name__ = trainer_cls.__name__
    return WithProjectorLR


def _load_policy(policy_ref: str, settings: TrainSettings):
    from transformers import AutoModelForImageTextToText

    dtype = torch.bfloat16 if settings.options.bf16 and torch.cuda.is_available() else torch.float32
    return AutoModelForImageTextToText.from_pretrained(policy_ref, dtype=dtype)


def _fingerprint(policy_ref: str, processor, rows: list[dict], run_dir: Path, settings: TrainSettings) -> str:
    images = {r["image"]: sha256_file(run_dir / r["image"]) for r in rows}
    return sha256_json({"policy": checkpoint_identity(policy_ref), "processor": processor_identity(processor),
                        "rows": rows, "images": images, "settings": settings.fingerprint_fields()})[:16]


def sft_trainer(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings):
    """The configured TRL SFTTrainer (LoRA, projector LR, the family's prompt format) and its processor."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError(f"{settings.method}: the training set is empty; nothing to train")
    processor = load_processor(policy_ref, settings.chat_template, settings.pad_images)
    images = _images(rows, run_dir)
    check_lengths(processor, rows, images, settings.trainer.max_length, ["response"],
                  settings.family_row.image_token)
    data = Dataset.from_dict({
        "images": [[im] for im in images],
        "prompt": [[{"role": "user", "content": r["question"]}] for r in rows],
        "completion": [[{"role": "assistant", "content": r["response"]}] for r in rows],
    })
    trainer_cls = _with_projector_lr(SFTTrainer)
    trainer_cls.projector_key = settings.family_row.projector if settings.trainer.train_projector else None
    trainer_cls.projector_lr = settings.trainer.projector_learning_rate
    trainer = trainer_cls(model=_load_policy(policy_ref, settings), args=SFTConfig(**_common_args(settings, out_dir)),
                          train_dataset=data, processing_class=processor, peft_config=lora_config(settings))
    return trainer, processor


def train_sft(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings,
              force: bool = False) -> dict:
    """SFT with LoRA on (image, question, response) rows: SFT-gold, SteerLM or rejection sampling. A finished adapter
    of the same rows and settings is reused, unless `force`."""
    if not rows:
        raise ValueError(f"{settings.method}: the training set is empty; nothing to train")
    fingerprint = _fingerprint(policy_ref, load_processor(policy_ref, settings.chat_template, settings.pad_images),
                               rows, run_dir, settings)
    done, fresh = _skip_or_start(out_dir, fingerprint, force, settings.method)
    if done is not None:
        return done
    trainer, processor = sft_trainer(policy_ref, rows, run_dir, out_dir, settings)
    start = time.time()
    resumed = resume_checkpoint(out_dir, fingerprint, fresh=fresh)
    _fit_from(trainer, resumed, settings.method)
    info = _save(trainer, processor, out_dir, settings, fingerprint, len(rows), time.time() - start, resumed)
    log.info("%s: trained on %d rows in %.1fs (final loss %s)", settings.method, len(rows), info["seconds"], info["final_loss"])
    return info


def _fit_from(trainer, checkpoint: str | None, what: str, leave_bar: bool = True) -> None:
    if checkpoint is not None:
        log.info("%s: resuming from %s", what, checkpoint)
    use_step_bar(trainer, f"{what} training", leave=leave_bar)
    trainer.train(resume_from_checkpoint=checkpoint)


def use_step_bar(trainer, desc: str, leave: bool = True) -> None:
    """Replace the trainer's progress display with one mmpref.console bar over optimizer steps (loss as postfix).

    transformers picks NotebookProgressCallback in a kernel (an HTML table per training that reads
    `<IPython.core.display.HTML object>` outside a browser) and ProgressCallback elsewhere (a tqdm bar plus a printed
    dict per log step); neither follows MMPREF_PROGRESS. The loss history is in trainer_state.json and loss.png/.pdf."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback, TrainerCallback

    try:
        from transformers.utils.notebook import NotebookProgressCallback
        notebook_callback = [NotebookProgressCallback]
    except ImportError:  # no IPython: transformers never picks it
        notebook_callback = []

    from mmpref.console import bar

    class StepBar(TrainerCallback):
        progress = None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.progress = bar(total=state.max_steps, initial=state.global_step, desc=desc, unit="step",
                                    leave=leave)

        def on_step_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.update(state.global_step - self.progress.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.progress is not None and logs and "loss" in logs:
                self.progress.set_postfix(loss=f"{logs['loss']:.3g}", refresh=False)

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.close()
                self.progress = None

    for cb in (ProgressCallback, PrinterCallback, *notebook_callback):
        trainer.remove_callback(cb)
    trainer.add_callback(StepBar())


def reference_key(reference: str, processor_id: str, max_length: int, dtype: str, image_hash: str, row: dict) -> str:
    """Content key of one pair's reference log-probs: a change of any input misses the cache."""
    return sha256_json({"reference": reference, "processor": processor_id, "max_length": max_length, "dtype": dtype,
                        "image": image_hash, "prompt": row["question"], "chosen": row["chosen"],
                        "rejected": row["rejected"]})[:24]


def _dpo_trainer_class():
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from mmpref.mm_dpo import BetaScalingMixin
    from mmpref.shared_prefix import PAIR_COLUMNS, SharedPrefixCollator, SharedPrefixMixin, require_mask_attention

    class CollatorWithReference(DataCollatorForVisionPreference):
        def torch_call(self, examples):
            carried = {k: torch.tensor([e.pop(k) for e in examples]) for k in PAIR_COLUMNS if k in examples[0]}
            return {**super().torch_call(examples), **carried}

    class DPOWithCachedReference(BetaScalingMixin, SharedPrefixMixin, _with_projector_lr(DPOTrainer)):
        """DPOTrainer + reference log-probs precomputed once for vision data and cached on disk by content; with
        `share_prefix`, each pair's image and prompt run once (mmpref/shared_prefix.py); with `mm_dpo`, MM-DPO's
        beta per pair (mmpref/mm_dpo.py)."""

        def __init__(self, *args, ref_cache: Path | None = None, pair_keys: list[str] | None = None,
                     share_prefix: bool = False, **kwargs):
            targs = kwargs["args"]
            want = targs.precompute_ref_log_probs
            targs.precompute_ref_log_probs = False  # TRL refuses it for vision data; done below instead
            kwargs.setdefault("data_collator", None)
            super().__init__(*args, **kwargs)
            targs.precompute_ref_log_probs = want
            self.share_prefix = share_prefix
            collator = SharedPrefixCollator if share_prefix else CollatorWithReference
            self.data_collator = collator(processor=self.processing_class, max_length=targs.max_length)
            if share_prefix:
                require_mask_attention(self._prefix_attention())
            self.reference_stats = {"computed": 0, "cached": 0}
            if want:
                self.train_dataset = self._with_reference(self.train_dataset, ref_cache, pair_keys)
                self.precompute_ref_logps = True

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + list(PAIR_COLUMNS)

        @torch.no_grad()
        def _compute_reference(self, dataset) -> tuple[torch.Tensor, torch.Tensor]:
            """TRL's `_precompute_ref_logps` loop (trl 1.16 dpo_trainer.py): each rank its share of the batches,
            gathered in order; under DeepSpeed an inference engine places and gathers the (ZeRO-3 sharded) weights."""
            from torch.utils.data import DataLoader
            from mmpref.console import bar

            loader = DataLoader(dataset, batch_size=self.args.precompute_ref_batch_size or
                                self.args.per_device_train_batch_size, collate_fn=self.data_collator, shuffle=False,
                                num_workers=self.args.dataloader_num_workers)
            loader = self.accelerator.prepare(loader)
            model = self.model
            if self.is_deepspeed_enabled:
                from trl.models import prepare_deepspeed

                model = prepare_deepspeed(self.model, self.accelerator)
            chosen, rejected = [], []
            for batch in bar(loader, desc="reference log-probs", disable=not self.accelerator.is_local_main_process):
                c, r = self.compute_ref_log_probs(model, batch)
                c, r = self.accelerator.gather_for_metrics((c, r))
                chosen.append(c.float().cpu())
                rejected.append(r.float().cpu())
            return torch.cat(chosen), torch.cat(rejected)

        def _with_reference(self, dataset, cache_path: Path | None, keys: list[str] | None):
            cache: dict[str, list[float]] = {}
            if cache_path is not None and cache_path.exists():
                cache = {r["key"]: r["logps"] for r in read_jsonl(cache_path, appended=True)}
            keys = keys or [str(i) for i in range(len(dataset))]
            first: dict[str, int] = {}  # one computation per distinct missing key
            for i, k in enumerate(keys):
                if k not in cache and k not in first:
                    first[k] = i
            todo = list(first.values())
            if todo:
                was_training = self.model.training
                self.model.eval()
                chosen, rejected = self._compute_reference(dataset.select(todo))
                if was_training:
                    self.model.train()
                fresh = {keys[i]: [float(c), float(r)] for i, c, r in zip(todo, chosen.tolist(), rejected.tolist())}
                if cache_path is not None and self.accelerator.is_main_process:  # one writer
                    for k, v in fresh.items():
                        append_jsonl(cache_path, {"key": k, "logps": v})
                self.accelerator.wait_for_everyone()
                cache.update(fresh)
            self.reference_stats = {"computed": len(todo), "cached": len(keys) - len(todo)}
            log.info("reference log-probs: %d computed, %d from cache", len(todo), len(keys) - len(todo))
            dataset = dataset.add_column("ref_chosen_logps", [cache[k][0] for k in keys])
            return dataset.add_column("ref_rejected_logps", [cache[k][1] for k in keys])

    return DPOWithCachedReference


def dpo_trainer(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings,
                ref_cache: Path | None = None, model=None):
    """The configured DPO trainer (LoRA, projector LR, the family's prompt format, cached reference, shared prefix)
    and processor. `model`: an already built policy for policy_ref's processor (bench/dpo_throughput.py makes one
    with random weights on the device); by default it is loaded from policy_ref."""
    from datasets import Dataset
    from trl import DPOConfig

    if not rows:
        raise ValueError("dpo: no preference pairs; nothing to train (check 04_pair's datasets/card.md)")
    d = settings.trainer
    processor = load_processor(policy_ref, settings.chat_template, settings.pad_images)
    images = _images(rows, run_dir)
    check_lengths(processor, rows, images, d.max_length, ["chosen", "rejected"], settings.family_row.image_token)
    data = Dataset.from_dict({
        "images": [[im] for im in images],
        "prompt": [[{"role": "user", "content": r["question"]}] for r in rows],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
    })
    if settings.mm_dpo is not None:
        source = settings.mm_dpo.margin
        rm_annotations = read_jsonl(rm.annotations_path(run_dir)) if source == "reward_model" else None
        data = data.add_column(MARGIN_COLUMN, pair_margins(rows, source, rm_annotations))
    model = _load_policy(policy_ref, settings) if model is None else model
    reference, proc_id = checkpoint_identity(policy_ref), processor_identity(processor)
    keys = [reference_key(reference, proc_id, d.max_length, str(model.dtype), sha256_file(run_dir / r["image"]), r)
            for r in rows]
    args = DPOConfig(
        **_common_args(settings, out_dir),
        beta=d.beta,
        # summed log-probs = TRL's "sigmoid" loss; averaged (length-normalised) = "sigmoid_norm"
        loss_type=["sigmoid_norm" if d.average_log_prob else "sigmoid"],
        precompute_ref_log_probs=d.precompute_ref_log_probs,
        # TRL's default True zeroes every dropout, LoRA's too; the authors' trainer kept it (train.dpo.disable_dropout)
        disable_dropout=d.disable_dropout,
    )
    trainer_cls = _dpo_trainer_class()
    trainer_cls.projector_key = settings.family_row.projector if d.train_projector else None
    trainer_cls.projector_lr = d.projector_learning_rate
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=processor,
                          peft_config=lora_config(settings), ref_cache=ref_cache, pair_keys=keys,
                          share_prefix=d.share_prefix)
    trainer.mm_dpo = settings.mm_dpo
    return trainer, processor


def train_dpo(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings,
              ref_cache: Path | None = None, leave_bar: bool = True, force: bool = False) -> dict:
    """DPO with LoRA on (image, question, chosen, rejected) rows; the reference is the policy without the adapter.
    A finished adapter of the same pairs and settings is reused, unless `force`.
    `leave_bar=False`: the training's progress bar leaves no line (a sweep's trials, which the sweep's bar sums up)."""
    if not rows:
        raise ValueError("dpo: no preference pairs; nothing to train (check 04_pair's datasets/card.md)")
    fingerprint = _fingerprint(policy_ref, load_processor(policy_ref, settings.chat_template, settings.pad_images),
                               rows, run_dir, settings)
    done, fresh = _skip_or_start(out_dir, fingerprint, force, "dpo")
    if done is not None:
        return done
    trainer, processor = dpo_trainer(policy_ref, rows, run_dir, out_dir, settings, ref_cache)
    start = time.time()
    resumed = resume_checkpoint(out_dir, fingerprint, fresh=fresh)
    _fit_from(trainer, resumed, out_dir.name, leave_bar=leave_bar)
    info = _save(trainer, processor, out_dir, settings, fingerprint, len(rows), time.time() - start, resumed)
    info["reference_logps"] = trainer.reference_stats
    write_json(out_dir / "mmpref_train.json", info)
    log.info("dpo: trained on %d pairs in %.1fs (final loss %s)", len(rows), info["seconds"], info["final_loss"])
    return info


# a method's trainer kind (mmpref.methods.Method.trainer) -> the function that trains one adapter of it
TRAINERS = {"sft": train_sft, "dpo": train_dpo}


def _share_prefix(choice, family: str) -> bool:
    """`train.dpo.share_prefix` for a family: auto = where its text positions are 1D; true there only."""
    from mmpref.families import FAMILIES

    fits = FAMILIES[family].text_positions_1d
    if choice is True and not fits:
        raise ValueError(f"train.dpo.share_prefix: true, but the {family} family uses multimodal RoPE positions, "
                         f"which a packed row would get wrong; use auto or false")
    return fits if choice == "auto" else bool(choice)


def _run_settings(params, method: str, trainer: SFTParams | DPOParams) -> TrainSettings:
    """The settings of one training run of this params file: `trainer` (its trainer's section, as the run trains it),
    with `train.lora`, the run-wide `train` options, the run's seed, and the policy's family, template and padding."""
    t = params.train
    policy_ref = params.model_ref(params.models.policy)
    options = t.options()
    if options.deepspeed:
        options.deepspeed = str(params.path(options.deepspeed))
    return TrainSettings(method=method, trainer=trainer.model_copy(deep=True), lora=t.lora.model_copy(deep=True),
                         options=options, family=family_for_checkpoint(policy_ref, params.models.family).name,
                         chat_template=chat_templates(params)[0], pad_images=image_padding(params),
                         seed=params.run.seed)


def settings_from_params(params, method: str) -> TrainSettings:
    """The settings of one method: its trainer's section of `train` (`train.sft` or `train.dpo`) and what the method
    sets on top of it (MM-DPO: `train.mm_dpo`)."""
    spec = methods.method_of(method)
    settings = _run_settings(params, method, getattr(params.train, spec.trainer))
    return dataclasses.replace(settings, **spec.settings(params)) if spec.settings else settings


REWARD_MODEL = "reward_model"  # its adapter's method name (`mmpref train PARAMS reward_model`)


def reward_model_settings(params) -> TrainSettings:
    """The critique reward model's SFT settings: `train.sft` with `reward_model.sft` over it."""
    if params.reward_model is None:
        raise ValueError("params have no reward_model section; add one to train the critique reward model (03b)")
    sft = params.train.sft
    return _run_settings(params, REWARD_MODEL, sft.model_validate({**sft.model_dump(), **params.reward_model.sft}))


def _row_tokens(processor, row: dict, image, completion_key: str) -> int:
    """Tokens of one SFT row as the trainer sees it: the prompt with its image, the completion, the end token."""
    n_prompt = len(_prompt_ids(processor, row["question"], image))
    return n_prompt + len(processor.tokenizer(row[completion_key], add_special_tokens=False)["input_ids"]) + 1


def train_reward_model(params, force: bool = False) -> dict:
    """Stage 03b: the critique reward model's rows (mmpref.reward_model.training_rows) from stage 03's annotations,
    less those longer than max_length (counted: a cut row would lose its ratings line), trained with LoRA into
    reward_model/adapter. Returns the training info with the rows' summary. On a GPU node the same call runs under
    accelerate: `accelerate launch ... -m mmpref.cli train PARAMS reward_model`."""
    run_dir, rp = params.run_dir, params.reward_model
    settings = reward_model_settings(params)
    rows, summary = rm.training_rows(read_jsonl(run_dir / "prompts.jsonl"), read_jsonl(run_dir / "samples.jsonl"),
                                     read_jsonl(run_dir / "annotations.jsonl"), rp.held_out, params.run.seed,
                                     rp.critique_words)
    policy_ref = params.model_ref(params.models.policy)
    processor = load_processor(policy_ref, settings.chat_template, settings.pad_images)
    images = _images(rows, run_dir)
    fits = [_row_tokens(processor, r, im, "response") <= settings.trainer.max_length
            for r, im in zip(rows, images)]
    summary["rows_left_out"] = {rm.TOO_LONG: fits.count(False)}
    rows = [r for r, ok in zip(rows, fits) if ok]
    summary["rows"] = len(rows)
    info = train_sft(policy_ref, rows, run_dir, rm.adapter_dir(run_dir), settings, force=force)
    return {**info, "rows_summary": summary}


def train_method(params, method: str, force: bool = False) -> dict[str, dict]:
    """Train one method from the run's datasets/ into adapters/; DPO also trains its data-fraction runs (and its
    sweep's trials). `force`: train every one again, even a finished one (`mmpref run --force STAGE`: Stage.force).

    Notebooks 05-08 call this in-process; on a multi-GPU node the same call runs under accelerate:
    `accelerate launch --config_file params/accelerate/zero3-4gpu.yaml -m mmpref.cli train PARAMS METHOD`.
    """
    run_dir = params.run_dir
    policy_ref = params.model_ref(params.models.policy)
    settings = settings_from_params(params, method)
    if settings.options.deepspeed:
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError(f"train.deepspeed is {settings.options.deepspeed} but deepspeed is not installed; on GPU "
                             f"nodes install with: pip install -e '.[gpu]'")
    spec = methods.get(method)
    rows = read_jsonl(run_dir / "datasets" / f"{spec.dataset}.jsonl")
    train, infos, extra = TRAINERS[spec.trainer], {}, {}
    if spec.trainer == "dpo":
        extra["ref_cache"] = run_dir / "adapters" / "reference_logps.jsonl"
        if params.train.dpo.sweep is not None:
            # the paper's search, with plain DPO's settings: a DPO-kind method (MM-DPO) trains at the winner's beta,
            # averaging and learning rate, found in adapters/dpo_sweep (trained once, by whichever stage runs first;
            # a forced MM-DPO retrains its own adapter, not the trials, which belong to DPO's stage)
            chosen, infos["sweep"] = dpo_sweep(params, rows, settings_from_params(params, "dpo"), extra["ref_cache"],
                                               force=force and method == "dpo")
            settings = settings.with_trainer(**{k: getattr(chosen.trainer, k) for k in SWEPT_DPO_SETTINGS})
    if settings.mm_dpo is not None and settings.mm_dpo.margin == "reward_model":
        # the margins are the reward model's: a retrained or re-run reward model retrains the adapter
        rm_file = rm.annotations_path(run_dir)
        if not rm_file.is_file():
            raise ValueError(f"train.mm_dpo.margin is reward_model but {rm_file} does not exist: run stage "
                             f"03b_reward_model (with reward_model.annotate: all) first")
        settings = dataclasses.replace(settings, reward_model_annotations=sha256_file(rm_file))
    infos[method] = train(policy_ref, rows, run_dir, run_dir / "adapters" / method, settings, force=force, **extra)
    for fraction in params.train.dpo.fractions if spec.trains_fractions else []:
        name = methods.fraction_adapter(method, fraction)
        infos[name] = train(policy_ref, subsample(rows, fraction, seed=params.run.seed), run_dir,
                            run_dir / "adapters" / name, settings, force=force, **extra)
    return infos


UNTRAINED = "untrained"  # the DPO sweep's reference row: the policy without an adapter (never chosen)


def dpo_sweep(params, rows: list[dict], settings: TrainSettings, ref_cache: Path,
              force: bool = False) -> tuple[TrainSettings, dict]:
    """The paper's DPO search (`train.dpo.sweep`): train every (beta, averaged, lr) combination into
    adapters/dpo_sweep/<tag> (`force`: train each again), score each on the dev split with the evaluation judge, and
    return the winner's settings with the sweep's record (also written to adapters/dpo_sweep/sweep.csv and
    choice.json). The untrained policy is scored on the same split and recorded as the first row, tag
    `UNTRAINED` with `reference` true: the yardstick a reader judges the trials by, never chosen. A dev answer is
    reused only for the same model (as stage 09's: suite.answer_identity)."""
    import itertools

    import pandas as pd

    from mmpref.console import bar
    from mmpref.evaluate.suite import answer_identity, score_policy
    from mmpref.judges import judge_from_params
    from mmpref.sampling import Policy

    sweep, run_dir = params.train.dpo.sweep, params.run_dir
    policy_ref = params.model_ref(params.models.policy)
    judge = judge_from_params(params.evaluate.judge, run_dir / "judge_cache", params.path)
    out_root = run_dir / "adapters" / "dpo_sweep"

    def dev_score(name: str, adapter: Path | None, out_dir: Path) -> float:
        policy = Policy.from_params(params, name, adapter=adapter)
        got = score_policy(params, policy, "llava_bench", params.path(sweep.dev_path), judge,
                           out_dir / "dev_llava_bench.jsonl", name,
                           answered_by=answer_identity(params, name, None if adapter is None else str(adapter)))
        del policy
        return next(r["value"] for r in got if r["metric"] == "relative_score")

    untrained = dev_score(methods.POLICY, None, out_root / UNTRAINED)
    log.info("dpo sweep: the untrained policy -> dev LLaVA-Bench %.1f", untrained)
    reference = {"tag": UNTRAINED, "beta": None, "average_log_prob": None, "learning_rate": None,
                 "dev_relative_score": untrained, "final_loss": None, "reference": True}
    records = []
    grid = list(itertools.product(sweep.betas, sweep.average_log_prob, sweep.learning_rates))
    progress = bar(total=len(grid), desc="dpo sweep", unit="trial")
    for beta, average, lr in grid:
        tag = f"beta{beta:g}_{'avg' if average else 'sum'}_lr{lr:g}"
        progress.set_postfix_str(tag)
        trial = settings.with_trainer(beta=beta, average_log_prob=average, learning_rate=lr)
        info = train_dpo(policy_ref, rows, run_dir, out_root / tag, trial, ref_cache=ref_cache, leave_bar=False,
                         force=force)
        score = dev_score(tag, out_root / tag, out_root / tag)
        records.append({"tag": tag, "beta": beta, "average_log_prob": average, "learning_rate": lr,
                        "dev_relative_score": score, "final_loss": info.get("final_loss"), "reference": False})
        log.info("dpo sweep: %s -> dev LLaVA-Bench %.1f", tag, score)
        progress.update(1)
    best = records[int(pd.DataFrame(records)["dev_relative_score"].values.argmax())]  # trials only
    progress.set_postfix_str(f"best {best['tag']} (dev LLaVA-Bench {best['dev_relative_score']:.1f}; untrained "
                             f"{untrained:.1f})", refresh=False)
    progress.close()
    records = [reference, *records]
    table = pd.DataFrame(records)
    table["chosen"] = table["tag"] == best["tag"]
    table.to_csv(out_root / "sweep.csv", index=False)
    write_json(out_root / "choice.json", best)
    chosen = settings.with_trainer(**{k: best[k] for k in SWEPT_DPO_SETTINGS})
    return chosen, {"table": records, "chosen": best, "rows": len(rows)}

"""LoRA fine-tuning of the VLM by the paper's four methods, with TRL.

SFT-gold, SteerLM and rejection sampling are `SFTTrainer` runs on (image, question, response) rows; DPO is a
`DPOTrainer` run on (image, question, chosen, rejected) rows. LoRA goes on the language model's linear layers; for
the SFT methods the multi-modal projector is trained too (as LLaVA's instruction tuning does).

TRL refuses `precompute_ref_log_probs` for vision datasets. The paper precomputes the reference model's log-probs
once, so `DPOWithCachedReference` adds it: reference log-probs are computed with the adapter disabled, stored on disk
keyed by pair and reference checkpoint (so the data-fraction runs reuse them), and fed through the collator.
Multi-GPU: the same functions run under `accelerate launch --config_file params/accelerate/<cfg>.yaml`.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from mmpref.io import read_jsonl, sha256_json, write_jsonl
from mmpref.models import chat_messages
from mmpref.sampling import open_image

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    """Everything a training run depends on (recorded next to the adapter; a change retrains)."""

    method: str
    learning_rate: float
    batch_size: int
    grad_accum: int
    epochs: float
    max_length: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: list[str]
    train_projector: bool = False
    beta: float = 0.1
    average_log_prob: bool = False
    precompute_ref_log_probs: bool = True
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    bf16: bool = True
    gradient_checkpointing: bool = True
    deepspeed: str | None = None
    logging_steps: int = 10
    seed: int = 0


def lora_config(s: TrainSettings):
    from peft import LoraConfig

    names = "|".join(s.target_modules)
    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules=rf".*language_model.*\.({names})",
        modules_to_save=["multi_modal_projector"] if s.train_projector else None,
        task_type="CAUSAL_LM",
    )


def _images(rows: list[dict], run_dir: Path) -> list:
    return [open_image(run_dir / r["image"]) for r in rows]


def check_lengths(processor, rows: list[dict], run_dir: Path, max_length: int, completion_keys: list[str]) -> None:
    """Fail clearly, before training, if max_length would cut into a prompt (and so into its image tokens)."""
    from PIL import Image

    tok = processor.tokenizer
    probe = Image.new("RGB", (8, 8))
    n_image = len(processor(images=[probe], text=["<image>"], add_special_tokens=False)["input_ids"][0])
    for r in rows:
        prompt = processor.apply_chat_template(chat_messages([r["question"]], [], True), add_generation_prompt=True,
                                               tokenize=False)
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"]) - 1 + n_image
        if n_prompt >= max_length:
            raise ValueError(
                f"prompt {r.get('prompt_id')} needs {n_prompt} tokens ({n_image} of them image tokens) but max_length "
                f"is {max_length}: truncation would cut the prompt; raise max_length or drop the prompt"
            )
        longest = max(len(tok(r[k], add_special_tokens=False)["input_ids"]) for k in completion_keys)
        if n_prompt + longest + 1 > max_length:
            log.warning("prompt %s: a completion will be truncated to fit max_length %d", r.get("prompt_id"), max_length)


def _common_args(s: TrainSettings, out_dir: Path) -> dict:
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(out_dir / "trainer"),
        per_device_train_batch_size=s.batch_size,
        gradient_accumulation_steps=s.grad_accum,
        num_train_epochs=s.epochs,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_ratio,
        weight_decay=s.weight_decay,
        bf16=bool(s.bf16 and cuda),
        activation_checkpointing=bool(s.gradient_checkpointing and cuda),
        use_cpu=not cuda,
        logging_steps=s.logging_steps,
        save_strategy="no",
        report_to=[],
        seed=s.seed,
        max_length=s.max_length,
        dataloader_num_workers=0,
        deepspeed=s.deepspeed,
        remove_unused_columns=True,
    )


def _finished(out_dir: Path, fingerprint: str) -> bool:
    info = out_dir / "mmpref_train.json"
    return info.exists() and json.loads(info.read_text()).get("fingerprint") == fingerprint and (
        out_dir / "adapter_config.json"
    ).exists()


def _save(trainer, processor, out_dir: Path, settings: TrainSettings, fingerprint: str, n_rows: int, seconds: float):
    trainer.model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    history = trainer.state.log_history
    (out_dir / "trainer_state.json").write_text(json.dumps(history, indent=1))
    plot_loss(history, out_dir / "loss.png", title=settings.method)
    info = {"fingerprint": fingerprint, "settings": settings.__dict__, "rows": n_rows, "seconds": round(seconds, 1),
            "final_loss": next((h["loss"] for h in reversed(history) if "loss" in h), None)}
    (out_dir / "mmpref_train.json").write_text(json.dumps(info, indent=1))
    return info


def plot_loss(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(5, 3))
    if pts:
        ax.plot(*zip(*pts), marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title(f"{title}: training loss")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train_sft(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings) -> dict:
    """SFT with LoRA on (image, question, response) rows: SFT-gold, SteerLM or rejection sampling."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError(f"{settings.method}: the training set is empty; nothing to train")
    fingerprint = sha256_json({"policy": policy_ref, "rows": rows, "settings": settings.__dict__})[:16]
    if _finished(out_dir, fingerprint):
        log.info("%s: adapter for these rows and settings exists in %s; skipping", settings.method, out_dir)
        return json.loads((out_dir / "mmpref_train.json").read_text())
    processor = AutoProcessor.from_pretrained(policy_ref)
    check_lengths(processor, rows, run_dir, settings.max_length, ["response"])
    data = Dataset.from_dict({
        "images": [[im] for im in _images(rows, run_dir)],
        "prompt": [[{"role": "user", "content": r["question"]}] for r in rows],
        "completion": [[{"role": "assistant", "content": r["response"]}] for r in rows],
    })
    model = AutoModelForImageTextToText.from_pretrained(policy_ref, dtype=torch.bfloat16 if settings.bf16 and torch.cuda.is_available() else torch.float32)
    args = SFTConfig(**_common_args(settings, out_dir))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=processor,
                         peft_config=lora_config(settings))
    start = time.time()
    trainer.train()
    info = _save(trainer, processor, out_dir, settings, fingerprint, len(rows), time.time() - start)
    log.info("%s: trained on %d rows in %.1fs (final loss %s)", settings.method, len(rows), info["seconds"], info["final_loss"])
    return info


def _dpo_trainer_class():
    from trl import DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class CollatorWithReference(DataCollatorForVisionPreference):
        def torch_call(self, examples):
            ref = None
            if "ref_chosen_logps" in examples[0]:
                ref = (torch.tensor([e.pop("ref_chosen_logps") for e in examples]),
                       torch.tensor([e.pop("ref_rejected_logps") for e in examples]))
            out = super().torch_call(examples)
            if ref is not None:
                out["ref_chosen_logps"], out["ref_rejected_logps"] = ref
            return out

    class DPOWithCachedReference(DPOTrainer):
        """DPOTrainer + reference log-probs precomputed once for vision data and cached on disk."""

        def __init__(self, *args, ref_cache: Path | None = None, pair_keys: list[str] | None = None, **kwargs):
            targs = kwargs["args"]
            want = targs.precompute_ref_log_probs
            targs.precompute_ref_log_probs = False  # TRL refuses it for vision data; done below instead
            kwargs.setdefault("data_collator", None)
            super().__init__(*args, **kwargs)
            targs.precompute_ref_log_probs = want
            self.data_collator = CollatorWithReference(processor=self.processing_class, max_length=targs.max_length)
            if want:
                self.train_dataset = self._with_reference(self.train_dataset, ref_cache, pair_keys)
                self.precompute_ref_logps = True

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(self._signature_columns) + ["ref_chosen_logps", "ref_rejected_logps"]

        @torch.no_grad()
        def _with_reference(self, dataset, cache_path: Path | None, keys: list[str] | None):
            from tqdm.auto import tqdm

            cache: dict[str, list[float]] = {}
            if cache_path is not None and cache_path.exists():
                cache = {r["key"]: r["logps"] for r in read_jsonl(cache_path)}
            keys = keys or [str(i) for i in range(len(dataset))]
            todo = [i for i, k in enumerate(keys) if k not in cache]
            bs = self.args.per_device_train_batch_size
            self.model.eval()
            for start in tqdm(range(0, len(todo), bs), desc="reference log-probs"):
                idx = todo[start:start + bs]
                batch = self.data_collator([dict(dataset[i]) for i in idx])
                batch = self._prepare_inputs(batch)
                chosen, rejected = self.compute_ref_log_probs(self.model, batch)
                for j, i in enumerate(idx):
                    cache[keys[i]] = [float(chosen[j]), float(rejected[j])]
            self.model.train()
            if cache_path is not None and todo:
                write_jsonl(cache_path, [{"key": k, "logps": v} for k, v in cache.items()])
            log.info("reference log-probs: %d computed, %d from cache", len(todo), len(keys) - len(todo))
            dataset = dataset.add_column("ref_chosen_logps", [cache[k][0] for k in keys])
            return dataset.add_column("ref_rejected_logps", [cache[k][1] for k in keys])

    return DPOWithCachedReference


def train_dpo(policy_ref: str, rows: list[dict], run_dir: Path, out_dir: Path, settings: TrainSettings,
              ref_cache: Path | None = None) -> dict:
    """DPO with LoRA on (image, question, chosen, rejected) rows; the reference is the policy without the adapter."""
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import DPOConfig

    if not rows:
        raise ValueError("dpo: no preference pairs; nothing to train (check 04_pair's datasets/card.md)")
    fingerprint = sha256_json({"policy": policy_ref, "rows": rows, "settings": settings.__dict__})[:16]
    if _finished(out_dir, fingerprint):
        log.info("dpo: adapter for these pairs and settings exists in %s; skipping", out_dir)
        return json.loads((out_dir / "mmpref_train.json").read_text())
    processor = AutoProcessor.from_pretrained(policy_ref)
    check_lengths(processor, rows, run_dir, settings.max_length, ["chosen", "rejected"])
    data = Dataset.from_dict({
        "images": [[im] for im in _images(rows, run_dir)],
        "prompt": [[{"role": "user", "content": r["question"]}] for r in rows],
        "chosen": [[{"role": "assistant", "content": r["chosen"]}] for r in rows],
        "rejected": [[{"role": "assistant", "content": r["rejected"]}] for r in rows],
    })
    keys = [f"{r['prompt_id']}:{r['chosen_index']}:{r['rejected_index']}" for r in rows]
    model = AutoModelForImageTextToText.from_pretrained(policy_ref, dtype=torch.bfloat16 if settings.bf16 and torch.cuda.is_available() else torch.float32)
    args = DPOConfig(
        **_common_args(settings, out_dir),
        beta=settings.beta,
        # summed log-probs = TRL's "sigmoid" loss; averaged (length-normalised) = "sigmoid_norm"
        loss_type=["sigmoid_norm" if settings.average_log_prob else "sigmoid"],
        precompute_ref_log_probs=settings.precompute_ref_log_probs,
    )
    trainer_cls = _dpo_trainer_class()
    trainer = trainer_cls(model=model, args=args, train_dataset=data, processing_class=processor,
                          peft_config=lora_config(settings), ref_cache=ref_cache, pair_keys=keys)
    start = time.time()
    trainer.train()
    info = _save(trainer, processor, out_dir, settings, fingerprint, len(rows), time.time() - start)
    log.info("dpo: trained on %d pairs in %.1fs (final loss %s)", len(rows), info["seconds"], info["final_loss"])
    return info


def settings_from_params(params, method: str) -> TrainSettings:
    """Translate the `train` params section into the settings of one method."""
    t = params.train
    common = dict(
        method=method, lora_r=t.lora.r, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
        target_modules=list(t.lora.target_modules), lr_scheduler=t.lr_scheduler, warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay, bf16=t.bf16, gradient_checkpointing=t.gradient_checkpointing,
        deepspeed=str(params.path(t.deepspeed)) if t.deepspeed else None, logging_steps=t.logging_steps,
        seed=params.run.seed,
    )
    if method.startswith("dpo"):
        d = t.dpo
        return TrainSettings(learning_rate=d.learning_rate, batch_size=d.batch_size, grad_accum=d.grad_accum,
                             epochs=d.epochs, max_length=d.max_length, beta=d.beta,
                             average_log_prob=d.average_log_prob,
                             precompute_ref_log_probs=d.precompute_ref_log_probs, train_projector=False, **common)
    s = t.sft
    return TrainSettings(learning_rate=s.learning_rate, batch_size=s.batch_size, grad_accum=s.grad_accum,
                         epochs=s.epochs, max_length=s.max_length, train_projector=s.train_projector, **common)


def train_method(params, method: str) -> dict[str, dict]:
    """Train one method from the run's datasets/ into adapters/; DPO also trains its data-fraction runs.

    Notebooks 05-08 call this in-process; on a multi-GPU node the same call runs under accelerate:
    `accelerate launch --config_file params/accelerate/zero3-4gpu.yaml -m mmpref.cli train PARAMS METHOD`.
    """
    from mmpref.pairing import subsample

    run_dir = params.run_dir
    policy_ref = params.model_ref(params.models.policy)
    rows = read_jsonl(run_dir / "datasets" / f"{method}.jsonl")
    settings = settings_from_params(params, method)
    if method != "dpo":
        return {method: train_sft(policy_ref, rows, run_dir, run_dir / "adapters" / method, settings)}
    ref_cache = run_dir / "adapters" / "reference_logps.jsonl"
    infos = {"dpo": train_dpo(policy_ref, rows, run_dir, run_dir / "adapters" / "dpo", settings, ref_cache=ref_cache)}
    for fraction in params.train.dpo.fractions:
        name = f"dpo_frac{fraction:g}"
        infos[name] = train_dpo(policy_ref, subsample(rows, fraction, seed=params.run.seed), run_dir,
                                run_dir / "adapters" / name, settings, ref_cache=ref_cache)
    return infos

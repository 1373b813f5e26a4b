"""Checkpoints: chat messages, loading by Auto classes, and checkpoint identity.

Everything downstream loads a checkpoint exactly as a hub checkpoint would be loaded
(`AutoModelForImageTextToText` + `AutoProcessor` for the VLM, `AutoModelForCausalLM` + `AutoTokenizer` for the base
LM), so switching the params file from the tiny world to `liuhaotian/llava-v1.5-13b`-style checkpoints changes no code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mmpref.families import apply_chat_template_choice, family_for_checkpoint, set_image_padding
from mmpref.io import sha256_file, sha256_json

log = logging.getLogger(__name__)

def chat_messages(turns: list[str], answers: list[str], image: bool, every_turn: bool = False) -> list[dict]:
    """Conversation in the structured form processors and TRL expect; the image goes with the first user turn, or
    with every user turn when `every_turn` (noisy-image MT-Bench: one image placeholder per turn, each filled with
    the same picture)."""
    if len(answers) not in (len(turns), len(turns) - 1):
        raise ValueError(f"{len(turns)} user turns need {len(turns) - 1} or {len(turns)} answers, got {len(answers)}")
    messages = []
    for i, turn in enumerate(turns):
        content = ([{"type": "image"}] if image and (i == 0 or every_turn) else []) + [{"type": "text", "text": turn}]
        messages.append({"role": "user", "content": content})
        if i < len(answers):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
    return messages


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32  # bf16 matmuls are slow on most CPUs; the tiny world trains in fp32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def chat_templates(params) -> tuple[str | None, str | None]:
    """(VLM template, base-LM template) that params ask for; None keeps the checkpoint's own (`checkpoint`)."""
    if params.models.chat_template == "checkpoint":
        return None, None
    fam = family_for_checkpoint(params.model_ref(params.models.policy), params.models.family)
    return fam.chat_template, fam.text_chat_template


def image_padding(params) -> bool:
    """Whether the run pads pictures to square before the image processor (`models.image_aspect_ratio`; "family":
    as the policy's family was trained, mmpref/families.py)."""
    choice = params.models.image_aspect_ratio
    if choice == "family":
        return family_for_checkpoint(params.model_ref(params.models.policy), params.models.family).pad_images
    return choice == "pad"


def load_processor(ref: str, chat_template: str | None = None, pad_images: bool | None = None):
    """AutoProcessor of a VLM checkpoint with the chosen chat template installed (None: the checkpoint's) and its
    pictures padded to square or not (`image_padding`; None: as the processor is saved)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(ref)
    apply_chat_template_choice(processor, chat_template, ref)
    if pad_images is not None:
        set_image_padding(processor, pad_images, ref)
    return processor


_IDENTITIES: dict[tuple, str] = {}
_WEIGHT_FILES = ("*.json", "*.safetensors", "*.bin", "*.model", "*.txt", "*.jinja")


def checkpoint_identity(ref: str) -> str:
    """Content identity of a checkpoint, independent of where it lies: a hash of its config, tokenizer and weight
    files for a local folder; `hub id@commit` for a hub checkpoint in the local cache (hub snapshots are immutable).
    Memoised per process by (path, sizes, mtimes), so a 26 GB checkpoint is hashed once."""
    path = Path(ref)
    if not path.is_dir():
        from huggingface_hub import hf_hub_download, try_to_load_from_cache

        try:
            found = try_to_load_from_cache(ref, "config.json")
            if not isinstance(found, str):  # not downloaded yet: fetch its config, which names the commit
                found = hf_hub_download(ref, "config.json")
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, not a hub id at all
            raise ValueError(f"checkpoint {ref!r} is neither a local folder nor a hub checkpoint that can be "
                             f"resolved ({type(exc).__name__}: {exc})") from None
        return f"{ref}@{Path(found).parent.name}"
    files = sorted({f for pat in _WEIGHT_FILES for f in path.glob(pat) if f.is_file()})
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    memo_key = (str(path.resolve()), stamp)
    if memo_key not in _IDENTITIES:
        _IDENTITIES[memo_key] = sha256_json({f.name: sha256_file(f) for f in files})[:16]
    return _IDENTITIES[memo_key]


def load_vlm(ref: str, adapter: str | Path | None = None, dtype: str = "bfloat16", device: str = "auto",
             chat_template: str | None = None, pad_images: bool | None = None, merge: bool = True):
    """Load a VLM checkpoint (+ optional PEFT adapter, merged for fast generation) and its processor, with the
    chosen chat template and picture padding (None: as saved with the adapter or the checkpoint). `merge=False`
    keeps the PeftModel, whose `disable_adapter()` gives back the checkpoint itself (DPO's reference)."""
    from transformers import AutoModelForImageTextToText

    dev = pick_device(device)
    saved = adapter and Path(adapter, "processor_config.json").exists()
    processor = load_processor(str(adapter) if saved else ref, chat_template, pad_images)
    model = AutoModelForImageTextToText.from_pretrained(ref, dtype=torch_dtype(dtype, dev))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        model = model.merge_and_unload() if merge else model
    model.to(dev).eval()
    return model, processor


def load_text_lm(ref: str, dtype: str = "bfloat16", device: str = "auto", chat_template: str | None = None):
    """Load a text-only causal LM (the base LLM, e.g. Vicuna) and its tokenizer, with the chosen chat template
    (lmsys/vicuna-13b-v1.5 ships none: the family's Vicuna v1.1 format is installed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    tokenizer = AutoTokenizer.from_pretrained(ref)
    apply_chat_template_choice(tokenizer, chat_template, ref)
    if tokenizer.pad_token is None:  # Llama/Vicuna tokenizers have none; left-padded generation needs one
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype(dtype, dev)).to(dev).eval()
    return model, tokenizer

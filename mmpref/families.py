"""VLM families: what differs between LLaVA-1.5, LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL, in one table.

Every stage loads checkpoints through the Auto classes; what it still needs to know about a family is here: where
LoRA goes, which module is the projector, the image placeholder the processor expands, and the prompt format the
family was trained with. `models.family: auto` picks the row from the checkpoint's `config.model_type`.

Prompt formats (`models.chat_template: family`, the default for real checkpoints):
- LLaVA-1.5 was trained with LLaVA's `conv_vicuna_v1` (haotian-liu/LLaVA `llava/conversation.py`, commit c121f04;
  the authors' scripts pass `--version v1`): BOS, the Vicuna system prompt, `USER: <image>\\n{q} ASSISTANT: {a}</s>`
  for every turn, `ASSISTANT:` to generate. llava-hf's hub template renders no BOS, no system prompt and no `</s>`
  after answers; training on it would teach a 13B model answers that never end. Its base LLM, Vicuna v1.5, uses
  FastChat's `vicuna_v1.1` (lm-sys/FastChat `fastchat/conversation.py`): the same system prompt and separators,
  without the image line. lmsys/vicuna-13b-v1.5 ships no chat template at all.
- Qwen2-VL / Qwen2.5-VL: the hub's ChatML template already ends every turn with `<|im_end|>` (their EOS); it is used
  as is, and the base LLM gets the same ChatML format.
- LLaVA-NeXT: the llava-v1.6-vicuna checkpoints use `conv_vicuna_v1` too; for the Mistral/Yi variants use
  `chat_template: checkpoint` after checking their hub template ends answers with EOS.

Pictures (`models.image_aspect_ratio: family`, the default): LLaVA-1.5 was trained, and is evaluated, on pictures
padded to a square of the image processor's mean colour before CLIP's resize and centre crop (haotian-liu/LLaVA
`llava/mm_utils.py` expand2square / process_images under `image_aspect_ratio pad`, commit c121f04; the authors'
findalexli/mllm-dpo keeps it, llava/mm_utils.py lines 28-40 at commit dab3458, and passes `--image_aspect_ratio pad` in
every training script). llava-hf's conversion ships a CLIPImageProcessor, which does not pad: a wide picture loses its
sides to the crop. `set_image_padding` swaps in transformers' LlavaImageProcessor with `do_pad` (the same CLIP
settings; its pad_to_square is expand2square: tests/test_official_scoring.py).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")


def vicuna_v1_template(system: str | None) -> str:
    """LLaVA `conv_vicuna_v1` / FastChat `vicuna_v1.1` as a chat template (SeparatorStyle.TWO: sep " ", sep2 "</s>").

    `{bos}{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: {q2} ASSISTANT:`. A leading system message replaces
    the default system prompt; with `system=None` and no system message the prompt starts at `USER:` (the miniature
    world's short form). Images go first in the user turn, one `<image>\\n` each, as LLaVA's preprocess does.
    """
    default = "" if system is None else system.replace("'", "\\'")
    return (
        "{{ bos_token }}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set sys = messages[0]['content'] if messages[0]['content'] is string else "
        "(messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('')) %}"
        "{% set loop_messages = messages[1:] %}"
        f"{{% else %}}{{% set sys = '{default}' %}}{{% set loop_messages = messages %}}{{% endif %}}"
        "{% if sys %}{{ sys + ' ' }}{% endif %}"
        "{% for m in loop_messages %}"
        "{% if m['role'] == 'user' %}USER: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
        "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %} "
        "{% elif m['role'] == 'assistant' %}ASSISTANT: "
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
        "{{ eos_token }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )


# Qwen2-VL-Instruct's hub template (Qwen/Qwen2-VL-7B-Instruct chat_template.json), text and images; every turn ends
# with <|im_end|>, the checkpoint's EOS.
CHATML_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]      # config.model_type values of the VLM
    projector: str                    # module-name suffix of the vision-language projector
    image_token: str                  # the placeholder the processor expands into image tokens
    chat_template: str                # the VLM's training-time prompt format
    text_chat_template: str           # the base LLM's prompt format
    lora_scope: str = "language_model"  # LoRA goes on linear layers under this module only (never the tower)
    text_positions_1d: bool = True    # plain 1D RoPE positions (not Qwen2-VL's multimodal RoPE): DPO can share the
                                      # prompt between chosen and rejected (mmpref/shared_prefix.py)
    pad_images: bool = False          # trained on pictures padded to square (LLaVA-1.5's `image_aspect_ratio pad`)

    def lora_target_regex(self, module_names: list[str]) -> str:
        """PEFT target_modules regex: the named linear layers of the language model."""
        return rf".*{self.lora_scope}.*\.({'|'.join(module_names)})"


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llava", ("llava",), "multi_modal_projector", "<image>",
               vicuna_v1_template(VICUNA_SYSTEM), vicuna_v1_template(VICUNA_SYSTEM), pad_images=True),
        Family("llava_next", ("llava_next",), "multi_modal_projector", "<image>",
               vicuna_v1_template(VICUNA_SYSTEM), vicuna_v1_template(VICUNA_SYSTEM)),
        Family("qwen2_vl", ("qwen2_vl",), "merger", "<|image_pad|>", CHATML_TEMPLATE, CHATML_TEMPLATE,
               text_positions_1d=False),
        Family("qwen2_5_vl", ("qwen2_5_vl",), "merger", "<|image_pad|>", CHATML_TEMPLATE, CHATML_TEMPLATE,
               text_positions_1d=False),
    )
}


def family_of(model_type: str, choice: str = "auto") -> Family:
    """The family named by `choice`, or the one whose model_type matches (`auto`)."""
    if choice != "auto":
        if choice not in FAMILIES:
            raise ValueError(f"unknown model family {choice!r}; known: {sorted(FAMILIES)}")
        fam = FAMILIES[choice]
        if model_type not in fam.model_types:
            raise ValueError(f"models.family is {choice!r} but the checkpoint's model_type is {model_type!r} "
                             f"(expected {fam.model_types}); fix models.family or use 'auto'")
        return fam
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise ValueError(f"no model family for model_type {model_type!r}; known families: "
                     f"{ {f.name: f.model_types for f in FAMILIES.values()} }. Add a row to mmpref/families.py")


def family_for_checkpoint(ref: str, choice: str = "auto") -> Family:
    from transformers import AutoConfig

    return family_of(AutoConfig.from_pretrained(ref).model_type, choice)


def apply_chat_template_choice(processor, template: str | None, what: str) -> None:
    """Install `template` on a processor (and its tokenizer); None keeps the checkpoint's own, which must exist."""
    tok = getattr(processor, "tokenizer", processor)
    if template is None:
        if not (getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None)):
            raise ValueError(f"{what} ships no chat template; set models.chat_template: family")
        return
    processor.chat_template = template
    if tok is not processor:
        tok.chat_template = template


def set_image_padding(processor, pad: bool, what: str = "the checkpoint") -> None:
    """Make `processor` pad pictures to a square of its image mean before its CLIP preprocessing (`pad`), or not.
    A LlavaImageProcessor gets `do_pad`; a CLIPImageProcessor to be padded is replaced by the LlavaImageProcessor of
    the same backend and settings with `do_pad=True` (saved with the adapters, so a loaded adapter pads as it was
    trained). Another image processor cannot be padded this way: ValueError naming it."""
    import transformers

    image_proc = getattr(processor, "image_processor", None)
    name = type(image_proc).__name__
    if name.startswith("LlavaImageProcessor"):
        image_proc.do_pad = pad
        return
    if not pad:
        return
    cls = getattr(transformers, name.replace("CLIP", "Llava", 1), None) if name.startswith("CLIPImageProcessor") else None
    if cls is None:
        raise ValueError(f"models.image_aspect_ratio asks for pictures padded to square, but {what}'s image processor "
                         f"is {name}, which mmpref cannot pad (only LLaVA-1.5's CLIP processor); set "
                         f"models.image_aspect_ratio: processor")
    settings = {k: v for k, v in image_proc.to_dict().items()
                if k not in ("image_processor_type", "processor_class") and not k.startswith("_")}
    processor.image_processor = cls(**settings, do_pad=True)


def processor_identity(processor) -> str:
    """Hash of what turns a conversation and an image into model inputs: chat template, special tokens, vocabulary
    size and image preprocessing. Part of every cache key that depends on tokenization."""
    tok = getattr(processor, "tokenizer", processor)
    image_proc = getattr(processor, "image_processor", None)
    parts = {
        "template": getattr(processor, "chat_template", None) or getattr(tok, "chat_template", None),
        "vocab": len(tok),
        "special": {k: str(v) for k, v in sorted(tok.special_tokens_map.items())},
        "class": type(tok).__name__,
        "image": json.loads(image_proc.to_json_string()) if image_proc is not None else None,
        "processor": {k: getattr(processor, k, None) for k in ("patch_size", "vision_feature_select_strategy",
                                                               "num_additional_image_tokens")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]

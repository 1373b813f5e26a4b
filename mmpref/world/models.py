"""The miniature world's models: a BPE tokenizer, a small Llama (the "Vicuna") and a tiny LLaVA built on it.

They are saved with ``save_pretrained`` and loaded downstream by Auto classes, exactly like hub checkpoints.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Iterable

import torch

from mmpref.families import vicuna_v1_template
from mmpref.models import chat_messages
from mmpref.world.text_tasks import knowledge_statements

log = logging.getLogger(__name__)

# The miniature world's template: LLaVA-1.5's conv_vicuna_v1 without the system prompt (its tiny models are trained
# on it from scratch, so the system prompt would only cost tokens). Real checkpoints get their family's format
# (mmpref/families.py). The same template renders text-only turns, so the base LM and the VLM share it.
LLAVA_CHAT_TEMPLATE = vicuna_v1_template(None)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
ALIGN_INSTRUCTION = "Describe the image briefly."  # one of LLaVA's stage-1 caption instructions




def encode_statement(tokenizer, text: str) -> dict:
    """A plain-text pretraining example, <s> text </s>, with the loss on every token after <s>."""
    ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": ids}


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: Path):
    """Byte-level BPE trained on the world's text, saved as a fast tokenizer with the LLaVA chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=4096,
    )
    hf.chat_template = LLAVA_CHAT_TEMPLATE
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir)
    return hf


def build_base_lm(tokenizer, shape) -> "torch.nn.Module":
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_heads,
        max_position_embeddings=shape.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def build_processor(tokenizer, image_size: int, patch_size: int):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )


def build_tiny_llava(base_lm, tokenizer, image_size: int, vision) -> "torch.nn.Module":
    """LlavaForConditionalGeneration: CLIP-architecture tower (from scratch) + 2-layer MLP projector + the base LM."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    vconf = CLIPVisionConfig(
        hidden_size=vision.hidden_size,
        intermediate_size=vision.intermediate_size,
        num_hidden_layers=vision.num_layers,
        num_attention_heads=vision.num_heads,
        image_size=image_size,
        patch_size=vision.patch_size,
        projection_dim=vision.hidden_size,
    )
    config = LlavaConfig(
        vision_config=vconf,
        text_config=base_lm.config,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
    )
    model = LlavaForConditionalGeneration(config)
    missing = model.model.language_model.load_state_dict(base_lm.model.state_dict())
    if missing.missing_keys or missing.unexpected_keys:
        raise RuntimeError(f"base LM weights do not fit the LLaVA language model: {missing}")
    model.lm_head.load_state_dict(base_lm.lm_head.state_dict())
    return model


def encode_example(tokenizer_or_processor, turns, answers, image=None, max_length: int = 512) -> dict:
    """input_ids/labels for one conversation with loss on the assistant answers (and their </s>) only."""
    proc = tokenizer_or_processor
    tok = getattr(proc, "tokenizer", proc)
    ids: list[int] = []
    labels: list[int] = []
    pixel_values = None
    for i in range(len(turns)):
        prefix = proc.apply_chat_template(
            chat_messages(turns[: i + 1], answers[:i], image is not None), add_generation_prompt=True, tokenize=False
        )
        full = proc.apply_chat_template(chat_messages(turns[: i + 1], answers[: i + 1], image is not None), tokenize=False)
        if image is not None and hasattr(proc, "image_processor"):
            enc_prefix = proc(images=[image], text=[prefix], add_special_tokens=False, return_tensors="pt")
            enc_full = proc(images=[image], text=[full], add_special_tokens=False, return_tensors="pt")
            pixel_values = enc_full["pixel_values"][0]
            p_ids, f_ids = enc_prefix["input_ids"][0].tolist(), enc_full["input_ids"][0].tolist()
        else:
            p_ids = tok(prefix, add_special_tokens=False)["input_ids"]
            f_ids = tok(full, add_special_tokens=False)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids:
            raise ValueError(f"chat template is not prefix-consistent for turn {i}: {prefix!r}")
        new = f_ids[len(ids):]
        ids = f_ids
        n_prompt = len(p_ids) - (len(ids) - len(new))
        labels += [-100] * n_prompt + new[n_prompt:]
    if len(ids) > max_length:
        raise ValueError(f"example of {len(ids)} tokens exceeds max_length {max_length}: {turns[0][:60]!r}")
    out = {"input_ids": ids, "labels": labels}
    if pixel_values is not None:
        out["pixel_values"] = pixel_values
    return out


def _collate(batch: list[dict], pad_id: int) -> dict:
    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    pictures = [b["pixel_values"] for b in batch if "pixel_values" in b]  # text-only rows of a mixture have none
    if pictures:
        out["pixel_values"] = torch.stack(pictures)
    return out


def _backward_batch(model, batch: list[dict], pad_id: int) -> float:
    """The causal-LM loss of one batch (mean over its answer tokens, as `model(**batch).loss` computes it), its
    gradient accumulated; returns the loss. Two savings that leave the loss the same: where rows differ in length,
    the batch runs as two halves sorted by length, each padded only to its own longest row (rows of the world's
    mixtures range from about 17 to 65 tokens, so one padded block wastes a third of its positions; a pass has a
    fixed cost too, so halves are used only where they save a fifth of the padded positions), and the output layer
    is applied only at the positions that predict an answer token (about 4 of 40 in a visual row).
    bench/world_training_step.py measures both against the stock call."""
    n_targets = sum(sum(t != -100 for t in b["labels"][1:]) for b in batch)
    order = sorted(range(len(batch)), key=lambda i: len(batch[i]["input_ids"]))
    lengths = [len(batch[i]["input_ids"]) for i in order]
    mid = len(order) // 2
    halves = [order[:mid], order[mid:]] if mid and lengths[mid - 1] * mid + lengths[-1] * (len(order) - mid) <= (
        0.8 * lengths[-1] * len(order)) else [order]
    total = 0.0
    for half in halves:
        inputs = _collate([batch[i] for i in half], pad_id)
        labels = inputs.pop("labels")[:, 1:]
        hidden = model.model(**inputs).last_hidden_state[:, :-1]
        keep = labels != -100
        logits = model.lm_head(hidden[keep]).float()
        loss = torch.nn.functional.cross_entropy(logits, labels[keep], reduction="sum") / max(1, n_targets)
        loss.backward()
        total += loss.item()
    return total


def train_from_scratch(model, examples: list[dict], pad_id: int, epochs: float, lr: float, batch_size: int,
                       seed: int, desc: str, stop_below: float | None = None) -> list[float]:
    """Plain AdamW + cosine loop for the world's own models (these are the world, not the paper's methods).

    With ``stop_below`` the run is trained to a criterion instead: the rate stays at ``lr`` after its linear warm-up
    (a cosine needs to know where it ends) and training stops once the mean loss of the last 50 steps is below
    ``stop_below``, or after ``epochs`` at the latest."""
    from mmpref.console import bar

    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, int(steps_per_epoch * epochs))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    warmup = max(1, total // 20)

    def decay(s: int) -> float:
        return 1.0 if stop_below is not None else 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * decay(s))
    losses: list[float] = []
    order: list[int] = []
    start = time.time()
    # trained to a criterion, the number of steps is not known in advance: the bar counts steps without a total
    progress = bar(total=None if stop_below is not None else total, desc=desc)
    for _ in range(total):
        if not order:
            order = list(range(len(examples)))
            rng.shuffle(order)
        idx, order = order[:batch_size], order[batch_size:]
        loss = _backward_batch(model, [examples[i] for i in idx], pad_id)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss)
        progress.update()
        if stop_below is not None and len(losses) >= 100 and sum(losses[-50:]) / 50 < stop_below:
            break
    progress.close()
    model.eval()
    log.info("%s: %d steps in %.1fs, final loss %.3f", desc, len(losses), time.time() - start,
             sum(losses[-20:]) / len(losses[-20:]))
    return losses


def pretrain_vision_tower(tower, pixel_values: torch.Tensor, tags: list[list[str]], steps: int, lr: float,
                          batch_size: int, seed: int, feature_scale: float | None = None) -> list[float]:
    """Teach a from-scratch CLIP-architecture tower the world's visual concepts before visual instruction tuning.

    LLaVA starts from a CLIP tower pretrained on image-text pairs; the miniature world's stand-in is multi-label tag
    prediction (`world.image_tags`: "red circle", "3 shapes", "value 2 is 7", ...) read off the patch features by a
    linear head with a max over patches, so every patch feature says what it shows. The head is dropped afterwards.
    """
    from mmpref.console import bar

    vocab = sorted({t for ts in tags for t in ts})
    index = {t: i for i, t in enumerate(vocab)}
    targets = torch.zeros(len(tags), len(vocab))
    for row, ts in enumerate(tags):
        targets[row, [index[t] for t in ts]] = 1.0
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(tower.config.hidden_size, len(vocab))
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / max(1, steps))))
    )
    tower.train()
    losses: list[float] = []
    start = time.time()
    for _ in bar(range(steps), desc="vision tower on image tags"):
        idx = torch.randint(0, len(tags), (batch_size,), generator=gen)
        patches = tower(pixel_values=pixel_values[idx]).last_hidden_state[:, 1:]
        logits = head(patches).max(dim=1).values
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets[idx])
        if feature_scale:  # hold the patch features near this RMS: the scale a projector trained by Adam handles well
            loss = loss + 0.1 * (patches.pow(2).mean(-1) - feature_scale ** 2).clamp(min=0).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tower.eval()
    if steps:
        log.info("vision tower: %d tags, %d steps in %.1fs, final loss %.4f", len(vocab), steps, time.time() - start,
                 sum(losses[-20:]) / len(losses[-20:]))
    return losses


def train_world_models(world_dir: Path, corpus: Iterable[str], visual_rows: list[dict], text_rows: list[dict],
                       tag_rows: list[dict], world, seed: int) -> dict:
    """Build the miniature world's checkpoints: tokenizer, base LM ("Vicuna") and visually tuned LLaVA.

    The base LM learns the text tasks. The tiny LLaVA starts from that LM, adds a CLIP-architecture tower and a
    projector, and is instruction-tuned with the whole LM trainable, as LLaVA-1.5's second stage does, on the visual
    conversations of LLaVA-1.5's mix (`world.mix`, ``visual_train.jsonl``: short-answer VQA, region and caption rows
    with their format prompts, multiple choice, LLaVA-Instruct conversations, descriptions and reasoning, and a
    text-only rehearsal); the base LM reads the world's facts as plain statements before its instruction tuning
    (``world.knowledge_epochs``); its tower is first pretrained on the pictures' tags (`pretrain_vision_tower`) and
    then frozen, as LLaVA-1.5 keeps CLIP frozen. Both are saved with `save_pretrained` to `world/base-lm` and
    `world/vit`.
    """
    from PIL import Image

    torch.manual_seed(seed)
    tokenizer = train_tokenizer(corpus, world.vocab_size, world_dir / "tokenizer")
    max_len = world.lm.max_positions
    text_examples = [encode_example(tokenizer, r["turns"], r["references"], max_length=max_len) for r in text_rows]
    base = build_base_lm(tokenizer, world.lm)
    # Knowledge before format: a real LLM reads its facts in pretraining, long before instruction tuning teaches it
    # how to answer. The miniature's pretraining is a short pass over the world's facts as plain statements.
    knowledge_losses: list[float] = []
    if world.knowledge_epochs:
        statements = [encode_statement(tokenizer, text) for text in knowledge_statements()]
        knowledge_losses = train_from_scratch(base, statements, tokenizer.pad_token_id, world.knowledge_epochs,
                                              world.lm_lr, world.batch_size, seed + 6, desc="base LM on facts")
    lm_losses = train_from_scratch(base, text_examples, tokenizer.pad_token_id, world.lm_epochs, world.lm_lr,
                                   world.batch_size, seed, desc="base LM on text tasks")
    base.save_pretrained(world_dir / "base-lm")
    tokenizer.save_pretrained(world_dir / "base-lm")

    processor = build_processor(tokenizer, world.image_size, world.vision.patch_size)
    vlm = build_tiny_llava(base, tokenizer, world.image_size, world.vision)
    cache: dict[str, torch.Tensor] = {}

    def pixels(rel: str) -> torch.Tensor:
        if rel not in cache:
            with Image.open(world_dir / rel) as im:
                cache[rel] = processor.image_processor(images=[im.convert("RGB")], return_tensors="pt")["pixel_values"][0]
        return cache[rel]

    tower_losses = pretrain_vision_tower(
        vlm.model.vision_tower, torch.stack([pixels(r["image"]) for r in tag_rows]), [r["tags"] for r in tag_rows],
        world.vision_pretrain_steps, world.vision_pretrain_lr, 2 * world.batch_size, seed + 2,
        feature_scale=world.vision_feature_rms or None,
    )
    vlm.model.vision_tower.requires_grad_(False)
    # LLaVA-1.5's stage 1 (feature alignment): only the projector learns, on brief image-caption pairs.
    align_losses: list[float] = []
    if world.align_steps:
        captioned = [r for r in tag_rows if r.get("caption")]
        align_examples = [encode_text_with_image(processor, ALIGN_INSTRUCTION, r["caption"], pixels(r["image"]), max_len)
                          for r in captioned]
        vlm.model.language_model.requires_grad_(False)
        vlm.lm_head.requires_grad_(False)
        align_losses = train_from_scratch(vlm, align_examples, tokenizer.pad_token_id,
                                          world.align_steps * world.batch_size / len(align_examples), world.align_lr,
                                          world.batch_size, seed + 4, desc="projector alignment on captions")
        vlm.model.language_model.requires_grad_(True)
        vlm.lm_head.requires_grad_(True)
    visual_examples = [encode_text_with_image(processor, r["turns"], r["references"], pixels(r["image"]), max_len)
                       if r["image"] else encode_example(tokenizer, r["turns"], r["references"], max_length=max_len)
                       for r in visual_rows]
    # A curriculum: the one-word "is there a <shape>?" questions alone first, so the LM learns to look objects up among
    # the image tokens before the full mixture; without it, that lookup forms in some runs of the mixture and not in
    # others. It forms at a low, steady rate (3e-4: after about 700 steps; at 1e-3 it did not form in 2000 steps, and
    # a cosine from 1e-3 formed it only once the rate had decayed, late or not at all), so the warm-up is trained to
    # a criterion: until its loss shows the lookup (world.perception_warmup_*).
    warmup_losses: list[float] = []
    if world.perception_warmup_steps:
        perception = [encode_text_with_image(processor, q, ref, pixels(r["image"]), max_len)
                      for r in visual_rows if r["kind"] == "vqa"
                      for q, ref, qtype in zip(r["turns"], r["references"], r["qtypes"])
                      if qtype in ("exist", "exist_absent")]
        if perception:
            warmup_losses = train_from_scratch(vlm, perception, tokenizer.pad_token_id,
                                               world.perception_warmup_steps * world.batch_size / len(perception),
                                               world.perception_warmup_lr, world.batch_size, seed + 5,
                                               desc="perception warm-up",
                                               stop_below=world.perception_warmup_stop_loss)
    vit_losses = train_from_scratch(vlm, visual_examples, tokenizer.pad_token_id, world.vit_epochs,
                                    world.vit_lr, world.batch_size, seed + 1, desc="visual instruction tuning")
    vlm.save_pretrained(world_dir / "vit")
    processor.save_pretrained(world_dir / "vit")
    return {"vocab": len(tokenizer), "base_lm_params": sum(p.numel() for p in base.parameters()),
            "vit_params": sum(p.numel() for p in vlm.parameters()), "lm_losses": lm_losses, "vit_losses": vit_losses,
            "tower_losses": tower_losses, "align_losses": align_losses, "warmup_losses": warmup_losses,
            "knowledge_losses": knowledge_losses, "text_examples": len(text_examples),
            "visual_examples": len(visual_examples),
            "text_examples_in_visual_mixture": sum(r["image"] is None for r in visual_rows)}


def encode_text_with_image(processor, turns: list[str] | str, answers: list[str] | str, pixel_values,
                           max_length: int) -> dict:
    """Fast encoding of a conversation about one picture for world training (the picture goes with the first
    turn): the image is preprocessed once and its tokens expanded here; the loss is on every answer and its </s>."""
    turns = [turns] if isinstance(turns, str) else turns
    answers = [answers] if isinstance(answers, str) else answers
    tok = processor.tokenizer
    n_image = (processor.image_processor.crop_size["height"] // processor.patch_size) ** 2
    expand = lambda text: text.replace("<image>", "<image>" * n_image)  # noqa: E731
    ids: list[int] = []
    labels: list[int] = []
    for i in range(len(turns)):
        prompt = processor.apply_chat_template(chat_messages(turns[: i + 1], answers[:i], True),
                                               add_generation_prompt=True, tokenize=False)
        full = processor.apply_chat_template(chat_messages(turns[: i + 1], answers[: i + 1], True), tokenize=False)
        p_ids = tok(expand(prompt), add_special_tokens=False)["input_ids"]
        f_ids = tok(expand(full), add_special_tokens=False)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids or p_ids[: len(ids)] != ids or len(f_ids) > max_length:
            raise ValueError(f"cannot encode world example {turns[0]!r} ({len(f_ids)} tokens, turn {i}) within "
                             f"{max_length} tokens")
        labels += [-100] * (len(p_ids) - len(ids)) + f_ids[len(p_ids):]
        ids = f_ids
    return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values}

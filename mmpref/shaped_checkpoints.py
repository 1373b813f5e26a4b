"""Hub-shaped miniature checkpoints for the paper-path rehearsal tests and the benchmarks.

Each builder writes, offline and in seconds, a checkpoint laid out exactly like the hub checkpoint a researcher uses:
same model class, config fields, tokenizer class and special-token layout, the real processor configuration (image
size, crop, resampling, normalisation, image-token expansion) and the hub chat template verbatim. Only the sizes are
small and the weights random (`torch.manual_seed(seed)`), so outputs are meaningless but every code path (Auto-class
loading, chat templating, image-token expansion, forward, generate) runs as it would on the real checkpoint.

    build_vicuna_shaped   -> lmsys/vicuna-13b-v1.5       (LlamaForCausalLM, no chat template)
    build_llava15_shaped  -> llava-hf/llava-1.5-13b-hf   (LlavaForConditionalGeneration, 576 image tokens)
    build_llava_next_shaped -> llava-hf/llava-v1.6-vicuna-7b-hf (LlavaNextForConditionalGeneration, anyres:
                             336x336 image -> 1176 image tokens, 500x300 -> 1560)
    build_qwen2vl_shaped  -> Qwen/Qwen2-VL-7B-Instruct   (Qwen2VLForConditionalGeneration, 16 tokens per square image)

Deliberate deviations, all about size: vocabularies are trained on a small built-in corpus (Llama-style: 1000
pieces, then added tokens, so <image>=1000 and <pad>=1001 instead of 32000/32001; Qwen2-style: the byte-level BPE
saturates at 620 pieces, so the 14 Qwen2 added tokens are 620..633 instead of 151643..151656), text vocab_size equals
len(tokenizer) (llava-hf pads to 32064), and the Qwen2-VL image processor uses min_pixels = max_pixels = 112*112 (hub:
3136 .. 12845056), so a square image becomes 8x8 patches = 16 merged image tokens (500x300: 6x10 patches = 15).
generation_config carries only bos/eos/pad ids (greedy; the hubs' sampling defaults are left out).

The Qwen2-VL checkpoint is written in the hub's file layout (preprocessor_config.json, chat_template.jinja beside the
tokenizer) without instantiating Qwen2VLProcessor: in transformers 5.23 that processor needs a video processor, which
needs torchvision. With torchvision, AutoProcessor loads it as it loads the hub repo; without it, use AutoTokenizer +
AutoImageProcessor (see tests/test_shaped_checkpoints.py for the one-image expansion and mm_token_type_ids the model wants).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

# llava-hf/llava-1.5-*-hf chat_template.json, verbatim: no BOS, no system prompt, no EOS after answers.
LLAVA_HF_HUB_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen/Qwen2-VL-7B-Instruct chat_template.json, verbatim.
QWEN2_VL_HUB_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: "
    "{% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's added tokens in hub order (151643 .. 151656 there; here they follow the trained vocabulary).
QWEN2_SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>",
]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

_WORDS = ("image chart question answer picture photo graph plot table figure diagram value number color shape "
          "red blue green yellow black white orange purple circle square triangle bar line left right top bottom "
          "highest lowest largest smallest people dog cat car tree sky house street water man woman child "
          "year percent total average count sign text label title").split()
_OPENERS = ["What is shown in the {w}?", "Can you describe the {w} for me?", "How many {w}s are there?",
            "Please tell me about the {w} and the {v}.", "Is there a {w} next to the {v}?",
            "Which {w} has the highest value?", "Thanks! That helps a lot.", "Sure, here is what I see."]
_REPLIES = ["The {w} shows {n} {v}s.", "Yes, there is a {w} on the {v}.", "No, I do not see a {w}.",
            "About {n}.{m} percent of the {v} is {w}.", "In {y}, the {w} was {n}, up from {m}.",
            "I think the answer is {n}, because the {w} is larger than the {v}."]


def _corpus() -> list[str]:
    """A few thousand deterministic, chatty English lines with numbers and the USER/ASSISTANT format."""
    rng = random.Random(1234)
    lines = []
    for i in range(3000):
        w, v = rng.choice(_WORDS), rng.choice(_WORDS)
        fill = dict(w=w, v=v, n=rng.randint(0, 999), m=rng.randint(0, 99), y=rng.randint(1990, 2024))
        q, a = rng.choice(_OPENERS).format(**fill), rng.choice(_REPLIES).format(**fill)
        lines.append(f"USER: <image>\n{q} ASSISTANT: {a}" if i % 2 else f"{q} {a}")
    return lines


def _vocab_and_merges(tok) -> tuple[dict, list[tuple[str, str]]]:
    model = json.loads(tok.to_str())["model"]
    return model["vocab"], [tuple(m) for m in model["merges"]]


def llama_style_tokenizer(out_dir=None, vocab_size: int = 1000, extra_special=(), **kwargs):
    """Llama/Vicuna-style `LlamaTokenizer` (fast; SentencePiece-converted layout): BPE with byte_fallback and the
    "▁" Metaspace, <unk>=0 <s>=1 </s>=2, <0x00>..<0xFF>=3..258, then learned pieces (up to vocab_size in all);
    `extra_special` tokens are added after those as special tokens, in order. add_bos_token=True, add_eos_token=False;
    other keyword arguments (pad_token, padding_side, model_max_length) go to `LlamaTokenizer` and are saved."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    # Train on "▁"-prefixed words (SentencePiece pieces never end in "▁"); encode with Llama's own pre-tokenizer.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    specials = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                           show_progress=False))
    vocab, merges = _vocab_and_merges(tok)
    added = {len(vocab) + i: AddedToken(t, special=True, normalized=False) for i, t in enumerate(extra_special)}
    hf = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False, legacy=False,
                        added_tokens_decoder=added, **kwargs)
    if out_dir is not None:
        hf.save_pretrained(out_dir)
    return hf


def qwen2_style_tokenizer(out_dir=None, vocab_size: int = 1000):
    """Qwen2-style byte-level BPE `Qwen2Tokenizer`: the 14 Qwen2 added tokens follow the learned vocabulary in hub
    order; eos "<|im_end|>", pad "<|endoftext|>", no BOS, no UNK."""
    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    vocab, merges = _vocab_and_merges(tok)
    added = {len(vocab) + i: AddedToken(t, special=True, normalized=False) for i, t in enumerate(QWEN2_SPECIAL_TOKENS)}
    hf = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                        pad_token="<|endoftext|>", added_tokens_decoder=added, errors="replace",
                        model_max_length=32768)
    if out_dir is not None:
        hf.save_pretrained(out_dir)
    return hf


def _set_generation_ids(model, bos, eos, pad) -> None:
    model.generation_config.bos_token_id = bos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad


def _llama_config(tok, hidden_size, intermediate_size, num_layers, num_heads, pad_id):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=4096, rms_norm_eps=1e-5, hidden_act="silu",
                       tie_word_embeddings=False, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=pad_id)


def build_vicuna_shaped(out_dir, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                        num_heads: int = 4, seed: int = 0) -> Path:
    """lmsys/vicuna-13b-v1.5 layout: LlamaForCausalLM + LlamaTokenizer, no chat template. As on the hub, the pad
    token is <unk> (pad_token_id 0 in config.json and special_tokens_map) and model_max_length is 4096."""
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    tok = llama_style_tokenizer(pad_token="<unk>", model_max_length=4096)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tok, hidden_size, intermediate_size, num_layers, num_heads,
                                           tok.pad_token_id))
    _set_generation_ids(model, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# llava-hf's preprocessor_config.json for CLIP ViT-L/14-336 (LLaVA-1.5 and -NeXT alike)
CLIP_336_PREPROCESSING = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              do_center_crop=True, do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255,
                              do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD, do_convert_rgb=True)


def _llava_parts(hidden_size, intermediate_size, num_layers, num_heads, vision_hidden_size, vision_intermediate_size,
                 vision_layers, vision_heads):
    """What llava-hf's LLaVA-1.5 and -NeXT share: the Llama-style tokenizer with "<image>" and "<pad>" added (left
    padding), CLIP ViT-L/14-336 geometry (336 px, 14 px patches) and the Llama text config."""
    from transformers import CLIPVisionConfig

    tok = llama_style_tokenizer(extra_special=("<image>", "<pad>"), pad_token="<pad>", padding_side="left")
    vision = CLIPVisionConfig(hidden_size=vision_hidden_size, intermediate_size=vision_intermediate_size,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=336,
                              patch_size=14, hidden_act="quick_gelu", projection_dim=vision_hidden_size,
                              layer_norm_eps=1e-5)
    return tok, vision, _llama_config(tok, hidden_size, intermediate_size, num_layers, num_heads, tok.pad_token_id)


def build_llava15_shaped(out_dir, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                         num_heads: int = 4, vision_hidden_size: int = 32, vision_intermediate_size: int = 64,
                         vision_layers: int = 2, vision_heads: int = 2, seed: int = 0) -> Path:
    """llava-hf/llava-1.5-13b-hf layout: CLIP ViT-L/14-336 geometry (336 px, 14 px patches -> 576 image tokens,
    penultimate layer, CLS dropped), 2-layer GELU projector, Llama text model; LlavaProcessor with the hub's
    CLIP preprocessing, "<image>" and "<pad>" added after the vocabulary, left padding and the hub chat template."""
    from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    out = Path(out_dir)
    tok, vision, text = _llava_parts(hidden_size, intermediate_size, num_layers, num_heads, vision_hidden_size,
                                     vision_intermediate_size, vision_layers, vision_heads)
    image_id, pad_id = tok.convert_tokens_to_ids("<image>"), tok.pad_token_id
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_id, image_seq_length=576,
                         projector_hidden_act="gelu", vision_feature_layer=-2,
                         vision_feature_select_strategy="default", tie_word_embeddings=False)
    config.pad_token_id = pad_id
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    _set_generation_ids(model, tok.bos_token_id, tok.eos_token_id, pad_id)
    image_processor = CLIPImageProcessorPil(**CLIP_336_PREPROCESSING)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                               vision_feature_select_strategy="default", chat_template=LLAVA_HF_HUB_TEMPLATE,
                               image_token="<image>", num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# llava-hf/llava-v1.6-*-hf "anyres" grid: (height, width) resolutions an image is resized/padded to, in 336 tiles.
LLAVA_NEXT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def build_llava_next_shaped(out_dir, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                            num_heads: int = 4, vision_hidden_size: int = 32, vision_intermediate_size: int = 64,
                            vision_layers: int = 2, vision_heads: int = 2, seed: int = 0) -> Path:
    """llava-hf/llava-v1.6-vicuna-7b-hf layout: LLaVA-NeXT "anyres" on CLIP ViT-L/14-336 geometry (penultimate layer,
    CLS dropped, learned image_newline), 2-layer GELU projector, Llama text model; LlavaNextProcessor with the hub's
    preprocessing (shortest_edge/crop 336, CLIP mean/std, bicubic, do_pad, the five grid pinpoints), "<image>" and
    "<pad>" added after the vocabulary, left padding. An image expands to the base 24x24 features + the grid features
    with the letterbox padding removed + one newline per grid row, exactly as on the hub (best fit 336x672 for both):
    336x336 -> 576 + 24x24 + 24 = 1176 image tokens; 500x300 -> 576 + 24x40 + 24 = 1560.
    The chat template is LLAVA_HF_HUB_TEMPLATE (llava-hf's 1.5 template, same USER:/ASSISTANT: style), used here for
    the v1.6-vicuna hub template, which was not verified verbatim offline."""
    from transformers import (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil,
                              LlavaNextProcessor)

    out = Path(out_dir)
    tok, vision, text = _llava_parts(hidden_size, intermediate_size, num_layers, num_heads, vision_hidden_size,
                                     vision_intermediate_size, vision_layers, vision_heads)
    image_id, pad_id = tok.convert_tokens_to_ids("<image>"), tok.pad_token_id
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_index=image_id,
                             image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_GRID_PINPOINTS],
                             projector_hidden_act="gelu", vision_feature_layer=-2,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
    config.use_image_newline_parameter = True  # hub config.json field (the model always has image_newline)
    config.pad_token_id = pad_id
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config)
    _set_generation_ids(model, tok.bos_token_id, tok.eos_token_id, pad_id)
    image_processor = LlavaNextImageProcessorPil(
        **CLIP_336_PREPROCESSING, do_pad=True,
        image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_GRID_PINPOINTS])
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tok, patch_size=14,
                                   vision_feature_select_strategy="default", chat_template=LLAVA_HF_HUB_TEMPLATE,
                                   image_token="<image>", num_additional_image_tokens=1)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_qwen2vl_shaped(out_dir, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2,
                         num_heads: int = 4, num_kv_heads: int = 2, vision_embed_dim: int = 32, vision_depth: int = 1,
                         vision_heads: int = 2, seed: int = 0) -> Path:
    """Qwen/Qwen2-VL-7B-Instruct layout: 14 px patches, 2x2 spatial merge, temporal patch 2, M-RoPE (sections scaled
    to head_dim, hub [16, 24, 24] for head_dim 128); Qwen2VLProcessor with min_pixels = max_pixels = 112*112, so a
    square image -> 8x8 patches -> 16 <|image_pad|> tokens; the hub chat template (default system prompt)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out = Path(out_dir)
    tok = qwen2_style_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN2_SPECIAL_TOKENS}
    head_dim = hidden_size // num_heads
    half = head_dim // 2
    mrope = [half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8]  # sums to head_dim/2; [16, 24, 24] at 128
    text = dict(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=intermediate_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
                hidden_act="silu", max_position_embeddings=32768, rms_norm_eps=1e-6, max_window_layers=num_layers,
                use_sliding_window=False, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"], tie_word_embeddings=False,
                rope_parameters={"rope_type": "mrope", "mrope_section": mrope, "rope_theta": 1000000.0})
    vision = dict(depth=vision_depth, embed_dim=vision_embed_dim, hidden_size=hidden_size, num_heads=vision_heads,
                  mlp_ratio=4, hidden_act="quick_gelu", in_channels=3, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)
    config = Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                           video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                           vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    _set_generation_ids(model, ids["<|endoftext|>"], [ids["<|im_end|>"], ids["<|endoftext|>"]], ids["<|endoftext|>"])
    # The hub's own file layout (preprocessor_config.json with min/max_pixels, chat template beside the tokenizer),
    # written directly: transformers 5.23's Qwen2VLProcessor needs a torchvision video processor to be instantiated.
    preprocessor = dict(min_pixels=112 * 112, max_pixels=112 * 112, patch_size=14, temporal_patch_size=2,
                        merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                        image_processor_type="Qwen2VLImageProcessor", processor_class="Qwen2VLProcessor")
    model.save_pretrained(out)
    tok.chat_template = QWEN2_VL_HUB_TEMPLATE
    tok.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n")
    return out


def write_image(path, size=(336, 336), seed: int = 0) -> Path:
    """Deterministic RGB PNG of random rectangles and ellipses on a random background; size is (width, height)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    colour = lambda: tuple(rng.randrange(256) for _ in range(3))  # noqa: E731
    img = Image.new("RGB", tuple(size), colour())
    draw = ImageDraw.Draw(img)
    w, h = size
    for _ in range(6):
        x0, y0 = rng.randrange(w), rng.randrange(h)
        box = [x0, y0, min(w, x0 + rng.randint(w // 8, w // 2)), min(h, y0 + rng.randint(h // 8, h // 2))]
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)(box, fill=colour())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return path

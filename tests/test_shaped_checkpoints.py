"""Hub-shaped miniature checkpoints load through the Auto classes and behave like the real ones."""

import pytest
import torch
from PIL import Image

from mmpref.shaped_checkpoints import (LLAVA_HF_HUB_TEMPLATE, QWEN2_VL_HUB_TEMPLATE, build_llava15_shaped,
                           build_llava_next_shaped, build_qwen2vl_shaped, build_vicuna_shaped, llama_style_tokenizer,
                           write_image)

QUESTION = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"}]}]


def _torchvision_works() -> bool:
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or a CUDA build that cannot load beside a CPU-only torch
        return False
    return True


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("shapes")


@pytest.fixture(scope="module")
def llava(root):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = build_llava15_shaped(root / "llava")
    return AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def llava_next(root):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = build_llava_next_shaped(root / "llava_next")
    return AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


@pytest.fixture(scope="module")
def qwen_path(root):
    return build_qwen2vl_shaped(root / "qwen")


@pytest.fixture(scope="module")
def qwen(qwen_path):
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    return (AutoTokenizer.from_pretrained(qwen_path), AutoImageProcessor.from_pretrained(qwen_path),
            AutoModelForImageTextToText.from_pretrained(qwen_path).eval())


def test_write_image_is_deterministic(tmp_path):
    a, b = write_image(tmp_path / "a.png", (500, 300), seed=3), write_image(tmp_path / "b.png", (500, 300), seed=3)
    assert a.read_bytes() == b.read_bytes()
    img = Image.open(a)
    assert img.mode == "RGB" and img.size == (500, 300)
    assert write_image(tmp_path / "c.png", (500, 300), seed=4).read_bytes() != a.read_bytes()


def test_llama_style_tokenizer_layout_and_determinism(tmp_path):
    tok = llama_style_tokenizer(tmp_path / "a", extra_special=("<image>", "<pad>"))
    llama_style_tokenizer(tmp_path / "b", extra_special=("<image>", "<pad>"))
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert type(tok).__name__ == "LlamaTokenizer"
    assert [tok.unk_token_id, tok.bos_token_id, tok.eos_token_id] == [0, 1, 2]
    assert tok.convert_tokens_to_ids(["<0x00>", "<0xFF>"]) == [3, 258]
    assert tok.convert_tokens_to_ids(["<image>", "<pad>"]) == [1000, 1001] and len(tok) == 1002
    ids = tok("hi there ü")["input_ids"]
    assert ids[0] == 1 and ids[-1] != 2                           # BOS added, EOS not
    assert "<0xC3>" in tok.convert_ids_to_tokens(ids)             # byte fallback for unseen characters
    assert tok.decode(ids, skip_special_tokens=True) == "hi there ü"


def test_llava_loads_with_hub_processor_config(llava):
    processor, model = llava
    assert type(processor).__name__ == "LlavaProcessor" and type(model).__name__ == "LlavaForConditionalGeneration"
    ip = processor.image_processor
    assert ip.crop_size["height"] == ip.crop_size["width"] == 336 and ip.size["shortest_edge"] == 336
    assert ip.do_center_crop and ip.resample == 3
    assert ip.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    tok = processor.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<pad>"
    assert model.config.image_token_index == tok.convert_tokens_to_ids("<image>")
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.config.text_config.vocab_size == len(tok)
    assert (model.config.vision_config.image_size, model.config.vision_config.patch_size) == (336, 14)


def test_llava_hub_template_and_bos(llava):
    processor, _ = llava
    assert processor.chat_template == LLAVA_HF_HUB_TEMPLATE
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    assert text == "USER: <image>\nWhat is shown? ASSISTANT:"
    assert processor.tokenizer("hi")["input_ids"][0] == processor.tokenizer.bos_token_id == 1


def test_llava_image_expands_to_576_tokens_and_runs(llava, tmp_path):
    processor, model = llava
    image = Image.open(write_image(tmp_path / "x.png", (500, 300)))
    enc = processor(images=image, text="<image>\nWhat is shown?", return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 336, 336)
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == 576
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(processor.tokenizer))
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= enc["input_ids"].shape[1] + 3


def test_vicuna_shaped(root):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_vicuna_shaped(root / "vicuna")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template is None
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.max_position_embeddings == 4096 and not model.config.tie_word_embeddings
    enc = tok("USER: hi ASSISTANT:", return_tensors="pt")
    assert enc["input_ids"][0, 0] == 1
    with torch.no_grad():
        assert model(**enc).logits.shape == (1, enc["input_ids"].shape[1], len(tok))


def test_qwen2vl_hub_template_and_ids(qwen):
    tok, _, model = qwen
    assert tok.chat_template == QWEN2_VL_HUB_TEMPLATE
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>What is shown?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.bos_token is None and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok("hi")["input_ids"][0] != tok.convert_tokens_to_ids("<|endoftext|>")  # no BOS
    cfg = model.config
    assert cfg.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert cfg.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert cfg.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert cfg.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    assert cfg.text_config.eos_token_id == tok.eos_token_id and cfg.text_config.pad_token_id == tok.pad_token_id
    assert cfg.text_config.vocab_size == len(tok)


def test_qwen2vl_image_tokens_forward_and_generate(qwen, tmp_path):
    # Qwen2VLProcessor itself needs torchvision (its video processor); this is what it does for one image.
    tok, image_processor, model = qwen
    assert type(image_processor).__name__.startswith("Qwen2VLImageProcessor")
    pix = image_processor(images=Image.open(write_image(tmp_path / "s.png", (336, 336))), return_tensors="pt")
    assert pix["image_grid_thw"].tolist() == [[1, 8, 8]] and pix["pixel_values"].shape == (64, 3 * 2 * 14 * 14)
    n = int(pix["image_grid_thw"].prod()) // 4
    assert n == 16
    wide = image_processor(images=Image.open(write_image(tmp_path / "w.png", (500, 300))), return_tensors="pt")
    assert wide["image_grid_thw"].tolist() == [[1, 6, 10]]      # 15 tokens
    text = tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    enc = tok(text.replace("<|image_pad|>", "<|image_pad|>" * n), return_tensors="pt")
    enc["mm_token_type_ids"] = (enc["input_ids"] == model.config.image_token_id).long()
    with torch.no_grad():
        logits = model(**enc, **pix).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tok))
    out = model.generate(**enc, **pix, max_new_tokens=3, do_sample=False)
    assert out.shape[1] <= enc["input_ids"].shape[1] + 3


@pytest.mark.skipif(not _torchvision_works(), reason="Qwen2VLProcessor needs a working torchvision (video processor)")
def test_qwen2vl_auto_processor(qwen_path, qwen, tmp_path):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(qwen_path)
    model = qwen[2]
    assert type(processor).__name__ == "Qwen2VLProcessor"
    text = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    enc = processor(images=Image.open(write_image(tmp_path / "s.png", (336, 336))), text=text, return_tensors="pt")
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == 16
    with torch.no_grad():
        assert model(**enc).logits.shape[:2] == enc["input_ids"].shape
    model.generate(**enc, max_new_tokens=3, do_sample=False)


PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def test_llava_next_loads_with_hub_config(llava_next):
    processor, model = llava_next
    assert type(processor).__name__ == "LlavaNextProcessor"
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    ip = processor.image_processor
    assert type(ip).__name__.startswith("LlavaNextImageProcessor")
    assert ip.crop_size["height"] == ip.crop_size["width"] == 336 and ip.size["shortest_edge"] == 336
    assert ip.do_pad and ip.resample == 3 and [list(p) for p in ip.image_grid_pinpoints] == PINPOINTS
    assert ip.image_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert ip.image_std == pytest.approx([0.26862954, 0.26130258, 0.27577711])
    assert (processor.patch_size, processor.num_additional_image_tokens) == (14, 1)
    assert processor.vision_feature_select_strategy == "default"
    assert processor.chat_template == LLAVA_HF_HUB_TEMPLATE
    assert processor.apply_chat_template(QUESTION, add_generation_prompt=True) == \
        "USER: <image>\nWhat is shown? ASSISTANT:"
    tok = processor.tokenizer
    assert tok.padding_side == "left" and tok.pad_token == "<pad>" and tok("hi")["input_ids"][0] == 1
    cfg = model.config
    assert cfg.image_token_index == processor.image_token_id == tok.convert_tokens_to_ids("<image>")
    assert cfg.pad_token_id == tok.pad_token_id and cfg.text_config.vocab_size == len(tok)
    assert [list(p) for p in cfg.image_grid_pinpoints] == PINPOINTS
    assert (cfg.vision_feature_layer, cfg.vision_feature_select_strategy, cfg.projector_hidden_act) == \
        (-2, "default", "gelu")
    assert cfg.use_image_newline_parameter and not cfg.tie_word_embeddings
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (336, 14)


@pytest.mark.parametrize("size,n_image_tokens", [
    ((336, 336), 576 + 24 * 24 + 24),   # base + unpadded 336x672 grid (24x24 after removing padding) + newlines
    ((500, 300), 576 + 24 * 40 + 24),   # (width, height): grid 336x672, unpadded 24x40
])
def test_llava_next_anyres_expansion_forward_and_generate(llava_next, tmp_path, size, n_image_tokens):
    processor, model = llava_next
    image = Image.open(write_image(tmp_path / "x.png", size))
    enc = processor(images=image, text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, 3, 336, 336)      # base + two 336 tiles
    assert enc["image_sizes"].tolist() == [[size[1], size[0]]]
    assert int((enc["input_ids"] == processor.image_token_id).sum()) == n_image_tokens
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(processor.tokenizer))
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert enc["input_ids"].shape[1] < out.shape[1] <= enc["input_ids"].shape[1] + 3

"""The tiny LLaVA checkpoint, the LLaVA-1.5 chat template and what TRL's collators feed the trainers."""

from types import SimpleNamespace

import pytest
from PIL import Image

from mmpref.models import chat_messages
from mmpref.world.models import (build_base_lm, build_processor, build_tiny_llava, encode_example,
                                 train_tokenizer)
from mmpref.sampling import ChatRequest, Policy

TEXTS = ["What is 3 plus 5?", "3 plus 5 is 8.", "Is there a red circle in the image?", "Yes, there is a red circle.",
         "What color is the square?", "The square is blue.", "USER: ASSISTANT:"] * 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    tok = train_tokenizer(TEXTS, 300, root / "tok")
    shape = SimpleNamespace(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_positions=128)
    vision = SimpleNamespace(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, patch_size=8)
    base = build_base_lm(tok, shape)
    base.save_pretrained(root / "base-lm")
    tok.save_pretrained(root / "base-lm")
    proc = build_processor(tok, 16, 8)
    vlm = build_tiny_llava(base, tok, 16, vision)
    vlm.save_pretrained(root / "vit")
    proc.save_pretrained(root / "vit")
    img = root / "img.png"
    Image.new("RGB", (16, 16), "red").save(img)
    return SimpleNamespace(root=root, vit=str(root / "vit"), base=str(root / "base-lm"), image=img, proc=proc)


def test_chat_template_matches_llava_15(checkpoint):
    proc = checkpoint.proc
    text = proc.apply_chat_template(chat_messages(["What is it?", "And now?"], ["A cat."], True),
                                    add_generation_prompt=True, tokenize=False)
    assert text == "<s>USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And now? ASSISTANT:"
    plain = proc.apply_chat_template(chat_messages(["Hi"], [], False), add_generation_prompt=True, tokenize=False)
    assert plain == "<s>USER: Hi ASSISTANT:"


def test_encode_example_labels_only_answers_with_eos(checkpoint):
    proc = checkpoint.proc
    tok = proc.tokenizer
    ex = encode_example(tok, ["What is 3 plus 5?", "Now add 2."], ["3 plus 5 is 8.", "8 plus 2 is 10."])
    assert ex["input_ids"][0] == tok.bos_token_id
    learned = [t for t, l in zip(ex["input_ids"], ex["labels"]) if l != -100]
    assert tok.decode(learned) == " 3 plus 5 is 8.</s> 8 plus 2 is 10.</s>"  # the space after "ASSISTANT:" opens the answer


def test_trl_sft_batch_has_bos_and_eos(checkpoint):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmpref.train import TrainSettings, lora_config

    proc = AutoProcessor.from_pretrained(checkpoint.vit)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint.vit)
    img = Image.open(checkpoint.image).convert("RGB")
    data = Dataset.from_dict({"images": [[img]], "prompt": [[{"role": "user", "content": "What color is the square?"}]],
                              "completion": [[{"role": "assistant", "content": "The square is blue."}]]})
    settings = TrainSettings(method="sft", learning_rate=1e-3, batch_size=1, grad_accum=1, epochs=1, max_length=128,
                             lora_r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                             train_projector=True)
    trainer = SFTTrainer(model=model, args=SFTConfig(output_dir=str(checkpoint.root / "t"), use_cpu=True, report_to=[],
                                                     max_length=128),
                         train_dataset=data, processing_class=proc, peft_config=lora_config(settings))
    batch = trainer.data_collator([dict(data[0])])
    ids = batch["input_ids"][0].tolist()
    tok = proc.tokenizer
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert ids[-1] == tok.eos_token_id
    n_image = ids.count(tok.convert_tokens_to_ids("<image>"))
    assert n_image == (16 // 8) ** 2
    labelled = [t for t, l in zip(ids, batch["labels"][0].tolist()) if l != -100]
    assert tok.decode(labelled).strip() == "The square is blue.</s>"
    # LoRA on the language model only; the projector is trained in full
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert any("language_model" in n and "lora_A" in n for n in names)
    assert not any("vision_tower" in n for n in names)
    assert any("multi_modal_projector" in n for n in names)


def test_check_lengths_refuses_to_cut_image_tokens(checkpoint):
    from mmpref.train import check_lengths

    rows = [{"prompt_id": "p1", "question": "What color is the square? " * 10, "response": "Blue."}]
    images = [Image.open(checkpoint.image).convert("RGB")]
    with pytest.raises(ValueError, match=r"p1 needs \d+ tokens \(4 of them image tokens\).*max_length"):
        check_lengths(checkpoint.proc, rows, images, 20, ["response"])
    check_lengths(checkpoint.proc, rows, images, 128, ["response"])
    with pytest.raises(ValueError, match="rendered no"):  # a template that drops the image is caught too
        check_lengths(checkpoint.proc, rows, images, 128, ["response"], image_token="<unk>")


def test_policy_generates_from_auto_classes(checkpoint):
    vlm = Policy.load(checkpoint.vit, "vit", dtype="float32", device="cpu")
    reqs = [ChatRequest(turns=["What color is the square?"], image=str(checkpoint.image)),
            ChatRequest(turns=["Is there a red circle in the image?"], image=str(checkpoint.image))]
    outs = vlm.generate(reqs, num_return_sequences=3, temperature=0.7, max_new_tokens=5, batch_size=2)
    assert len(outs) == 2 and all(len(o) == 3 and all(isinstance(a, str) for a in o) for o in outs)
    text = Policy.load(checkpoint.base, "base-lm", text_only=True, dtype="float32", device="cpu")
    assert len(text.greedy_fn(max_new_tokens=4)([ChatRequest(turns=["What is 3 plus 5?"])])) == 1
    with pytest.raises(ValueError, match="text-only"):
        text.generate([ChatRequest(turns=["x"], image=str(checkpoint.image))])


def test_corrupt_image_is_a_clear_error(tmp_path):
    from mmpref.sampling import open_image

    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        open_image(bad)


def test_vision_tower_pretraining_learns_the_tags():
    import random

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from mmpref.world import questions, scenes
    from mmpref.world.models import pretrain_vision_tower

    rng = random.Random(0)
    pictures = [scenes.sample_scene(rng, 32) for _ in range(64)]
    pixels = torch.stack([torch.from_numpy(__import__("numpy").asarray(scenes.draw_scene(s, 32), dtype="float32"))
                          .permute(2, 0, 1) / 127.5 - 1 for s in pictures])
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=32, patch_size=8))
    losses = pretrain_vision_tower(tower, pixels, [questions.image_tags(s) for s in pictures], steps=150, lr=3e-3,
                                   batch_size=32, seed=0)
    assert len(losses) == 150
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert not tower.training


def test_policy_gives_every_turn_its_image(checkpoint):
    """Noisy-image MT-Bench: the image goes with every user turn, so the processor gets one picture per turn."""
    vlm = Policy.load(checkpoint.vit, "vit", dtype="float32", device="cpu")
    two = ChatRequest(turns=["What color is the square?", "What is 3 plus 5?"], answers=["The square is blue."],
                      image=str(checkpoint.image), image_every_turn=True)
    one = ChatRequest(turns=["Is there a red circle in the image?"], image=str(checkpoint.image),
                      image_every_turn=True)
    assert vlm._render(two).count("<image>") == 2 and vlm._render(one).count("<image>") == 1
    assert vlm._render(two.model_copy(update={"image_every_turn": False})).count("<image>") == 1
    outs = vlm.generate([two, one], max_new_tokens=3, batch_size=2)
    assert len(outs) == 2 and all(isinstance(o[0], str) for o in outs)

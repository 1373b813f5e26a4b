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

    from mmpref.config import LoraParams, SFTParams
    from mmpref.train import TrainSettings, lora_config

    proc = AutoProcessor.from_pretrained(checkpoint.vit)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint.vit)
    img = Image.open(checkpoint.image).convert("RGB")
    data = Dataset.from_dict({"images": [[img]], "prompt": [[{"role": "user", "content": "What color is the square?"}]],
                              "completion": [[{"role": "assistant", "content": "The square is blue."}]]})
    settings = TrainSettings(method="sft", trainer=SFTParams(max_length=128, train_projector=True),
                             lora=LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]))
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


@pytest.mark.parametrize("kind", ["text", "mixture"])
def test_world_training_step_computes_the_models_own_loss_and_gradient(checkpoint, kind):
    """`_backward_batch` (halves by length, output layer at answer positions only) gives the loss and gradient of
    `model(**batch).loss` on the whole padded batch: text rows of different lengths for the base LM, and a visual
    mixture with text-only rows for the tiny LLaVA."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    from mmpref.world.models import _backward_batch, _collate, encode_text_with_image

    proc = checkpoint.proc
    qa = [("What is 3 plus 5?", "3 plus 5 is 8."), ("What color is the square?", "The square is blue."),
          ("Is there a red circle in the image?", "Yes, there is a red circle."), ("What is 3 plus 5?", "8.")]
    if kind == "text":
        model = AutoModelForCausalLM.from_pretrained(checkpoint.base)
        batch = [encode_example(proc.tokenizer, [q] * n, [a] * n) for n, (q, a) in enumerate(qa * 2, 1)]
    else:
        model = AutoModelForImageTextToText.from_pretrained(checkpoint.vit)
        model.model.vision_tower.requires_grad_(False)
        pixels = proc.image_processor(images=[Image.open(checkpoint.image)], return_tensors="pt")["pixel_values"][0]
        batch = [encode_text_with_image(proc, q, a, pixels, 128) for q, a in qa]
        batch += [encode_example(proc.tokenizer, [q] * n, [a] * n) for n, (q, a) in enumerate(qa[:3], 1)]
    assert len({len(b["input_ids"]) for b in batch}) > 2
    params = [p for p in model.parameters() if p.requires_grad]
    stock = model(**_collate(batch, proc.tokenizer.pad_token_id)).loss
    stock.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad(set_to_none=True)
    got = _backward_batch(model, batch, proc.tokenizer.pad_token_id)
    assert got == pytest.approx(stock.item(), rel=1e-5)
    for p, g in zip(params, want):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_training_to_a_criterion_stops_once_the_loss_is_below_it(checkpoint):
    """`stop_below` trains until the mean loss of the last 50 steps is under it (the perception warm-up's
    criterion), at most the given epochs; without it every step runs."""
    from transformers import AutoModelForCausalLM

    from mmpref.world.models import train_from_scratch

    tok = checkpoint.proc.tokenizer
    examples = [encode_example(tok, ["What is 3 plus 5?"], ["3 plus 5 is 8."])] * 8
    model = AutoModelForCausalLM.from_pretrained(checkpoint.base)
    losses = train_from_scratch(model, examples, tok.pad_token_id, epochs=400, lr=3e-3, batch_size=8, seed=0,
                                desc="to a criterion", stop_below=0.5)
    assert 100 <= len(losses) < 400 and sum(losses[-50:]) / 50 < 0.5
    assert sum(losses[-51:-1]) / 50 >= 0.5 or len(losses) == 100  # it stopped at the first step that met it
    model = AutoModelForCausalLM.from_pretrained(checkpoint.base)
    assert len(train_from_scratch(model, examples, tok.pad_token_id, epochs=150, lr=3e-3, batch_size=8, seed=0,
                                  desc="all steps")) == 150

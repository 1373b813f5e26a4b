"""Model families, prompt formats, MT-Bench decoding and the projector's learning rate."""

import pytest
import torch
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mmpref.evaluate import mt_bench as ev_mt_bench
from mmpref.config import load_params
from mmpref.evaluate.protocol import run_benchmark
from mmpref.evaluate.mt_bench import MT_BENCH_TEMPERATURES
from mmpref.families import CHATML_TEMPLATE, FAMILIES, VICUNA_SYSTEM, family_of, vicuna_v1_template
from mmpref.models import chat_messages
from mmpref.sampling import ChatRequest, Policy
from test_benchmarks import FakeJudge, fake_grade_single, make_mt_bench


def render(template, messages, generation=True):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(messages=messages, bos_token="<s>", eos_token="</s>",
                                            add_generation_prompt=generation)


def test_conv_vicuna_v1_as_llava_get_prompt_builds_it():
    # LLaVA conversation.py, SeparatorStyle.TWO: system + " " + "USER: <image>\nq" + " " + "ASSISTANT: a" + "</s>" ...
    text = render(FAMILIES["llava"].chat_template, chat_messages(["What is it?", "And now?"], ["A cat."], True))
    assert text == f"<s>{VICUNA_SYSTEM} USER: <image>\nWhat is it? ASSISTANT: A cat.</s>USER: And now? ASSISTANT:"
    custom = render(FAMILIES["llava"].chat_template, [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi"}])
    assert custom == "<s>Be brief. USER: Hi ASSISTANT:"
    assert render(vicuna_v1_template(None), chat_messages(["Hi"], [], False)) == "<s>USER: Hi ASSISTANT:"


def test_chatml_ends_every_turn_with_im_end():
    text = render(CHATML_TEMPLATE, chat_messages(["What is it?"], ["A cat."], True), generation=False)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<|vision_start|><|image_pad|><|vision_end|>What is it?<|im_end|>\n"
                    "<|im_start|>assistant\nA cat.<|im_end|>\n")


def test_family_lookup_and_clear_errors():
    assert family_of("llava").name == "llava" and family_of("qwen2_5_vl").projector == "merger"
    with pytest.raises(ValueError, match="no model family for model_type 'idefics3'"):
        family_of("idefics3")
    with pytest.raises(ValueError, match="models.family is 'qwen2_vl' but the checkpoint's model_type is 'llava'"):
        family_of("llava", "qwen2_vl")
    regex = FAMILIES["llava"].lora_target_regex(["q_proj", "v_proj"])
    import re

    assert re.fullmatch(regex, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(regex, "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")


def test_paper_params_cite_the_authors_scripts():
    p = load_params("params/paper-13b.yaml")
    assert p.train.warmup_ratio == 0.03 and p.train.sft.epochs == 3 and p.train.sft.grad_accum == 2
    assert p.train.sft.projector_learning_rate == 2e-5 and p.train.dpo.train_projector
    assert p.evaluate.mt_bench_decoding == "fastchat" and p.models.chat_template == "family"
    assert str(p.path(p.evaluate.benchmarks["pope"])).startswith(str(p.data_dir))
    assert not str(p.data_dir).startswith(str(p.run_dir))
    moved = load_params("params/paper-13b.yaml", {"run": {"name": "other"}})
    assert moved.path(moved.evaluate.benchmarks["pope"]) == p.path(p.evaluate.benchmarks["pope"])


def test_mt_bench_uses_fastchat_temperatures_per_category(tmp_path, monkeypatch):
    monkeypatch.setattr(ev_mt_bench, "grade_single", fake_grade_single([]))
    path = make_mt_bench(tmp_path)
    seen = []

    def generate(requests):
        seen.extend(requests)
        return ["an answer"] * len(requests)

    run_benchmark("mt_bench", path, generate, FakeJudge(), tmp_path / "a.jsonl", "vit")
    by_turn = {r.turns[0]: r.temperature for r in seen}
    assert by_turn == {"What is 3 plus 5?": MT_BENCH_TEMPERATURES["math"],
                       "Name a colour.": MT_BENCH_TEMPERATURES["humanities"],
                       "List 1 to 3.": MT_BENCH_TEMPERATURES["reasoning"]}
    assert by_turn["Name a colour."] == 0.1
    seen.clear()
    run_benchmark("mt_bench", path, generate, FakeJudge(), tmp_path / "b.jsonl", "vit", decoding="greedy")
    assert {r.temperature for r in seen} == {0.0}


def test_greedy_fn_groups_by_temperature_and_keeps_order():
    calls = []

    class Fake(Policy):
        def __init__(self):
            pass

        def generate(self, requests, *, temperature=0.0, **kw):
            calls.append((temperature, [r.turns[0] for r in requests]))
            return [[f"{r.turns[0]}@{temperature}"] for r in requests]

    reqs = [ChatRequest(turns=["a"], temperature=0.7), ChatRequest(turns=["b"]), ChatRequest(turns=["c"], temperature=0.7)]
    assert Fake().greedy_fn()(reqs) == ["a@0.7", "b@0.0", "c@0.7"]
    assert sorted(calls) == [(0.0, ["b"]), (0.7, ["a", "c"])]


def test_projector_gets_its_own_learning_rate():
    from transformers import Trainer, TrainingArguments

    from mmpref.train import _with_projector_lr

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.multi_modal_projector = torch.nn.Linear(2, 2)
            self.lm = torch.nn.Linear(2, 2)

    cls = _with_projector_lr(Trainer)
    cls.projector_key, cls.projector_lr = "multi_modal_projector", 2e-5
    trainer = cls(model=Tiny(), args=TrainingArguments(output_dir="/tmp/unused-mmpref", learning_rate=5e-5,
                                                       use_cpu=True, report_to=[]))
    opt = trainer.create_optimizer()
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert lrs[id(trainer.model.multi_modal_projector.weight)] == 2e-5
    assert lrs[id(trainer.model.lm.weight)] == 5e-5


def test_qwen2vl_family_row_places_lora_and_projector_on_a_qwen2vl_shaped_model(tmp_path):
    """What the family table decides for Qwen2-VL, checked on a Qwen2-VL-shaped checkpoint (its processor needs
    torchvision; this runs without it): LoRA on the language model only, the `merger` projector trained in full,
    and one optimizer step that moves exactly those weights."""
    from peft import get_peft_model
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from mmpref.families import family_for_checkpoint
    from mmpref.shaped_checkpoints import build_qwen2vl_shaped, write_image
    from mmpref.config import DPOParams, LoraParams
    from mmpref.train import TrainSettings, lora_config

    path = build_qwen2vl_shaped(tmp_path / "qwen2-vl")
    fam = family_for_checkpoint(str(path))
    assert fam.name == "qwen2_vl" and fam.image_token == "<|image_pad|>"
    settings = TrainSettings(method="dpo", trainer=DPOParams(learning_rate=1e-2, batch_size=1, grad_accum=1, epochs=1,
                                                             max_length=512, train_projector=True),
                             lora=LoraParams(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                             family=fam.name)
    model = get_peft_model(AutoModelForImageTextToText.from_pretrained(path), lora_config(settings))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("language_model" in n and "lora_A" in n for n in trainable)
    assert not any("lora" in n and "visual" in n for n in trainable)
    assert any("merger" in n and "modules_to_save" in n for n in trainable)
    tok, images = AutoTokenizer.from_pretrained(path), AutoImageProcessor.from_pretrained(path)
    pix = images(images=Image.open(write_image(tmp_path / "i.png")), return_tensors="pt")
    text = tok.apply_chat_template(chat_messages(["What is shown?"], ["A chart."], True), tokenize=False)
    assert text.endswith("A chart.<|im_end|>\n")  # the family's ChatML ends answers with the EOS
    n = int(pix["image_grid_thw"].prod()) // 4
    enc = tok(text.replace(fam.image_token, fam.image_token * n), return_tensors="pt")
    enc["mm_token_type_ids"] = (enc["input_ids"] == tok.convert_tokens_to_ids(fam.image_token)).long()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss = model(**enc, **pix, labels=enc["input_ids"]).loss
    loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(("lora_B" in n or "merger" in n) for n in moved)  # lora_A gets no grad while B is zero

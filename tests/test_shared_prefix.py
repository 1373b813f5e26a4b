"""DPO with a shared prefix (mmpref/shared_prefix.py) against stock TRL `DPOTrainer` on the same model and batch.

Models: the world's tiny LLaVA (test_models' fixture), the LLaVA-1.5-shaped checkpoint (576 image tokens) and the
LLaVA-NeXT-shaped one (anyres, 1176 image tokens). Both trainers come from `mmpref.train.dpo_trainer` with the same
LoRA weights (random, so the adapter matters and every gradient is non-zero); the stock one runs TRL's
[prompt+chosen; prompt+rejected] rows, the other one packed row per pair. Pairs have prompts and completions of
unequal lengths (padding on both sides of TRL's rows), and one completion is cut by max_length. Compared in float32:
per-token and per-pair policy log-probs, the cached reference log-probs, the loss, TRL's logged metrics and the
gradients of every trainable parameter (LoRA and projector).

Tolerances asserted (float32): log-probs rtol 1e-5 / atol 1e-4 (sums of ~50-250 nats); loss rtol 1e-5 / atol 1e-6;
gradients atol 1e-5 x the largest gradient of the model, rtol 1e-4. Measured: log-probs agree to ~1e-5 absolute,
gradients to ~1e-6 of their scale (see the printed maxima with `pytest -s`).
"""

from __future__ import annotations

import pytest
import torch

from test_models import checkpoint  # noqa: F401  (the world's tiny LLaVA, module fixture)

from mmpref.families import FAMILIES
from mmpref.shaped_checkpoints import build_llava15_shaped, write_image
from mmpref.shared_prefix import CHOSEN, LAST, PAD, PROMPT, REJECTED, pack_pairs, shared_prefix_mask
from mmpref.config import DPOParams, LoraParams, TrainOptions
from mmpref.train import TrainSettings, dpo_trainer

LOGP_TOL = dict(rtol=1e-5, atol=1e-4)
LOSS_TOL = dict(rtol=1e-5, atol=1e-6)
GRAD_RTOL, GRAD_ATOL = 1e-4, 1e-5

PAIRS = [
    ("What is 3 plus 5?", "3 plus 5 is 8.", "It is 9 I think, because the square is blue and the circle is red."),
    ("Is there a red circle in the image? Please answer.", "Yes, there is a red circle.", "No."),
    ("What color?", "The square is blue. " * 12, "Blue."),  # this chosen is cut by max_length
]


def _rows(root, image_size):
    rows = []
    for i, (q, c, r) in enumerate(PAIRS):
        write_image(root / f"img{i}.png", size=(image_size, image_size), seed=i)
        rows.append({"prompt_id": f"p{i}", "image": f"img{i}.png", "question": q, "chosen": c, "rejected": r})
    return rows


def _settings(share: bool, max_length: int, **over) -> TrainSettings:
    """DPO settings; `over`: train.dpo fields, or TrainSettings fields (family, chat_template, mm_dpo...)."""
    dpo = {k: over.pop(k) for k in list(over) if k in DPOParams.model_fields}
    return TrainSettings(
        method="dpo", lora=LoraParams(r=4, alpha=8, dropout=0.0),
        trainer=DPOParams(learning_rate=1e-3, batch_size=3, grad_accum=1, epochs=1, max_length=max_length,
                          train_projector=True, projector_learning_rate=1e-4, share_prefix=share, **dpo),
        options=TrainOptions(bf16=False, gradient_checkpointing=False), **over)


def _trainer(ref, rows, root, settings, attn=None):
    import transformers

    real = transformers.AutoModelForImageTextToText.from_pretrained
    if attn is not None:  # load the policy with another attention implementation
        transformers.AutoModelForImageTextToText.from_pretrained = \
            lambda *a, **k: real(*a, **{**k, "attn_implementation": attn})
    try:
        trainer, _ = dpo_trainer(ref, rows, root, root / f"out-{settings.trainer.share_prefix}", settings)
    finally:
        transformers.AutoModelForImageTextToText.from_pretrained = real
    assert trainer._prefix_attention() == (attn or "sdpa")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # LoRA B starts at zero: random adapters make policy != reference and all grads non-zero
        for name, p in sorted(trainer.model.named_parameters()):
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return trainer


def _policy(trainer, inputs):
    """Per-token and per-pair policy log-probs, computed by the line of TRL's `_compute_loss` that calls the model
    (stock: the model itself; shared prefix: the packed stand-in the trainer hands TRL's code)."""
    model = trainer._packed_model(trainer.model) if trainer.share_prefix else trainer.model
    kwargs = {k: v for k, v in inputs.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
    with torch.no_grad():
        per_token = model(**kwargs, labels=labels, fused_lm_head=True, use_cache=False).log_probs
    mask = inputs["completion_mask"][:, 1:].bool()
    return per_token[mask], per_token.sum(1), mask.sum(1)


def _run(trainer):
    batch = trainer.data_collator([dict(trainer.train_dataset[i]) for i in range(len(trainer.train_dataset))])
    inputs = trainer._prepare_inputs(batch)
    trainer.model.train()
    per_token, per_pair, lengths = _policy(trainer, inputs)
    trainer._metrics["train"].clear()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    data = trainer.train_dataset
    ref = (torch.tensor(data["ref_chosen_logps"]), torch.tensor(data["ref_rejected_logps"])) \
        if "ref_chosen_logps" in data.column_names else None
    return {"per_token": per_token, "per_pair": per_pair, "lengths": lengths, "loss": loss.detach(), "grads": grads,
            "ref": ref, "metrics": {k: v[-1] for k, v in trainer._metrics["train"].items()}, "batch": batch}


def _assert_equal(stock, shared):
    assert torch.equal(stock["lengths"], shared["lengths"])  # same tokens scored, same truncation
    torch.testing.assert_close(shared["per_token"], stock["per_token"], **LOGP_TOL)
    torch.testing.assert_close(shared["per_pair"], stock["per_pair"], **LOGP_TOL)
    if stock["ref"] is not None:
        torch.testing.assert_close(shared["ref"][0], stock["ref"][0], **LOGP_TOL)
        torch.testing.assert_close(shared["ref"][1], stock["ref"][1], **LOGP_TOL)
    torch.testing.assert_close(shared["loss"], stock["loss"], **LOSS_TOL)
    assert set(stock["grads"]) == set(shared["grads"])
    assert any("lora_A" in n for n in stock["grads"]) and any("multi_modal_projector" in n for n in stock["grads"])
    scale = max(g.abs().max().item() for g in stock["grads"].values())
    assert scale > 0
    worst = 0.0
    for name, g in stock["grads"].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(shared["grads"][name], g, rtol=GRAD_RTOL, atol=GRAD_ATOL * scale, msg=name)
        worst = max(worst, (shared["grads"][name] - g).abs().max().item())
    for key in ("logps/chosen", "logps/rejected", "rewards/chosen", "rewards/rejected", "rewards/margins",
                "entropy", "logits/chosen", "logits/rejected", "mean_token_accuracy", "rewards/accuracies"):
        assert shared["metrics"][key] == pytest.approx(stock["metrics"][key], rel=1e-4, abs=1e-5), key
    print(f"max |d log-prob| per token {(shared['per_token'] - stock['per_token']).abs().max():.2e}, per pair "
          f"{(shared['per_pair'] - stock['per_pair']).abs().max():.2e}; |d loss| "
          f"{(shared['loss'] - stock['loss']).abs():.2e}; max |d grad| {worst:.2e} of scale {scale:.2e}")


# ---- packing -----------------------------------------------------------------------------------------------------

def test_pack_pairs_layout_positions_labels_and_truncation():
    out = pack_pairs([[1, 2, 3], [4, 5]], [[10, 11], [12, 13, 14, 15]], [[20], [21, 22]], max_length=5, pad_id=0)
    # pair 0: prompt 1 2 3 | chosen 10 11 | copy 3 | rejected 20 ; pair 1: chosen and rejected cut to 5 - 2 = 3 / 2
    assert out["packed_input_ids"].tolist() == [[1, 2, 3, 10, 11, 3, 20, 0], [4, 5, 12, 13, 14, 5, 21, 22]]
    assert out["packed_position_ids"].tolist() == [[0, 1, 2, 3, 4, 2, 3, 0], [0, 1, 2, 3, 4, 1, 2, 3]]
    assert out["packed_segments"].tolist() == [
        [PROMPT, PROMPT, LAST, CHOSEN, CHOSEN, REJECTED, REJECTED, PAD],
        [PROMPT, LAST, CHOSEN, CHOSEN, CHOSEN, REJECTED, REJECTED, REJECTED]]
    assert out["packed_shift_labels"].tolist() == [[-100, -100, 10, 11, -100, 20, -100, -100],
                                                   [-100, 12, 13, 14, -100, 21, 22, -100]]
    # TRL's [chosen; rejected] rows with the prompt cut to its last token
    assert out["input_ids"].tolist() == [[3, 10, 11, 0], [5, 12, 13, 14], [3, 20, 0, 0], [5, 21, 22, 0]]
    assert out["completion_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 1, 1], [0, 1, 0, 0], [0, 1, 1, 0]]
    assert out["packed_index"].tolist() == [[2, 3, -1], [9, 10, 11], [5, -1, -1], [13, 14, -1]]
    with pytest.raises(ValueError, match="prompt has 3 tokens but max_length is 3"):
        pack_pairs([[1, 2, 3]], [[4]], [[5]], max_length=3, pad_id=0)


def test_mask_keeps_chosen_and_rejected_independent():
    seg = pack_pairs([[1, 2, 3]], [[10, 11]], [[20, 21]], max_length=None, pad_id=0)["packed_segments"]
    m = shared_prefix_mask(torch.cat([seg, torch.full((1, 2), PAD)], 1), "sdpa", torch.float32)[0, 0].int()
    # rows: p0 p1 p2 c0 c1 p2' r0 r1 pad pad
    assert m.tolist() == [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0, 0, 0],  # the copy of p2 sees what p2 sees
        [1, 1, 0, 0, 0, 1, 1, 0, 0, 0],  # rejected: the prompt, never chosen
        [1, 1, 0, 0, 0, 1, 1, 1, 0, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]
    eager = shared_prefix_mask(seg, "eager", torch.float32)
    assert eager.dtype == torch.float32 and set(eager.unique().tolist()) == {0.0, torch.finfo(torch.float32).min}
    with pytest.raises(ValueError, match="flash_attention_2.*share_prefix: false"):
        shared_prefix_mask(seg, "flash_attention_2", torch.float32)


# ---- equality with stock TRL ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("average, precompute, attn", [(False, True, None), (True, True, None),
                                                       (False, False, None), (False, True, "eager")])
def test_tiny_model_equals_stock_trl(checkpoint, tmp_path, average, precompute, attn):  # noqa: F811
    rows = _rows(tmp_path, 16)
    runs = {}
    for share in (False, True):
        settings = _settings(share, 64, average_log_prob=average, precompute_ref_log_probs=precompute)
        runs[share] = _run(_trainer(checkpoint.vit, rows, tmp_path, settings, attn))
    stock, shared = runs[False], runs[True]
    assert stock["batch"]["attention_mask"][2].sum() == 64  # pair 2's chosen was cut at max_length
    assert shared["batch"]["pixel_values"].shape[0] == 3 and stock["batch"]["pixel_values"].shape[0] == 6
    _assert_equal(stock, shared)


@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    root = tmp_path_factory.mktemp("llava15")
    return str(build_llava15_shaped(root / "ckpt")), root


def test_llava15_shaped_576_image_tokens_equals_stock_trl(llava15, tmp_path):
    ref, _ = llava15
    rows = _rows(tmp_path, 336)
    runs = {}
    for share in (False, True):
        settings = _settings(share, 700, chat_template=FAMILIES["llava"].chat_template)
        runs[share] = _run(_trainer(ref, rows, tmp_path, settings))
    stock, shared = runs[False], runs[True]
    image_id = 1000  # "<image>" in the LLaVA-1.5-shaped tokenizer
    assert (shared["batch"]["packed_input_ids"] == image_id).sum(1).tolist() == [576] * 3  # once per pair
    assert (stock["batch"]["input_ids"] == image_id).sum(1).tolist() == [576] * 6          # twice per pair
    assert stock["batch"]["attention_mask"][2].sum() == 700  # pair 2's chosen was cut at max_length
    _assert_equal(stock, shared)


def test_llava_next_shaped_anyres_equals_stock_trl(tmp_path):
    """LLaVA-NeXT (anyres: 1176 image tokens for a 336x336 picture, `image_sizes` passed to the model) packs the
    same."""
    from mmpref.shaped_checkpoints import build_llava_next_shaped

    ref = str(build_llava_next_shaped(tmp_path / "ckpt"))
    rows = _rows(tmp_path, 336)
    runs = {}
    for share in (False, True):
        settings = _settings(share, 1300, chat_template=FAMILIES["llava_next"].chat_template, family="llava_next")
        runs[share] = _run(_trainer(ref, rows, tmp_path, settings))
    assert runs[True]["batch"]["image_sizes"].shape[0] == 3
    _assert_equal(runs[False], runs[True])


def test_refuses_processors_with_more_than_1d_positions(checkpoint, tmp_path):  # noqa: F811
    rows = _rows(tmp_path, 16)
    trainer = _trainer(checkpoint.vit, rows, tmp_path, _settings(True, 64))
    real = trainer.data_collator.processor

    class WithRopeIndex:  # a processor that, like Qwen2-VL's, returns per-token types for multimodal RoPE
        tokenizer = real.tokenizer
        chat_template = real.chat_template

        def __call__(self, *a, **k):
            out = real(*a, **k)
            out["mm_token_type_ids"] = torch.zeros_like(out["input_ids"])
            return out

        def apply_chat_template(self, *a, **k):
            return real.apply_chat_template(*a, **k)

    trainer.data_collator.processor = WithRopeIndex()
    with pytest.raises(ValueError, match=r"\['mm_token_type_ids'\].*share_prefix: false"):
        trainer.data_collator([dict(trainer.train_dataset[0])])


def test_params_switch_reaches_the_trainer_and_keeps_the_fingerprint(llava15):
    from mmpref.config import load_params
    from mmpref.train import settings_from_params

    from mmpref.train import _share_prefix

    ref, _ = llava15
    models = {"policy": ref, "family": "llava", "chat_template": "family"}

    def settings(choice):
        return settings_from_params(load_params("params/paper-7b.yaml", {"models": models, "train": {
            "dpo": {"share_prefix": choice}}}), "dpo")

    assert load_params("params/paper-7b.yaml").train.dpo.share_prefix == "auto"
    auto, on, off = settings("auto"), settings(True), settings(False)
    assert auto.trainer.share_prefix is True and on.trainer.share_prefix is True and off.trainer.share_prefix is False
    # the switch changes how the log-probs are computed, not what is learned: an adapter trained either way is reused
    assert on.fingerprint_fields() == off.fingerprint_fields()
    # Qwen2-VL's multimodal RoPE: auto keeps TRL's rows, true is refused
    assert _share_prefix("auto", "qwen2_vl") is False and _share_prefix("auto", "llava_next") is True
    with pytest.raises(ValueError, match="qwen2_vl family uses multimodal RoPE"):
        _share_prefix(True, "qwen2_vl")


def test_throughput_bench_runs_both_trainers_to_the_same_losses(tmp_path):
    """bench/dpo_throughput.py scaled down (a 1-layer LLaVA-1.5 shape, 576 image tokens): stock TRL and mmpref train
    the same steps to the same losses, and the shared prefix does fewer FLOPs per pair."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "vocab_size": None},
              "vision_config": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                "num_attention_heads": 1}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    proc = subprocess.run([sys.executable, str(root / "bench" / "dpo_throughput.py"), "--config",
                           str(tmp_path / "config.json"), "--batch-size", "2", "--steps", "1", "--warmup", "1",
                           "--completion-tokens", "12", "--variants", "trl,mmpref", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    trl, mine = out["results"]["trl"], out["results"]["mmpref"]
    assert len(trl["losses"]) == len(mine["losses"]) == 2
    assert out["max_loss_diff"] < 1e-4
    assert out["ratios"]["mmpref/trl"]["flop_per_pair"] > 1.5  # no reference forward, image and prompt once
    assert "ratio mmpref/trl" in proc.stdout and trl["pairs_per_s"] > 0 and mine["peak_mem_gib"] > 0

"""A moved or copied run directory does not retrain (issue 9): the adapter fingerprint names the checkpoint, data
and settings by content, not by where they lie, so training in the new place finds the adapter finished."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
from PIL import Image

from mmpref import train
from mmpref.config import LoraParams, SFTParams, TrainOptions
from mmpref.train import TrainSettings, train_sft
from mmpref.world.models import build_base_lm, build_processor, build_tiny_llava, train_tokenizer

TEXTS = ["What color is the square?", "The square is blue.", "USER: ASSISTANT:"] * 20


def build_run(run_dir):
    """A run directory holding its own tiny policy checkpoint (as the miniature world's runs do) and one image."""
    tok = train_tokenizer(TEXTS, 200, run_dir / "tok")
    shape = SimpleNamespace(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, max_positions=96)
    vision = SimpleNamespace(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2, patch_size=8)
    vlm = build_tiny_llava(build_base_lm(tok, shape), tok, 16, vision)
    vlm.save_pretrained(run_dir / "models" / "vit")
    build_processor(tok, 16, 8).save_pretrained(run_dir / "models" / "vit")
    (run_dir / "images").mkdir()
    Image.new("RGB", (16, 16), "blue").save(run_dir / "images" / "0.png")


def test_a_moved_run_directory_keeps_its_adapter(tmp_path, monkeypatch):
    old = tmp_path / "old" / "run"
    old.mkdir(parents=True)
    build_run(old)
    rows = [{"prompt_id": "p0", "image": "images/0.png", "question": "What color is the square?",
             "response": "The square is blue."}]
    settings = TrainSettings(method="sft_gold", trainer=SFTParams(learning_rate=1e-3, batch_size=1, grad_accum=1,
                                                                  epochs=1, max_length=64, train_projector=False),
                             lora=LoraParams(r=2, alpha=4, dropout=0.0, target_modules=["q_proj", "v_proj"]),
                             options=TrainOptions(logging_steps=1, save_steps=None))
    info = train_sft(str(old / "models" / "vit"), rows, old, old / "adapters" / "sft_gold", settings)
    assert (old / "adapters" / "sft_gold" / "adapter_config.json").exists()

    new = tmp_path / "elsewhere" / "moved-run"
    new.parent.mkdir()
    shutil.copytree(old, new)  # copied, then the old one removed: a move to another disk
    shutil.rmtree(old)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained after the run directory moved")

    monkeypatch.setattr(train, "sft_trainer", no_training)
    again = train_sft(str(new / "models" / "vit"), rows, new, new / "adapters" / "sft_gold", settings)
    assert again["fingerprint"] == info["fingerprint"]
    recorded = json.loads((new / "adapters" / "sft_gold" / "mmpref_train.json").read_text())
    assert recorded["fingerprint"] == info["fingerprint"]
    # the check bites: a changed row does retrain
    with pytest.raises(AssertionError, match="retrained"):
        train_sft(str(new / "models" / "vit"), [{**rows[0], "response": "It is blue."}], new,
                  new / "adapters" / "sft_gold", settings)

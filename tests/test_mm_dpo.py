"""MM-DPO (mmpref/mm_dpo.py): the formula, the released code's batch beta, and the trainer: with w = 0 it is TRL's
DPO loss and gradients exactly; with w > 0 each pair's loss uses its own beta(delta)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_models import checkpoint  # noqa: F401  (the world's tiny LLaVA, module fixture)
from test_shared_prefix import _rows, _run, _settings, _trainer

from mmpref import methods
from mmpref.config import MMDPOParams
from mmpref.mm_dpo import dynamic_beta, pair_margin, released_batch_beta

MARGINS = [2.0, 6.0, 11.0]  # the three pairs' judge quality differences


def _scaled_rows(tmp_path):
    rows = _rows(tmp_path, 16)
    for r, m in zip(rows, MARGINS):
        r["chosen_quality"], r["rejected_quality"] = 12, 12 - int(m)
    return rows


def test_formula_bounds_and_shape():
    assert dynamic_beta(0.1, 0.0, 0.5, 0.5) == pytest.approx(0.1)                  # no margin: DPO's beta
    assert dynamic_beta(0.1, 1e9, 0.5, 0.5) == pytest.approx(0.15)                 # clear pair: (1 + w) beta_0
    assert dynamic_beta(0.1, 2.0, 0.5, 0.5) == pytest.approx(0.1 * (1 + 0.5 * (1 - math.exp(-1.0))))
    t = dynamic_beta(0.1, torch.tensor([0.0, 2.0, 4.0, 12.0]), 0.5, 0.5)
    assert torch.all(t[1:] > t[:-1]) and dynamic_beta(0.1, 7.0, 0.0, 0.5) == 0.1   # rises with delta; w = 0: DPO
    assert pair_margin({"chosen_quality": 11, "rejected_quality": 4}) == 7.0
    with pytest.raises(ValueError, match="judge_quality"):
        pair_margin({"chosen_quality": 1, "rejected_quality": 0}, "reward_model")


def test_released_batch_beta_follows_the_released_code():
    margins = torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0])
    gen = torch.Generator().manual_seed(0)
    beta = released_batch_beta(0.1, margins, 0.5, generator=gen)
    # redo its lines by hand: Gaussian weights around the mean, 80 % drawn without replacement, one beta
    a, mean, std = margins, margins.mean(), margins.std()
    weight = torch.exp(-0.5 * ((a - mean) / (std + 1e-7)).pow(2))
    drawn = torch.multinomial(weight, 4, replacement=False, generator=torch.Generator().manual_seed(0))
    assert beta.ndim == 0 and beta.item() == pytest.approx(0.1 * (1 + 0.5 * (a[drawn].mean() - mean)).item())
    assert released_batch_beta(0.1, torch.tensor([1.5]), 0.5).item() == pytest.approx(0.1)  # one pair: no NaN
    assert released_batch_beta(0.1, margins, 0.0).item() == pytest.approx(0.1)


@pytest.mark.parametrize("scaling", ["per_sample", "released_batch"])
def test_w_zero_equals_trl_dpo_loss_and_gradients(checkpoint, tmp_path, scaling):  # noqa: F811
    rows = _scaled_rows(tmp_path)
    stock = _run(_trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64)))
    mm = _run(_trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64, mm_dpo=MMDPOParams(
        w=0.0, k=0.5, scaling=scaling, margin="judge_quality"))))
    assert torch.equal(mm["loss"], stock["loss"])
    assert set(mm["grads"]) == set(stock["grads"]) and stock["grads"]
    for name, g in stock["grads"].items():
        assert torch.equal(mm["grads"][name], g), name


def test_per_sample_beta_scales_each_pairs_loss(checkpoint, tmp_path):  # noqa: F811
    rows = _scaled_rows(tmp_path)
    scaling = MMDPOParams(w=0.5, k=0.5, scaling="per_sample", margin="judge_quality")
    trainer = _trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64, mm_dpo=scaling))
    got = _run(trainer)
    # the loss by hand from the same log-probs: each pair's DPO term at its own beta(delta)
    ref_c, ref_r = got["ref"]
    policy_c, policy_r = got["per_pair"].chunk(2)
    delta = (policy_c - ref_c) - (policy_r - ref_r)
    betas = dynamic_beta(0.1, torch.tensor(MARGINS), 0.5, 0.5)
    expected = -F.logsigmoid(betas * delta).mean()
    torch.testing.assert_close(got["loss"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(trainer.last_betas, betas)
    assert got["metrics"]["beta"] == pytest.approx(betas.mean().item())
    # and it is not DPO's loss: the scaling reaches the gradient
    stock = _run(_trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64)))
    assert not torch.allclose(got["loss"], stock["loss"])


def test_shared_prefix_carries_the_margin(checkpoint, tmp_path):  # noqa: F811
    rows = _scaled_rows(tmp_path)
    scaling = MMDPOParams(w=0.5, k=0.5, scaling="per_sample", margin="judge_quality")
    plain = _run(_trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64, mm_dpo=scaling)))
    packed = _run(_trainer(checkpoint.vit, rows, tmp_path, _settings(True, 64, mm_dpo=scaling)))
    assert torch.equal(packed["batch"]["pair_margin"], torch.tensor(MARGINS))
    torch.testing.assert_close(packed["loss"], plain["loss"], rtol=1e-5, atol=1e-6)


def test_registry_and_params_make_mm_dpo_a_dpo_method_on_dpos_pairs(checkpoint):  # noqa: F811
    from mmpref.config import ParamsError, load_params
    from mmpref.train import settings_from_params

    spec = methods.get("mm_dpo")
    assert spec.trainer == "dpo" and spec.dataset == methods.get("dpo").dataset and "dpo" in methods.datasets()
    paper = load_params("params/paper-13b.yaml")
    assert "mm_dpo" in paper.train.methods and (paper.train.mm_dpo.w, paper.train.mm_dpo.k) == (0.5, 0.5)
    models = {"policy": str(checkpoint.vit), "family": "llava", "chat_template": "family"}
    params = load_params("params/paper-13b.yaml", {"models": models, "train": {"mm_dpo": {
        "w": 1.0, "scaling": "released_batch"}}})
    s = settings_from_params(params, "mm_dpo")
    assert s.mm_dpo == MMDPOParams(w=1.0, k=0.5, scaling="released_batch", margin="judge_quality")
    assert settings_from_params(params, "dpo").mm_dpo is None
    # the fingerprint of MM-DPO's adapter differs from DPO's by the scaling only
    d = {k: v for k, v in settings_from_params(params, "dpo").fingerprint_fields().items() if k != "method"}
    m = {k: v for k, v in s.fingerprint_fields().items() if k != "method"}
    assert {k for k in m if m[k] != d.get(k)} == {"mm_dpo"}
    with pytest.raises(ParamsError, match="per_sample"):
        load_params("params/paper-13b.yaml", {"train": {"mm_dpo": {"scaling": "per_pair"}}})


def test_reward_model_margins_come_from_its_ratings_of_the_pair_and_never_go_below_zero(caplog):
    """delta from the critique reward model (train.mm_dpo.margin: reward_model): its quality of the chosen minus the
    rejected response (by their indices), 0 where it orders them the other way or did not annotate the prompt."""
    from mmpref.mm_dpo import pair_margins

    def scores(*qualities):  # ratings of the given quality each (0..12)
        return [{"helpfulness": min(q, 4), "correctness": min(max(q - 4, 0), 4), "coherence": max(q - 8, 0),
                 "complexity": 1, "verbosity": 2} for q in qualities]

    rows = [{"prompt_id": "a", "chosen_index": 2, "rejected_index": 0, "chosen_quality": 9, "rejected_quality": 3},
            {"prompt_id": "b", "chosen_index": 0, "rejected_index": 1, "chosen_quality": 12, "rejected_quality": 2},
            {"prompt_id": "c", "chosen_index": 1, "rejected_index": 3, "chosen_quality": 8, "rejected_quality": 0}]
    rm = [{"prompt_id": "a", "status": "ok", "scores": scores(1, 5, 11, 4)},
          {"prompt_id": "b", "status": "ok", "scores": scores(3, 7, 0, 0)},      # the reward model disagrees
          {"prompt_id": "c", "status": "failed", "scores": None}]
    assert pair_margins(rows, "judge_quality") == [6.0, 10.0, 8.0]
    assert pair_margins(rows, "reward_model", rm) == [10.0, 0.0, 0.0]
    assert "1 of 3 pairs have no reward-model annotation" in caplog.text
    with pytest.raises(ValueError, match="needs the reward model's annotations"):
        pair_margins(rows, "reward_model")
    with pytest.raises(ValueError, match="unknown MM-DPO margin source"):
        pair_margins(rows, "human")


def test_reward_model_margins_need_its_annotations_of_every_prompt_and_retrain_when_they_change(tmp_path,
                                                                                               monkeypatch):
    from mmpref import train
    from mmpref.config import load_params
    from mmpref.io import write_jsonl
    from tests.test_moved_run import build_run

    with pytest.raises(ValueError, match="annotate: all"):
        load_params("params/tiny.yaml", {"train": {"mm_dpo": {"margin": "reward_model"}}})
    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    params = load_params("params/tiny.yaml", {
        "run": {"run_dir": str(run)}, "models": {"policy": str(run / "models" / "vit")},
        "reward_model": {"annotate": "all"},
        "train": {"mm_dpo": {"margin": "reward_model"}, "dpo": {"sweep": None, "fractions": []}}})
    write_jsonl(run / "datasets" / "dpo.jsonl", [{"prompt_id": "p0", "image": "images/0.png", "question": "Q?",
                                                  "chosen": "A.", "rejected": "B.", "chosen_quality": 9,
                                                  "rejected_quality": 2, "chosen_index": 0, "rejected_index": 1}])
    seen = []
    monkeypatch.setitem(train.TRAINERS, "dpo", lambda policy, rows, run_dir, out, settings, **kw: (
        seen.append(settings), {"rows": len(rows)})[1])
    with pytest.raises(ValueError, match="run stage 03b_reward_model"):
        train.train_method(params, "mm_dpo")
    rm_file = run / "reward_model" / "annotations.jsonl"
    write_jsonl(rm_file, [{"prompt_id": "p0", "status": "ok", "scores": None}])
    train.train_method(params, "mm_dpo")
    write_jsonl(rm_file, [{"prompt_id": "p0", "status": "failed", "scores": None}])
    train.train_method(params, "mm_dpo")
    assert seen[0].mm_dpo.margin == "reward_model"
    assert seen[0].reward_model_annotations != seen[1].reward_model_annotations  # in the adapter's fingerprint
    assert "reward_model_annotations" in seen[0].fingerprint_fields()

"""The notebooks' interactive pieces (mmpref.explore): the numbers they draw, and the static fallback of a notebook
executed by `mmpref run`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from test_models import checkpoint  # noqa: F401  (the world's tiny LLaVA, module fixture)

from mmpref import explore


def test_dpo_loss_curves_are_dpos():
    loss, weight = explore.dpo_loss_curves(0.1, np.array([0.0, 20.0, -20.0]))
    assert loss[0] == pytest.approx(math.log(2)) and weight[0] == pytest.approx(0.05)   # at the start: ln 2, β/2
    assert loss[1] == pytest.approx(-math.log(1 / (1 + math.exp(-2.0))))               # -log σ(β h)
    assert weight[1] < weight[0] < weight[2] < 0.1                                     # learned pairs pull less
    torch = pytest.importorskip("torch")
    h = torch.tensor([3.0], requires_grad=True)
    (-torch.nn.functional.logsigmoid(0.1 * h)).sum().backward()
    assert -h.grad.item() == pytest.approx(explore.dpo_loss_curves(0.1, np.array([3.0]))[1][0])


def test_static_in_a_run_and_a_slider_in_the_lab(monkeypatch):
    fig = explore.dpo_loss_figure(0.1, [0.0, 0.5, 2.0], 0.1)
    assert isinstance(fig, Figure) and "β = 0.1" in fig.axes[0].get_title()
    assert [len(l.get_xdata()) for l in fig.axes[0].lines if l.get_marker() == "o"] == [3]  # the run's points
    monkeypatch.setenv("MMPREF_RUNNER_PID", "12345")  # a kernel of `mmpref run`: an image, shown as PNG
    image = explore.dpo_loss_explorer([0.0, 0.5, 2.0], 0.1)
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n" and "image/png" in image._repr_mimebundle_()[0]
    monkeypatch.delenv("MMPREF_RUNNER_PID")
    ipywidgets = pytest.importorskip("ipywidgets")
    w = explore.dpo_loss_explorer([0.0, 0.5], 0.1)
    assert isinstance(w, ipywidgets.interactive)
    slider = next(c for c in w.children if isinstance(c, ipywidgets.FloatLogSlider))
    assert slider.value == pytest.approx(0.1) and slider.description == "β"


def test_picture_grid_shows_each_picture_with_its_caption(tmp_path):
    from PIL import Image as PILImage

    paths = []
    for i, colour in enumerate(("red", "blue", "green")):
        paths.append(tmp_path / f"{i}.png")
        PILImage.new("RGB", (48, 48), colour).save(paths[-1])
    image = explore.picture_grid([(p, f"question {i}?\nanswer {i}") for i, p in enumerate(paths)], ncols=2)
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    import io

    grid = PILImage.open(io.BytesIO(image.data)).convert("RGB")
    colours = {grid.getpixel((x, y)) for x in range(0, grid.width, 7) for y in range(0, grid.height, 7)}
    assert {(255, 0, 0), (0, 0, 255), (0, 128, 0)} <= colours  # every picture drawn, unsmoothed


# ---- the pair browser ------------------------------------------------------------------------------------------

def _pairs(tmp_path, logprobs, beta=0.1, average=False):
    """browser_pairs over hand-made pairs: pair i's chosen is response 1 and its rejected response 0 of its
    annotation, whose scores and reasoning are the pair's own."""
    from PIL import Image as PILImage

    rows, annotations = [], []
    for i, _ in enumerate(logprobs):
        PILImage.new("RGB", (48, 48), "red").save(tmp_path / f"p{i}.png")
        rows.append({"prompt_id": f"p{i}", "image": f"p{i}.png", "question": f"question {i}?", "chosen": f"yes {i}",
                     "rejected": f"no {i}", "chosen_quality": 9, "rejected_quality": 9 - i, "chosen_index": 1,
                     "rejected_index": 0})
        bad = {"helpfulness": 0, "correctness": i % 5, "coherence": 1, "complexity": 0, "verbosity": 2}
        good = {"helpfulness": 3, "correctness": 4, "coherence": 2, "complexity": 1, "verbosity": 3}
        annotations += [{"prompt_id": f"p{i}", "status": "failed", "scores": None, "reasoning": "stale"},
                        {"prompt_id": f"p{i}", "status": "ok", "scores": [bad, good], "reasoning": f"why {i}"}]
    return explore.browser_pairs(rows, annotations, [{"prompt_id": f"p{i}", **x} for i, x in enumerate(logprobs)],
                                 beta, average)


def test_margin_and_implicit_reward_by_hand(tmp_path):
    # chosen: policy -10 vs reference -12 (+2); rejected: policy -9 vs reference -8 (-1): h = 2 - (-1) = 3
    assert explore.log_ratio_margin(-10.0, -12.0, -9.0, -8.0) == pytest.approx(3.0)
    # per token (averaged log-probs, TRL's sigmoid_norm): +2 / 4 tokens - (-1 / 2 tokens) = 1
    assert explore.log_ratio_margin(-10.0, -12.0, -9.0, -8.0, 4, 2) == pytest.approx(1.0)
    lp = [dict(policy_chosen=-10.0, ref_chosen=-12.0, policy_rejected=-9.0, ref_rejected=-8.0, chosen_tokens=4,
               rejected_tokens=2),
          dict(policy_chosen=-6.0, ref_chosen=-5.0, policy_rejected=-7.0, ref_rejected=-7.5, chosen_tokens=2,
               rejected_tokens=5)]  # chosen fell, rejected rose: h = -1 - 0.5 = -1.5
    pairs = _pairs(tmp_path, lp, beta=0.2)
    assert pairs["h"].tolist() == pytest.approx([3.0, -1.5])
    assert pairs["reward_margin"].tolist() == pytest.approx([0.6, -0.3])  # β·h
    assert pairs["prefers_chosen"].tolist() == [True, False]
    # DPO's loss at that margin is -log σ(β h): the loss explorer's curve
    assert explore.dpo_loss_curves(0.2, pairs["h"].to_numpy())[0] == pytest.approx(
        [math.log1p(math.exp(-0.6)), math.log1p(math.exp(0.3))])
    averaged = _pairs(tmp_path, lp, beta=0.2, average=True)
    assert averaged["h"].tolist() == pytest.approx([1.0, -0.5 - 0.1])
    # the judge's record of each side: the ok annotation, indexed by the pair's chosen/rejected index
    assert pairs.loc[1, "chosen_ratings"]["correctness"] == 4 and pairs.loc[1, "rejected_ratings"]["correctness"] == 1
    assert pairs.loc[1, "chosen_quality"] == 9 and pairs.loc[1, "rejected_quality"] == 0 + 1 + 1  # h + c + c
    assert pairs["reasoning"].tolist() == ["why 0", "why 1"]


def test_quality_spread_spans_the_judges_margins():
    rows = [{"prompt_id": str(i), "chosen_quality": 12, "rejected_quality": 12 - m} for i, m in
            enumerate([5, 2, 9, 3, 7, 4, 10, 6, 8, 2])]
    picked = explore.quality_spread(rows, 4)
    margins = [r["chosen_quality"] - r["rejected_quality"] for r in picked]
    assert len(picked) == 4 and margins[0] == 2 and margins[-1] == 10 and margins == sorted(margins)
    assert len(explore.quality_spread(rows, 20)) == len(rows)


def test_pair_browser_is_a_table_and_the_largest_gain_in_a_run_and_a_dropdown_in_the_lab(tmp_path, monkeypatch):
    lp = [dict(policy_chosen=-3.0, ref_chosen=-3.0 - d, policy_rejected=-4.0, ref_rejected=-4.0, chosen_tokens=3,
               rejected_tokens=3) for d in (0.5, 2.0, -1.0)]  # h = 0.5, 2.0, -1.0: pair 1 gained most
    pairs = _pairs(tmp_path, lp)
    shown, drawn = [], []
    monkeypatch.setattr("IPython.display.display", lambda *objs, **kw: shown.extend(objs))
    real_figure = explore.pair_figure
    monkeypatch.setattr(explore, "pair_figure", lambda pair, run_dir: drawn.append(pair) or real_figure(pair, run_dir))
    monkeypatch.setenv("MMPREF_RUNNER_PID", "12345")  # a kernel of `mmpref run`: the table, then one pair's image
    image = explore.pair_browser(pairs, tmp_path)
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p["prompt_id"] for p in drawn] == ["p1"] and drawn[0]["h"] == pytest.approx(2.0)
    (table,) = shown
    assert len(table) == 3 and "h (nats)" in table.columns and "log π_ref(chosen) (nats)" in table.columns
    assert table["prefers chosen"].tolist() == [True, True, False]
    monkeypatch.delenv("MMPREF_RUNNER_PID")
    ipywidgets = pytest.importorskip("ipywidgets")
    w = explore.pair_browser(pairs, tmp_path)
    assert isinstance(w, ipywidgets.interactive)
    menu = next(c for c in w.children if isinstance(c, ipywidgets.Dropdown))
    assert len(menu.options) == 3 and menu.value == 1  # opens on the pair that gained most


def test_pair_table_headers_carry_units(tmp_path):
    lp = [dict(policy_chosen=-3.0, ref_chosen=-3.5, policy_rejected=-4.0, ref_rejected=-4.0, chosen_tokens=3,
               rejected_tokens=3)]
    assert {"chosen quality (0–12)", "log π_θ(rejected) (nats)", "h (nats)", "β·h (nats)"} <= \
        set(explore.pair_table(_pairs(tmp_path, lp)).columns)
    averaged = explore.pair_table(_pairs(tmp_path, lp, average=True))
    assert "h (nats/token)" in averaged.columns and "log π_θ(chosen) (nats)" in averaged.columns
    assert "question" in averaged.columns  # a header without a unit stays as it is


def test_pair_logprobs_are_the_trainers_and_the_reference_for_a_no_op_adapter(checkpoint, tmp_path):  # noqa: F811
    import torch
    from test_shared_prefix import _rows, _run, _settings, _trainer

    rows = _rows(tmp_path, 16)
    trainer = _trainer(checkpoint.vit, rows, tmp_path, _settings(False, 64))  # random LoRA: policy != reference
    trained = _run(trainer)  # the trainer's own per-pair policy log-probs and its cached reference (adapter off)
    got = explore.pair_logprobs(trainer.model, trainer.processing_class, rows, tmp_path, max_length=64,
                                batch_size=2)
    assert trainer.model.training  # the caller's mode is kept
    col = lambda key: torch.tensor([g[key] for g in got])  # noqa: E731
    policy_c, policy_r = trained["per_pair"].chunk(2)
    torch.testing.assert_close(col("policy_chosen"), policy_c, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(col("policy_rejected"), policy_r, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(col("ref_chosen"), trained["ref"][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(col("ref_rejected"), trained["ref"][1], rtol=1e-5, atol=1e-4)
    assert (col("policy_chosen") - col("ref_chosen")).abs().max() > 1e-3  # the adapter matters here
    assert [g["chosen_tokens"] + g["rejected_tokens"] for g in got] == \
        (trained["lengths"][:3] + trained["lengths"][3:]).tolist()
    # the saved adapter, loaded as the notebook loads it (unmerged), scores the same
    from mmpref.models import load_vlm

    trainer.model.save_pretrained(tmp_path / "adapter")
    model, processor = load_vlm(checkpoint.vit, tmp_path / "adapter", dtype="float32", device="cpu", merge=False)
    loaded = explore.pair_logprobs(model, processor, rows, tmp_path, max_length=64)
    for g, x in zip(got, loaded):
        assert {k: x[k] for k in g if k != "prompt_id"} == pytest.approx({k: g[k] for k in g if k != "prompt_id"},
                                                                         abs=1e-4)
    with torch.no_grad():  # an adapter that changes nothing (LoRA B = 0, as a fresh one): policy = reference, h = 0
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    same = explore.pair_logprobs(trainer.model, trainer.processing_class, rows, tmp_path, max_length=64)
    for g, s in zip(got, same):
        assert (s["policy_chosen"], s["policy_rejected"]) == pytest.approx((s["ref_chosen"], s["ref_rejected"]),
                                                                           abs=1e-5)
        assert (s["ref_chosen"], s["ref_rejected"]) == pytest.approx((g["ref_chosen"], g["ref_rejected"]), abs=1e-5)
    h = explore.log_ratio_margin(*([s[k] for s in same] for k in ("policy_chosen", "ref_chosen", "policy_rejected",
                                                                   "ref_rejected")))
    assert np.abs(h).max() < 1e-4

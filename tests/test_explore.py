"""The notebooks' interactive pieces (mmpref.explore): the numbers they draw, and the static fallback of a notebook
executed by `mmpref run`."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

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

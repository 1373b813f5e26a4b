"""What the notebooks show besides tables and the paper's figures: the run's pictures, and interactive pieces with a
static fallback (a notebook executed by `mmpref run`, with no widget frontend, shows the figure at the run's own
values; JupyterLab shows the same figure under ipywidgets sliders).

- `picture_grid`: prompts' pictures with their captions (01, 02, 04).
- `dpo_loss_explorer`: DPO's loss and gradient weight against the policy's log-ratio margin, at a β of your choice,
  with where this run's pairs were during training (08_train_dpo).
"""

from __future__ import annotations

import math
import os
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure


def headless() -> bool:
    """True in a kernel started by `mmpref run` (papermill): no widget frontend will ever render a slider."""
    return bool(os.environ.get("MMPREF_RUNNER_PID"))


def dpo_loss_curves(beta: float, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DPO's per-pair loss -log σ(β h) and the weight of its gradient, β σ(-β h), at log-ratio margins h =
    log π/π_ref(chosen) - log π/π_ref(rejected) (the gradient of the loss is -(weight) · ∇h)."""
    z = beta * np.asarray(margins, dtype=float)
    loss = np.logaddexp(0.0, -z)                   # -log σ(z), stable
    weight = beta / (1.0 + np.exp(z))              # β σ(-z)
    return loss, weight


def dpo_loss_figure(beta: float, trained_margins: Sequence[float] = (), trained_beta: float | None = None,
                    span: float = 40.0) -> Figure:
    """Loss and gradient weight against h at `beta`; `trained_margins`: the run's logged mean log-ratio margins
    (rewards/margins / β of its training), drawn where they sit on the curves."""
    h = np.linspace(-span, span, 400)
    loss, weight = dpo_loss_curves(beta, h)
    fig = Figure(figsize=(9.5, 3.4), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(h, loss, color="tab:blue")
    ax1.axhline(math.log(2), color="0.5", linestyle="--", linewidth=1)
    ax1.set(xlabel="log-ratio margin h (nats)", ylabel="loss  −log σ(β h)", title=f"DPO loss at β = {beta:g}")
    ax2.plot(h, weight, color="tab:orange")
    ax2.set(xlabel="log-ratio margin h (nats)", ylabel="gradient weight  β σ(−β h)",
            title="how hard a pair pulls the policy")
    if len(trained_margins):
        m = np.asarray(trained_margins, dtype=float)
        l, w = dpo_loss_curves(beta, m)
        label = f"this run's training (β = {trained_beta:g}), mean over logged batches" if trained_beta else \
            "this run's training"
        ax1.plot(m, l, "o", color="black", markersize=3, label=label)
        ax2.plot(m, w, "o", color="black", markersize=3)
        ax1.legend(fontsize=8, loc="upper right")
    for ax in (ax1, ax2):
        ax.axvline(0, color="0.8", linewidth=1)
        ax.grid(alpha=0.3)
    return fig


def png(fig: Figure):
    """A bare matplotlib Figure as an IPython image (a Figure displays as text where no pyplot backend made it)."""
    import io

    from IPython.display import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return Image(data=buf.getvalue(), format="png")


def picture_grid(items: Sequence[tuple], ncols: int = 4, size: float = 2.2):
    """(image path, caption) pairs as one image: each picture enlarged without smoothing (the miniature's are 48
    pixels), its caption wrapped under it."""
    import textwrap

    from PIL import Image as PILImage

    items = list(items)
    ncols = max(1, min(ncols, len(items)))
    nrows = math.ceil(len(items) / ncols)
    lines = max((len(textwrap.wrap(line, 34)) for _, cap in items for line in str(cap).splitlines()), default=1)
    caption_rows = max(str(cap).count("\n") + 1 for _, cap in items) * lines
    fig = Figure(figsize=(size * ncols * (1.6 if ncols == 1 else 1), nrows * (size + 0.16 * caption_rows)),
                 layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (path, caption) in zip(axes, items):
        with PILImage.open(path) as im:
            ax.imshow(im.convert("RGB"), interpolation="nearest")
        width = 34 if ncols > 1 else 60
        ax.set_title("\n".join(w for line in str(caption).splitlines() for w in textwrap.wrap(line, width)),
                     fontsize=7, loc="left")
    for ax in axes:
        ax.axis("off")
    return png(fig)


def dpo_loss_explorer(trained_margins: Sequence[float], trained_beta: float, force_static: bool | None = None):
    """The loss explorer: a static image at the run's β where no widget can render (`headless`), else an
    ipywidgets.interactive with a β slider (log scale 0.01-1) redrawing `dpo_loss_figure`. Returns what to show."""
    static = headless() if force_static is None else force_static
    if static:
        return png(dpo_loss_figure(trained_beta, trained_margins, trained_beta))
    import ipywidgets as widgets

    def draw(beta: float):
        from IPython.display import display

        display(png(dpo_loss_figure(beta, trained_margins, trained_beta)))

    slider = widgets.FloatLogSlider(value=trained_beta, base=10, min=-2, max=0, step=0.05, description="β",
                                    continuous_update=False)
    return widgets.interactive(draw, beta=slider)

"""What the notebooks show besides tables and the paper's figures: the run's pictures, and interactive pieces with a
static fallback (a notebook executed by `mmpref run`, with no widget frontend, shows the figure at the run's own
values; JupyterLab shows the same figure under ipywidgets sliders).

- `picture_grid`: prompts' pictures with their captions (01, 02, 04).
- `dpo_loss_explorer`: DPO's loss and gradient weight against the policy's log-ratio margin, at a β of your choice,
  with where this run's pairs were during training (08_train_dpo).
- `pair_browser`: a few of the run's DPO pairs (picture, question, chosen and rejected with the judge's scores and
  reasoning) with their log-probs under the reference and the trained adapter (`pair_logprobs`), the log-ratio
  margin h and the implicit reward margin β·h (08_train_dpo).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
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


# ---------------------------------------------------------------------------------------------- the pair browser
def quality_spread(rows: Sequence[dict], n: int = 12) -> list[dict]:
    """`n` DPO pairs spanning the judge's quality margins (chosen − rejected quality): the rows at evenly spaced
    ranks of that margin (ties in file order), so the smallest and the largest margin are both among them."""
    ranked = sorted(rows, key=lambda r: r["chosen_quality"] - r["rejected_quality"])
    if len(ranked) <= n:
        return ranked
    return [ranked[round(i * (len(ranked) - 1) / (n - 1))] for i in range(n)] if n > 1 else ranked[-1:]


def pair_logprobs(model, processor, rows: Sequence[dict], run_dir: str | Path, max_length: int | None = None,
                  batch_size: int = 4) -> list[dict]:
    """Per DPO pair (rows of datasets/dpo.jsonl, pictures relative to `run_dir`): the log-probs (nats, summed over
    the response's tokens) of chosen and rejected under `model`, a PeftModel with its adapter (`policy_chosen`,
    `policy_rejected`), and under the same model with the adapter disabled, DPO's reference (`ref_chosen`,
    `ref_rejected`), with the responses' token counts. Tokenized as DPO's trainer tokenizes (TRL's vision
    preference collator: the chat template, `max_length` cuts the response). The model's train/eval mode is kept."""
    import torch
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    from mmpref.sampling import open_image

    collate = DataCollatorForVisionPreference(processor=processor, max_length=max_length)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def logps(batch) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v.to(device) for k, v in batch.items() if k != "completion_mask"}
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        ids, mask = batch["input_ids"][:, 1:].to(device), batch["completion_mask"][:, 1:].to(device)
        per_token = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        return per_token.masked_fill(mask == 0, 0.0).sum(1).cpu(), batch["completion_mask"].sum(1)  # pads: 0

    out: list[dict] = []
    try:
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start:start + batch_size]
                batch = collate([{"images": [open_image(Path(run_dir) / r["image"])],
                                  "prompt": [{"role": "user", "content": r["question"]}],
                                  "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in chunk])
                policy, tokens = logps(batch)
                with model.disable_adapter():
                    ref, _ = logps(batch)
                k = len(chunk)
                for i, r in enumerate(chunk):
                    out.append({"prompt_id": r["prompt_id"],
                                "policy_chosen": float(policy[i]), "policy_rejected": float(policy[k + i]),
                                "ref_chosen": float(ref[i]), "ref_rejected": float(ref[k + i]),
                                "chosen_tokens": int(tokens[i]), "rejected_tokens": int(tokens[k + i])})
    finally:
        model.train(was_training)
    return out


def log_ratio_margin(policy_chosen, ref_chosen, policy_rejected, ref_rejected, chosen_tokens=None,
                     rejected_tokens=None):
    """h = [log π_θ(chosen) − log π_ref(chosen)] − [log π_θ(rejected) − log π_ref(rejected)] (nats); with token
    counts each log-ratio is taken per token, as DPO with averaged log-probs (TRL's sigmoid_norm) trains it. The
    implicit reward margin is β·h; the policy prefers the chosen response over the reference's preference when h > 0."""
    c = np.asarray(policy_chosen, dtype=float) - np.asarray(ref_chosen, dtype=float)
    r = np.asarray(policy_rejected, dtype=float) - np.asarray(ref_rejected, dtype=float)
    if chosen_tokens is not None:
        c = c / np.maximum(np.asarray(chosen_tokens, dtype=float), 1.0)
        r = r / np.maximum(np.asarray(rejected_tokens, dtype=float), 1.0)
    return c - r


def _last_ok_annotations(annotations: Sequence[dict]) -> dict[str, dict]:
    """prompt_id -> its last ok annotation (as 04_pair reads them)."""
    return {a["prompt_id"]: a for a in annotations if a.get("status") == "ok" and a.get("scores") is not None}


def browser_pairs(rows: Sequence[dict], annotations: Sequence[dict], logprobs: Sequence[dict], beta: float,
                  average: bool = False):
    """One row per pair for the browser: the pair, both responses' judge ratings (the five attributes and quality)
    and the judge's reasoning, the log-probs of `pair_logprobs`, h (`log_ratio_margin`, per token when `average`),
    β·h and whether the trained policy prefers the chosen response (h > 0)."""
    import pandas as pd

    from mmpref.ratings import attributes, quality

    ann = _last_ok_annotations(annotations)
    lp = {x["prompt_id"]: x for x in logprobs}
    records = []
    for r in rows:
        a, x = ann.get(r["prompt_id"]), lp[r["prompt_id"]]
        record = {**r, **x, "reasoning": (a or {}).get("reasoning") or ""}
        for side in ("chosen", "rejected"):
            scores = a["scores"][r[f"{side}_index"]] if a is not None else None
            record[f"{side}_ratings"] = attributes(scores) if scores is not None else {}
            record[f"{side}_quality"] = quality(scores) if scores is not None else r.get(f"{side}_quality")
        records.append(record)
    frame = pd.DataFrame(records)
    tokens = (frame["chosen_tokens"], frame["rejected_tokens"]) if average else (None, None)
    frame["h"] = log_ratio_margin(frame["policy_chosen"], frame["ref_chosen"], frame["policy_rejected"],
                                  frame["ref_rejected"], *tokens)
    frame["reward_margin"] = beta * frame["h"]
    frame["prefers_chosen"] = frame["h"] > 0
    frame.attrs.update(beta=beta, average=average)
    return frame


def pair_table(pairs):
    """The browser's pairs as a table for reading, units in its headers (nats; per token with averaged
    log-probs)."""
    import pandas as pd

    from mmpref.figures import readable, with_units

    per = "nats/token" if pairs.attrs.get("average") else "nats"
    table = pairs[["question", "chosen_quality", "rejected_quality", "ref_chosen", "policy_chosen", "ref_rejected",
                   "policy_rejected", "h", "reward_margin", "prefers_chosen"]].copy()
    table["question"] = [q if len(q) <= 40 else q[:39] + "…" for q in table["question"]]
    table.index = pd.RangeIndex(1, len(table) + 1, name="pair")  # numbered as the browser's menu numbers them
    table = table.rename(columns={
        "chosen_quality": "chosen quality", "rejected_quality": "rejected quality",
        "ref_chosen": "log π_ref(chosen)", "policy_chosen": "log π_θ(chosen)", "ref_rejected": "log π_ref(rejected)",
        "policy_rejected": "log π_θ(rejected)", "h": "h", "reward_margin": "β·h", "prefers_chosen": "prefers chosen"})
    units = {"chosen quality": "0–12", "rejected quality": "0–12", "log π_ref(chosen)": "nats",
             "log π_θ(chosen)": "nats", "log π_ref(rejected)": "nats", "log π_θ(rejected)": "nats", "h": per,
             "β·h": per}
    return with_units(readable(table, digits=4), units)  # 4 digits: a log-prob's change shows (-3.130 -> -3.102)


def _wrapped(text: str, width: int, max_lines: int | None = None) -> str:
    import textwrap

    lines = [w for line in str(text).splitlines() for w in (textwrap.wrap(line, width) or [""])]
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines - 1] + ["…"]
    return "\n".join(lines)


def _ratings_line(ratings: dict, quality_value) -> str:
    short = {"helpfulness": "help", "correctness": "corr", "coherence": "coh", "complexity": "cplx",
             "verbosity": "verb"}
    cells = " ".join(f"{short.get(k, k)} {v}" for k, v in ratings.items())
    return f"judge (0–4 each): {cells}; quality {quality_value}/12" if cells else f"quality {quality_value}/12"


def pair_figure(pair: dict, run_dir: str | Path) -> Figure:
    """One pair: its picture (unsmoothed), question, chosen and rejected with the judge's ratings, the judge's
    reasoning, and the four log-probs with h and β·h."""
    from PIL import Image as PILImage

    beta, average = pair.get("beta"), pair.get("average")
    fig = Figure(figsize=(11, 6.6), layout="constrained")
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 2.2, 2.2], height_ratios=[1.15, 1])
    ax_img = fig.add_subplot(grid[0, 0])
    with PILImage.open(Path(run_dir) / pair["image"]) as im:
        ax_img.imshow(im.convert("RGB"), interpolation="nearest")
    ax_img.set(xticks=[], yticks=[])
    ax_img.set_title(f"prompt {pair['prompt_id']}", fontsize=7, loc="left")
    ax_text = fig.add_subplot(grid[0, 1:])
    ax_text.axis("off")
    text = (f"Q: {_wrapped(pair['question'], 100)}\n\n"
            f"CHOSEN (response {pair['chosen_index'] + 1}): {_wrapped(pair['chosen'], 90, 4)}\n"
            f"  {_ratings_line(pair['chosen_ratings'], pair['chosen_quality'])}\n\n"
            f"REJECTED (response {pair['rejected_index'] + 1}): {_wrapped(pair['rejected'], 90, 4)}\n"
            f"  {_ratings_line(pair['rejected_ratings'], pair['rejected_quality'])}")
    ax_text.text(0, 1, text, va="top", ha="left", fontsize=8.5, family="monospace", transform=ax_text.transAxes)
    ax_bar = fig.add_subplot(grid[1, 0:2])
    labels = ["chosen", "rejected"]
    ref = [pair["ref_chosen"], pair["ref_rejected"]]
    pol = [pair["policy_chosen"], pair["policy_rejected"]]
    x = np.arange(2)
    ax_bar.bar(x - 0.18, ref, 0.36, label="reference (adapter off)", color="0.65")
    ax_bar.bar(x + 0.18, pol, 0.36, label="trained DPO adapter", color="tab:blue")
    ax_bar.set_xticks(x, labels)
    ax_bar.set_ylabel("log π(response | picture, question) (nats)")
    ax_bar.axhline(0, color="0.3", linewidth=0.8)
    per = " per token" if average else ""
    verdict = "prefers chosen" if pair["h"] > 0 else "does not prefer chosen"
    ax_bar.set_title(f"h = {pair['h']:+.4g} nats{per}, β·h = {pair['reward_margin']:+.4g} (β = {beta:g}): "
                     f"the trained policy {verdict}", fontsize=9)
    ax_bar.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)
    ax_bar.grid(axis="y", alpha=0.3)
    ax_why = fig.add_subplot(grid[1, 2])
    ax_why.axis("off")
    ax_why.text(0, 1, "judge's reasoning:\n" + _wrapped(pair.get("reasoning") or "(none recorded)", 58, 20),
                va="top", ha="left", fontsize=7, transform=ax_why.transAxes)
    return fig


def _pair_dict(pairs, i: int) -> dict:
    return {**pairs.iloc[i].to_dict(), "beta": pairs.attrs.get("beta"), "average": pairs.attrs.get("average")}


def pair_browser(pairs, run_dir: str | Path, force_static: bool | None = None):
    """The pair browser over `browser_pairs`' rows: where no widget can render (`headless`), the table of the pairs
    (displayed) and the pair whose h grew most (returned as an image); else an ipywidgets.interactive with a
    dropdown over the pairs, each drawn by `pair_figure`."""
    static = headless() if force_static is None else force_static
    if static:
        from IPython.display import display

        display(pair_table(pairs))
        return png(pair_figure(_pair_dict(pairs, int(np.argmax(pairs["h"].to_numpy()))), run_dir))
    import ipywidgets as widgets

    def draw(pair: int):
        from IPython.display import display

        display(png(pair_figure(_pair_dict(pairs, pair), run_dir)))

    options = [(f"{i + 1}: h {h:+.3g} · quality {c}–{r} · {q[:40]}", i) for i, (h, c, r, q) in
               enumerate(zip(pairs["h"], pairs["chosen_quality"], pairs["rejected_quality"], pairs["question"]))]
    start = int(np.argmax(pairs["h"].to_numpy()))
    menu = widgets.Dropdown(options=options, value=start, description="pair", layout=widgets.Layout(width="70%"))
    return widgets.interactive(draw, pair=menu)


def dpo_pairs_before_after(params, adapter: str | Path, n: int = 12):
    """`browser_pairs` for `n` of the run's DPO pairs (`quality_spread`) under the run's policy and the DPO adapter
    in `adapter` (its mmpref_train.json gives β, averaging and max_length), loaded as stage 09 loads it, unmerged."""
    from mmpref.io import read_json, read_jsonl
    from mmpref.models import chat_templates, image_padding, load_vlm

    run_dir = params.run_dir
    dpo = read_json(Path(adapter) / "mmpref_train.json")["settings"]["trainer"]  # train.dpo as trained
    rows = quality_spread(read_jsonl(run_dir / "datasets" / "dpo.jsonl"), n)
    model, processor = load_vlm(params.model_ref(params.models.policy), adapter, dtype=params.models.dtype,
                                device=params.models.device, chat_template=chat_templates(params)[0],
                                pad_images=image_padding(params), merge=False)
    logprobs = pair_logprobs(model, processor, rows, run_dir, dpo["max_length"])
    del model
    return browser_pairs(rows, read_jsonl(run_dir / "annotations.jsonl", appended=True), logprobs,
                         dpo["beta"], dpo["average_log_prob"])

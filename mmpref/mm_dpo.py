"""MM-DPO: DPO whose beta grows with each pair's reward margin (MM-RLHF's Dynamic Reward Scaling).

MM-RLHF (Zhang et al. 2025, arXiv 2502.10391, section 4.2) scales DPO's beta per pair by the reward margin
delta = r(chosen) - r(rejected):

    beta(delta) = beta_0 * (1 + w * (1 - exp(-k * delta)))

so beta lies in [beta_0, (1 + w) * beta_0] and a clear pair (large margin) weighs more in the loss. The paper's
beta_0 is 0.1 (section 5.1); w = 0.5 and k = 0.5 are the defaults of its ablation of w and k (Appendix F, Figure 12b,
as a public transcription of the paper gives them: the PDF was not reachable from here, so `train.mm_dpo` keeps them
as params); the released training script (scripts/train/dpo_ov7b.sh) passes ls_factor_weight 0.1, its w. Here beta_0
is the run's DPO beta (the sweep's winner when `train.dpo.sweep` is on), so MM-DPO differs from DPO only by the
scaling.

Two variants (`train.mm_dpo.scaling`):

- "per_sample": the paper's formula, one beta per pair, delta from `train.mm_dpo.margin` ("judge_quality": the
  annotation judge's quality difference of the pair, helpfulness + correctness + coherence, chosen minus rejected,
  already in datasets/dpo.jsonl: free; "reward_model": the same difference as the critique reward model of stage 03b
  rates the two responses, as MM-RLHF takes delta from its reward model: `pair_margins`).
- "released_batch": what the released code does (Kwai-YuanQi/MM-RLHF at 7c8af1d, trl/trainer/dpo_trainer.py
  `dpo_loss`, lines 786-816, default `implicit_beta=True`): the per-sample beta it first computes is overwritten by
  one beta per batch, computed from the policy's own margins A = (log pi/pi_ref)(chosen) - (log pi/pi_ref)(rejected)
  of the (all-gathered) batch, beta-DPO style: weights exp(-((A - mean) / std)^2 / 2), 80 % of the pairs drawn by
  those weights without replacement, beta = beta_0 * (1 + w * (mean(A drawn) - mean(A))), clamped at 1e-3. The reward
  margin never reaches the loss (the repository's issues #6, #10 and #12 ask where it went). Where the batch has one
  pair the released code divides by a NaN std (issue #12); here the batch's beta is then beta_0.

With w = 0 both variants are DPO exactly (tests/test_mm_dpo.py compares loss and gradients with TRL's DPO loss).
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch

from mmpref.ratings import quality

log = logging.getLogger(__name__)

MARGIN_COLUMN = "pair_margin"  # the per-pair delta, a dataset column the collators carry (shared_prefix.PAIR_COLUMNS)
SCALINGS = ("per_sample", "released_batch")
MARGINS = ("judge_quality", "reward_model")


def dynamic_beta(beta0: float, margin, w: float, k: float):
    """The paper's beta(delta) = beta_0 * (1 + w * (1 - exp(-k * delta))), for a number, an array or a tensor of
    margins."""
    exp = torch.exp if isinstance(margin, torch.Tensor) else np.exp
    return beta0 * (1 + w * (1 - exp(-k * margin)))


def pair_margin(row: dict, source: str = "judge_quality") -> float:
    """delta of one DPO row: the judge's quality of the chosen minus that of the rejected response."""
    if source != "judge_quality":
        raise ValueError(f"pair_margin reads the judge_quality margin in the row; for {source!r} use pair_margins")
    return float(row["chosen_quality"] - row["rejected_quality"])


def pair_margins(rows: Sequence[dict], source: str, rm_annotations: Sequence[dict] | None = None) -> list[float]:
    """delta of every DPO row from `source`: "judge_quality" (`pair_margin`), or "reward_model": the critique reward
    model's quality of the chosen response minus the rejected one's (its annotations of the pairs' prompts, stage 03b
    with `reward_model.annotate: all`), at least 0: the scaling weighs clear pairs up, and a pair the reward model
    would order the other way keeps DPO's beta instead of a shrunken or negative one. A pair whose prompt the reward
    model did not annotate ok also keeps DPO's beta (delta 0); their number is logged."""
    if source not in MARGINS:
        raise ValueError(f"unknown MM-DPO margin source {source!r}; one of {list(MARGINS)}")
    if source == "judge_quality":
        return [pair_margin(r) for r in rows]
    if rm_annotations is None:
        raise ValueError("MM-DPO margin 'reward_model' needs the reward model's annotations (stage 03b)")
    scores = {a["prompt_id"]: a["scores"] for a in rm_annotations if a.get("status") == "ok" and a.get("scores")}
    out, missing = [], 0
    for r in rows:
        s = scores.get(r["prompt_id"])
        if s is None or max(r["chosen_index"], r["rejected_index"]) >= len(s):
            missing += 1
            out.append(0.0)
            continue
        out.append(float(max(quality(s[r["chosen_index"]]) - quality(s[r["rejected_index"]]), 0)))
    if missing:
        log.warning("MM-DPO: %d of %d pairs have no reward-model annotation; they keep DPO's beta", missing, len(rows))
    return out


def released_batch_beta(beta0: float, margins: torch.Tensor, w: float, generator: torch.Generator | None = None):
    """The released code's one beta for a batch whose policy margins are `margins` (see the module docstring)."""
    a = margins.detach().float().reshape(-1)
    if a.numel() < 2:
        return torch.tensor(beta0, dtype=margins.dtype, device=margins.device)
    mean, std = a.mean(), a.std()
    weight = torch.exp(-0.5 * ((a - mean) / (std + 1e-7)).pow(2))
    drawn = torch.multinomial(weight.cpu(), int(a.numel() * (1 - 0.2)), replacement=False, generator=generator)
    beta = beta0 * (1 + w * (a[drawn.to(a.device)].mean() - mean))
    return beta.clamp(min=1e-3).to(margins.dtype)


class _BatchBeta:
    """The released variant's beta, known only once the loss sees the batch's margins: TRL 1.16's `_compute_loss`
    multiplies `self.beta` first by the pairs' margins (the loss), then by the log-ratios (the logged rewards), so
    the first product fixes the batch's beta and every later one reuses it."""

    def __init__(self, beta0: float, w: float, gather: Callable[[torch.Tensor], torch.Tensor]):
        self.beta0, self.w, self.gather, self.value = beta0, w, gather, None

    def __mul__(self, x: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            self.value = released_batch_beta(self.beta0, self.gather(x.detach()), self.w)
        return self.value * x

    __rmul__ = __mul__


class BetaScalingMixin:
    """Put first in a `DPOTrainer` subclass's bases. With `mm_dpo` set (params `train.mm_dpo`: w, k, scaling) each
    batch's loss runs with MM-DPO's beta; the batch must carry `MARGIN_COLUMN` for "per_sample". Without it, TRL's loss
    unchanged."""

    mm_dpo = None  # mmpref.config.MMDPOParams
    last_betas: torch.Tensor | None = None  # the betas of the last batch (the notebook plots them)

    def _compute_loss(self, model, inputs, return_outputs):
        margin = inputs.pop(MARGIN_COLUMN, None)
        if self.mm_dpo is None:
            return super()._compute_loss(model, inputs, return_outputs)
        s, beta0 = self.mm_dpo, self.beta
        if s.scaling == "per_sample":
            if margin is None:
                raise ValueError(f"MM-DPO per_sample scaling needs each pair's margin (column {MARGIN_COLUMN!r})")
            self.beta = dynamic_beta(beta0, margin.to(self.accelerator.device, torch.float32), s.w, s.k)
        else:
            self.beta = _BatchBeta(beta0, s.w, self.accelerator.gather)
        try:
            return super()._compute_loss(model, inputs, return_outputs)
        finally:
            used = self.beta.value if isinstance(self.beta, _BatchBeta) else self.beta
            self.last_betas = None if used is None else used.detach().reshape(-1).cpu()
            self.beta = beta0
            mode = "train" if self.model.training else "eval"
            if self.last_betas is not None:
                self._metrics[mode]["beta"].append(self.last_betas.mean().item())

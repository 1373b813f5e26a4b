"""DPO that runs each pair's image and prompt once: chosen and rejected packed after one shared prefix.

Stock TRL (`DataCollatorForVisionPreference` + `DPOTrainer._compute_loss`, trl 1.16) makes a batch of 2B rows,
[prompt + chosen] and [prompt + rejected], so the image (576 tokens on LLaVA-1.5) and the prompt go through the vision
tower and the language model twice per pair, and once more for the reference. Here a pair is one row:

    [prompt p_0 .. p_{n-1}] [chosen c_0 .. c_{k-1}] [p_{n-1}' r_0 .. r_{m-1}] [pad ...]
    positions  0 .. n-1      n .. n+k-1              n-1  n .. n+m-1

with a 4D attention mask in which the prompt is causal, chosen sees the whole prompt and its own past, and the
rejected block sees the prompt without its last token plus its own past (never chosen). p_{n-1}' is a copy of the
prompt's last token at the same position: it sees exactly what p_{n-1} sees, so its hidden state is p_{n-1}'s, and it
carries the label r_0 (one position holds one next-token label, and p_{n-1} already predicts c_0). Every completion
token therefore has the hidden state, and so the log-prob, it has in TRL's separate rows, up to float rounding.

The log-probs come from TRL's own fused LM head (`add_fused_lm_head`, called with pre-shifted `shift_labels`), and the
loss, its variants (`sigmoid`, `sigmoid_norm`, `ipo`, ...), `ld_alpha`, WPO weighting and every logged metric from
TRL's own `_compute_loss`/`compute_ref_log_probs`: `SharedPrefixMixin` hands those methods a stand-in model whose
per-token outputs are the packed forward's, laid out as TRL's [chosen; rejected] rows of completion tokens.

Truncation follows TRL: a row [prompt + completion] keeps its first `max_length` tokens, so each completion keeps
`max_length - len(prompt)` tokens; a prompt of `max_length` tokens or more (TRL would cut image tokens) is refused.

Scope: models whose text positions are 1D (LLaVA-1.5, LLaVA-NeXT, Llama-family LMs) with `sdpa` or `eager`
attention. `train.dpo.share_prefix: auto` leaves families with multimodal RoPE (Qwen2-VL) on TRL's rows; a processor
that returns such inputs anyway (`image_grid_thw`, `mm_token_type_ids`) and `flash_attention_2` (which cannot take this
mask) are refused with a message that names the switch (`train.dpo.share_prefix: false`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mmpref.mm_dpo import MARGIN_COLUMN

# keys a prompt's processor output may carry besides input_ids/attention_mask and still suit 1D positions
PIXEL_KEYS = ("pixel_values", "image_sizes")
# per-pair dataset columns that the collators carry into the batch untouched: the cached reference log-probs and
# MM-DPO's margin (mmpref.mm_dpo.MARGIN_COLUMN)
PAIR_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps", MARGIN_COLUMN)
MASK_ATTENTION = ("sdpa", "eager")
# segments of a packed row
PAD, PROMPT, LAST, CHOSEN, REJECTED = -1, 0, 1, 2, 3


def pack_pairs(prompts: list[list[int]], chosens: list[list[int]], rejecteds: list[list[int]],
               max_length: int | None, pad_id: int) -> dict[str, torch.Tensor]:
    """Token ids of B pairs -> one packed row per pair and TRL's [chosen; rejected] completion layout.

    Returns `packed_input_ids`, `packed_position_ids`, `packed_segments`, `packed_shift_labels` (B, L) and
    `packed_attention_mask` (B, L: 1 on real tokens); `input_ids`/`completion_mask` (2B, T) shaped like TRL's rows
    with the prompt cut to its last token; `packed_index` (2B, T-1): the flat index into the packed (B*L) outputs of
    the position that predicts each completion token (-1 where there is none)."""
    if not (len(prompts) == len(chosens) == len(rejecteds)) or not prompts:
        raise ValueError("pack_pairs needs one prompt, one chosen and one rejected per pair")
    kept_c, kept_r = [], []
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"pair {i}: empty prompt")
        room = None if max_length is None else max_length - len(p)
        if room is not None and room <= 0:
            raise ValueError(f"pair {i}: the prompt has {len(p)} tokens but max_length is {max_length}; TRL would "
                             f"truncate into the prompt (and its image tokens); raise max_length")
        kept_c.append(chosens[i][:room] if room is not None else chosens[i])
        kept_r.append(rejecteds[i][:room] if room is not None else rejecteds[i])
    B = len(prompts)
    L = max(len(p) + len(c) + 1 + len(r) for p, c, r in zip(prompts, kept_c, kept_r))
    T = 1 + max(len(x) for x in kept_c + kept_r)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    seg = torch.full((B, L), PAD, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    v_ids = torch.full((2 * B, T), pad_id, dtype=torch.long)
    v_mask = torch.zeros((2 * B, T), dtype=torch.long)
    index = torch.full((2 * B, T - 1), -1, dtype=torch.long)
    for i, (p, c, r) in enumerate(zip(prompts, kept_c, kept_r)):
        n, k, m = len(p), len(c), len(r)
        row = list(p) + list(c) + [p[-1]] + list(r)
        ids[i, :len(row)] = torch.tensor(row)
        pos[i, :n + k] = torch.arange(n + k)
        pos[i, n + k:len(row)] = torch.arange(n - 1, n + m)
        seg[i, :n - 1], seg[i, n - 1], seg[i, n:n + k], seg[i, n + k:len(row)] = PROMPT, LAST, CHOSEN, REJECTED
        # the position that predicts each completion token: p_{n-1} -> c_0, c_j -> c_{j+1}, p' -> r_0, r_j -> r_{j+1}
        for row_v, toks, first in ((i, c, n - 1), (B + i, r, n + k)):
            if toks:
                labels[i, first:first + len(toks)] = torch.tensor(toks)
                v_ids[row_v, 0] = p[-1]
                v_ids[row_v, 1:1 + len(toks)] = torch.tensor(toks)
                v_mask[row_v, 1:1 + len(toks)] = 1
                index[row_v, :len(toks)] = i * L + torch.arange(first, first + len(toks))
    return {"packed_input_ids": ids, "packed_position_ids": pos, "packed_segments": seg,
            "packed_shift_labels": labels, "packed_attention_mask": (seg != PAD).long(),
            "input_ids": v_ids, "completion_mask": v_mask, "packed_index": index}


def require_mask_attention(attn_implementation: str | None) -> None:
    """Refuse attentions that cannot take the shared-prefix 4D mask (flash_attention_2, flex_attention, ...)."""
    if attn_implementation not in MASK_ATTENTION:
        raise ValueError(f"share_prefix needs an attention that takes a 4D mask ({', '.join(MASK_ATTENTION)}); the "
                         f"model uses {attn_implementation!r}. Load it with attn_implementation='sdpa' or set "
                         f"train.dpo.share_prefix: false")


def shared_prefix_mask(segments: torch.Tensor, attn_implementation: str, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, L, L) mask of a packed batch: True/0.0 where a query may attend a key (sdpa: bool, eager: additive).

    Causal throughout; the prompt body is seen by every real token, the prompt's last token by itself and chosen,
    chosen and the rejected block only by themselves; a padding position sees only itself (no empty softmax row)."""
    require_mask_attention(attn_implementation)
    L = segments.shape[1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    allowed = ((k == PROMPT) & (q != PAD)) | ((k == LAST) & ((q == LAST) | (q == CHOSEN))) | \
              ((k == q) & ((q == CHOSEN) | (q == REJECTED)))
    allowed = (allowed & causal) | torch.eye(L, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if attn_implementation == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(~allowed,
                                                                                      torch.finfo(dtype).min)


@dataclass
class SharedPrefixCollator:
    """TRL's `DataCollatorForVisionPreference` input (images, prompt, chosen, rejected; conversational or not),
    rendered and tokenized as it does, packed one row per pair (`pack_pairs`); each image is processed once.
    The per-pair columns of `PAIR_COLUMNS` (cached reference log-probs, MM-DPO's margin) pass through."""

    processor: Any
    max_length: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from trl.data_utils import apply_chat_template, is_conversational, prepare_multimodal_messages

        examples = [dict(e) for e in examples]
        carried = {k: torch.tensor([e.pop(k) for e in examples]) for k in PAIR_COLUMNS if k in examples[0]}
        for e in examples:
            if "image" in e:
                e["images"] = [e.pop("image")]
        images = [e["images"] for e in examples]
        if all(im == [] for im in images):
            images = None
        if is_conversational(examples[0]):
            for e in examples:
                e["prompt"] = prepare_multimodal_messages(e["prompt"], images=e["images"])
                e["chosen"] = prepare_multimodal_messages(e["chosen"])
                e["rejected"] = prepare_multimodal_messages(e["rejected"])
            examples = [apply_chat_template(e, self.processor) for e in examples]
        prompts = self.processor(images=images, text=[e["prompt"] for e in examples], padding=True,
                                 padding_side="left", return_tensors="pt", add_special_tokens=False)
        other = sorted(set(prompts) - {"input_ids", "attention_mask", *PIXEL_KEYS})
        if other:
            raise ValueError(f"share_prefix packs models with 1D text positions (LLaVA-style); this processor also "
                             f"returns {other} (e.g. multimodal RoPE), which the packed positions would get wrong: "
                             f"set train.dpo.share_prefix: false")

        def rows(ids, mask):
            return [[t for t, m in zip(r, mm) if m] for r, mm in zip(ids.tolist(), mask.tolist())]

        def completions(key):
            out = self.processor(text=[e[key] for e in examples], padding=True, padding_side="right",
                                 return_tensors="pt", add_special_tokens=False)
            return rows(out["input_ids"], out["attention_mask"])

        tok = self.processor.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        out = pack_pairs(rows(prompts["input_ids"], prompts["attention_mask"]), completions("chosen"),
                         completions("rejected"), self.max_length, pad_id)
        out.update({k: prompts[k] for k in PIXEL_KEYS if k in prompts})
        # TRL's `num_tokens` metric sums `attention_mask`: here, the tokens the packed forward really ran
        out["attention_mask"] = out["packed_attention_mask"]
        return {**out, **carried}


class SharedPrefixMixin:
    """Put before `DPOTrainer` in the bases; with `share_prefix = True` the batches must come from
    `SharedPrefixCollator`. Policy and reference forwards (precompute and on-the-fly) run packed; TRL's loss and
    metrics code runs unchanged on the results."""

    share_prefix: bool = False

    def _prefix_attention(self) -> str:
        model = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        return getattr(config, "_attn_implementation", None) or model.config._attn_implementation

    def _packed_model(self, model):
        """A stand-in for `model` that TRL's code calls as `model(**kwargs, labels=..., fused_lm_head=True)`: it runs
        `model` once on the packed rows and returns TRL's `FusedCausalLMOutput` in the [chosen; rejected] layout."""
        from trl.trainer.utils import FusedCausalLMOutput

        attention, dtype = self._prefix_attention(), next(self.model.parameters()).dtype

        def forward(*, labels=None, fused_lm_head=True, **kw):
            segments, index = kw.pop("packed_segments"), kw.pop("packed_index")
            passed = {k: v for k, v in kw.items() if k in PIXEL_KEYS or k == "output_router_logits"}
            out = model(input_ids=kw["packed_input_ids"], position_ids=kw["packed_position_ids"],
                        attention_mask=shared_prefix_mask(segments, attention, dtype),
                        shift_labels=kw["packed_shift_labels"], fused_lm_head=True, use_cache=False, **passed)
            valid = index >= 0
            flat_index = index.clamp(min=0)

            def layout(x):
                return None if x is None else x.reshape(-1)[flat_index].masked_fill(~valid, 0)

            return FusedCausalLMOutput(loss=out.loss, log_probs=layout(out.log_probs), entropy=layout(out.entropy),
                                       log_sum_sq_probs=layout(out.log_sum_sq_probs),
                                       mean_logits=layout(out.mean_logits), is_top1=layout(out.is_top1),
                                       label_mask=valid, aux_loss=out.aux_loss)

        return forward

    def compute_ref_log_probs(self, model, inputs):
        if not self.share_prefix:
            return super().compute_ref_log_probs(model, inputs)
        return super().compute_ref_log_probs(self._packed_model(model), inputs)

    def _compute_loss(self, model, inputs, return_outputs):
        if not self.share_prefix:
            return super()._compute_loss(model, inputs, return_outputs)
        if return_outputs:
            raise NotImplementedError("share_prefix computes log-probs without logits; evaluate with "
                                      "prediction_loss_only=True or set train.dpo.share_prefix: false")
        if self.precompute_ref_logps:
            return super()._compute_loss(self._packed_model(model), inputs, return_outputs)
        # reference on the fly (TRL's default): the same packed forward, adapter disabled, no grad
        ref_chosen, ref_rejected = self.compute_ref_log_probs(self.model, inputs)
        inputs = {**inputs, "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
        self.precompute_ref_logps = True
        try:
            return super()._compute_loss(self._packed_model(model), inputs, return_outputs)
        finally:
            self.precompute_ref_logps = False

"""Generation: k samples per prompt for preference data, and greedy answers for benchmarks.

One `Policy` wraps either a VLM (AutoModelForImageTextToText + AutoProcessor, optionally with a PEFT adapter) or a
text-only LM (the base LLM). Prompts are rendered with the checkpoint's own chat template and generated in batches
with HF `generate` (left padding).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from pydantic import BaseModel

from mmpref.console import bar
from mmpref.io import append_jsonl, read_jsonl, sha256_json, write_jsonl
from mmpref.models import chat_messages, chat_templates, checkpoint_identity, image_padding, load_text_lm, load_vlm

log = logging.getLogger(__name__)


class ChatRequest(BaseModel):
    turns: list[str]
    answers: list[str] = []
    image: str | None = None
    image_every_turn: bool = False  # the image goes with every user turn (noisy-image MT-Bench), not the first only
    temperature: float | None = None  # None: the generate function's default (greedy for benchmarks)
    # the request's own sampling seed, for generators that seed each request (a serving engine: `seeds_per_request`);
    # None: derived from the call's seed. HF `generate` seeds a whole batch and ignores it.
    seed: int | None = None


GenerateFn = Callable[[list[ChatRequest]], list[str]]


def open_image(path: str | Path) -> Image.Image:
    """Open an image as RGB; a corrupt or missing file raises ValueError naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except Exception as exc:  # PIL raises several types for bad files
        raise ValueError(f"cannot read image {path}: {exc}") from None


class Generator:
    """What answers ChatRequests: a local checkpoint (`Policy`, HF `generate`) or a model on a serving engine
    (`mmpref.engine.ServedPolicy`). Subclasses implement `generate`; the benchmark GenerateFn is shared."""

    name: str
    seeds_per_request = False  # True: every request is sampled with its own seed, so any subset can be asked alone

    def generate(self, requests: list[ChatRequest], *, num_return_sequences: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 16, seed: int = 0,
                 desc: str | None = None) -> list[list[str]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def image_tokens(self) -> set[str]:
        return {"<image>"}

    def clean(self, text: str) -> str:
        """A decoded answer, stripped, without image placeholders spelled out as text (a processor would read one
        in a training completion as an image with no picture)."""
        for token in self.image_tokens():
            text = text.replace(token, "")
        return text.strip()

    def greedy_fn(self, max_new_tokens: int = 128, batch_size: int = 16, seed: int = 0) -> GenerateFn:
        """The GenerateFn benchmarks use: one answer per request, greedy unless the request sets a temperature
        (MT-Bench's per-category temperatures); requests are grouped by temperature, answers keep request order."""

        def generate(requests: list[ChatRequest]) -> list[str]:
            out: list[str | None] = [None] * len(requests)
            groups: dict[float, list[int]] = {}
            for i, r in enumerate(requests):
                groups.setdefault(float(r.temperature or 0.0), []).append(i)
            for temperature, idx in sorted(groups.items()):
                answers = self.generate([requests[i] for i in idx], temperature=temperature,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, desc=False)
                for i, a in zip(idx, answers):
                    out[i] = a[0]
            return [str(a) for a in out]

        return generate


# Model types whose positions follow `generate`'s left-padding rule (1-D, cumsum of the mask), so one prefill can be
# shared by k samples exactly (tests/test_engine.py). Not Qwen2-VL: its M-RoPE positions come from the image grid.
SHARED_PREFILL_TYPES = {"llava", "llava_next", "llama"}


class Policy(Generator):
    """A loaded checkpoint that answers ChatRequests with HF `generate`."""

    def __init__(self, model, processor, name: str, is_vlm: bool, question_transform: Callable[[str], str] | None = None,
                 shared_prefill: bool | None = None):
        self.model = model
        # k samples from ONE prefill per prompt (see `_generate_ids`); None: where verified (SHARED_PREFILL_TYPES)
        self.shared_prefill = (getattr(model.config, "model_type", None) in SHARED_PREFILL_TYPES
                               if shared_prefill is None else shared_prefill)
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        self.name = name
        self.is_vlm = is_vlm
        self.question_transform = question_transform

    @classmethod
    def load(cls, ref: str, name: str, adapter: str | Path | None = None, text_only: bool = False,
             dtype: str = "bfloat16", device: str = "auto", question_transform=None,
             chat_template: str | None = None, pad_images: bool | None = None) -> "Policy":
        if text_only:
            model, tok = load_text_lm(ref, dtype=dtype, device=device, chat_template=chat_template)
            return cls(model, tok, name, is_vlm=False, question_transform=question_transform)
        model, proc = load_vlm(ref, adapter=adapter, dtype=dtype, device=device, chat_template=chat_template,
                               pad_images=pad_images)
        return cls(model, proc, name, is_vlm=True, question_transform=question_transform)

    @classmethod
    def from_params(cls, params, name: str, adapter: str | Path | None = None, base_lm: bool = False,
                    question_transform=None) -> "Policy":
        """The run's policy (or its base LLM), in the prompt format `models.chat_template` asks for, its pictures
        padded as `models.image_aspect_ratio` asks (mmpref.models.image_padding)."""
        vlm_template, text_template = chat_templates(params)
        ref = params.model_ref(params.models.base_lm if base_lm else params.models.policy)
        return cls.load(ref, name, adapter=adapter, text_only=base_lm, dtype=params.models.dtype,
                        device=params.models.device, question_transform=question_transform,
                        chat_template=text_template if base_lm else vlm_template,
                        pad_images=None if base_lm else image_padding(params))

    def image_tokens(self) -> set[str]:
        return {getattr(self.processor, "image_token", None), "<image>"} - {None}

    def _render(self, req: ChatRequest) -> str:
        turns = list(req.turns)
        if self.question_transform is not None:
            turns = [self.question_transform(t) for t in turns]
        has_image = req.image is not None
        if has_image and not self.is_vlm:
            raise ValueError(f"{self.name} is a text-only model and cannot take an image ({req.image})")
        return self.processor.apply_chat_template(
            chat_messages(turns, req.answers, has_image, every_turn=req.image_every_turn), add_generation_prompt=True,
            tokenize=False)

    @staticmethod
    def _images(req: ChatRequest) -> list[Image.Image]:
        """The pictures of one request, one per image placeholder its prompt holds (every user turn's, or the
        first's)."""
        return [open_image(req.image)] * (len(req.turns) if req.image_every_turn else 1)

    def _generate_ids(self, enc: dict, k: int, **gen_kwargs) -> torch.Tensor:
        """Prompt + new token ids, k rows per prompt in prompt order (what `generate(num_return_sequences=k)`
        returns).

        Stock `generate(num_return_sequences=k)` repeats the inputs k times BEFORE the prefill, so the language
        model encodes every prompt (576 image tokens for LLaVA-1.5 + the text) k times (transformers < 5.24 runs the
        vision tower k times too; 5.24 encodes images once and repeats the features). With `shared_prefill` and k > 1 the
        prompt minus its last token is run once (pixel_values only here), its KV cache is repeated k times
        (`DynamicCache.batch_repeat_interleave`, the rows `num_return_sequences` would make), and `generate`
        continues from it with the k-fold ids and mask: the last prompt token, then decoding. Positions follow
        `generate`'s rule for left padding (cumsum of the mask), so the logits are those of the stock path and so
        is the distribution sampled from (tests/test_engine.py: greedy outputs equal the stock path's; a seed
        reproduces its samples)."""
        if not self.shared_prefill or k == 1 or enc["input_ids"].shape[1] < 2:
            return self.model.generate(**enc, num_return_sequences=k, **gen_kwargs)
        import inspect

        from transformers import DynamicCache

        # transformers >= 5.24 names the cache argument `cache` (`past_key_values` deprecated); earlier 5.x releases
        # only know `past_key_values`
        key = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        ids, mask = enc["input_ids"], enc["attention_mask"]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.model.config)
        extra = {key: v for key, v in enc.items() if key not in ("input_ids", "attention_mask")}
        self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                   use_cache=True, logits_to_keep=1, **{key: cache}, **extra)
        cache.batch_repeat_interleave(k)
        return self.model.generate(input_ids=ids.repeat_interleave(k, dim=0),
                                   attention_mask=mask.repeat_interleave(k, dim=0), num_return_sequences=1,
                                   **{key: cache}, **gen_kwargs)

    @torch.no_grad()
    def generate(self, requests: list[ChatRequest], *, num_return_sequences: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 16, seed: int = 0,
                 desc: str | None = None) -> list[list[str]]:
        """Answers per request (num_return_sequences each). temperature 0 means greedy."""
        torch.manual_seed(seed)
        out: list[list[str]] = []
        batches = range(0, len(requests), batch_size)
        for start in bar(batches, desc=desc or f"generate {self.name}", disable=desc is False):
            chunk = requests[start:start + batch_size]
            texts = [self._render(r) for r in chunk]
            with_images = [r.image is not None for r in chunk]
            if any(with_images) and not all(with_images):
                # mixed batch: split so each call is uniform
                for r in chunk:
                    out += self.generate([r], num_return_sequences=num_return_sequences, temperature=temperature,
                                         top_p=top_p, max_new_tokens=max_new_tokens, batch_size=1,
                                         seed=seed + start, desc=False)
                continue
            if all(with_images) and chunk:
                images = [im for r in chunk for im in self._images(r)]
                enc = self.processor(images=images, text=texts, padding=True, add_special_tokens=False,
                                     return_tensors="pt")
            else:
                enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
            enc = {k: v.to(self.model.device) for k, v in enc.items()}
            if "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].to(self.model.dtype)
            sample = temperature >= 1e-4  # FastChat gen_model_answer.py: below 1e-4 is greedy
            gen = self._generate_ids(enc, num_return_sequences, do_sample=sample,
                                     temperature=temperature if sample else None, top_p=top_p if sample else None,
                                     top_k=None, max_new_tokens=max_new_tokens,
                                     pad_token_id=self.tokenizer.pad_token_id,
                                     eos_token_id=self.tokenizer.eos_token_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            decoded = [self.clean(t) for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]
            for i in range(len(chunk)):
                out.append(decoded[i * num_return_sequences:(i + 1) * num_return_sequences])
        return out


def batch_seed(seed: int, prompt_ids: list[str]) -> int:
    """The sampling seed of one batch, from the run seed and its prompt ids (`pairing.prompt_seed`; a batch of one
    prompt samples with that prompt's own seed), so it does not depend on what ran before it."""
    from mmpref.pairing import prompt_seed

    return prompt_seed(seed, "\n".join(prompt_ids)) % (2 ** 63)


def sampler_identity(params) -> str:
    """The content identity of what draws the samples of stage 02, which `sample_responses` keys its rows by: the
    policy checkpoint's content, the `models` section (prompt format, picture padding, dtype), the chat templates it
    resolves to, the serving engine's settings when it samples there, and the decoding settings (k, temperature,
    top-p, max_new_tokens) and seed. Another policy or setting samples again; the batch size does not count."""
    from mmpref.engine import uses_engine  # engine builds on this module

    s = params.sampling
    return sha256_json({"checkpoint": checkpoint_identity(params.model_ref(params.models.policy)),
                        "models": params.section_hash("models"), "chat_templates": list(chat_templates(params)),
                        "engine": params.section_hash("engine") if uses_engine(params, "sampling") else None,
                        "k": s.k, "temperature": s.temperature, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                        "seed": params.run.seed})[:16]


def sample_responses(policy: "Generator | Callable[[], Generator]", prompts: list[dict], run_dir: Path,
                     out_path: Path, *, k: int, temperature: float, top_p: float, max_new_tokens: int,
                     batch_size: int, seed: int, sampled_by: str | None = None) -> list[dict]:
    """k samples per prompt into samples.jsonl, appended batch by batch (an interrupted stage resumes).

    Exact resume: the prompts are cut into batches of `batch_size` in prompt order and each batch samples with
    `batch_seed(seed, its ids)`, so a batch that was cut off half-written is generated again identically and only its
    missing rows are written. A generator that seeds every request on its own (`seeds_per_request`: a serving
    engine, one request per prompt with n = k) is asked for the missing prompts only, each with its prompt's own seed
    (`batch_seed(seed, [id])`, what a batch of one gets). A row is reused only for the same k and temperature and, given
    `sampled_by` (`sampler_identity`), only a row drawn by that policy with those settings (rows drawn by another
    checkpoint are sampled again, so the annotations and pairs never mix models). At the
    end the file is rewritten in prompt order with the rows of current prompts only: rows of prompts no longer present
    are dropped (and so never reach annotation or the training sets). `policy` may be a zero-argument function that
    loads it, called only when something is left to sample. Rows: prompt_id, responses (k), model, temperature,
    seed."""
    old = {r["prompt_id"]: r for r in read_jsonl(out_path, appended=True)} if out_path.exists() else {}
    ids = [p["id"] for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("sample_responses: duplicate prompt ids")
    done = {pid: r for pid, r in old.items()
            if pid in set(ids) and len(r.get("responses", [])) == k and r.get("temperature") == temperature
            and (sampled_by is None or r.get("sampled_by") == sampled_by)}
    redone = sum(pid in set(ids) and pid not in done for pid in old)
    missing = [p for p in prompts if p["id"] not in done]
    if missing and not isinstance(policy, Generator):
        policy = policy()
    if getattr(policy, "seeds_per_request", False):
        todo = [missing[i:i + batch_size] for i in range(0, len(missing), batch_size)]
    else:
        batches = [prompts[i:i + batch_size] for i in range(0, len(prompts), batch_size)]
        todo = [b for b in batches if any(p["id"] not in done for p in b)]
    log.info("sampling %d prompts x %d (already done: %d; %d sampled before by another policy or settings; "
             "dropped: %d rows of prompts no longer present)", len(missing), k, len(done), redone,
             len(set(old) - set(ids)))
    for chunk in bar(todo, desc="sample"):
        chunk_seed = batch_seed(seed, [p["id"] for p in chunk])
        reqs = [ChatRequest(turns=[p["question"]], image=str(run_dir / p["image"]),
                            seed=batch_seed(seed, [p["id"]]) if policy.seeds_per_request else None) for p in chunk]
        outs = policy.generate(reqs, num_return_sequences=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=len(chunk), seed=chunk_seed, desc=False)
        for p, req, responses in zip(chunk, reqs, outs):
            if p["id"] in done:
                continue
            row = {"prompt_id": p["id"], "responses": responses, "model": policy.name, "temperature": temperature,
                   "seed": chunk_seed if req.seed is None else req.seed,
                   **({"sampled_by": sampled_by} if sampled_by is not None else {})}
            append_jsonl(out_path, row)
            done[p["id"]] = row
    rows = [done[pid] for pid in ids]
    write_jsonl(out_path, rows)
    return rows

"""Sampling and benchmark answers on a serving engine (vLLM, SGLang) through its OpenAI-compatible API.

`ServedPolicy` answers ChatRequests like `sampling.Policy`, but every request is one `chat.completions` call to a
running server: for sampling ONE call per prompt with `n = k` (the engine prefills image and prompt once and decodes
k continuations from the shared KV cache: vLLM's `n` and prefix caching), with `temperature`, `top_p`,
`max_tokens` and a per-request `seed`; images go as base64 `image_url` data URLs in the OpenAI content-parts format.
It writes the same samples.jsonl rows and benchmark answer files as the HF backend: `sample_responses` and
`evaluate.protocol.run_benchmark` take either.

The server renders the prompt with ITS chat template, so start it with mmpref's (`write_chat_template`), or it
samples in another prompt format than the HF backend and training use. Evaluated adapters are addressed by the
served model name given in `engine.adapters` (vLLM `--lora-modules name=path`, or a merged checkpoint served under
that name: `export_for_serving` says which an adapter needs). README "Serving engine" has the command lines.

Params (`engine:` section, absent or `backend: hf` = HF generate everywhere):

    engine:
      backend: openai_server
      base_url: http://127.0.0.1:8000/v1
      model: llava-1.5-13b            # served name of models.policy (vllm serve ... --served-model-name)
      base_lm_model: {model: vicuna-13b, base_url: http://127.0.0.1:8001/v1}   # null: evaluated with HF
      adapters:                       # evaluated model -> served name (every trained one is needed)
        dpo: dpo                      #   a LoRA module of the policy's server (--lora-modules dpo=...)
        sft_gold: {model: sft_gold, base_url: http://127.0.0.1:8002/v1}    # a merged checkpoint on its own server
      use_for: [sampling, evaluate]
      api_key_env: null               # NAME of the environment variable holding the key; null: none ("EMPTY")
"""

from __future__ import annotations

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from mmpref.console import bar as progress_bar
from mmpref.sampling import ChatRequest, Generator, Policy, open_image

log = logging.getLogger(__name__)


class EngineError(RuntimeError):
    """The serving engine refused or failed a request, or cannot be reached; the message says which and why."""


def _server_message(exc) -> str:
    """The server's own error message of an openai.APIStatusError (OpenAI's and vLLM's `{"error": {"message"}}`,
    older vLLM's top-level `message`), else the SDK's summary."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if isinstance(inner.get("message"), str):
            return inner["message"].rstrip(".")
    return str(exc.message).rstrip(".")


def image_part(path: str | Path) -> dict:
    """One image as an OpenAI `image_url` content part (base64 data URL). A missing or unreadable image raises
    ValueError naming the file before anything is sent."""
    from mmpref.judges.openai_compat import image_data_url

    open_image(path)  # decodes it: a corrupt file fails here, with its name, not as an opaque 400 from the server
    return {"type": "image_url", "image_url": {"url": image_data_url(path)}}


def chat_request_messages(req: ChatRequest, question_transform: Callable[[str], str] | None = None) -> list[dict]:
    """The OpenAI `messages` of one ChatRequest: the structure `models.chat_messages` gives the HF processor
    (image parts first in the first user turn, or in every user turn with `image_every_turn`), images as data
    URLs. Assistant turns are plain strings."""
    turns = [question_transform(t) for t in req.turns] if question_transform else list(req.turns)
    if len(req.answers) not in (len(turns), len(turns) - 1):
        raise ValueError(f"{len(turns)} user turns need {len(turns) - 1} or {len(turns)} answers, "
                         f"got {len(req.answers)}")
    image = image_part(req.image) if req.image is not None else None
    messages: list[dict] = []
    for i, turn in enumerate(turns):
        parts = [image] if image is not None and (i == 0 or req.image_every_turn) else []
        messages.append({"role": "user", "content": parts + [{"type": "text", "text": turn}]})
        if i < len(req.answers):
            messages.append({"role": "assistant", "content": req.answers[i]})
    return messages


class ServedPolicy(Generator):
    """A model on an OpenAI-compatible serving engine, used like `Policy` (generate / greedy_fn).

    One chat-completions request per ChatRequest (n = num_return_sequences), up to `max_concurrency` in flight;
    request i of a call is sampled with its own `seed` (req.seed, else seed + i), so any subset of prompts can be
    asked again alone and gets the same answers from a deterministic engine. The SDK retries 429/5xx/connection
    errors `max_retries` times with backoff; what is left becomes an EngineError that names the server, the served
    model and the cause."""

    seeds_per_request = True

    def __init__(self, name: str, served_model: str, base_url: str, *, api_key: str | None = None,
                 is_vlm: bool = True, question_transform: Callable[[str], str] | None = None,
                 max_concurrency: int = 16, timeout_s: float = 600.0, max_retries: int = 3):
        import openai

        self.name = name
        self.served_model = served_model
        self.base_url = base_url
        self.is_vlm = is_vlm
        self.question_transform = question_transform
        self.max_concurrency = max_concurrency
        self._client = openai.OpenAI(api_key=api_key or "EMPTY", base_url=base_url, timeout=timeout_s,
                                     max_retries=max_retries)
        self._lock = threading.Lock()
        self.usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}

    def served_models(self) -> list[str]:
        """The model names the server answers to (GET /v1/models): the base model and every served LoRA."""
        import openai

        try:
            return [m.id for m in self._client.models.list()]
        except openai.APIConnectionError as exc:
            raise EngineError(self._unreachable(exc)) from None
        except openai.APIStatusError as exc:
            raise EngineError(f"serving engine at {self.base_url}: listing models failed with HTTP "
                              f"{exc.status_code}: {_server_message(exc)}") from None

    def check_served(self) -> None:
        """Fail early, naming what is missing, when the server does not serve `served_model`."""
        served = self.served_models()
        if self.served_model not in served:
            raise EngineError(f"serving engine at {self.base_url} does not serve {self.served_model!r} (for "
                              f"{self.name}); it serves {served}. Start it with --served-model-name / --lora-modules "
                              f"{self.served_model}=PATH, or fix the name in params `engine`.")

    def _unreachable(self, exc: Exception) -> str:
        return (f"cannot reach the serving engine at {self.base_url} ({type(exc).__name__}: {exc}); is `vllm serve` "
                f"(or SGLang) running there? See README 'Serving engine'.")

    def _complete(self, req: ChatRequest, *, n: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int) -> list[str]:
        import openai

        if req.image is not None and not self.is_vlm:
            raise ValueError(f"{self.name} is a text-only model and cannot take an image ({req.image})")
        greedy = temperature < 1e-4  # FastChat gen_model_answer.py: below 1e-4 is greedy (as Policy.generate)
        kwargs = dict(model=self.served_model, messages=chat_request_messages(req, self.question_transform), n=n,
                      temperature=0.0 if greedy else temperature, top_p=1.0 if greedy else top_p,
                      max_tokens=max_new_tokens, seed=seed % (2 ** 63))
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except openai.APIConnectionError as exc:  # APITimeoutError included
            raise EngineError(self._unreachable(exc)) from None
        except openai.APIStatusError as exc:
            hint = ""
            if exc.status_code == 404:
                hint = (f" The server may not serve {self.served_model!r}: check `--served-model-name` / "
                        f"`--lora-modules` against params engine.")
            where = f" (image {req.image})" if req.image else ""
            raise EngineError(f"serving engine at {self.base_url}, model {self.served_model!r}{where}: HTTP "
                              f"{exc.status_code}: {_server_message(exc)}.{hint}") from None
        choices = sorted(resp.choices or [], key=lambda c: c.index)
        if [c.index for c in choices] != list(range(n)):
            raise EngineError(f"serving engine at {self.base_url}, model {self.served_model!r}: asked for n={n} "
                              f"completions, got choices {[c.index for c in choices]}")
        with self._lock:
            self.usage["requests"] += 1
            if resp.usage is not None:
                self.usage["prompt_tokens"] += resp.usage.prompt_tokens or 0
                self.usage["completion_tokens"] += resp.usage.completion_tokens or 0
        return [self.clean(c.message.content or "") for c in choices]

    def generate(self, requests: list[ChatRequest], *, num_return_sequences: int = 1, temperature: float = 0.0,
                 top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 16, seed: int = 0,
                 desc: str | None = None) -> list[list[str]]:
        """num_return_sequences answers per request; temperature 0 means greedy. batch_size is not used (the
        engine batches on its own; `max_concurrency` requests are in flight)."""
        def one(i: int) -> list[str]:
            r = requests[i]
            return self._complete(r, n=num_return_sequences, temperature=temperature, top_p=top_p,
                                  max_new_tokens=max_new_tokens, seed=r.seed if r.seed is not None else seed + i)

        out: list[list[str] | None] = [None] * len(requests)
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(requests) or 1))) as pool:
            futures = {pool.submit(one, i): i for i in range(len(requests))}
            bar = progress_bar(total=len(requests), desc=desc or f"generate {self.name} ({self.served_model})",
                                disable=desc is False)
            try:
                for fut in futures:  # in order: the first failure is raised, the rest are cancelled
                    out[futures[fut]] = fut.result()
                    bar.update(1)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
            finally:
                bar.close()
        return [list(o) for o in out]  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------------------
# Params: which backend answers which model

def uses_engine(params, stage: str) -> bool:
    """Whether `stage` ("sampling" or "evaluate") runs on the serving engine."""
    eng = params.engine
    return eng is not None and eng.backend == "openai_server" and stage in eng.use_for


def served_name(params, name: str, adapter: str | Path | None, base_lm: bool = False) -> tuple[str, str] | None:
    """(served model name, server URL) that answers for model `name` (None: not on the engine: the base LM without
    `engine.base_lm_model`). An adapter without an entry in `engine.adapters` is an error naming it."""
    eng = params.engine
    if base_lm:
        entry = eng.base_lm_model
    elif adapter is None:
        entry = eng.model
    elif name not in eng.adapters:
        raise EngineError(f"params engine.adapters has no served name for {name!r} (adapter {adapter}); add "
                          f"`{name}: <served LoRA or model name>` (see README 'Serving engine') or evaluate with "
                          f"engine.use_for without 'evaluate'")
    else:
        entry = eng.adapters[name]
    if entry is None:
        return None
    return (entry, eng.base_url) if isinstance(entry, str) else (entry.model, entry.base_url)


def api_key(params) -> str | None:
    """The engine's API key, read from the environment variable params name (never from params)."""
    env = params.engine.api_key_env
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise EngineError(f"params engine.api_key_env names {env!r}, which is not set in the environment")
    return key


def load_generator(params, name: str, *, stage: str, adapter: str | Path | None = None, base_lm: bool = False,
                   question_transform: Callable[[str], str] | None = None) -> Generator:
    """The model `name` as params want it for `stage` ("sampling" / "evaluate"): a ServedPolicy on the serving
    engine (checked to be served), or the checkpoint loaded with HF (`Policy.from_params`)."""
    served = served_name(params, name, adapter, base_lm) if uses_engine(params, stage) else None
    if served is None:
        return Policy.from_params(params, name, adapter=adapter, base_lm=base_lm,
                                  question_transform=question_transform)
    eng = params.engine
    model, url = served
    policy = ServedPolicy(name, model, url, api_key=api_key(params), is_vlm=not base_lm,
                          question_transform=question_transform, max_concurrency=eng.max_concurrency,
                          timeout_s=eng.timeout_s, max_retries=eng.max_retries)
    policy.check_served()
    log.info("%s: served model %r at %s", name, model, url)
    return policy


# ----------------------------------------------------------------------------------------------------------------
# What the server needs: mmpref's chat template, and adapters it can serve

def write_chat_template(params, path: str | Path, base_lm: bool = False) -> Path:
    """Write the chat template the HF backend renders prompts with (models.chat_template: the family's, e.g.
    LLaVA's conv_vicuna_v1 with its system prompt and `</s>` after answers; or the checkpoint's own) to a Jinja
    file for `vllm serve --chat-template` / SGLang, so the engine samples in the same prompt format."""
    from mmpref.models import chat_templates, load_processor

    vlm, text = chat_templates(params)
    template = text if base_lm else vlm
    if template is None:  # models.chat_template: checkpoint -> the checkpoint's own
        ref = params.model_ref(params.models.base_lm if base_lm else params.models.policy)
        if base_lm:
            from transformers import AutoTokenizer

            template = AutoTokenizer.from_pretrained(ref).chat_template
        else:
            template = load_processor(ref).chat_template
    path = Path(path)
    path.write_text(template, encoding="utf-8")
    return path


def lora_problems(adapter_dir: str | Path) -> list[str]:
    """Why a PEFT adapter cannot be served as a vLLM LoRA module (empty: it can). vLLM loads LoRA A/B weights of
    the language model only; it refuses fully trained modules (`modules_to_save`, e.g. the projector trained
    with `train_projector: true`: "... is unsupported LoRA weight", vllm/lora/utils.py parse_fine_tuned_lora_name)."""
    adapter_dir = Path(adapter_dir)
    cfg_path = adapter_dir / "adapter_config.json"
    if not cfg_path.exists():
        return [f"{adapter_dir} has no adapter_config.json (not a PEFT adapter)"]
    cfg = json.loads(cfg_path.read_text())
    problems = []
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save {cfg['modules_to_save']} (trained in full, not LoRA)")
    weights = adapter_dir / "adapter_model.safetensors"
    if weights.exists():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            other = [k for k in f.keys() if not k.endswith((".lora_A.weight", ".lora_B.weight",
                                                           "lora_embedding_A", "lora_embedding_B"))]
        if other:
            problems.append(f"{len(other)} non-LoRA tensors, e.g. {other[0]}")
    return problems


def export_for_serving(params, adapter_dir: str | Path, out_dir: str | Path) -> tuple[str, Path]:
    """What to serve for one trained adapter: ("lora", adapter_dir) when vLLM can load it as a LoRA module
    (`--lora-modules NAME=adapter_dir`), else ("merged", out_dir): the adapter merged into the base checkpoint and
    saved with its processor and mmpref's chat template, to serve as a model of its own
    (`vllm serve out_dir --served-model-name NAME`)."""
    problems = lora_problems(adapter_dir)
    if not problems:
        return "lora", Path(adapter_dir)
    from mmpref.models import chat_templates, load_vlm

    log.info("%s cannot be a vLLM LoRA module (%s): writing a merged checkpoint to %s", adapter_dir,
             "; ".join(problems), out_dir)
    model, processor = load_vlm(params.model_ref(params.models.policy), adapter=adapter_dir,
                                dtype=params.models.dtype, device="cpu", chat_template=chat_templates(params)[0])
    import torch

    out = Path(out_dir)
    model.to(getattr(torch, params.models.dtype))  # load_vlm computes in float32 on CPU; save in the run's dtype
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return "merged", out

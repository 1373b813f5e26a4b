"""Judges: one small interface (`Judge.complete`), the backends (`BACKENDS`: rubric, reward_model, gemini, openai), and the
annotation tasks. Benchmark grading (judge prompts, reply parsers) lives in each benchmark's module, mmpref/evaluate/.

A backend is a `Judge` subclass that describes itself (`backend`, `key_envs`, `free`, `needs_key`, a `prefetch`
method when it has a batch API); adding one is its module plus one entry in `BACKENDS` (CONTRIBUTING.md): params
validation, `make_judge`, `mmpref check` and the cost estimate read it from there."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from mmpref.judges.base import Judge, JudgeError, JudgeReply, JudgeRequest, JudgeStopped, RetryableJudgeError
from mmpref.judges.gemini import GeminiJudge
from mmpref.judges.openai_compat import OpenAIJudge
from mmpref.judges.parsing import AttributeScores, ParseError
from mmpref.judges.reward_model import RewardModelJudge
from mmpref.judges.rubric import RubricJudge
from mmpref.judges.tasks import Annotation, annotate_responses, gold_answer

BACKENDS: dict[str, type[Judge]] = {cls.backend: cls for cls in (RubricJudge, RewardModelJudge, GeminiJudge, OpenAIJudge)}
_API_ONLY_OPTIONS = {"base_url", "api_version", "temperature", "max_output_tokens", "timeout_s", "structured_output"}


def make_judge(backend: str, model: str | None = None, cache_dir: str | Path | None = None, **limits) -> Judge:
    """Build a judge. backend: "rubric" (model ignored), "reward_model" (model: its adapter folder), "gemini" or
    "openai" (model required).

    `limits` go to the backend: max_concurrency (alias max_workers), requests_per_minute, tokens_per_minute,
    network_retries (of one call: 429/5xx/timeouts), backoff_initial_s, backoff_max_s,
    price_input_per_mtok, price_output_per_mtok, and for API backends base_url, temperature, max_output_tokens,
    timeout_s (gemini also api_version; openai also structured_output).
    """
    if "max_workers" in limits:  # params call it max_workers: the number of judge calls in flight
        workers = limits.pop("max_workers")
        limits.setdefault("max_concurrency", workers)
    cls = BACKENDS.get(backend)
    if cls is None:
        raise ValueError(f"unknown judge backend {backend!r}; choose one of {list(BACKENDS)}")
    if not cls.api:
        limits = {k: v for k, v in limits.items() if k not in _API_ONLY_OPTIONS}  # one params block fits all
    if not cls.takes_model:
        return cls(cache_dir=cache_dir, **limits)
    if not model:
        raise ValueError(f"judge backend {backend!r} needs a pinned model id" +
                         (" (its adapter folder)" if cls.free else ""))
    return cls(model=model, cache_dir=cache_dir, **limits)


def judge_from_params(j, cache_dir: str | Path | None, local_path: Callable[[str], Path] | None = None) -> Judge:
    """The judge a params `judge` block (annotation's, or `evaluate.judge`) describes, prices included.
    `local_path` (the run's `Params.path`) expands `{run_dir}` in the model of a local backend whose model is a
    folder (the reward model's adapter)."""
    prices = {k: getattr(j, k) for k in ("price_input_per_mtok", "price_output_per_mtok") if getattr(j, k) is not None}
    model = j.model
    if model and local_path is not None and BACKENDS[j.backend].free and BACKENDS[j.backend].takes_model:
        model = str(local_path(model))
    judge = make_judge(j.backend, model, cache_dir=cache_dir, base_url=j.base_url, max_workers=j.max_workers,
                      requests_per_minute=j.requests_per_minute, tokens_per_minute=j.tokens_per_minute,
                      network_retries=j.network_retries, backoff_initial_s=j.backoff_initial_s,
                      backoff_max_s=j.backoff_max_s, timeout_s=j.timeout_s, **prices)
    judge.retry_failed = j.retry_failed  # graders re-ask the items whose grading failed (mmpref.evaluate.protocol)
    judge.max_consecutive_failures = j.max_consecutive_failures  # then the judge stops (JudgeStopped)
    if j.batch:  # a backend with a batch API (`prefetch`): params validation checks it
        judge.batch, judge.batch_poll_s, judge.batch_expired = True, j.batch_poll_s, j.batch_expired
    judge.batch_price_factor = j.batch_price_factor
    return judge


__all__ = ["Judge", "JudgeError", "JudgeReply", "JudgeRequest", "JudgeStopped", "RetryableJudgeError", "AttributeScores",
           "ParseError", "RubricJudge", "RewardModelJudge", "GeminiJudge", "OpenAIJudge", "Annotation", "annotate_responses", "gold_answer", "make_judge", "judge_from_params", "BACKENDS"]

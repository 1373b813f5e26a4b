"""The judge interface: requests, replies, and the machinery every backend shares.

`Judge.complete` wraps a backend's `_call` with a content-hash disk cache (never pay twice), bounded concurrency, a
requests-per-minute and a tokens-per-minute limiter, network retries with exponential backoff on 429/5xx/timeouts
honouring Retry-After (`network_retries`, distinct from re-asking after an unparsable reply, which is the caller's
`ask_until_parsed`), and running totals of tokens and cost.

Batch judging of any stage (`batch_calls`): the stage's work runs with the judge in planning mode, in which the cache
and the batch results answer and the first request they cannot answer stops the work and is recorded; the recorded
requests are answered through the backend's batch API (`prefetch`, gemini) and the work runs again, round after round,
until every request it makes is answered. The stage then does its work for real with no per-request call.

A judge that fails call after call (a wrong key, model name or endpoint) stops: after `max_consecutive_failures`
calls in a row failed for good (JudgeError: refused, or network retries exhausted), `complete` raises JudgeStopped, for
that call and every later one, without calling. JudgeStopped is no JudgeError, so no stage records it as one more
failed item: it ends the stage, with what was finished kept. Any reply (parsable or not) resets the count.

Only accepted replies are cached: `complete(req, check=parse)` stores a reply only when `check(text)` accepts it, and
a cached reply the check rejects (an older cache) is asked again. A reply that fails its check is therefore paid for
once per ask and never turns into a permanent answer.
"""

from __future__ import annotations

import json
import logging
import os
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydantic import BaseModel, field_validator
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from mmpref.evaluate import registry
from mmpref.io import append_jsonl, read_jsonl, sha256_file, sha256_json
from mmpref.judges.parsing import ParseError

log = logging.getLogger(__name__)

FIXED_TASKS = ("annotate", "answer")  # the judges' own tasks; the benchmarks add their gradings' (judge_task)


def judge_tasks() -> list[str]:
    """Every task a JudgeRequest may name: the fixed ones, then the registered benchmarks' judge tasks."""
    return [*FIXED_TASKS, *registry.judge_tasks()]


class JudgeRequest(BaseModel):
    task: str  # one of judge_tasks()
    system: str | None = None
    prompt: str
    images: list[str] = []
    inputs: dict = {}
    truth: dict = {}
    json_schema: str | None = None
    attempt: int = 0
    # the sampling temperature an official script uses for this call (MM-Vet's retries, LLaVA-Bench's 0.2); None
    # leaves the backend's own setting
    temperature: float | None = None
    # the cap on the reply's tokens an official script sends (MM-Vet's max_tokens=3); None leaves the backend's own
    max_tokens: int | None = None
    # the judge run (repeated grading for judge variance); from run 2 on it enters the cache key: a distinct call
    judge_run: int = 1

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in FIXED_TASKS and task not in registry.judge_tasks():
            raise ValueError(f"unknown judge task {task!r}; choose one of {judge_tasks()}")
        return task


class JudgeReply(BaseModel):
    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False
    judge_id: str


class Unanswered(BaseException):
    """Raised by `Judge.complete` in planning mode (`Judge.batch_calls`): the request neither the cache nor a batch
    result answers yet. A BaseException, so that no handler of the work it stops takes it for a failure."""

    def __init__(self, key: str, req: "JudgeRequest", check=None):
        super().__init__(key)
        self.key, self.req, self.check = key, req, check


class JudgeError(RuntimeError):
    """A judge call that failed for good (bad request, auth, retries exhausted)."""


class JudgeStopped(RuntimeError):
    """The judge failed `max_consecutive_failures` calls in a row and makes no more calls (see the module docstring).
    Not a JudgeError: it stops the stage instead of failing one more item."""


class RetryableJudgeError(JudgeError):
    """A transient failure (429, 5xx, connection); `retry_after` is the server's Retry-After in seconds, if any."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After header value in seconds (delta-seconds form, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def is_transient(exc: BaseException) -> bool:
    """A connection-level failure worth retrying: a transport error or timeout of the HTTP client (httpx, or the copy
    an SDK vendors, whatever its module), a dropped connection, or a malformed/partial reply body."""
    import json as _json

    names = {c.__name__ for c in type(exc).__mro__}
    return bool(names & {"TransportError", "TimeoutException", "ConnectionError", "TimeoutError"}) or \
        isinstance(exc, _json.JSONDecodeError)


def is_retryable_status(code: int | None) -> bool:
    return code is not None and (code in (408, 409, 429) or code >= 500)


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (thread-safe). rpm None or <= 0: no limit."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute and requests_per_minute > 0 else 0.0
        self._lock = threading.Lock()
        self._next = 0.0

    def acquire(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


class TokenLimiter:
    """A token bucket refilled at tokens_per_minute (thread-safe); `take(n)` waits until n tokens are available (a
    request larger than the bucket waits for a full bucket and borrows the rest), `settle(n)` charges tokens learnt
    after the call (the reply's real usage minus the estimate). None or <= 0: no limit."""

    def __init__(self, tokens_per_minute: float | None):
        self.rate = tokens_per_minute / 60.0 if tokens_per_minute and tokens_per_minute > 0 else 0.0
        self.capacity = float(tokens_per_minute or 0)
        self._lock = threading.Lock()
        self._level = self.capacity
        self._stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def take(self, n: float) -> None:
        if not self.rate:
            return
        while True:
            with self._lock:
                self._refill()
                need = min(n, self.capacity)
                if self._level >= need:
                    self._level -= n
                    return
                wait = (need - self._level) / self.rate
            time.sleep(min(wait, 1.0))

    def settle(self, n: float) -> None:
        if self.rate and n:
            with self._lock:
                self._refill()
                self._level -= n


def estimate_tokens(req: "JudgeRequest") -> int:
    """A request's input tokens before sending it: ~4 characters per token, 258 per image (Gemini's count)."""
    return (len(req.system or "") + len(req.prompt)) // 4 + 258 * len(req.images)


def accepts(check, text: str) -> bool:
    """Whether `check(text)` accepts a reply (returns instead of raising ValueError, ParseError included)."""
    if check is None:
        return True
    try:
        check(text)
    except ValueError:
        return False
    return True


class Judge:
    """Base class. Backends set `judge_id` and `model` and implement `_call(req) -> JudgeReply`."""

    judge_id: str = "judge"
    model: str = ""
    uses_truth: bool = False  # only the rubric judge reads req.truth / req.inputs; they enter its cache key
    retry_failed: bool = False  # graders re-ask items whose grading failed (set from params judge.retry_failed)
    batch: bool = False  # stages submit their first requests ahead with `prefetch` (a batch API; gemini only)
    batch_poll_s: float = 30.0  # seconds between polls of a batch job
    batch_price_factor: float = 0.5  # a batch reply costs this fraction of the interactive price
    batch_expired: str = "per_request"  # items of an expired/cancelled/failed job: per_request, resubmit or fail
    max_consecutive_failures: int | None = 20  # calls failed in a row before the judge stops (None: never)
    # what a backend says of itself (mmpref.judges.BACKENDS reads it: config, make_judge, `mmpref check`, costs)
    backend: str = ""  # its params name (judge.backend)
    key_envs: tuple[str, ...] = ()  # the environment variables its API key comes from, the first one preferred
    free: bool = False  # runs locally at no cost and with no key (the rubric judge, the reward model)
    takes_model: bool = True  # judge.model names what answers (a model id; the reward model's adapter folder)
    api: bool = True  # calls an API (base_url, timeout_s, temperature... apply)
    writes_gold = True  # answers stage 02's gold-answer requests (task "answer")
    grades_benchmarks = True  # answers stage 09's grading requests (evaluate.judge)
    base_url: str | None = None  # its endpoint (None: the backend's default)

    def __init__(
        self,
        cache_dir: str | Path | None = None,
        max_concurrency: int = 4,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        network_retries: int = 6,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        price_input_per_mtok: float = 0.0,
        price_output_per_mtok: float = 0.0,
    ):
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_concurrency = max_concurrency
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._limiter = RateLimiter(requests_per_minute)
        self._tokens = TokenLimiter(tokens_per_minute)
        self.network_retries = network_retries  # retries (429/5xx/timeouts) of one request (params: network_retries)
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.price_input_per_mtok = price_input_per_mtok
        self.price_output_per_mtok = price_output_per_mtok
        self._totals_lock = threading.Lock()
        # replies a batch job gave that the cache does not hold (rejected by their check) or errors of its failed
        # items: `complete` answers each once from here, with no call (see GeminiJudge.prefetch)
        self._staged: dict[str, JudgeReply | JudgeError] = {}
        self._planning = threading.local()  # planning mode of `batch_calls` (in the thread that plans only)
        self._failures_in_a_row = 0
        self._stopped: str | None = None  # why the judge stopped (see JudgeStopped)
        self.totals = {"calls": 0, "batch_items": 0, "cache_hits": 0, "retries": 0, "rejected": 0, "input_tokens": 0, "output_tokens": 0,
                       "cost_usd": 0.0}

    # ---- to implement -------------------------------------------------------------------------------------
    def _call(self, req: JudgeRequest) -> JudgeReply:  # pragma: no cover - abstract
        raise NotImplementedError

    # ---- cache --------------------------------------------------------------------------------------------
    def cache_key(self, req: JudgeRequest) -> str:
        images = []
        for img in req.images:
            if not Path(img).is_file():
                raise ValueError(f"judge request image not found: {img}")
            images.append(sha256_file(img))
        material = {
            "judge_id": self.judge_id,
            "model": self.model,
            "task": req.task,
            "system": req.system,
            "prompt": req.prompt,
            "images": images,
            "json_schema": req.json_schema,
            "attempt": req.attempt,
        }
        if req.temperature is not None:  # only when set, so the keys of earlier requests stay valid
            material["temperature"] = req.temperature
        if req.max_tokens is not None:  # the same
            material["max_tokens"] = req.max_tokens
        if req.judge_run > 1:  # run 1 keeps the keys of earlier requests
            material["judge_run"] = req.judge_run
        if self.uses_truth:
            material["inputs"] = req.inputs
            material["truth"] = req.truth
        return sha256_json(material)

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cache_get(self, key: str) -> JudgeReply | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            reply = JudgeReply.model_validate(data["reply"])
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable judge cache file %s (%s)", path, exc)
            return None
        return reply.model_copy(update={"cached": True})

    def _cache_put(self, key: str, req: JudgeRequest, reply: JudgeReply, rejected: bool = False,
                   batch: str | None = None) -> None:
        """Store a reply under its key; a rejected reply goes to `rejected/<key>-<time>.json` instead, where it is
        never read as an answer but still counts in the run's spend (`runner.judge_spend`)."""
        path = self._cache_path(key)
        if path is None:
            return
        if rejected:
            path = self.cache_dir / "rejected" / f"{key}-{time.time_ns()}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"key": key, "judge_id": self.judge_id, "model": self.model, "task": req.task,
                  "attempt": req.attempt, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "reply": reply.model_dump(exclude={"cached"})}
        if batch:  # the batch job that answered it (billed at batch_price_factor of the price)
            record["batch"] = batch
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, ensure_ascii=False)
        os.replace(tmp, path)

    # ---- the call -----------------------------------------------------------------------------------------
    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = min(float(retry_after), self.backoff_max_s)
        else:
            delay = min(self.backoff_initial_s * 2 ** (state.attempt_number - 1), self.backoff_max_s)
            delay *= 0.5 + random.random() / 2
        with self._totals_lock:
            self.totals["retries"] += 1
        log.warning("%s: transient error (%s); retry %d in %.1fs", self.judge_id, exc, state.attempt_number, delay)
        return delay

    @classmethod
    def needs_key(cls, base_url: str | None) -> bool:
        """Whether this backend needs an API key at `base_url` (a local server may not)."""
        return bool(cls.key_envs)

    def what_to_check(self) -> str:
        """What to check when every call fails: the key, the model name, the endpoint."""
        key = f"the API key ({' or '.join(self.key_envs)})" if self.key_envs else "the API key"
        return (f"{key}, the model name ({self.model!r}) and the endpoint "
                f"({self.base_url or 'the backend default'})")

    def _failed_call(self, exc: JudgeError) -> None:
        """Count a call that failed for good; raise JudgeStopped when it is the `max_consecutive_failures`-th in a
        row."""
        with self._totals_lock:
            self._failures_in_a_row += 1
            limit = self.max_consecutive_failures
            if limit and self._failures_in_a_row >= limit and self._stopped is None:
                self._stopped = (
                    f"{self.judge_id}: {self._failures_in_a_row} judge calls failed in a row "
                    f"(judge.max_consecutive_failures = {limit}), so the judge stopped instead of asking the remaining "
                    f"items. Last error: {exc}. Check {self.what_to_check()}. Every finished item is kept: run the "
                    f"stage again once the judge answers (--retry-failed re-asks the items recorded as failed).")
                log.error("%s", self._stopped)
        self._raise_if_stopped()

    def _raise_if_stopped(self) -> None:
        if self._stopped is not None:
            raise JudgeStopped(self._stopped)

    def _call_once(self, req: JudgeRequest) -> JudgeReply:
        self._raise_if_stopped()  # also between the network retries of a call
        estimate = estimate_tokens(req)
        with self._slots:
            self._tokens.take(estimate)
            self._limiter.acquire()
            reply = self._call(req)
        self._tokens.settle(reply.input_tokens + reply.output_tokens - estimate if reply.input_tokens else 0)
        return reply

    def complete(self, req: JudgeRequest, check=None) -> JudgeReply:
        """Answer one request: from the cache when possible, otherwise by calling the backend (retried).

        `check(text)` (optional) validates the reply: a reply it rejects (raises ValueError / ParseError) is returned
        but not cached, and a cached reply it rejects is not used."""
        key = self.cache_key(req)
        if getattr(self._planning, "on", False):
            return self._planned(key, req, check)
        hit = self._cache_get(key)
        if hit is not None and accepts(check, hit.text):
            with self._totals_lock:
                self.totals["cache_hits"] += 1
            return hit
        staged = self._staged.pop(key, None)
        if isinstance(staged, JudgeError):  # an item its batch job failed: a failure, as a per-request one would be
            raise staged
        if staged is not None:  # a batch reply its check rejected (already paid and kept in rejected/)
            with self._totals_lock:
                self.totals["rejected"] += 1
            return staged
        retrying = Retrying(
            retry=retry_if_exception_type(RetryableJudgeError),
            stop=stop_after_attempt(self.network_retries + 1),
            wait=self._wait,
            reraise=True,
        )
        try:
            reply = retrying(self._call_once, req)
        except RetryableJudgeError as exc:
            error = JudgeError(f"{self.judge_id}: giving up after {self.network_retries} retries: {exc}")
            self._failed_call(error)
            raise error from exc
        except JudgeError as exc:
            self._failed_call(exc)
            raise
        with self._totals_lock:
            self._failures_in_a_row = 0
        reply = self._account(reply)
        ok = accepts(check, reply.text)
        self._cache_put(key, req, reply, rejected=not ok)
        if not ok:
            with self._totals_lock:
                self.totals["rejected"] += 1
        return reply

    # ---- batch judging ------------------------------------------------------------------------------------
    def _planned(self, key: str, req: JudgeRequest, check) -> JudgeReply:
        """`complete` in planning mode: what the cache or a batch result answers (a staged reply or failure is only
        looked at: the real pass takes it), else Unanswered. Nothing is paid and no total counts."""
        hit = self._cache_get(key)
        if hit is not None and accepts(check, hit.text):
            return hit
        staged = self._staged.get(key)
        if isinstance(staged, JudgeError):
            raise staged
        if staged is not None:
            return staged
        raise Unanswered(key, req, check)

    def stage(self, job_dir: str | Path, key: str, outcome: "JudgeReply | JudgeError") -> None:
        """Keep a batch outcome the cache does not hold (a reply its check rejected, or an item its job failed) for
        `complete` to answer once, in memory and in `job_dir/staged.jsonl` (for a restart, see `load_staged`)."""
        self._staged[key] = outcome
        row = {"key": key, "error": str(outcome)} if isinstance(outcome, JudgeError) else \
            {"key": key, "reply": outcome.model_dump()}
        append_jsonl(Path(job_dir) / "staged.jsonl", row)

    def load_staged(self, job_dir: str | Path) -> None:
        """The batch outcomes a killed run collected and had not used yet (see `stage`)."""
        path = Path(job_dir) / "staged.jsonl"
        if not path.is_file():
            return
        for row in read_jsonl(path, appended=True):
            self._staged[row["key"]] = JudgeError(row["error"]) if "error" in row else \
                JudgeReply.model_validate(row["reply"])

    def batch_finished(self, job_dir: str | Path) -> None:
        """A stage has used its batch outcomes: forget the staged ones (a later --retry-failed asks them anew)."""
        (Path(job_dir) / "staged.jsonl").unlink(missing_ok=True)

    def _answered(self, key: str, check) -> bool:
        if key in self._staged:
            return True
        hit = self._cache_get(key)
        return hit is not None and accepts(check, hit.text)

    def batch_calls(self, calls: list, job_dir: str | Path) -> int:
        """Answer through the batch API (`prefetch`, jobs kept in `job_dir`) every request the zero-argument `calls`
        make through `complete`, so that running them afterwards pays no per-request call; returns the rounds run.

        Each round runs every call in planning mode (see the module docstring): a call stops at its first request
        that neither the cache nor a batch result answers, and all those requests go to `prefetch` together. A
        request that depends on an earlier reply (a re-ask after an unparsable reply, such as MM-Vet's next try at a
        higher temperature, or the next grading of the same item) is thus asked in the next round's job, with exactly
        the content, attempt and temperature the per-request path would send. A call that fails (JudgeError, e.g. an
        item its job failed, or an unparsable reply the call does not re-ask) is left for the real pass to record. A request its job left unanswered (an expired job
        under `batch_expired: per_request`) is not submitted again: the real pass asks it one by one."""
        if not hasattr(self, "prefetch"):
            raise ValueError(f"{self.judge_id}: this backend has no batch API (only gemini has)")
        self.load_staged(job_dir)
        given_up: set[str] = set()
        rounds = 0
        while True:
            asks: dict[str, tuple[JudgeRequest, object]] = {}
            self._planning.on = True
            try:
                for call in calls:
                    try:
                        call()
                    except Unanswered as need:
                        if need.key not in given_up:
                            asks.setdefault(need.key, (need.req, need.check))
                    except (JudgeError, ParseError):
                        pass
            finally:
                self._planning.on = False
            if not asks:
                return rounds
            rounds += 1
            log.info("%s: batch round %d: %d requests", self.judge_id, rounds, len(asks))
            self.prefetch([r for r, _ in asks.values()], job_dir, checks=[c for _, c in asks.values()])
            given_up |= {k for k, (_, check) in asks.items() if not self._answered(k, check)}

    def _account(self, reply: JudgeReply, batch: bool = False) -> JudgeReply:
        """Price a paid reply and add it to the totals (a batch item at `batch_price_factor` of the price)."""
        cost = (reply.input_tokens * self.price_input_per_mtok + reply.output_tokens * self.price_output_per_mtok) / 1e6
        if batch:
            cost *= self.batch_price_factor
        with self._totals_lock:
            self.totals["batch_items" if batch else "calls"] += 1
            self.totals["input_tokens"] += reply.input_tokens
            self.totals["output_tokens"] += reply.output_tokens
            self.totals["cost_usd"] += cost
        return reply.model_copy(update={"cost_usd": cost, "cached": False, "judge_id": self.judge_id})

    def complete_many(self, reqs: list[JudgeRequest], max_workers: int | None = None) -> list[JudgeReply]:
        """Answer many requests concurrently (order kept); concurrency is still bounded by max_concurrency."""
        workers = max_workers or self.max_concurrency
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(self.complete, reqs))

    def usage(self) -> dict:
        """Totals so far: calls, cache hits, retries, input/output tokens, cost in USD."""
        with self._totals_lock:
            return dict(self.totals, judge_id=self.judge_id)

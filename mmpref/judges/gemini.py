"""Gemini judge backend (google-genai 3.x): multimodal, structured JSON output, usage accounting.

The SDK's own retries are switched off (one attempt); `Judge.complete` retries 429/5xx itself, honouring Retry-After.
The API key comes only from the environment (GEMINI_API_KEY, else GOOGLE_API_KEY).

Batch API (`judge.batch: true`, half the price, hours of latency): `prefetch(requests, job_dir)` submits the requests
the cache cannot answer as batch jobs of inlined requests (`client.batches.create`, REST
`POST models/{model}:batchGenerateContent`; a stage larger than the API's ~20 MB inline limit is split into several
jobs), records each job in `job_dir/pending.json` before it is created, under a display name of its own, and again with
its id once created: a restarted stage polls the same jobs and never submits them twice, and a job whose creation a
kill cut short (made by the API, its id never received) is found by that display name (`batches.list`). It polls them every `batch_poll_s` seconds (`GET batches/{id}`), and writes every reply into
the same content-hash cache the per-request path uses, so the stage then reads them with no further calls. An item the
job failed is answered once by `complete` with a JudgeError (recorded failed by the stage, never cached); a reply its
check rejects goes to the cache's rejected/ folder and is answered once the same way. Both are kept in
`job_dir/staged.jsonl` until the stage has used them (`Judge.batch_finished`), so a stage killed after collecting a
job answers them from there after its restart instead of asking again. A job that ends expired,
cancelled or failed is logged with its state and error; its items are then asked one by one (`batch_expired:
per_request`), submitted once more (`resubmit`), or the stage stops with that error (`fail`).
"""

from __future__ import annotations

import logging
import mimetypes
import os
import re
import time
import uuid
from pathlib import Path

from mmpref.judges.base import Judge, JudgeError, JudgeReply, JudgeRequest, RetryableJudgeError, parse_retry_after
from mmpref.judges.base import accepts, is_retryable_status, is_transient
from mmpref.io import read_json, write_json
from mmpref.judges.parsing import SCHEMAS

log = logging.getLogger(__name__)

KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
BATCH_INLINE_LIMIT = 19_000_000  # bytes of inlined requests per batch job (the API takes up to 20 MB)
BATCH_DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
BATCH_ENDED = BATCH_DONE | {"JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}


def thinks(model: str | None) -> bool:
    """Whether a Gemini model thinks before it answers (2.5 and later; 2.5 Pro cannot be told not to). Its thoughts
    are billed as output and count against `max_output_tokens` (googleapis/python-genai#811: a small cap leaves an
    empty reply with finish reason MAX_TOKENS)."""
    return bool(re.search(r"gemini-(2\.5|[3-9])", model or ""))


def api_key_from_env() -> str:
    for name in KEY_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    raise RuntimeError(
        "Gemini judge: no API key. Set GEMINI_API_KEY (or GOOGLE_API_KEY) in the environment; keys are never read "
        "from params files."
    )


def image_part(path: str | Path):
    """An image file as a google-genai Part (bytes + MIME type)."""
    from google.genai import types

    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read judge image {path}: {exc}") from None
    return types.Part.from_bytes(data=data, mime_type=mime)


class GeminiJudge(Judge):
    """Judge backed by the Gemini API (`models.generate_content`)."""

    backend = "gemini"
    key_envs = KEY_ENV_VARS

    def __init__(
        self,
        model: str = "gemini-2.5-pro",
        cache_dir: str | Path | None = None,
        base_url: str | None = None,
        api_version: str | None = None,
        temperature: float = 0.0,
        max_output_tokens: int | None = None,
        timeout_s: float = 300.0,
        **limits,
    ):
        super().__init__(cache_dir=cache_dir, **limits)
        from google import genai
        from google.genai import types

        self.model = model
        self.judge_id = f"gemini:{model}"
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.base_url = base_url
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours (see Judge.complete)
        )
        self._failed_job: str | None = None  # a batch job that ended badly under batch_expired = fail
        self._client = genai.Client(api_key=api_key_from_env(), http_options=http_options)

    def _config(self, req: JudgeRequest):
        from google.genai import types

        kwargs: dict = {"temperature": self.temperature if req.temperature is None else req.temperature}
        if req.system:
            kwargs["system_instruction"] = req.system
        # the request's cap (MM-Vet's max_tokens=3) before the judge's own; a model that thinks would spend it on its
        # thoughts and reply nothing (`thinks`), so it gets no cap from the request
        if req.max_tokens is not None and not thinks(self.model):
            kwargs["max_output_tokens"] = req.max_tokens
        elif self.max_output_tokens:
            kwargs["max_output_tokens"] = self.max_output_tokens
        if req.json_schema:
            if req.json_schema not in SCHEMAS:
                raise ValueError(f"unknown json_schema {req.json_schema!r} (known: {sorted(SCHEMAS)})")
            kwargs["response_mime_type"] = "application/json"
            # JSON Schema via responseJsonSchema: the pydantic models forbid extra keys, and the older responseSchema
            # (OpenAPI subset) rejects their `additionalProperties` with 400 "Unknown name"
            kwargs["response_json_schema"] = SCHEMAS[req.json_schema].model_json_schema()
        return types.GenerateContentConfig(**kwargs)

    def _translate(self, exc: Exception) -> Exception:
        """An SDK exception as a JudgeError (RetryableJudgeError for 429/5xx/timeouts), or itself if unknown."""
        from google.genai import errors

        if isinstance(exc, errors.APIError):
            code = getattr(exc, "code", None)
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            message = f"Gemini API error {code} {getattr(exc, 'status', '') or ''}: {getattr(exc, 'message', '')}"
            if is_retryable_status(code):
                return RetryableJudgeError(message, status=code, retry_after=parse_retry_after(headers.get("retry-after")))
            return JudgeError(message)
        if is_transient(exc):  # timeouts, dropped connections, malformed reply bodies
            return RetryableJudgeError(f"Gemini connection error or malformed reply: {type(exc).__name__}: {exc}")
        return exc

    def _contents(self, req: JudgeRequest) -> list:
        return [image_part(p) for p in req.images] + [req.prompt]

    def _reply(self, response) -> JudgeReply:
        usage = response.usage_metadata
        n_in = (usage.prompt_token_count or 0) if usage else 0
        n_out = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        text = response.text or ""
        if not text:
            reason = response.candidates[0].finish_reason if response.candidates else "no candidates"
            log.warning("%s: empty reply (finish reason %s)", self.judge_id, reason)
        return JudgeReply(text=text, input_tokens=n_in, output_tokens=n_out, judge_id=self.judge_id)

    def _call(self, req: JudgeRequest) -> JudgeReply:
        try:
            response = self._client.models.generate_content(model=self.model, contents=self._contents(req),
                                                            config=self._config(req))
        except Exception as exc:  # noqa: BLE001
            translated = self._translate(exc)
            if translated is exc:
                raise
            raise translated from exc
        return self._reply(response)

    # ---- Batch API ------------------------------------------------------------------------------------------
    def prefetch(self, reqs: list[JudgeRequest], job_dir: str | Path, checks: list | None = None) -> None:
        """Answer `reqs` through batch jobs into the cache (see the module docstring). `checks[i]` (optional)
        validates reply i as `complete(req, check)` would."""
        job_dir = Path(job_dir)
        pending_path = job_dir / "pending.json"
        by_key: dict[str, tuple[JudgeRequest, object]] = {}
        for i, req in enumerate(reqs):
            by_key.setdefault(self.cache_key(req), (req, checks[i] if checks else None))
        pending = read_json(pending_path, fix="it lists the batch jobs this stage submitted: delete it only to submit "
                            "their items again (paid again)") if pending_path.is_file() else []
        if any(job.get("name") is None for job in pending):
            pending = self._find_created(pending)
            write_json(pending_path, pending)
        self.load_staged(job_dir)
        if pending:
            log.info("%s: resuming %d batch job(s) recorded in %s: %s", self.judge_id, len(pending), pending_path,
                     [j["name"] for j in pending])
        resubmits = 1 if self.batch_expired == "resubmit" else 0
        while True:
            covered = {item[0] for job in pending for item in job["items"]}
            todo = [k for k in by_key if k not in covered and k not in self._staged and self._cache_get(k) is None]
            for chunk in self._chunks(todo, by_key):
                job = {"name": None, "display_name": f"mmpref-{job_dir.name}-{len(chunk)}-{uuid.uuid4().hex[:12]}",
                       "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                       "items": [[k, by_key[k][0].task, by_key[k][0].attempt] for k in chunk]}
                pending.append(job)
                write_json(pending_path, pending)  # before the job exists: a restart finds it by its display name
                job["name"] = self._submit(job, by_key)
                write_json(pending_path, pending)  # a restart polls it, never submits it again
            if not pending:
                return
            ended: list[str] = []
            while pending:
                job = pending[0]
                ok = self._collect(job, self._wait_for(job["name"]), by_key, job_dir)
                if not ok:
                    ended += [item[0] for item in job["items"]]
                pending.pop(0)
                write_json(pending_path, pending)
                self._log_done(job_dir, job, ok)
                if self._failed_job:
                    message, self._failed_job = self._failed_job, None
                    raise JudgeError(message)
            if not ended:
                return
            if resubmits:  # the items of an expired job go into one new job (once)
                resubmits -= 1
                continue
            return

    def _chunks(self, keys: list[str], by_key) -> list[list[str]]:
        chunks, size = [], BATCH_INLINE_LIMIT
        for key in keys:
            req = by_key[key][0]
            n = 2048 + len(req.prompt) + len(req.system or "") + sum(4 * Path(p).stat().st_size // 3 for p in req.images)
            if size + n > BATCH_INLINE_LIMIT:
                chunks.append([])
                size = 0
            chunks[-1].append(key)
            size += n
        return chunks

    def _submit(self, job: dict, by_key) -> str:
        """Create the batch job `job` describes (its items, its display name); returns the job's name. A failed
        create leaves `job` recorded without a name: the next run looks for it by its display name (a create that
        timed out may have made the job all the same)."""
        from google.genai import types

        keys = [item[0] for item in job["items"]]
        inlined = [types.InlinedRequest(model=self.model, contents=self._contents(by_key[k][0]),
                                        config=self._config(by_key[k][0]), metadata={"key": k}) for k in keys]
        try:
            created = self._client.batches.create(model=self.model, src=inlined,
                                                  config={"display_name": job["display_name"]})
        except Exception as exc:  # noqa: BLE001
            raise JudgeError(f"{self.judge_id}: could not submit a batch job of {len(keys)} requests: "
                             f"{self._translate(exc)}") from exc
        log.info("%s: submitted batch job %s (%d requests, state %s)", self.judge_id, created.name, len(keys),
                 getattr(created.state, "value", created.state))
        return created.name

    def _find_created(self, pending: list[dict]) -> list[dict]:
        """The recorded jobs whose creation an earlier run did not see finish: each found among the API's batch jobs
        by its display name gets its name; one the API never made is dropped (its requests are submitted anew)."""
        wanted = {job["display_name"]: job for job in pending if job.get("name") is None}
        try:
            for found in self._client.batches.list(config={"page_size": 100}):
                if found.display_name in wanted:
                    wanted.pop(found.display_name)["name"] = found.name
                    log.info("%s: found batch job %s (%s), created by an interrupted run", self.judge_id, found.name,
                             found.display_name)
                if not wanted:
                    break
        except Exception as exc:  # noqa: BLE001
            raise JudgeError(f"{self.judge_id}: listing batch jobs to find {sorted(wanted)} (created by an "
                             f"interrupted run) failed: {self._translate(exc)}") from exc
        for name in wanted:
            log.info("%s: batch job %s was never created; its requests are submitted now", self.judge_id, name)
        return [job for job in pending if job.get("name") is not None]

    def _wait_for(self, name: str):
        """Poll a batch job every batch_poll_s seconds until it ends; transient errors of a poll are logged."""
        start = time.monotonic()
        while True:
            try:
                job = self._client.batches.get(name=name)
            except Exception as exc:  # noqa: BLE001
                err = self._translate(exc)
                if not isinstance(err, RetryableJudgeError):
                    raise JudgeError(f"{self.judge_id}: polling batch job {name} failed: {err}") from exc
                log.warning("%s: polling batch job %s: %s (polling on)", self.judge_id, name, err)
                job = None
            state = getattr(getattr(job, "state", None), "value", None) or str(getattr(job, "state", "unknown"))
            if state in BATCH_ENDED:
                return job
            log.info("%s: batch job %s %s after %.0fs", self.judge_id, name, state, time.monotonic() - start)
            time.sleep(self.batch_poll_s)

    def _collect(self, job: dict, result, by_key, job_dir: Path) -> bool:
        """Write a finished job's replies into the cache; False when the job did not succeed."""
        name, keys = job["name"], [item[0] for item in job["items"]]
        state = result.state.value
        if state not in BATCH_DONE:
            error = result.error.message if getattr(result, "error", None) else ""
            message = (f"{self.judge_id}: batch job {name} ended {state}{': ' + error if error else ''} "
                       f"({len(keys)} requests, submitted {job['submitted']})")
            if self.batch_expired == "fail":
                self._failed_job = message + " (judge.batch_expired = fail; the next run submits a new job)"
                return False
            log.warning("%s; its requests are %s", message, "submitted again" if self.batch_expired == "resubmit"
                        else "asked one by one (judge.batch_expired = per_request)")
            return False
        responses = (result.dest.inlined_responses if result.dest else None) or []
        answered = set()
        for i, item in enumerate(responses):
            key = (item.metadata or {}).get("key") or (keys[i] if i < len(keys) else None)
            if key is None:
                continue
            answered.add(key)
            req, check = by_key.get(key, (None, None))
            if req is None:  # a request the stage no longer makes: cached under what it was
                _, task, attempt = next(it for it in job["items"] if it[0] == key)
                req = JudgeRequest(task=task, prompt="", attempt=attempt)
            if item.error is not None or item.response is None:
                err = item.error
                self.stage(job_dir, key, JudgeError(f"{self.judge_id}: batch job {name} failed this request: "
                                                    f"{getattr(err, 'code', '')} {getattr(err, 'message', 'no response')}"))
                continue
            reply = self._account(self._reply(item.response), batch=True)
            ok = accepts(check, reply.text)
            self._cache_put(key, req, reply, rejected=not ok, batch=name)
            if not ok:
                self.stage(job_dir, key, reply)
        for key in keys:
            if key not in answered:
                self.stage(job_dir, key, JudgeError(f"{self.judge_id}: batch job {name} returned no result for this "
                                                    f"request"))
        log.info("%s: batch job %s %s: %d replies, %d failed", self.judge_id, name, state, len(answered),
                 sum(isinstance(self._staged.get(k), JudgeError) for k in keys))
        return True

    @staticmethod
    def _log_done(job_dir: Path, job: dict, ok: bool) -> None:
        from mmpref.io import append_jsonl

        append_jsonl(job_dir / "done.jsonl", {"name": job["name"], "submitted": job["submitted"],
                                              "requests": len(job["items"]), "collected": ok,
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})

"""Gemini judge backend (google-genai 3.x): multimodal, structured JSON output, usage accounting.

The SDK's own retries are switched off (one attempt); `Judge.complete` retries 429/5xx itself, honouring Retry-After.
The API key comes only from the environment (GEMINI_API_KEY, else GOOGLE_API_KEY).
"""

from __future__ import annotations

import logging
import mimetypes
import os
from pathlib import Path

from mmpref.judges.base import Judge, JudgeError, JudgeReply, JudgeRequest, RetryableJudgeError, parse_retry_after
from mmpref.judges.base import is_retryable_status, is_transient
from mmpref.judges.parsing import SCHEMAS

log = logging.getLogger(__name__)

KEY_ENV_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


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
        http_options = types.HttpOptions(
            base_url=base_url,
            api_version=api_version,
            timeout=int(timeout_s * 1000),  # milliseconds
            retry_options=types.HttpRetryOptions(attempts=1),  # retries are ours (see Judge.complete)
        )
        self._client = genai.Client(api_key=api_key_from_env(), http_options=http_options)

    def _config(self, req: JudgeRequest):
        from google.genai import types

        kwargs: dict = {"temperature": self.temperature if req.temperature is None else req.temperature}
        if req.system:
            kwargs["system_instruction"] = req.system
        if self.max_output_tokens:
            kwargs["max_output_tokens"] = self.max_output_tokens
        if req.json_schema:
            if req.json_schema not in SCHEMAS:
                raise ValueError(f"unknown json_schema {req.json_schema!r} (known: {sorted(SCHEMAS)})")
            kwargs["response_mime_type"] = "application/json"
            # JSON Schema via responseJsonSchema: the pydantic models forbid extra keys, and the older responseSchema
            # (OpenAPI subset) rejects their `additionalProperties` with 400 "Unknown name"
            kwargs["response_json_schema"] = SCHEMAS[req.json_schema].model_json_schema()
        return types.GenerateContentConfig(**kwargs)

    def _call(self, req: JudgeRequest) -> JudgeReply:
        from google.genai import errors

        contents = [image_part(p) for p in req.images] + [req.prompt]
        try:
            response = self._client.models.generate_content(model=self.model, contents=contents,
                                                            config=self._config(req))
        except errors.APIError as exc:
            code = getattr(exc, "code", None)
            headers = getattr(getattr(exc, "response", None), "headers", None) or {}
            message = f"Gemini API error {code} {getattr(exc, 'status', '') or ''}: {getattr(exc, 'message', '')}"
            if is_retryable_status(code):
                raise RetryableJudgeError(message, status=code,
                                          retry_after=parse_retry_after(headers.get("retry-after"))) from exc
            raise JudgeError(message) from exc
        except Exception as exc:  # noqa: BLE001 - timeouts, dropped connections, malformed reply bodies
            if is_transient(exc):
                raise RetryableJudgeError(f"Gemini connection error or malformed reply: {type(exc).__name__}: "
                                          f"{exc}") from exc
            raise
        usage = response.usage_metadata
        n_in = (usage.prompt_token_count or 0) if usage else 0
        n_out = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        text = response.text or ""
        if not text:
            reason = response.candidates[0].finish_reason if response.candidates else "no candidates"
            log.warning("%s: empty reply (finish reason %s)", self.judge_id, reason)
        return JudgeReply(text=text, input_tokens=n_in, output_tokens=n_out, judge_id=self.judge_id)

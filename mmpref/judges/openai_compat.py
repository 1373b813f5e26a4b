"""OpenAI-compatible chat-completions judge (OpenAI GPT-4o, or any compatible server such as a local vLLM).

Images go as base64 data URLs. The SDK's own retries are off; `Judge.complete` retries 429/5xx (Retry-After aware).
The key comes from OPENAI_API_KEY; a server on localhost may run without one.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import os
from pathlib import Path
from urllib.parse import urlparse

from mmpref.judges.base import Judge, JudgeError, JudgeReply, JudgeRequest, RetryableJudgeError, parse_retry_after
from mmpref.judges.base import is_retryable_status, is_transient
from mmpref.judges.parsing import SCHEMAS

log = logging.getLogger(__name__)


def image_data_url(path: str | Path) -> str:
    path = Path(path)
    mime = mimetypes.guess_type(path.name)[0] or "image/png"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read judge image {path}: {exc}") from None
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _is_local(base_url: str | None) -> bool:
    return bool(base_url) and urlparse(base_url).hostname in ("localhost", "127.0.0.1", "::1")


class OpenAIJudge(Judge):
    """Judge backed by `client.chat.completions.create`."""

    backend = "openai"
    key_envs = ("OPENAI_API_KEY",)

    @classmethod
    def needs_key(cls, base_url: str | None) -> bool:
        return not _is_local(base_url)  # local servers (vLLM, SGLang) accept any key

    def __init__(
        self,
        model: str = "gpt-4o",
        cache_dir: str | Path | None = None,
        base_url: str | None = None,
        temperature: float = 0.0,
        max_output_tokens: int | None = None,
        structured_output: bool = True,
        timeout_s: float = 300.0,
        **limits,
    ):
        super().__init__(cache_dir=cache_dir, **limits)
        import openai

        key = os.environ.get(self.key_envs[0])
        if not key:
            if self.needs_key(base_url):
                raise RuntimeError("OpenAI judge: no API key. Set OPENAI_API_KEY in the environment; keys are never "
                                   "read from params files.")
            key = "EMPTY"  # local servers (vLLM) accept any key
        self.model = model
        self.judge_id = f"openai:{model}"
        self.temperature = temperature
        self.max_output_tokens = max_output_tokens
        self.structured_output = structured_output
        self.base_url = base_url
        self._client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout_s)

    def _messages(self, req: JudgeRequest) -> list[dict]:
        messages: list[dict] = []
        if req.system:
            messages.append({"role": "system", "content": req.system})
        if req.images:
            content = [{"type": "image_url", "image_url": {"url": image_data_url(p)}} for p in req.images]
            content.append({"type": "text", "text": req.prompt})
        else:
            content = req.prompt
        messages.append({"role": "user", "content": content})
        return messages

    def _call(self, req: JudgeRequest) -> JudgeReply:
        import openai

        kwargs: dict = {"model": self.model, "messages": self._messages(req),
                        "temperature": self.temperature if req.temperature is None else req.temperature}
        if req.max_tokens is not None or self.max_output_tokens:  # the request's cap (MM-Vet's 3) before the judge's
            kwargs["max_tokens"] = req.max_tokens if req.max_tokens is not None else self.max_output_tokens
        if req.json_schema and self.structured_output:
            if req.json_schema not in SCHEMAS:
                raise ValueError(f"unknown json_schema {req.json_schema!r} (known: {sorted(SCHEMAS)})")
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": req.json_schema, "schema": SCHEMAS[req.json_schema].model_json_schema()}}
        try:
            resp = self._client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            code = exc.status_code
            message = f"OpenAI API error {code}: {exc.message}"
            if is_retryable_status(code):
                raise RetryableJudgeError(message, status=code,
                                          retry_after=parse_retry_after(exc.response.headers.get("retry-after"))) from exc
            raise JudgeError(message) from exc
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise RetryableJudgeError(f"OpenAI connection error: {exc}") from exc
        except Exception as exc:  # noqa: BLE001 - malformed reply bodies
            if is_transient(exc) or isinstance(exc, openai.APIResponseValidationError):
                raise RetryableJudgeError(f"OpenAI malformed reply: {type(exc).__name__}: {exc}") from exc
            raise
        if not resp.choices:
            raise RetryableJudgeError("OpenAI-compatible server returned no choices")
        text = resp.choices[0].message.content or ""
        usage = resp.usage
        return JudgeReply(text=text, input_tokens=(usage.prompt_tokens or 0) if usage else 0,
                          output_tokens=(usage.completion_tokens or 0) if usage else 0, judge_id=self.judge_id)

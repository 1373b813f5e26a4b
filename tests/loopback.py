"""Loopback stand-ins for the Gemini and OpenAI chat APIs, and a guard that keeps tests off the network.

Both servers speak the real wire format, so mmpref's judges are exercised through the REAL SDKs (google-genai,
openai) by pointing their base URL at the server:

    with GeminiServer(api_key="k") as g:            # make_judge("gemini", "m", base_url=g.url)
    with OpenAIServer(api_key="sk-k") as o:         # make_judge("openai", "m", base_url=o.url)   (url ends in /v1)

Each server records every request in `.requests` ({"method", "path", "query", "headers" (lower-case names), "body",
"model"}; "held": True for a request `hold(n)` kept unanswered), checks the API key, validates the request the way the real API would (400 in the API's error format for
a malformed request), and answers from a FIFO `.script` of canned replies when one is queued (`ok`, `error`, `raw`,
`blocked`), otherwise from `.responder(request_json) -> str` (default: `gemini_default_responder` /
`openai_default_responder`, which recognise what mmpref asks and answer in a format its parsers accept:
see `classify_prompt` and `judge_reply`).

`only_loopback()` (context manager) and the `no_network_but_loopback` pytest fixture make every socket connect,
connect_ex, create_connection, sendto and getaddrinfo to anything but 127.0.0.0/8, ::1, "localhost" or a unix
socket raise `NetworkBlocked`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

import pytest

__all__ = [
    "GeminiServer", "OpenAIServer", "Reply", "PolicyResponder", "NetworkBlocked", "only_loopback", "no_network_but_loopback",
    "gemini_server", "openai_server", "classify_prompt", "judge_reply", "annotation_scores",
    "gemini_default_responder", "openai_default_responder", "gemini_request_text", "openai_request_text",
    "gemini_inline_images", "openai_image_urls", "decode_data_url", "is_loopback_address", "gemini_schema_problems",
]

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
Responder = Callable[[dict], str]


# ==================================================================================================================
# What mmpref asks, and what a judge would answer

def _h(*parts: Any) -> int:
    """A stable integer from any JSON-able parts (same on every run and machine)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "big")


_RESPONSE_MARK = re.compile(r"\[Response (\d+)\]\n(.*?)\n\[End of Response \1\]", re.DOTALL)
_N_RESPONSES = re.compile(r"There (?:are|is) (\d+) responses?\.")
_ROLE_BLOCK = re.compile(r"\[(\w[\w ]*?) 1\]\n.*?\[End of \1 1\].*?\[\1 2\]\n.*?\[End of \1 2\]", re.DOTALL)


def classify_prompt(system: str | None, prompt: str, schema: dict | None = None) -> str:
    """Which judge task a request is (what the default responders key on):

    - "annotate": `[Response 1] ... [End of Response 1]` blocks or "There are N responses." (mmpref's annotation
      prompt), or a response schema with a top-level "responses" property;
    - "alpaca": mentions both model_1 and model_2 and a 'rank' (AlpacaEval's alpaca_eval_gpt4 and mmpref's fallback);
    - "mt_bench_pair": FastChat pairwise verdict format "[[A]]" ... "[[B]]" (not used by mmpref; answered anyway);
    - "mt_bench": FastChat single grading: "[[rating]]" or "Rating: [[" in system or prompt;
    - "llava_bench": LLaVA's eval_gpt_review layout: `[X 1]...[End of X 1]` and `[X 2]...[End of X 2]` blocks
      (X = the rule's role, "Assistant") followed by a `[System]` section;
    - "mmvet": "correctness score" together with "ground truth" (mmpref's MM-Vet prompt and MM-Vet's own);
    - "answer": "Answer the question" (mmpref's gold-answer prompt);
    - "generic": anything else.
    """
    text = f"{system or ''}\n{prompt}"
    low = text.lower()
    props = (schema or {}).get("properties") or {}
    if _RESPONSE_MARK.search(prompt) or _N_RESPONSES.search(prompt) or "responses" in props:
        return "annotate"
    if "model_1" in text and "model_2" in text and "rank" in low:
        return "alpaca"
    if "[[A]]" in text and "[[B]]" in text:
        return "mt_bench_pair"
    if "[[rating]]" in text or "Rating: [[" in text:
        return "mt_bench"
    if _ROLE_BLOCK.search(prompt) and "[System]" in prompt:
        return "llava_bench"
    if "correctness score" in low and "ground truth" in low:
        return "mmvet"
    if "answer the question" in low:
        return "answer"
    return "generic"


def _n_responses(prompt: str) -> tuple[int, list[str]]:
    marks = _RESPONSE_MARK.findall(prompt)
    m = _N_RESPONSES.search(prompt)
    n = int(m.group(1)) if m else len(marks)
    texts = [t for _, t in marks]
    texts += [f"<response {i + 1}>" for i in range(len(texts), n)]
    return max(n, 1), texts[: max(n, 1)]


def annotation_scores(texts: list[str], salt: Any) -> list[dict]:
    """Ratings 0..4 for each response, deterministic in (salt, texts), equal for identical texts and spread so that
    the best and the worst distinct response differ by >= 2 in quality (helpfulness + correctness + coherence)."""
    distinct = sorted(set(texts), key=lambda t: _h("rank", salt, t))
    lo = _h("lo", salt) % 2  # 0 or 1
    hi = 3 + _h("hi", salt) % 2  # 3 or 4
    tier = {}
    for r, t in enumerate(distinct):
        tier[t] = hi if len(distinct) == 1 else lo + round(r * (hi - lo) / (len(distinct) - 1))
    out = []
    for t in texts:
        base, j = tier[t], _h("jitter", salt, t)

        def clamp(v: int) -> int:
            return max(0, min(4, v))

        out.append({
            "helpfulness": base,
            "correctness": clamp(base + (j % 3) - 1),
            "coherence": clamp(base + ((j // 3) % 3) - 1),
            "complexity": (j // 9) % 3,
            "verbosity": 1 + (j // 27) % 3,
        })
    return out


def _schema_instance(schema: Any, root: dict | None = None, depth: int = 0) -> Any:
    """A small value that satisfies a JSON Schema or Gemini Schema (types in either case)."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    if not isinstance(schema, dict) or depth > 12:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _schema_instance(target, root, depth + 1)
    for key in ("anyOf", "any_of", "oneOf", "one_of"):
        options = [o for o in schema.get(key) or [] if str(o.get("type", "")).lower() != "null"]
        if options:
            return _schema_instance(options[0], root, depth + 1)
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if str(k).lower() != "null"), "null")
    kind = str(kind or ("object" if "properties" in schema else "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _schema_instance(v, root, depth + 1) for k, v in props.items()}
    if kind == "array":
        n = max(1, int(schema.get("minItems", schema.get("min_items", 1)) or 1))
        return [_schema_instance(schema.get("items") or {}, root, depth + 1) for _ in range(n)]
    if kind in ("integer", "number"):
        lo = schema.get("minimum", 0)
        return int(lo) if kind == "integer" else float(lo)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "loopback"


def judge_reply(system: str | None, prompt: str, salt: Any, json_mode: bool = False,
                schema: dict | None = None) -> str:
    """The default judge's reply to one request (`salt`: a digest of the whole request, images included).

    annotate -> reasoning then ratings for exactly N responses (pure JSON with a "reasoning" field when the request
    asks for JSON, else reasoning text followed by a fenced ```json block); alpaca -> a python list of
    {'model', 'rank'} dicts; mt_bench -> explanation then "Rating: [[N]]", N in 1..10; llava_bench -> first line
    "s1 s2" (1..10) then an explanation; mmvet -> a bare number 0.0..1.0; answer -> one short sentence;
    generic -> a short sentence (or a schema-shaped JSON object when JSON is required).
    """
    task = classify_prompt(system, prompt, schema)
    h = _h(task, salt)
    if task == "annotate":
        n, texts = _n_responses(prompt)
        scores = annotation_scores(texts, salt)
        best = max(range(n), key=lambda i: sum(scores[i][a] for a in ATTRIBUTES[:3]))
        reasoning = (f"Step by step: I looked at the image and worked out the answer, then checked each of the {n} "
                     f"responses against it. Response {best + 1} is the most accurate and helpful; "
                     + "; ".join(f"response {i + 1} rates helpfulness {s['helpfulness']}" for i, s in
                                 enumerate(scores)) + ".")
        if json_mode:
            return json.dumps({"reasoning": reasoning, "responses": scores})
        return f"{reasoning}\n\n```json\n{json.dumps({'responses': scores}, indent=1)}\n```"
    if json_mode and schema:
        return json.dumps(_schema_instance(schema))
    if task == "alpaca":
        first = 1 + h % 2
        ranking = [{"model": "model_1", "rank": first}, {"model": "model_2", "rank": 3 - first}]
        return repr(sorted(ranking, key=lambda r: r["rank"]))
    if task == "mt_bench_pair":
        return f"Both assistants answer; one is clearer.\n\n[[{'ABC'[h % 3]}]]"
    if task == "mt_bench":
        rating = 1 + h % 10
        return (f"The response addresses the user's question; its accuracy and depth are judged against the "
                f"question{' and the reference' if 'reference' in prompt.lower() else ''}. Rating: [[{rating}]]")
    if task == "llava_bench":
        s1, s2 = 1 + h % 10, 1 + (h // 10) % 10
        return (f"{s1} {s2}\nAssistant 1 gives {'a better' if s1 >= s2 else 'a weaker'} answer than Assistant 2, "
                f"judged on helpfulness, relevance, accuracy and level of detail.")
    if task == "mmvet":
        return f"{(h % 11) / 10:.1f}"
    if task == "answer":
        return ["The image shows the object the question asks about, and the answer is visible in it.",
                "The answer is the one shown in the picture: a single clear object on a plain background.",
                "Looking at the image, the correct answer is the main object in the centre."][h % 3]
    if json_mode:
        return json.dumps({"answer": "loopback"})
    return "This is a loopback reply to your request."


def _approx_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4)) if text else 0


# ==================================================================================================================
# Request bodies: text and images

def _get(d: dict, camel: str, snake: str, default: Any = None) -> Any:
    """Proto JSON accepts both lowerCamel and snake_case field names."""
    if not isinstance(d, dict):
        return default
    return d[camel] if camel in d else d.get(snake, default)


def _gemini_capped(body: dict, text: str) -> tuple[str, str]:
    """A reply text cut at the request's `generationConfig.maxOutputTokens` (~4 characters a token), with its
    finish reason: what a per-request call and a batch job's item both answer."""
    limit = _get(_get(body, "generationConfig", "generation_config") or {}, "maxOutputTokens", "max_output_tokens")
    if limit and _approx_tokens(text) > limit:
        return text[: 4 * int(limit)], "MAX_TOKENS"
    return text, "STOP"


def _b64decode(data: str) -> bytes:
    """Standard or URL-safe base64 (the API accepts both), padding optional."""
    if not isinstance(data, str):
        raise ValueError("base64 data must be a string")
    s = data.strip()
    s += "=" * (-len(s) % 4)
    alt = b"-_" if ("-" in s or "_" in s) else None
    return base64.b64decode(s, altchars=alt, validate=True)


def gemini_request_text(body: dict) -> tuple[str, str]:
    """(system instruction text, user text) of a generateContent request body."""
    sys_inst = _get(body, "systemInstruction", "system_instruction") or {}
    if isinstance(sys_inst, str):
        system = sys_inst
    else:
        system = "\n".join(p.get("text", "") for p in sys_inst.get("parts", []) if isinstance(p, dict))
    texts = []
    for content in body.get("contents") or []:
        for part in content.get("parts") or []:
            if isinstance(part, dict) and "text" in part:
                texts.append(part["text"])
    return system, "\n".join(texts)


def gemini_inline_images(body: dict) -> list[tuple[str, bytes]]:
    """(mime type, bytes) of every inline_data part of a generateContent request body."""
    out = []
    for content in body.get("contents") or []:
        for part in content.get("parts") or []:
            inline = _get(part, "inlineData", "inline_data")
            if inline:
                out.append((_get(inline, "mimeType", "mime_type"), _b64decode(inline.get("data", ""))))
    return out


_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.DOTALL)
_MAGIC = {"image/png": (b"\x89PNG",), "image/jpeg": (b"\xff\xd8\xff",), "image/gif": (b"GIF87a", b"GIF89a"),
          "image/webp": (b"RIFF",)}


def decode_data_url(url: str) -> tuple[str, bytes]:
    """(mime type, bytes) of a base64 data URL; ValueError when it is not one."""
    m = _DATA_URL.match(url or "")
    if not m:
        raise ValueError("not a base64 data URL")
    return m.group(1), _b64decode(m.group(2))


def openai_request_text(body: dict) -> tuple[str, str]:
    """(system/developer text, user text) of a chat.completions request body."""
    system, user = [], []
    for msg in body.get("messages") or []:
        content = msg.get("content")
        if isinstance(content, list):
            content = "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        (system if msg.get("role") in ("system", "developer") else user).append(content or "")
    return "\n".join(system), "\n".join(user)


def openai_image_urls(body: dict) -> list[str]:
    """Every image_url.url in a chat.completions request body."""
    return [p["image_url"]["url"] for msg in body.get("messages") or [] if isinstance(msg.get("content"), list)
            for p in msg["content"] if isinstance(p, dict) and p.get("type") == "image_url"]


def _salt(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def gemini_default_responder(body: dict) -> str:
    system, prompt = gemini_request_text(body)
    gen = _get(body, "generationConfig", "generation_config") or {}
    mime = _get(gen, "responseMimeType", "response_mime_type") or ""
    schema = (_get(gen, "responseSchema", "response_schema") or _get(gen, "responseJsonSchema", "response_json_schema")
              or gen.get("_responseJsonSchema"))
    return judge_reply(system, prompt, _salt(body), json_mode=mime == "application/json", schema=schema)


def openai_default_responder(body: dict) -> str:
    system, prompt = openai_request_text(body)
    fmt = body.get("response_format") or {}
    schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
    return judge_reply(system, prompt, _salt(body), json_mode=fmt.get("type") in ("json_schema", "json_object"),
                       schema=schema)


# ==================================================================================================================
# The HTTP machinery both servers share

class _BadRequest(Exception):
    def __init__(self, status: int, payload: dict, headers: dict | None = None):
        super().__init__(str(payload))
        self.status, self.payload, self.headers = status, payload, headers or {}


class _LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1 (free port) in a daemon thread; subclasses implement `_handle`."""

    url_suffix = ""

    def __init__(self, api_key: str | None = None, responder: Responder | None = None,
                 prompt_tokens: int | None = None, output_tokens: int | None = None, latency_s: float = 0.0):
        self.api_key = api_key
        self.responder: Responder = responder or self._default_responder
        self.prompt_tokens = prompt_tokens  # fixed usage figures for responder replies (None: estimated)
        self.output_tokens = output_tokens
        self.latency_s = latency_s
        self.script: list[tuple[int, Any, dict]] = []
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self.hold_after: int | None = None  # see `hold`
        self.passed = 0
        self.held = 0
        self._release = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # idle keep-alive connections are closed after this

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                server._dispatch(self, "GET")

            def do_POST(self):
                server._dispatch(self, "POST")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):  # a client killed mid-reply (SIGKILL tests): quiet
                import sys

                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}{self.url_suffix}"
        self.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, name=type(self).__name__, daemon=True)
        self._thread.start()

    # ---- scripting --------------------------------------------------------------------------------------------
    def raw(self, status: int, body: bytes | str | dict, headers: dict | None = None) -> None:
        """Queue a reply sent verbatim (a dict is sent as JSON)."""
        with self._lock:
            self.script.append((status, body, dict(headers or {})))

    def _next_scripted(self):
        with self._lock:
            return self.script.pop(0) if self.script else None

    def clear(self) -> None:
        with self._lock:
            self.script.clear()
            self.requests.clear()

    def hold(self, n: int) -> None:
        """Answer the next n requests, then hold every later one unanswered (its record gets "held": True) until
        `release()`: a client killed meanwhile never gets those replies (for the SIGKILL tests)."""
        with self._lock:
            self.hold_after, self.passed, self.held = n, 0, 0
            self._release = threading.Event()

    def release(self) -> None:
        """Let the held requests go (each is answered 503, to a client that is normally gone) and stop holding."""
        with self._lock:
            self.hold_after = None
            self._release.set()

    def answered(self) -> list[dict]:
        """The recorded requests that were not held (the ones the server answered)."""
        with self._lock:
            return [r for r in self.requests if not r.get("held")]

    # ---- life cycle -------------------------------------------------------------------------------------------
    def close(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- request handling -------------------------------------------------------------------------------------
    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        split = urlsplit(handler.path)
        length = int(handler.headers.get("content-length") or 0)
        raw = handler.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        try:
            body = json.loads(raw) if raw else {}
            bad_json = None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            body, bad_json = {"_unparsable": raw.decode("utf-8", "replace")}, exc
        record = {"method": method, "path": split.path, "query": parse_qs(split.query), "headers": headers,
                  "body": body, "model": None, "time": time.time()}
        with self._lock:
            self.requests.append(record)
            held = self.hold_after is not None and self.passed >= self.hold_after
            if held:
                record["held"], release = True, self._release
                self.held += 1
            else:
                self.passed += 1
        if held:
            release.wait()
            with contextlib.suppress(OSError):
                self._send(handler, 503, {"error": {"code": 503, "message": "held", "status": "UNAVAILABLE"}})
            return
        if self.latency_s:
            time.sleep(self.latency_s)
        try:
            status, payload, extra = self._handle(method, split.path, headers, body, bad_json, record)
        except _BadRequest as exc:
            status, payload, extra = exc.status, exc.payload, exc.headers
        self._send(handler, status, payload, extra)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, payload: Any, headers: dict | None = None) -> None:
        if isinstance(payload, (dict, list)):
            data = json.dumps(payload).encode("utf-8")
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = bytes(payload)
        handler.send_response(status)
        names = {k.lower() for k in (headers or {})}
        if "content-type" not in names:
            handler.send_header("content-type", "application/json; charset=UTF-8")
        handler.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(data)

    def _handle(self, method, path, headers, body, bad_json, record):  # pragma: no cover - abstract
        raise NotImplementedError

    def _default_responder(self, body: dict) -> str:  # pragma: no cover - abstract
        raise NotImplementedError


# ==================================================================================================================
# Gemini (generativelanguage.googleapis.com REST)

_GEMINI_PATH = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):(generateContent|countTokens)$")
_GEMINI_BATCH_CREATE = re.compile(r"^/(v1|v1beta|v1alpha)/models/([^/:]+):batchGenerateContent$")
_GEMINI_BATCH_GET = re.compile(r"^/(v1|v1beta|v1alpha)/batches/([^/:]+)$")
_GEMINI_BATCH_LIST = re.compile(r"^/(v1|v1beta|v1alpha)/batches$")
_GEMINI_TOP_LEVEL = {"contents", "systemInstruction", "system_instruction", "generationConfig", "generation_config",
                     "safetySettings", "safety_settings", "tools", "toolConfig", "tool_config", "cachedContent",
                     "cached_content", "labels", "model"}
_GEMINI_PART_KINDS = {"text", "inlineData", "inline_data", "fileData", "file_data", "functionCall", "function_call",
                      "functionResponse", "function_response", "executableCode", "executable_code",
                      "codeExecutionResult", "code_execution_result"}
_GEMINI_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                  408: "DEADLINE_EXCEEDED", 409: "ABORTED", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED",
                  500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
GEMINI_IMAGE_TOKENS = 258  # what the Gemini API counts for one small image
# Fields of the API's `Schema` message (responseSchema), in both JSON spellings. Anything else (additionalProperties,
# $defs, $ref, ...) is refused with 400 "Unknown name" by the real API; only responseJsonSchema takes JSON Schema.
_GEMINI_SCHEMA_FIELDS = {
    "type", "format", "title", "description", "nullable", "enum", "items", "properties", "required", "example",
    "default", "minimum", "maximum", "pattern", "anyOf", "any_of", "maxItems", "max_items", "minItems", "min_items",
    "minProperties", "min_properties", "maxProperties", "max_properties", "minLength", "min_length", "maxLength",
    "max_length", "propertyOrdering", "property_ordering",
}


def gemini_schema_problems(schema: Any, where: str = "generation_config.response_schema") -> list[str]:
    """The "Unknown name" complaints the Gemini API makes about a responseSchema (empty when it is acceptable)."""
    out: list[str] = []
    if not isinstance(schema, dict):
        return out
    for key, value in schema.items():
        if key not in _GEMINI_SCHEMA_FIELDS:
            out.append(f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': Cannot find field.")
        elif key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                out += gemini_schema_problems(sub, f"{where}.properties[{name}].value")
        elif key == "items":
            out += gemini_schema_problems(value, f"{where}.items")
        elif key in ("anyOf", "any_of") and isinstance(value, list):
            for i, sub in enumerate(value):
                out += gemini_schema_problems(sub, f"{where}.any_of[{i}]")
    return out


def gemini_error(code: int, message: str, status: str | None = None, details: list | None = None) -> dict:
    err = {"code": code, "message": message, "status": status or _GEMINI_STATUS.get(code, "UNKNOWN")}
    if details:
        err["details"] = details
    return {"error": err}


class GeminiServer(_LoopbackServer):
    """`POST /{v1,v1beta,v1alpha}/models/{model}:generateContent` (and `:countTokens`) in the Gemini REST format.

    api_key: the key `x-goog-api-key` must carry (None: any non-empty key). Without the header the reply is
    401 UNAUTHENTICATED; with a wrong key, 400 INVALID_ARGUMENT "API key not valid" (reason API_KEY_INVALID), as
    Google answers. `responder(request_json) -> str` gives the reply text when nothing is scripted.
    Usage: promptTokenCount ~ characters/4 + 258 per image, candidatesTokenCount ~ characters/4 (or the fixed
    `prompt_tokens` / `output_tokens`). `generationConfig.maxOutputTokens` truncates with finishReason MAX_TOKENS.
    strict_schema: refuse (400) a responseSchema with fields the API's Schema message lacks, such as
    `additionalProperties` (which the real API refuses). Off by default; see `gemini_schema_problems`.

    Batch API (what google-genai's `batches.create` / `batches.get` send for inlined requests):
    `POST .../models/{model}:batchGenerateContent` with {"batch": {"displayName", "inputConfig": {"requests":
    {"requests": [{"request": <generateContent body>, "metadata": {...}}]}}}} validates every request and answers the
    job as a long-running operation ({"name": "batches/<id>", "metadata": {"state": "BATCH_STATE_PENDING", ...}});
    `GET .../batches/<id>` answers BATCH_STATE_RUNNING for `batch_polls` polls, then the job's end state: the next of
    `batch_end` (FIFO, e.g. "BATCH_STATE_EXPIRED"; default BATCH_STATE_SUCCEEDED) with, when it succeeded,
    `metadata.output.inlinedResponses.inlinedResponses` in request order, each {"response", "metadata"} or, where
    `batch_item_error(request_body)` returns an error dict, {"error", "metadata"}. `.jobs` holds the jobs by name.
    `GET .../batches?pageSize=&pageToken=` (`batches.list`) answers {"operations": [<job>, ...], "nextPageToken"}, the
    newest job first. `hold_batch_creates()`: every later create makes its job and then holds its reply until
    `release()` (a client killed meanwhile never learns the job's name: the SIGKILL tests).

    models: the model ids the key may use (None: any); another is answered 404 NOT_FOUND as the API answers an unknown
    or retired model ("models/x is not found for API version v1beta, or is not supported for generateContent").
    """

    model_version_suffix = "-loopback"

    def __init__(self, api_key: str | None = None, responder: Responder | None = None, *,
                 strict_schema: bool = False, models: list[str] | None = None, **kwargs):
        self.strict_schema = strict_schema
        self.models = list(models) if models is not None else None
        self.hold_batch_create = False
        self.batch_polls = 2
        self.batch_end: list[str] = []
        self.batch_item_error: Callable[[dict], dict | None] | None = None
        self.jobs: dict[str, dict] = {}
        super().__init__(api_key=api_key, responder=responder, **kwargs)

    def batch_calls(self, kind: str = "create") -> int:
        """How many batch-job creates ("create"), polls ("get") or listings ("list") the server received."""
        pattern = {"create": _GEMINI_BATCH_CREATE, "get": _GEMINI_BATCH_GET, "list": _GEMINI_BATCH_LIST}[kind]
        return sum(bool(pattern.match(r["path"])) for r in self.requests)

    def hold_batch_creates(self) -> None:
        """Every later batch create makes its job, then holds its reply until `release()`."""
        with self._lock:
            self.hold_batch_create = True
            self._release = threading.Event()

    def release(self) -> None:
        with self._lock:
            self.hold_batch_create = False
        super().release()

    def generate_calls(self) -> int:
        """How many per-request generateContent calls the server received."""
        return sum(r["path"].endswith(":generateContent") for r in self.requests)

    def _default_responder(self, body: dict) -> str:
        return gemini_default_responder(body)

    # ---- scripting --------------------------------------------------------------------------------------------
    def ok(self, text: str, prompt_tokens: int = 120, out_tokens: int = 40, finish_reason: str = "STOP",
           headers: dict | None = None) -> None:
        """Queue a 200 reply with this text (e.g. a malformed judge reply)."""
        self.raw(200, self.response_json(text, "gemini-fake", prompt_tokens, out_tokens, finish_reason), headers)

    malformed = ok

    def error(self, code: int, status: str | None = None, headers: dict | None = None, message: str | None = None):
        """Queue an error reply in Google's format, e.g. error(429, "RESOURCE_EXHAUSTED", {"Retry-After": "1"})."""
        status = status or _GEMINI_STATUS.get(code, "UNKNOWN")
        self.raw(code, gemini_error(code, message or f"fake {status}", status), headers)

    def blocked(self, reason: str = "SAFETY") -> None:
        """Queue a 200 reply whose candidate was stopped with no content (finishReason SAFETY, RECITATION, ...)."""
        self.raw(200, {"candidates": [{"finishReason": reason, "index": 0}],
                       "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                       "modelVersion": "gemini-fake"})

    @staticmethod
    def response_json(text: str, model: str, prompt_tokens: int, out_tokens: int, finish_reason: str = "STOP",
                      image_tokens: int = 0) -> dict:
        usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": out_tokens,
                 "totalTokenCount": prompt_tokens + out_tokens,
                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens - image_tokens}]}
        if image_tokens:
            usage["promptTokensDetails"].append({"modality": "IMAGE", "tokenCount": image_tokens})
        return {
            "candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "finishReason": finish_reason,
                            "index": 0}],
            "usageMetadata": usage,
            "modelVersion": model,
            "responseId": hashlib.sha256(f"{time.time_ns()}:{text}".encode()).hexdigest()[:22],
        }

    # ---- validation -------------------------------------------------------------------------------------------
    @staticmethod
    def _invalid(message: str):
        raise _BadRequest(400, gemini_error(400, message))

    def validate(self, body: dict) -> None:
        """Raise 400 INVALID_ARGUMENT for what the real API rejects (a sensible subset)."""
        if not isinstance(body, dict):
            self._invalid("Invalid JSON payload received. Expected an object.")
        for key in body:
            if key not in _GEMINI_TOP_LEVEL:
                self._invalid(f'Invalid JSON payload received. Unknown name "{key}": Cannot find field.')
        contents = body.get("contents")
        if not isinstance(contents, list) or not contents:
            self._invalid("* GenerateContentRequest.contents: contents is not specified")
        for ci, content in enumerate(contents):
            parts = content.get("parts") if isinstance(content, dict) else None
            if not isinstance(parts, list) or not parts:
                self._invalid(f"* GenerateContentRequest.contents[{ci}].parts: contents.parts must not be empty.")
            if content.get("role") not in (None, "user", "model", "function"):
                self._invalid(f"Please use a valid role: user, model. (contents[{ci}].role={content.get('role')!r})")
            for pi, part in enumerate(parts):
                kinds = [k for k in part if k in _GEMINI_PART_KINDS] if isinstance(part, dict) else []
                if len(kinds) != 1:
                    self._invalid(f"* GenerateContentRequest.contents[{ci}].parts[{pi}].data: required oneof field "
                                  f"'data' must have one initialized field")
                inline = _get(part, "inlineData", "inline_data")
                if inline is not None:
                    mime = _get(inline, "mimeType", "mime_type")
                    if not mime:
                        self._invalid(f"* contents[{ci}].parts[{pi}].inline_data.mime_type: required field")
                    try:
                        data = _b64decode(inline.get("data", ""))
                    except (ValueError, binascii.Error):
                        self._invalid(f"Invalid value at 'contents[{ci}].parts[{pi}].inline_data.data' (TYPE_BYTES), "
                                      f"Base64 decoding failed")
                    if not data:
                        self._invalid(f"* contents[{ci}].parts[{pi}].inline_data.data: empty")
        gen = _get(body, "generationConfig", "generation_config") or {}
        mime = _get(gen, "responseMimeType", "response_mime_type")
        schema = _get(gen, "responseSchema", "response_schema")
        json_schema = _get(gen, "responseJsonSchema", "response_json_schema") or gen.get("_responseJsonSchema")
        if schema and json_schema:
            self._invalid("response_schema and response_json_schema cannot both be set.")
        if (schema or json_schema) and mime not in ("application/json", "text/x.enum"):
            self._invalid("* GenerateContentRequest.generation_config.response_mime_type: "
                          "response_mime_type must be application/json or text/x.enum when response_schema is set.")
        temp = gen.get("temperature")
        if temp is not None and not 0 <= temp <= 2:
            self._invalid("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]")
        if self.strict_schema and schema:
            problems = gemini_schema_problems(schema)
            if problems:
                self._invalid(" ".join(problems))

    # ---- the batch API ----------------------------------------------------------------------------------------
    def _answer(self, body: dict, model: str) -> dict:
        """The generateContent reply to one request body (the responder's text, usage estimated); the `model` an
        inlined request carries is its envelope, so the reply equals a per-request call's."""
        body = {k: v for k, v in body.items() if k != "model"}
        system, prompt = gemini_request_text(body)
        image_tokens = GEMINI_IMAGE_TOKENS * len(gemini_inline_images(body))
        n_in = self.prompt_tokens if self.prompt_tokens is not None else \
            _approx_tokens(system) + _approx_tokens(prompt) + image_tokens
        text, finish = _gemini_capped(body, self.responder(body))
        n_out = self.output_tokens if self.output_tokens is not None else _approx_tokens(text)
        return self.response_json(text, model + self.model_version_suffix, n_in, n_out, finish, min(image_tokens, n_in))

    def _job_json(self, job: dict) -> dict:
        meta = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
                "name": job["name"], "model": job["model"], "displayName": job["displayName"], "state": job["state"],
                "createTime": job["createTime"], "updateTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "batchStats": {"requestCount": str(len(job["requests"])),
                               "pendingRequestCount": str(len(job["requests"]) if "output" not in job else 0)}}
        out = {"name": job["name"], "metadata": meta}
        if job["state"] in ("BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED",
                            "BATCH_STATE_EXPIRED"):
            out["done"] = True
            if "output" in job:
                meta["output"] = job["output"]
                out["response"] = {"@type": "type.googleapis.com/google.ai.generativelanguage.v1main."
                                            "GenerateContentBatchOutput", **job["output"]}
            else:
                out["error"] = {"code": 4, "message": f"batch {job['state']}"}
        return out

    def _batch_create(self, model: str, body: dict):
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, dict) or set(body) - {"batch"}:
            self._invalid('Invalid JSON payload received. Expected {"batch": {...}}.')
        items = _get(_get(batch, "inputConfig", "input_config") or {}, "requests", "requests") or {}
        items = items.get("requests") if isinstance(items, dict) else None
        if not isinstance(items, list) or not items:
            self._invalid("* BatchGenerateContentRequest.batch.input_config: requests must not be empty")
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("request"), dict):
                self._invalid("* batch.input_config.requests.requests[]: each needs a `request`")
            self.validate(item["request"])
        with self._lock:
            name = f"batches/loopback{len(self.jobs) + 1}"
            self.jobs[name] = {"name": name, "model": f"models/{model}", "displayName": batch.get("displayName", ""),
                               "state": "BATCH_STATE_PENDING", "requests": items, "polls": 0,
                               "end": self.batch_end.pop(0) if self.batch_end else "BATCH_STATE_SUCCEEDED",
                               "createTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            reply, hold, release = self._job_json(self.jobs[name]), self.hold_batch_create, self._release
        if hold:  # the job exists; its creator does not learn its name until release()
            release.wait()
        return 200, reply, {}

    def _batch_list(self, query: dict):
        size = int((query.get("pageSize") or ["50"])[0])
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        with self._lock:
            jobs = list(self.jobs.values())[::-1]  # the newest first
            page = [self._job_json(job) for job in jobs[start:start + size]]
        out: dict = {"operations": page} if page else {}
        if start + size < len(jobs):
            out["nextPageToken"] = str(start + size)
        return 200, out, {}

    def _batch_get(self, name: str):
        with self._lock:
            job = self.jobs.get(f"batches/{name}")
            if job is None:
                return 404, gemini_error(404, f"Batch batches/{name} not found.", "NOT_FOUND"), {}
            job["polls"] += 1
            if job["polls"] <= self.batch_polls:
                job["state"] = "BATCH_STATE_RUNNING"
            elif job["state"] == "BATCH_STATE_RUNNING" or job["state"] == "BATCH_STATE_PENDING":
                job["state"] = job["end"]
                if job["end"] == "BATCH_STATE_SUCCEEDED":
                    out = []
                    for item in job["requests"]:
                        error = self.batch_item_error(item["request"]) if self.batch_item_error else None
                        entry = {"error": error} if error else \
                            {"response": self._answer(item["request"], job["model"].split("/")[-1])}
                        if item.get("metadata") is not None:
                            entry["metadata"] = item["metadata"]
                        out.append(entry)
                    job["output"] = {"inlinedResponses": {"inlinedResponses": out}}
            return 200, self._job_json(job), {}

    # ---- the route --------------------------------------------------------------------------------------------
    def _handle(self, method, path, headers, body, bad_json, record):
        m = _GEMINI_PATH.match(path)
        create, get = _GEMINI_BATCH_CREATE.match(path), _GEMINI_BATCH_GET.match(path)
        listing = _GEMINI_BATCH_LIST.match(path)
        if not (m and method == "POST") and not (create and method == "POST") and \
                not ((get or listing) and method == "GET"):
            return 404, gemini_error(404, f"Method not found: {method} {path}", "NOT_FOUND"), {}
        record["model"] = m.group(2) if m else create.group(2) if create else None
        key = headers.get("x-goog-api-key")
        if not key:
            return 401, gemini_error(401, "Method doesn't allow unregistered callers (callers without established "
                                          "identity). Please use API Key or other form of API consumer identity to "
                                          "call this API.", "UNAUTHENTICATED"), {}
        if self.api_key is not None and key != self.api_key:
            return 400, gemini_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT",
                                     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                       "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]), {}
        if bad_json is not None:
            return 400, gemini_error(400, f"Invalid JSON payload received. {bad_json}"), {}
        if self.models is not None and record["model"] is not None and record["model"] not in self.models:
            version = (m or create).group(1)
            return 404, gemini_error(404, f"models/{record['model']} is not found for API version {version}, or is "
                                          f"not supported for generateContent. Call ListModels to see the list of "
                                          f"available models and their supported methods.", "NOT_FOUND"), {}
        if create:
            return self._batch_create(create.group(2), body)
        if get:
            return self._batch_get(get.group(2))
        if listing:
            return self._batch_list(record["query"])
        self.validate(body)  # a malformed request is refused even when a reply is scripted, as the API would
        scripted = self._next_scripted()
        if scripted is not None:
            return scripted
        system, prompt = gemini_request_text(body)
        n_images = len(gemini_inline_images(body))
        image_tokens = GEMINI_IMAGE_TOKENS * n_images
        n_in = self.prompt_tokens if self.prompt_tokens is not None else \
            _approx_tokens(system) + _approx_tokens(prompt) + image_tokens
        if m.group(3) == "countTokens":
            return 200, {"totalTokens": n_in}, {}
        text, finish = _gemini_capped(body, self.responder(body))
        n_out = self.output_tokens if self.output_tokens is not None else _approx_tokens(text)
        return 200, self.response_json(text, m.group(2) + self.model_version_suffix, n_in, n_out, finish,
                                       min(image_tokens, n_in)), {}


# ==================================================================================================================
# OpenAI chat completions

_OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
_OPENAI_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "permission_denied",
                 404: "invalid_request_error", 429: "rate_limit_exceeded", 500: "server_error", 503: "server_error"}
OPENAI_IMAGE_TOKENS = 85  # a low-detail image tile


def openai_error(code: int, message: str, type_: str | None = None, param: str | None = None,
                 err_code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_ or _OPENAI_TYPES.get(code, "api_error"), "param": param,
                      "code": err_code}}


@dataclasses.dataclass
class Reply:
    """What a responder may return instead of one text: the n completions of a request and their token counts
    (None: estimated from the text)."""

    texts: list[str]
    prompt_tokens: int | None = None
    completion_tokens: list[int] | None = None
    finish_reasons: list[str] | None = None


class OpenAIServer(_LoopbackServer):
    """`POST /v1/chat/completions` (and `GET /v1/models`) in OpenAI's format (`.url` ends in /v1, as openai's
    base_url does); with `models`, a serving engine's (vLLM's OpenAI-compatible server) view of it.

    api_key: the key `Authorization: Bearer ...` must carry (None: any key, as a local vLLM server accepts).
    Missing header: 401; wrong key: 401 invalid_api_key. `responder(request_json)` gives the reply when nothing is
    scripted: a text (every one of the `n` choices), a list of n texts, or a `Reply`. `max_tokens` /
    `max_completion_tokens` truncate a text reply with finish_reason "length". `n` (1..128) choices come back with
    their `index`; `usage` counts the prompt once and the completion tokens of all choices.
    models: the served model names (vllm serve --served-model-name, --lora-modules NAME=...): another `model` is
    answered 404 as vLLM does ("The model `x` does not exist."), and `GET /v1/models` lists them (None: any model,
    and GET /v1/models lists none).
    """

    url_suffix = "/v1"

    def __init__(self, api_key: str | None = None, responder: Responder | None = None, *,
                 models: list[str] | None = None, **kw):
        self.models = list(models) if models is not None else None
        super().__init__(api_key=api_key, responder=responder, **kw)

    def _default_responder(self, body: dict) -> str:
        return openai_default_responder(body)

    # ---- scripting --------------------------------------------------------------------------------------------
    def ok(self, text: str, prompt_tokens: int = 50, out_tokens: int = 7, finish_reason: str = "stop",
           headers: dict | None = None) -> None:
        self.raw(200, self.response_json(text, "m", prompt_tokens, out_tokens, finish_reason), headers)

    malformed = ok

    def error(self, code: int, headers: dict | None = None, message: str = "fake", type_: str | None = None):
        """Queue an error reply in OpenAI's format, e.g. error(429, {"retry-after": "1"})."""
        self.raw(code, openai_error(code, message, type_, err_code=str(code)), headers)

    def no_choices(self) -> None:
        self.raw(200, {"id": "chatcmpl-empty", "object": "chat.completion", "created": int(time.time()),
                       "model": "m", "choices": [], "usage": None})

    @staticmethod
    def response_json(text: str, model: str, prompt_tokens: int, out_tokens: int,
                      finish_reason: str = "stop") -> dict:
        return {
            "id": "chatcmpl-" + hashlib.sha256(f"{time.time_ns()}:{text}".encode()).hexdigest()[:24],
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                         "logprobs": None, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": out_tokens,
                      "total_tokens": prompt_tokens + out_tokens},
            "system_fingerprint": "fp_loopback",
        }

    # ---- validation -------------------------------------------------------------------------------------------
    @staticmethod
    def _invalid(message: str, param: str | None = None, code: str | None = None):
        raise _BadRequest(400, openai_error(400, message, "invalid_request_error", param, code))

    def validate(self, body: dict) -> None:
        if not isinstance(body, dict):
            self._invalid("We could not parse the JSON body of your request.")
        if not isinstance(body.get("model"), str) or not body["model"]:
            self._invalid("you must provide a model parameter", "model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            self._invalid("[] is too short - 'messages'", "messages", "empty_array")
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict) or msg.get("role") not in _OPENAI_ROLES:
                self._invalid(f"Invalid value for 'messages[{i}].role'.", f"messages[{i}].role")
            content = msg.get("content")
            if isinstance(content, str) or (content is None and msg["role"] == "assistant"):
                continue
            if not isinstance(content, list) or not content:
                self._invalid(f"Invalid type for 'messages[{i}].content'.", f"messages[{i}].content")
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                where = f"messages[{i}].content[{j}]"
                if kind == "text":
                    if not isinstance(part.get("text"), str):
                        self._invalid(f"Missing required parameter: '{where}.text'.", f"{where}.text")
                elif kind == "image_url":
                    if msg["role"] != "user":
                        self._invalid(f"Image URLs are only allowed for messages with role 'user' ({where}).", where)
                    url = (part.get("image_url") or {}).get("url", "")
                    if url.startswith("data:"):
                        try:
                            mime, data = decode_data_url(url)
                        except (ValueError, binascii.Error):
                            self._invalid(f"Invalid 'image_url'. Expected a base64-encoded data URL with an image "
                                          f"MIME type ({where}).", f"{where}.image_url", "invalid_image_url")
                        if mime not in _MAGIC or not data.startswith(_MAGIC[mime]):
                            self._invalid("You uploaded an unsupported image. Please make sure your image has of "
                                          "one the following formats: ['png', 'jpeg', 'gif', 'webp'].",
                                          f"{where}.image_url", "invalid_image_format")
                    elif not re.match(r"^https?://", url):
                        self._invalid(f"Invalid 'image_url' ({where}).", f"{where}.image_url", "invalid_image_url")
                else:
                    self._invalid(f"Invalid value: '{kind}'. Supported values are: 'text', 'image_url', "
                                  f"'input_audio', 'refusal', 'audio' and 'file'.", f"{where}.type")
        n = body.get("n", 1)
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
            self._invalid(f"Invalid 'n': expected an integer between 1 and 128, got {n!r}.", "n")
        seed = body.get("seed")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)
                                 or not -2 ** 63 <= seed < 2 ** 63):
            self._invalid(f"Invalid 'seed': expected a 64-bit integer, got {seed!r}.", "seed")
        for key in ("max_tokens", "max_completion_tokens"):
            limit = body.get(key)
            if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
                self._invalid(f"Invalid '{key}': expected an integer >= 1, got {limit!r}.", key)
        top_p = body.get("top_p")
        if top_p is not None and not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
            self._invalid(f"Invalid 'top_p': expected a number in (0, 1], got {top_p!r}.", "top_p")
        temp = body.get("temperature")
        if temp is not None and not 0 <= temp <= 2:
            self._invalid(f"Invalid 'temperature': decimal above maximum value. Expected a value <= 2, got {temp}.",
                          "temperature")
        fmt = body.get("response_format")
        if fmt is not None:
            kind = fmt.get("type") if isinstance(fmt, dict) else None
            if kind not in ("text", "json_object", "json_schema"):
                self._invalid(f"Invalid value: '{kind}'. Supported values are: 'json_object', 'json_schema', and "
                              f"'text'.", "response_format.type")
            if kind == "json_schema":
                spec = fmt.get("json_schema") or {}
                if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", str(spec.get("name", ""))):
                    self._invalid("Invalid 'response_format.json_schema.name'.", "response_format.json_schema.name")
                if not isinstance(spec.get("schema"), dict):
                    self._invalid("Missing 'response_format.json_schema.schema'.", "response_format.json_schema")
            if kind == "json_object":
                system, prompt = openai_request_text(body)
                if "json" not in (system + prompt).lower():
                    self._invalid("'messages' must contain the word 'json' in some form, to use 'response_format' "
                                  "of type 'json_object'.", "messages")

    # ---- the route --------------------------------------------------------------------------------------------
    def _handle(self, method, path, headers, body, bad_json, record):
        route = (method, path)
        if route not in (("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            return 404, openai_error(404, f"Invalid URL ({method} {path})"), {}
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return 401, openai_error(401, "You didn't provide an API key. You need to provide your API key in an "
                                          "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                                          "YOUR_KEY)."), {}
        if self.api_key is not None and auth[7:] != self.api_key:
            return 401, openai_error(401, "Incorrect API key provided.", err_code="invalid_api_key"), {}
        if route == ("GET", "/v1/models"):
            return 200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": int(time.time()), "owned_by": "vllm", "root": m,
                 "parent": None} for m in self.models or []]}, {}
        if bad_json is not None:
            return 400, openai_error(400, "We could not parse the JSON body of your request."), {}
        record["model"] = body.get("model") if isinstance(body, dict) else None
        self.validate(body)  # a malformed request is refused even when a reply is scripted, as the API would
        if self.models is not None and body["model"] not in self.models:
            return 404, openai_error(404, f"The model `{body['model']}` does not exist.", "NotFoundError",
                                     err_code="404"), {}
        scripted = self._next_scripted()
        if scripted is not None:
            return scripted
        system, prompt = openai_request_text(body)
        n = body.get("n") or 1
        reply = self.responder(body)  # it may raise _BadRequest (e.g. an image it cannot read)
        if not isinstance(reply, Reply):
            reply = Reply([reply] * n if isinstance(reply, str) else list(reply))
        if len(reply.texts) != n:
            raise RuntimeError(f"responder gave {len(reply.texts)} texts for n={n}")
        n_in = reply.prompt_tokens if reply.prompt_tokens is not None else self.prompt_tokens \
            if self.prompt_tokens is not None else \
            _approx_tokens(system) + _approx_tokens(prompt) + OPENAI_IMAGE_TOKENS * len(openai_image_urls(body))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        choices, n_out = [], 0
        for i, text in enumerate(reply.texts):
            finish = reply.finish_reasons[i] if reply.finish_reasons else "stop"
            if reply.completion_tokens is None and limit and _approx_tokens(text) > limit:
                text, finish = text[: 4 * int(limit)], "length"
            n_out += reply.completion_tokens[i] if reply.completion_tokens is not None else \
                self.output_tokens if self.output_tokens is not None else _approx_tokens(text)
            choices.append({"index": i, "message": {"role": "assistant", "content": text, "refusal": None},
                            "logprobs": None, "finish_reason": finish})
        payload = self.response_json("", body["model"], n_in, n_out)
        payload["choices"] = choices
        return 200, payload, {}


class PolicyResponder:
    """A serving engine's answers from real HF checkpoints, for `OpenAIServer(responder=..., models=[...])`:
    `policies` maps a served model name (the base model, a LoRA module) to an mmpref `Policy`.

    Each chat-completions body is turned back into what the engine would run: user texts, assistant answers and
    the images of the `image_url` data URLs (decoded into files under `image_dir`; one that does not decode as an
    image is refused with 400 as vLLM refuses it), rendered by the policy's chat template (what `vllm serve
    --chat-template` does with mmpref's template) and answered by `Policy.generate` with the body's n, temperature,
    top_p, max_tokens and seed. One request at a time: each seeds torch's global RNG. `.calls` lists
    (model, n, seed) per answered request."""

    def __init__(self, policies: dict, image_dir):
        from pathlib import Path

        self.policies = policies
        self.image_dir = Path(image_dir)
        self.image_dir.mkdir(parents=True, exist_ok=True)
        self.calls: list[tuple[str, int, int | None]] = []
        self._lock = threading.Lock()

    def _image_file(self, url: str) -> str:
        import io

        from PIL import Image

        try:
            mime, data = decode_data_url(url)
            Image.open(io.BytesIO(data)).verify()
        except Exception as exc:  # noqa: BLE001 - whatever PIL or base64 raise
            raise _BadRequest(400, openai_error(400, f"Failed to load image from the data URL: {exc}",
                                                "BadRequestError", err_code="400")) from None
        path = self.image_dir / (hashlib.sha256(data).hexdigest()[:16] + "." + mime.split("/")[-1])
        path.write_bytes(data)
        return str(path)

    def request(self, body: dict):
        """(policy, ChatRequest) of one chat-completions body."""
        from mmpref.sampling import ChatRequest

        turns, answers, images = [], [], []
        for msg in body["messages"]:
            content = msg.get("content")
            parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
            text = "".join(p.get("text", "") for p in parts if p.get("type") == "text")
            if msg["role"] == "user":
                turns.append(text)
                images.append([p["image_url"]["url"] for p in parts if p.get("type") == "image_url"])
            elif msg["role"] == "assistant":
                answers.append(text)
        urls = {u for turn in images for u in turn}
        if len(urls) > 1 or any(len(t) > 1 for t in images):
            raise _BadRequest(400, openai_error(400, "the loopback engine takes one picture per request",
                                                "BadRequestError"))
        every_turn = len(turns) > 1 and all(images)
        if urls and not images[0]:
            raise _BadRequest(400, openai_error(400, "the picture must come with the first user turn",
                                                "BadRequestError"))
        image = self._image_file(urls.pop()) if urls else None
        return self.policies[body["model"]], ChatRequest(turns=turns, answers=answers, image=image,
                                                         image_every_turn=every_turn)

    def __call__(self, body: dict) -> Reply:
        policy, req = self.request(body)
        n = body.get("n") or 1
        with self._lock:
            self.calls.append((body["model"], n, body.get("seed")))
            texts = policy.generate([req], num_return_sequences=n, temperature=body.get("temperature") or 0.0,
                                    top_p=body.get("top_p") or 1.0, max_new_tokens=body.get("max_tokens") or 16,
                                    seed=body.get("seed") or 0, desc=False)[0]
        tok = policy.tokenizer
        return Reply(texts, prompt_tokens=len(tok(policy._render(req), add_special_tokens=False).input_ids),
                     completion_tokens=[len(tok(t, add_special_tokens=False).input_ids) for t in texts])


# ==================================================================================================================
# No network but loopback

class NetworkBlocked(RuntimeError):
    """A test tried to reach a non-loopback address. Not an OSError, so no client mistakes it for a transient
    connection failure and retries it quietly."""


def is_loopback_address(family: int | None, address: Any) -> bool:
    """True for 127.0.0.0/8, ::1 (and ::ffff:127.x), "localhost" and unix-socket addresses."""
    if family == getattr(socket, "AF_UNIX", object()) or isinstance(address, (str, bytes)):
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = str(host).split("%")[0].strip("[]")
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a host name: connecting would resolve it over the network
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class _Guard:
    def __init__(self):
        self.blocked: list[tuple[str, Any]] = []
        self.allowed: list[tuple[str, Any]] = []

    def check(self, what: str, family: int | None, address: Any) -> None:
        if is_loopback_address(family, address):
            self.allowed.append((what, address))
            return
        self.blocked.append((what, address))
        raise NetworkBlocked(f"{what} to {address!r} refused: tests may only reach loopback addresses")


@contextlib.contextmanager
def only_loopback():
    """Within the block every socket connect / connect_ex / sendto, socket.create_connection and
    socket.getaddrinfo of a non-loopback address raises NetworkBlocked. Yields a guard whose `.blocked` and
    `.allowed` list the attempts seen."""
    guard = _Guard()
    orig = {"connect": socket.socket.connect, "connect_ex": socket.socket.connect_ex,
            "sendto": socket.socket.sendto, "create_connection": socket.create_connection,
            "getaddrinfo": socket.getaddrinfo}

    def connect(self, address):
        guard.check("connect", self.family, address)
        return orig["connect"](self, address)

    def connect_ex(self, address):
        guard.check("connect_ex", self.family, address)
        return orig["connect_ex"](self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if address is not None:
            guard.check("sendto", self.family, address)
        return orig["sendto"](self, data, *args)

    def create_connection(address, *args, **kwargs):
        guard.check("create_connection", None, address)
        return orig["create_connection"](address, *args, **kwargs)

    def getaddrinfo(host, port, *args, **kwargs):
        if host is not None:
            guard.check("getaddrinfo", None, (host, port))
        return orig["getaddrinfo"](host, port, *args, **kwargs)

    own = {name: name in vars(socket.socket) for name in ("connect", "connect_ex", "sendto")}
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.socket.sendto = sendto
    socket.create_connection = create_connection
    socket.getaddrinfo = getaddrinfo
    try:
        yield guard
    finally:
        for name, defined_here in own.items():  # socket.socket inherits these from _socket.socket
            if defined_here:
                setattr(socket.socket, name, orig[name])
            else:
                delattr(socket.socket, name)
        socket.create_connection = orig["create_connection"]
        socket.getaddrinfo = orig["getaddrinfo"]


# ==================================================================================================================
# pytest fixtures (registered for every test module by tests/conftest.py)

@pytest.fixture()
def no_network_but_loopback():
    """Every non-loopback connect in the test raises NetworkBlocked; yields the guard (`.blocked`, `.allowed`)."""
    with only_loopback() as guard:
        yield guard


@pytest.fixture()
def gemini_server():
    """A GeminiServer accepting any API key, default responder."""
    with GeminiServer() as server:
        yield server


@pytest.fixture()
def openai_server():
    """An OpenAIServer accepting any API key, default responder."""
    with OpenAIServer() as server:
        yield server


def annotation_run(run_dir, n: int):
    """A run directory with n prompts (fake image files, distinct questions) and two responses each, for annotation
    tests: (run_dir, prompts, samples). Every prompt's text carries its tag "q<i>x", so a fake judge can tell them
    apart."""
    (run_dir / "images").mkdir(parents=True)
    prompts, samples = [], []
    for i in range(n):
        (run_dir / "images" / f"{i}.png").write_bytes(b"\x89PNG fake " + bytes([i]))
        prompts.append({"id": f"p{i}", "image": f"images/{i}.png", "question": f"What is shown in picture q{i}x?"})
        samples.append({"prompt_id": f"p{i}", "responses": [f"a circle q{i}x", f"a square q{i}x"]})
    return run_dir, prompts, samples


class Killed(BaseException):
    """A simulated kill: raised in place of a write, so nothing after it runs (BaseException: no handler eats it)."""


@contextlib.contextmanager
def killed_after_writes(module, n: int):
    """Within the block, `module.append_jsonl` writes n rows and then raises Killed (a kill between two writes),
    which the block must raise; the real function is back afterwards."""
    real, written = module.append_jsonl, []

    def append(path, row):
        if len(written) == n:
            raise Killed
        written.append(row)
        real(path, row)

    module.append_jsonl = append
    try:
        with pytest.raises(Killed):
            yield
    finally:
        module.append_jsonl = real

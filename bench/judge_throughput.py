"""Judge throughput against a rate-limited fake Gemini server, as a fraction of the limit (issue 9; goal >= 0.9).

A loopback server speaking the Gemini REST format (tests/loopback.py) answers after `--latency` seconds and refuses
with 429 (Retry-After) any request beyond `--rpm` in the trailing 60 seconds; mmpref's Gemini judge, through the real
google-genai SDK, sends `--n` distinct requests with `requests_per_minute=--rpm` and `--workers` calls in flight.

    python bench/judge_throughput.py                       # the full benchmark: 120 requests/minute, 200 ms, ~75 s
    python bench/judge_throughput.py --rpm 1200 --n 60     # scaled down (what the tests run)

Prints one JSON line: requests, seconds, achieved requests/minute, fraction of the limit, 429s and retries.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmpref.judges import make_judge  # noqa: E402
from mmpref.judges.base import JudgeRequest  # noqa: E402
from tests.loopback import GeminiServer  # noqa: E402


class LimitedGemini(GeminiServer):
    """A GeminiServer that allows `rpm` requests in any 60-second window (429 with Retry-After beyond that)."""

    def __init__(self, rpm: float, **kw):
        super().__init__(**kw)
        self.rpm, self.window, self.refused = rpm, collections.deque(), 0
        self._rate_lock = threading.Lock()

    def _handle(self, method, path, headers, body, bad_json, record):
        with self._rate_lock:
            now = time.monotonic()
            while self.window and now - self.window[0] >= 60.0:
                self.window.popleft()
            if len(self.window) >= self.rpm:
                self.refused += 1
                wait = 60.0 - (now - self.window[0])
                return 429, {"error": {"code": 429, "message": "rate limit", "status": "RESOURCE_EXHAUSTED"}}, \
                    {"Retry-After": f"{wait:.2f}"}
            self.window.append(now)
        return super()._handle(method, path, headers, body, bad_json, record)


def measure(rpm: float = 120, n: int = 150, latency: float = 0.2, workers: int = 4) -> dict:
    os.environ.setdefault("GEMINI_API_KEY", "bench")
    with LimitedGemini(rpm, latency_s=latency) as server, tempfile.TemporaryDirectory() as cache:
        judge = make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=server.url, requests_per_minute=rpm,
                           max_concurrency=workers, backoff_initial_s=0.1)
        reqs = [JudgeRequest(task="answer", prompt=f"Answer the question: what is {i} plus 1?") for i in range(n)]
        start = time.monotonic()
        replies = judge.complete_many(reqs)
        seconds = time.monotonic() - start
        assert len(replies) == n and all(r.text for r in replies)
        achieved = n / seconds * 60.0
        return {"requests": n, "seconds": round(seconds, 2), "limit_rpm": rpm, "latency_s": latency,
                "workers": workers, "achieved_rpm": round(achieved, 1), "fraction": round(achieved / rpm, 3),
                "server_429": server.refused, "retries": judge.usage()["retries"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rpm", type=float, default=120)
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args()
    print(json.dumps(measure(a.rpm, a.n, a.latency, a.workers)))


if __name__ == "__main__":
    main()

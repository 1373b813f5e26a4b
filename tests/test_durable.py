"""Nothing lost, nothing paid twice (issue 9), through the real google-genai SDK against the loopback server: a
judge that gives up on some prompts (429 storm, slow replies past the timeout, malformed bodies) leaves every other
result written; failures are recorded, never cached; --retry-failed re-asks exactly them; a stage killed at a random
point and restarted pays no finished item twice and writes the same file as an uninterrupted run."""

from __future__ import annotations

import random

import pytest

from mmpref import annotate
from mmpref.annotate import TooManyFailures, annotate_samples, collect_gold
from mmpref.io import read_jsonl
from mmpref.judges import make_judge
from tests.loopback import GeminiServer, annotation_run, gemini_request_text, killed_after_writes

N = 8


class FaultyGemini(GeminiServer):
    """Answers normally, except for prompts containing a word in `storm` (429 with Retry-After: 0, always) or
    `empty` (an empty text reply)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.storm: set[str] = set()
        self.empty: set[str] = set()

    def _handle(self, method, path, headers, body, bad_json, record):
        _, prompt = gemini_request_text(body) if isinstance(body, dict) and "contents" in body else ("", "")
        if any(w in prompt for w in self.storm):
            return 429, {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}, \
                {"Retry-After": "0"}
        if any(w in prompt for w in self.empty):
            return 200, self.response_json("", "m", 10, 0), {}
        return super()._handle(method, path, headers, body, bad_json, record)

    def asked(self, word: str) -> int:
        return sum(word in gemini_request_text(r["body"])[1] for r in self.requests if "contents" in r["body"])


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return annotation_run(tmp_path / "run", N)


def judge(url, cache, **kw):
    kw.setdefault("network_retries", 2)
    return make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=url, backoff_initial_s=0.0,
                      backoff_max_s=0.0, max_concurrency=3, **kw)


def test_a_429_storm_on_one_prompt_loses_nothing_and_retry_failed_asks_only_it(world, no_network_but_loopback):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with FaultyGemini() as g:
        g.storm = {"q3x"}
        with pytest.raises(TooManyFailures, match="1 of 8 prompts failed"):
            annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out, max_workers=3,
                             max_failed_fraction=0.0)
        recs = read_jsonl(out)
        assert [r["prompt_id"] for r in recs] == [f"p{i}" for i in range(N)]  # all written, in order
        assert [r["status"] for r in recs].count("ok") == N - 1
        bad = recs[3]
        assert bad["status"] == "failed" and "429" in bad["error"] and bad["scores"] is None
        assert g.asked("q3x") == 3  # 1 + network_retries, not judge.max_retries re-asks
        # a plain rerun pays nothing: the failure is recorded, and within the threshold the stage passes
        g.clear()
        again = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out,
                                 max_failed_fraction=0.2)
        assert not g.requests and again == recs
        # the storm is over: --retry-failed asks exactly the failed prompt, once
        g.storm = set()
        fixed = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out, retry_failed=True,
                                 max_failed_fraction=0.0)
        assert len(g.requests) == 1 and g.asked("q3x") == 1
        assert all(r["status"] == "ok" for r in fixed) and fixed[:3] == recs[:3] and fixed[4:] == recs[4:]
        # the same as a run that never saw the storm
        clean = run_dir / "clean.jsonl"
        annotate_samples(judge(g.url, run_dir / "cache2"), prompts, samples, run_dir, clean)
        assert clean.read_bytes() == out.read_bytes()


def test_an_empty_gold_answer_is_not_cached_and_is_asked_again(world, no_network_but_loopback):
    run_dir, prompts, _ = world
    out = run_dir / "gold.jsonl"
    with FaultyGemini() as g:
        g.empty = {"q5x"}
        rows = collect_gold(judge(g.url, run_dir / "cache"), prompts, run_dir, out)
        assert rows[5]["status"] == "failed" and rows[5]["answer"] is None and "empty" in rows[5]["error"]
        assert sum(r.get("status") != "failed" for r in rows) == N - 1
        assert not (run_dir / "cache" / "rejected").exists() or list((run_dir / "cache" / "rejected").glob("*.json"))
        g.empty = set()
        g.clear()
        rows = collect_gold(judge(g.url, run_dir / "cache"), prompts, run_dir, out, retry_failed=True)
        assert len(g.requests) == 1 and g.asked("q5x") == 1  # asked for real: the empty reply was not cached
        assert rows[5]["answer"] and "status" not in rows[5]


def test_slow_and_malformed_replies_are_retried_then_recorded(world, no_network_but_loopback):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with GeminiServer() as g:
        g.raw(200, '{"candidates": [')  # a partial body, then a healthy reply: retried, not fatal
        j = judge(g.url, run_dir / "cache")
        recs = annotate_samples(j, prompts[:1], samples[:1], run_dir, out)
        assert recs[0]["status"] == "ok" and j.usage()["retries"] == 1
        g.latency_s = 0.5  # every reply later than the timeout: given up after the network retries, recorded
        j = judge(g.url, run_dir / "cache", timeout_s=0.2, network_retries=1)
        recs = annotate_samples(j, prompts[:3], samples[:3], run_dir, out)
        assert [r["status"] for r in recs] == ["ok", "failed", "failed"]
        assert "Timeout" in recs[1]["error"] or "timed out" in recs[1]["error"]


@pytest.mark.parametrize("stage", ["annotate", "gold"])
def test_kill_at_random_points_then_restart(world, stage, monkeypatch, no_network_but_loopback):
    run_dir, prompts, samples = world

    def run(cache, out):
        j = judge(g.url, cache)
        if stage == "annotate":
            return annotate_samples(j, prompts, samples, run_dir, out, max_workers=3)
        return collect_gold(j, prompts, run_dir, out, max_workers=3)

    with GeminiServer() as g:
        ref = run_dir / "ref.jsonl"
        run(run_dir / "ref_cache", ref)
        rng = random.Random(9)
        for trial in range(3):
            g.clear()
            out, cache = run_dir / f"out{trial}.jsonl", run_dir / f"cache{trial}"
            kill_after = rng.randint(0, N - 1)
            with killed_after_writes(annotate, kill_after):
                run(cache, out)
            first = len(g.requests)
            run(cache, out)
            asked = [gemini_request_text(r["body"])[1] for r in g.requests]
            # zero repeated calls: every prompt asked once over the kill and the restart
            assert len(asked) == N, (kill_after, first, len(asked))
            assert all(sum(f"q{i}x" in a for a in asked) == 1 for i in range(N))
            assert out.read_bytes() == ref.read_bytes()


def test_throughput_reaches_the_rate_limit_without_exceeding_it(no_network_but_loopback):
    """bench/judge_throughput.py scaled down (600 requests/minute instead of 120, 200 ms latency, ~4 s)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_tp", Path(__file__).resolve().parents[1] / "bench" /
                                                  "judge_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure(rpm=600, n=40, latency=0.2, workers=4)
    assert 0.85 <= result["fraction"] <= 1.03, result
    assert result["server_429"] == 0


def test_tokens_per_minute_limiter_waits_for_tokens():
    import time

    from mmpref.judges.base import TokenLimiter

    lim = TokenLimiter(60000)  # 1000 tokens a second, a full bucket to start
    t0 = time.monotonic()
    lim.take(60000)
    assert time.monotonic() - t0 < 0.1
    lim.take(400)
    lim.settle(100)  # the reply used 100 more than estimated
    lim.take(1)
    assert 0.45 <= time.monotonic() - t0 < 1.5


def test_benchmark_grading_durable_through_failures_and_kills(tmp_path, monkeypatch, no_network_but_loopback):
    """Stage 09's per-item loop (run_items): a judge that gives up on one item leaves the others graded and that
    one recorded as failed (re-graded only under retry_failed); a kill mid-grading and a restart repeat no call."""
    from mmpref.evaluate import protocol
    from mmpref.evaluate.mmvet import grade_mmvet
    from mmpref.sampling import ChatRequest

    monkeypatch.setenv("GEMINI_API_KEY", "k")
    items = [f"q{i}x" for i in range(N)]

    def go(j, out):
        def grade(it, answers):
            score, raw = grade_mmvet(j, f"What is {it}?", "a circle", answers[0])
            return {"score": score, "failed": score is None, "judge_raw": raw}

        asked = protocol.ItemProtocol("mmvet", key=lambda it: it,
                                      requests=lambda it: [ChatRequest(turns=[f"What is {it}?"])],
                                      describe=lambda it: {"question_id": it}, grade=grade)
        return protocol.run_items(asked, items, lambda reqs: [f"a circle, {r.turns[0]}" for r in reqs], out, "m",
                                  judge=j, chunk_size=3)

    with FaultyGemini() as g:
        ref = tmp_path / "ref.jsonl"
        go(judge(g.url, tmp_path / "c0"), ref)
        # a 429 storm on one item
        g.clear()
        g.storm = {"q2x"}
        out = tmp_path / "storm.jsonl"
        recs = go(judge(g.url, tmp_path / "c1"), out)
        assert len(recs) == N and recs[2]["failed"] and "429" in recs[2]["judge_error"]
        assert sum(bool(r["failed"]) for r in recs) == 1
        g.storm, n = set(), len(g.requests)
        assert go(judge(g.url, tmp_path / "c1"), out) == recs and len(g.requests) == n  # kept, nothing paid
        j = judge(g.url, tmp_path / "c1")
        j.retry_failed = True
        go(j, out)
        assert len(g.requests) == n + 1 and out.read_bytes() == ref.read_bytes()
        # killed after a random number of graded items, then restarted: every item graded once, same file
        for trial, kill_after in enumerate(random.Random(3).sample(range(N), 2)):
            g.clear()
            out = tmp_path / f"kill{trial}.jsonl"
            with killed_after_writes(protocol, kill_after):
                go(judge(g.url, tmp_path / f"k{trial}"), out)
            go(judge(g.url, tmp_path / f"k{trial}"), out)
            asked = [gemini_request_text(r["body"])[1] for r in g.requests]
            assert len(asked) == N and all(sum(f"{it}?" in a for a in asked) == 1 for it in items)
            assert out.read_bytes() == ref.read_bytes()

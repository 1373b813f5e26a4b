"""Gemini Batch API (issue 9) through the real google-genai SDK against the loopback server's batch endpoints:
a batch stage writes what the per-request path writes with zero per-request calls, a restart after submission polls
the same job (one create in total), items a job failed are recorded failed and re-asked by --retry-failed, and a job
that expires is reported and its items fall back, are resubmitted, or stop the stage, per judge.batch_expired."""

from __future__ import annotations

import json
import logging

import pytest

from mmpref.annotate import annotate_samples, collect_gold
from mmpref.config import JudgeParams
from mmpref.io import read_jsonl
from mmpref.judges import JudgeError, judge_from_params, make_judge
from mmpref.judges.gemini import GeminiJudge
from mmpref.runner import judge_spend
from tests.loopback import annotation_run, GeminiServer, gemini_request_text

N = 4


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return annotation_run(tmp_path / "run", N)


def judge(url, cache, batch=True, **kw):
    j = make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=url, backoff_initial_s=0.0, backoff_max_s=0.0,
                   max_concurrency=2, price_input_per_mtok=2.0, price_output_per_mtok=10.0)
    j.batch, j.batch_poll_s = batch, 0.01
    for k, v in kw.items():
        setattr(j, k, v)
    return j


def item_error(word):
    return lambda body: {"code": 500, "message": "internal error"} if word in gemini_request_text(body)[1] else None


def test_batch_annotation_equals_per_request_with_zero_per_request_calls(world, no_network_but_loopback, caplog):
    run_dir, prompts, samples = world
    with GeminiServer() as g:
        ref = run_dir / "ref.jsonl"
        plain = judge(g.url, run_dir / "ref_cache", batch=False)
        annotate_samples(plain, prompts, samples, run_dir, ref)
        assert g.generate_calls() == N and g.batch_calls() == 0
        g.clear()
        g.batch_polls = 3  # the job runs for 3 polls before it ends
        out = run_dir / "annotations.jsonl"
        j = judge(g.url, run_dir / "judge_cache")
        with caplog.at_level(logging.INFO, logger="mmpref.judges.gemini"):
            annotate_samples(j, prompts, samples, run_dir, out)
        assert out.read_bytes() == ref.read_bytes()
        assert g.generate_calls() == 0 and g.batch_calls("create") == 1 and g.batch_calls("get") == 4
        assert "JOB_STATE_RUNNING" in caplog.text  # progress is logged while polling
        assert not json.loads((run_dir / "batch_jobs" / "annotate" / "pending.json").read_text())
        # half the price, in the session's totals and in the run's spend from the cache
        u, p = j.usage(), plain.usage()
        assert u["batch_items"] == N and u["calls"] == 0
        assert u["input_tokens"] == p["input_tokens"] and u["cost_usd"] == pytest.approx(p["cost_usd"] / 2)
        jp = JudgeParams(price_input_per_mtok=2.0, price_output_per_mtok=10.0)
        spend, ref_spend = judge_spend(run_dir, ["annotate"], jp), judge_spend(run_dir / "ref_cache", ["annotate"], jp)
        assert spend["batch_calls"] == N and spend["cost_usd"] == pytest.approx(u["cost_usd"])
        # a rerun reads everything from the file and the cache: no job, no call
        g.clear()
        annotate_samples(judge(g.url, run_dir / "judge_cache"), prompts, samples, run_dir, out, retry_failed=True)
        assert not g.requests


def test_gold_answers_through_a_batch_job(world, no_network_but_loopback):
    run_dir, prompts, _ = world
    with GeminiServer() as g:
        ref = run_dir / "ref.jsonl"
        collect_gold(judge(g.url, run_dir / "ref_cache", batch=False), prompts, run_dir, ref)
        g.clear()
        out = run_dir / "gold.jsonl"
        collect_gold(judge(g.url, run_dir / "cache"), prompts, run_dir, out)
        assert out.read_bytes() == ref.read_bytes() and g.generate_calls() == 0 and g.batch_calls() == 1


class Killed(BaseException):
    pass


def test_a_restart_after_submission_polls_the_same_job(world, monkeypatch, no_network_but_loopback):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with GeminiServer() as g:
        g.batch_polls = 2
        polls = []
        real = GeminiJudge._wait_for

        def killed_while_polling(self, name):
            polls.append(name)
            raise Killed  # the process dies between submit and collect

        monkeypatch.setattr(GeminiJudge, "_wait_for", killed_while_polling)
        with pytest.raises(Killed):
            annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out)
        assert g.batch_calls("create") == 1 and not out.exists()
        pending = json.loads((run_dir / "batch_jobs" / "annotate" / "pending.json").read_text())
        assert [j["name"] for j in pending] == polls == ["batches/loopback1"] and len(pending[0]["items"]) == N
        monkeypatch.setattr(GeminiJudge, "_wait_for", real)
        recs = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out)
        assert g.batch_calls("create") == 1  # exactly one job in total: the restart polled it
        assert g.batch_calls("get") == 3 and g.generate_calls() == 0
        assert [r["status"] for r in recs] == ["ok"] * N
        done = read_jsonl(run_dir / "batch_jobs" / "annotate" / "done.jsonl")
        assert [d["name"] for d in done] == ["batches/loopback1"] and done[0]["collected"]


def test_failed_items_are_recorded_failed_and_retry_failed_reasks_them(world, no_network_but_loopback):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with GeminiServer() as g:
        g.batch_item_error = item_error("q2x")
        recs = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out)
        assert [r["status"] for r in recs] == ["ok", "ok", "failed", "ok"]
        assert "batch job batches/loopback1 failed this request: 500 internal error" in recs[2]["error"]
        assert g.generate_calls() == 0  # recorded failed, not asked again one by one
        assert len(list((run_dir / "cache").glob("*/*.json"))) == N - 1  # the failure is not cached
        # a plain rerun leaves the recorded failure alone
        g.clear()
        assert annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out) == recs
        assert not g.requests
        # --retry-failed: a new job of exactly the failed item
        g.batch_item_error = None
        fixed = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out, retry_failed=True)
        assert g.batch_calls("create") == 1 and g.generate_calls() == 0
        asked = g.jobs["batches/loopback2"]["requests"]
        assert len(asked) == 1 and "q2x" in gemini_request_text(asked[0]["request"])[1]
        assert [r["status"] for r in fixed] == ["ok"] * N and fixed[:2] == recs[:2] and fixed[3] == recs[3]


def test_an_unparsable_batch_reply_is_reasked_without_paying_twice(world, no_network_but_loopback):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with GeminiServer() as g:
        default = g.responder

        def responder(body):  # the first ask about q1x gets a malformed reply, re-asks a good one
            if "q1x" in gemini_request_text(body)[1] and not g.generate_calls():
                return "not json"
            return default(body)

        g.responder = responder
        recs = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out, max_retries=2)
        assert [r["status"] for r in recs] == ["ok"] * N
        assert g.batch_calls("create") == 1 and g.generate_calls() == 1  # only the re-ask (attempt 1) one by one
        assert len(list((run_dir / "cache" / "rejected").glob("*.json"))) == 1


@pytest.mark.parametrize("policy", ["per_request", "resubmit", "fail"])
def test_an_expired_job_is_reported_and_handled_per_params(world, policy, no_network_but_loopback, caplog):
    run_dir, prompts, samples = world
    out = run_dir / "annotations.jsonl"
    with GeminiServer() as g:
        g.batch_end = ["BATCH_STATE_EXPIRED"]
        j = judge(g.url, run_dir / "cache", batch_expired=policy)
        if policy == "fail":
            with pytest.raises(JudgeError, match="batch job batches/loopback1 ended JOB_STATE_EXPIRED"):
                annotate_samples(j, prompts, samples, run_dir, out)
            assert json.loads((run_dir / "batch_jobs" / "annotate" / "pending.json").read_text()) == []
            assert not out.exists() and g.generate_calls() == 0
            # the next run submits a new job (the expired one is not polled forever)
            recs = annotate_samples(judge(g.url, run_dir / "cache"), prompts, samples, run_dir, out)
            assert g.batch_calls("create") == 2 and [r["status"] for r in recs] == ["ok"] * N
            return
        with caplog.at_level(logging.WARNING, logger="mmpref.judges.gemini"):
            recs = annotate_samples(j, prompts, samples, run_dir, out)
        assert "batch job batches/loopback1 ended JOB_STATE_EXPIRED" in caplog.text
        assert [r["status"] for r in recs] == ["ok"] * N
        if policy == "per_request":
            assert g.batch_calls("create") == 1 and g.generate_calls() == N
        else:
            assert g.batch_calls("create") == 2 and g.generate_calls() == 0
            assert len(g.jobs["batches/loopback2"]["requests"]) == N


def test_batch_params_reach_the_judge_and_other_backends_refuse(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    jp = JudgeParams(backend="gemini", model="m", base_url="http://127.0.0.1:9", batch=True, batch_poll_s=7,
                     batch_expired="resubmit", batch_price_factor=0.4)
    j = judge_from_params(jp, None)
    assert (j.batch, j.batch_poll_s, j.batch_expired, j.batch_price_factor) == (True, 7, "resubmit", 0.4)
    with pytest.raises(ValueError, match="no batch API"):
        judge_from_params(JudgeParams(backend="rubric", model=None, batch=True), None)

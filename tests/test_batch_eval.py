"""Stage 09's judging through the Gemini Batch API (issue 9), with the real google-genai SDK against the loopback
server's batch endpoints: each judge-graded benchmark (MT-Bench single, AlpacaEval pairwise, MM-Vet with its five
tries at rising temperature, LLaVA-Bench at 0.2) asks through batch jobs exactly the requests the per-request path
asks and gives the same records and scores; a restart while a job runs polls the recorded job and submits nothing
twice; an item its job failed is recorded failed, never cached, and --retry-failed submits exactly it again."""

from __future__ import annotations

import collections
import json

import pytest

from mmpref.evaluate.protocol import run_benchmark
from mmpref.io import read_jsonl
from mmpref.judges import make_judge
from mmpref.judges.gemini import GeminiJudge
from tests.loopback import GeminiServer, Killed, gemini_default_responder, gemini_inline_images, gemini_request_text
from tests.test_benchmarks import Recorder, make_alpaca, make_llava_bench, make_mmvet, make_mt_bench

MAKERS = {"mt_bench": make_mt_bench, "alpaca_eval": lambda root: make_alpaca(root, 6), "mmvet": make_mmvet,
          "llava_bench": make_llava_bench}


def temperature(body: dict) -> float:
    return float((body.get("generationConfig") or {}).get("temperature") or 0.0)


def responder(body: dict) -> str:
    """The default judge, except for replies the official parsers reject: MM-Vet's "What is 3 plus 5?" at every
    temperature (five tries, then a failed grading) and "How many bars?" at temperature 0 only (graded on the third
    try, the first at 0.5: the evaluator asks at 0.0, 0.0, 0.5, 1.0, 1.5); one AlpacaEval ranking, one LLaVA-Bench review and MT-Bench's second turn of question 82."""
    system, prompt = gemini_request_text(body)
    if "Prediction" in prompt and ("What is 3 plus 5?" in prompt or
                                   ("How many bars?" in prompt and temperature(body) == 0.0)):
        return "I cannot tell."
    if "Task number 2?" in prompt or ("Why is the sky blue?" in prompt and "[System]" in prompt):
        return "Both are fine."
    if "Name another." in prompt and "[[rating]]" in system + prompt:
        return "No verdict."
    return gemini_default_responder(body)


def judge(url, cache, batch=True, **kw):
    j = make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=url, backoff_initial_s=0.0, backoff_max_s=0.0,
                   max_concurrency=2)
    j.batch, j.batch_poll_s = batch, 0.01
    for k, v in kw.items():
        setattr(j, k, v)
    return j


def answer(req):
    return f"My answer to {req.turns[-1]} is 8, red, 4."


def asked(body: dict) -> tuple:
    """What a request asks (its content key): system, prompt, images and temperature."""
    system, prompt = gemini_request_text(body)
    return system, prompt, len(gemini_inline_images(body)), temperature(body)


def batch_requests(g: GeminiServer) -> list[dict]:
    return [item["request"] for job in g.jobs.values() for item in job["requests"]]


@pytest.mark.parametrize("bench", list(MAKERS))
def test_batch_grading_equals_the_per_request_path(bench, tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    data = MAKERS[bench](tmp_path / "data")
    with GeminiServer(responder=responder) as g:
        ref = run_benchmark(bench, data, Recorder(answer), judge(g.url, tmp_path / "ref_cache", batch=False),
                            tmp_path / "ref" / f"{bench}.jsonl", "vit")
        online = collections.Counter(asked(r["body"]) for r in g.requests)
        assert g.batch_calls() == 0 and g.generate_calls() == sum(online.values())
        g.clear()
        gen = Recorder(answer)
        j = judge(g.url, tmp_path / "cache")
        rows = run_benchmark(bench, data, gen, j, tmp_path / "eval" / f"{bench}.jsonl", "vit")
        assert rows == ref
        assert (tmp_path / "eval" / f"{bench}.jsonl").read_bytes() == (tmp_path / "ref" / f"{bench}.jsonl").read_bytes()
        # the same requests (content, images, temperature), each asked once, all through batch jobs
        assert g.generate_calls() == 0
        assert collections.Counter(asked(b) for b in batch_requests(g)) == online
        assert j.usage()["batch_items"] == sum(online.values()) and j.usage()["calls"] == 0
        pending = tmp_path / "eval" / "batch_jobs" / bench / "pending.json"
        assert json.loads(pending.read_text()) == []
        # one job per round: MM-Vet's re-asks wait for the reply they re-ask, up to its five tries
        rounds = {"mt_bench": 2, "alpaca_eval": 1, "mmvet": 5, "llava_bench": 1}[bench]
        assert g.batch_calls("create") == rounds
        if bench == "mmvet":
            temps = sorted(temperature(b) for b in batch_requests(g) if "What is 3 plus 5?" in gemini_request_text(b)[1])
            assert temps == [0.0, 0.0, 0.5, 1.0, 1.5]  # the evaluator's temperatures, one per try
            rec = next(r for r in read_jsonl(tmp_path / "eval" / "mmvet.jsonl") if r["question_id"] == "v1_0")
            assert rec["failed"] and rec["score"] is None
        # a rerun reads everything from the records: no job, no call, no generation
        g.clear()
        again = Recorder(answer)
        assert run_benchmark(bench, data, again, judge(g.url, tmp_path / "cache"), tmp_path / "eval" / f"{bench}.jsonl",
                             "vit") == ref
        assert not g.requests and not again.requests


def test_a_second_judge_run_goes_through_its_own_batch_jobs(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    data = make_llava_bench(tmp_path / "data")
    with GeminiServer(responder=responder) as g:
        out = tmp_path / "eval" / "llava_bench.jsonl"
        run_benchmark("llava_bench", data, Recorder(answer), judge(g.url, tmp_path / "cache"), out, "vit")
        g.clear()
        gen = Recorder(answer)
        run_benchmark("llava_bench", data, gen, judge(g.url, tmp_path / "cache"), out, "vit", judge_run=2)
        assert not gen.requests and g.generate_calls() == 0 and g.batch_calls("create") == 1  # run 1's answers
        assert (tmp_path / "eval" / "batch_jobs" / "llava_bench.judge2" / "done.jsonl").is_file()
        assert len(g.jobs["batches/loopback2"]["requests"]) == 3  # distinct requests: the judge run is in their key


def test_restarts_while_a_job_runs_poll_it_and_pay_nothing_twice(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    data = make_mmvet(tmp_path / "data")
    out = tmp_path / "eval" / "mmvet.jsonl"
    with GeminiServer(responder=responder) as g:
        ref = run_benchmark("mmvet", data, Recorder(answer), judge(g.url, tmp_path / "ref_cache", batch=False),
                            tmp_path / "ref.jsonl", "vit")
        g.clear()
        real = GeminiJudge._wait_for
        seen = []

        def killed_while_polling(self, name):
            seen.append(name)
            raise Killed

        monkeypatch.setattr(GeminiJudge, "_wait_for", killed_while_polling)
        for restart in range(2):  # the process dies while polling round 1's job, and again after a restart
            gen = Recorder(answer)
            with pytest.raises(Killed):
                run_benchmark("mmvet", data, gen, judge(g.url, tmp_path / "cache"), out, "vit")
            assert len(gen.requests) == (3 if restart == 0 else 0)  # answers kept from the first process
            # the answers were written (ungraded) before any job, and the job was recorded when it was submitted
            assert [r["judge"] for r in read_jsonl(out)] == [None] * 3
            pending = json.loads((tmp_path / "eval" / "batch_jobs" / "mmvet" / "pending.json").read_text())
            assert [p["name"] for p in pending] == ["batches/loopback1"] and seen[-1] == "batches/loopback1"
            assert g.batch_calls("create") == 1
        # a third process gets through rounds 1 and 2 (a rejected reply and a re-ask collected) and dies polling
        # round 3's job: the outcomes it had not used yet wait in staged.jsonl, nothing is asked again
        polls = []

        def killed_in_round_3(self, name):
            polls.append(name)
            if name == "batches/loopback3":
                raise Killed
            return real(self, name)

        monkeypatch.setattr(GeminiJudge, "_wait_for", killed_in_round_3)
        with pytest.raises(Killed):
            run_benchmark("mmvet", data, Recorder(answer), judge(g.url, tmp_path / "cache"), out, "vit")
        assert polls == ["batches/loopback1", "batches/loopback2", "batches/loopback3"]
        assert (tmp_path / "eval" / "batch_jobs" / "mmvet" / "staged.jsonl").is_file()
        monkeypatch.setattr(GeminiJudge, "_wait_for", real)
        gen = Recorder(answer)
        rows = run_benchmark("mmvet", data, gen, judge(g.url, tmp_path / "cache"), out, "vit")
        assert rows == ref and out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()
        assert not gen.requests  # answered once, before the first kill
        assert g.generate_calls() == 0
        bodies = [json.dumps(b, sort_keys=True) for b in batch_requests(g)]
        assert len(bodies) == len(set(bodies)) == 3 + 2 + 2 + 1 + 1  # every request in exactly one job
        assert g.batch_calls("create") == 5  # five rounds in all: each job submitted once, the restarts polled
        assert not (tmp_path / "eval" / "batch_jobs" / "mmvet" / "staged.jsonl").exists()  # used, then forgotten


def test_failed_batch_items_are_recorded_not_cached_and_retried_on_request(tmp_path, monkeypatch,
                                                                           no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    data = make_alpaca(tmp_path / "data", 4)
    out = tmp_path / "eval" / "alpaca_eval.jsonl"
    with GeminiServer() as g:
        ref = run_benchmark("alpaca_eval", data, Recorder(answer), judge(g.url, tmp_path / "ref_cache", batch=False),
                            tmp_path / "ref.jsonl", "vit")
        g.clear()
        g.batch_item_error = lambda body: {"code": 500, "message": "internal error"} \
            if "Task number 1?" in gemini_request_text(body)[1] else None
        rows = run_benchmark("alpaca_eval", data, Recorder(answer), judge(g.url, tmp_path / "cache"), out, "vit")
        recs = read_jsonl(out)
        bad = [r for r in recs if r["failed"]]
        assert [r["instruction"] for r in bad] == ["Task number 1?"]
        assert "batch job batches/loopback1 failed this request: 500 internal error" in bad[0]["judge_error"]
        assert next(r for r in rows if r["metric"] == "judge_failures")["value"] == 1
        assert g.generate_calls() == 0 and g.batch_calls("create") == 1
        assert len(list((tmp_path / "cache").glob("*/*.json"))) == 3  # the failure is not cached
        # a plain rerun keeps the recorded failure and pays nothing
        g.clear()
        assert run_benchmark("alpaca_eval", data, Recorder(answer), judge(g.url, tmp_path / "cache"), out,
                             "vit") == rows
        assert not g.requests
        # --retry-failed: one new job of exactly the failed item, then the same as a run that never failed
        g.batch_item_error = None
        fixed = run_benchmark("alpaca_eval", data, Recorder(answer),
                              judge(g.url, tmp_path / "cache", retry_failed=True), out, "vit")
        assert g.batch_calls("create") == 1 and g.generate_calls() == 0
        asked_again = g.jobs["batches/loopback2"]["requests"]
        assert ["Task number 1?" in gemini_request_text(r["request"])[1] for r in asked_again] == [True]
        assert fixed == ref and out.read_bytes() == (tmp_path / "ref.jsonl").read_bytes()

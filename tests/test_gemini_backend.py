"""GeminiJudge driven by the REAL google-genai SDK against a loopback fake of the Gemini REST API."""

from __future__ import annotations

import json

import pytest

from mmpref.judges import annotate_responses, make_judge
from mmpref.judges.base import JudgeError, JudgeRequest
from tests.loopback import GeminiServer

API_KEY = "test-key-not-a-secret-7f3a9c"


@pytest.fixture()
def fake():
    with GeminiServer(api_key=API_KEY) as f:  # scripted replies first, else the default judge responder
        yield f


@pytest.fixture()
def judge(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    return make_judge("gemini", "gemini-test", tmp_path / "cache", base_url=fake.url, backoff_initial_s=0.01,
                      network_retries=3, price_input_per_mtok=1.25, price_output_per_mtok=10.0)


GOOD = {"reasoning": "Response 1 is right, response 2 is wrong.",
        "responses": [{"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2},
                      {"helpfulness": 0, "correctness": 0, "coherence": 3, "complexity": 1, "verbosity": 2}]}


def _image(tmp_path):
    from PIL import Image

    path = tmp_path / "img.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def test_structured_reply_parses_and_wire_format(fake, judge, tmp_path):
    fake.ok(json.dumps(GOOD))
    ann = annotate_responses(judge, "What is 3 plus 5?", _image(tmp_path), ["3 plus 5 is 8.", "9"],
                             truth={"answer": "8", "reference": "3 plus 5 is 8."})
    assert ann.status == "ok" and ann.judge == "gemini:gemini-test"
    assert [s.correctness for s in ann.scores] == [4, 0]
    assert "response 2 is wrong" in ann.reasoning
    (req,) = fake.requests
    assert req["model"] == "gemini-test"
    assert req["headers"].get("x-goog-api-key") == API_KEY
    body = req["body"]
    gen = body["generationConfig"]
    assert gen["responseMimeType"] == "application/json"
    assert "responses" in json.dumps(gen.get("responseSchema") or gen.get("responseJsonSchema"))
    parts = body["contents"][0]["parts"]
    inline = [p["inlineData"] for p in parts if "inlineData" in p]
    assert inline and (inline[0].get("mimeType") or inline[0].get("mime_type")) == "image/png"
    assert any("What is 3 plus 5?" in p.get("text", "") for p in parts)
    assert "expert annotator" in json.dumps(body["systemInstruction"])
    assert "truth" not in json.dumps(body) and '"answer": "8"' not in json.dumps(body)  # truth is never sent
    usage = judge.usage()
    assert usage["input_tokens"] == 120 and usage["output_tokens"] == 40
    assert usage["cost_usd"] == pytest.approx((120 * 1.25 + 40 * 10.0) / 1e6)


def test_429_with_retry_after_is_retried(fake, judge):
    fake.error(429, "RESOURCE_EXHAUSTED", {"Retry-After": "0.05"})
    fake.error(503, "UNAVAILABLE")
    fake.ok("Fine.\nRating: [[7]]")
    reply = judge.complete(JudgeRequest(task="grade_single", prompt="grade this"))
    assert reply.text.endswith("[[7]]") and not reply.cached
    assert len(fake.requests) == 3
    assert judge.usage()["retries"] == 2


def test_non_retryable_error_fails_at_once(fake, judge):
    fake.error(400, "INVALID_ARGUMENT")
    with pytest.raises(JudgeError, match="400"):
        judge.complete(JudgeRequest(task="grade_single", prompt="bad"))
    assert len(fake.requests) == 1


def test_retries_exhausted_raises(fake, judge):
    for _ in range(4):
        fake.error(500, "INTERNAL")
    with pytest.raises(JudgeError, match="giving up"):
        judge.complete(JudgeRequest(task="grade_single", prompt="x"))
    assert len(fake.requests) == 4


def test_malformed_json_retried_then_failed_with_raw(fake, judge):
    fake.ok('{"responses": [{"helpfulness": 9}]}')
    fake.ok("I think both are fine.")
    fake.ok('{"responses": [')
    ann = annotate_responses(judge, "q?", None, ["a.", "b."], max_retries=2)
    assert ann.status == "failed" and ann.scores is None
    assert ann.raw == '{"responses": ['
    assert "attempt 2" in ann.error
    assert len(fake.requests) == 3


def test_second_identical_call_hits_cache_and_key_not_stored(fake, judge, tmp_path):
    fake.ok(json.dumps(GOOD))
    args = ("What is 3 plus 5?", None, ["3 plus 5 is 8.", "9"])
    first = annotate_responses(judge, *args)
    second = annotate_responses(judge, *args)
    assert first.scores == second.scores
    assert len(fake.requests) == 1
    assert judge.usage()["cache_hits"] == 1
    files = list((tmp_path / "cache").rglob("*.json"))
    assert len(files) == 1 and files[0].parent.name == files[0].stem[:2]
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert API_KEY not in f.read_text()


def test_v1beta_route_is_accepted(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    j = make_judge("gemini", "gemini-test", None, base_url=fake.url, api_version="v1beta")
    fake.ok("hello")
    assert j.complete(JudgeRequest(task="answer", prompt="hi")).text == "hello"
    assert fake.requests[0]["path"].startswith("/v1beta/")


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="GEMINI_API_KEY"):
        make_judge("gemini", "gemini-test", None)

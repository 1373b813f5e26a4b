"""mmpref's API judges end to end through the REAL SDKs (google-genai, openai) against the loopback servers of
tests/loopback.py, with every non-loopback connection refused: annotation, gold answers and the four benchmark
graders parse; images and API keys travel as the APIs expect; keys never reach the cache."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, llava_bench as ev_llava_bench, mmvet as ev_mmvet, mt_bench as ev_mt_bench
from mmpref.judges import annotate_responses, gold_answer, make_judge, prompts
from mmpref.evaluate.alpaca_eval import grade_pairwise_alpaca
from mmpref.evaluate.llava_bench import grade_llava_bench
from mmpref.evaluate.mmvet import grade_mmvet
from mmpref.evaluate.mt_bench import grade_single
from mmpref.judges.base import JudgeError, JudgeRequest
from mmpref.ratings import ATTRIBUTES
from mmpref.pairing import dpo_pair
from mmpref.ratings import quality
from tests.loopback import (
    GeminiServer,
    NetworkBlocked,
    OpenAIServer,
    annotation_scores,
    classify_prompt,
    decode_data_url,
    gemini_inline_images,
    gemini_request_text,
    only_loopback,
    openai_image_urls,
)

GEMINI_KEY = "gm-loopback-key-0d9b41"
OPENAI_KEY = "sk-loopback-key-5e21c7"
BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
RESPONSES = ["There are two red apples on the table.", "I see three apples, all green.",
             "The image shows a table.", "Two apples: one red and one slightly darker red, on a wooden table."]


@pytest.fixture()
def image(tmp_path):
    from PIL import Image

    path = tmp_path / "apples.png"
    Image.new("RGB", (16, 12), (180, 20, 30)).save(path)
    return path


@pytest.fixture(params=["gemini", "openai"])
def api(request, tmp_path, monkeypatch, no_network_but_loopback):
    """(backend, server, judge, cache dir) for each API backend, the network closed but for loopback."""
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    server = GeminiServer(api_key=GEMINI_KEY) if request.param == "gemini" else OpenAIServer(api_key=OPENAI_KEY)
    cache = tmp_path / "cache"
    judge = make_judge(request.param, f"{request.param}-loopback-model", cache, base_url=server.url,
                       backoff_initial_s=0.01, network_retries=2)
    yield request.param, server, judge, cache
    server.close()
    assert not no_network_but_loopback.blocked


def _key_header(backend: str, req: dict) -> bool:
    if backend == "gemini":
        return req["headers"].get("x-goog-api-key") == GEMINI_KEY
    return req["headers"].get("authorization") == f"Bearer {OPENAI_KEY}"


def _images_sent(backend: str, req: dict) -> list[tuple[str, bytes]]:
    if backend == "gemini":
        return gemini_inline_images(req["body"])
    return [decode_data_url(u) for u in openai_image_urls(req["body"])]


def _assert_key_not_cached(cache: Path) -> None:
    files = [f for f in cache.rglob("*") if f.is_file()]
    assert files
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert GEMINI_KEY not in text and OPENAI_KEY not in text


# ---- annotation and gold answers ---------------------------------------------------------------------------------

def test_annotation_of_four_responses(api, image):
    backend, server, judge, cache = api
    ann = annotate_responses(judge, "How many apples are on the table?", image, RESPONSES,
                             truth={"answer": "2", "reference": "There are two apples."})
    assert ann.status == "ok", ann.error
    assert len(ann.scores) == 4
    for s in ann.scores:
        assert all(isinstance(getattr(s, a), int) and 0 <= getattr(s, a) <= 4 for a in ATTRIBUTES)
    assert len({s.model_dump_json() for s in ann.scores}) > 1
    assert max(map(quality, ann.scores)) - min(map(quality, ann.scores)) >= 2
    assert dpo_pair(ann.scores, rng_seed=0) is not None
    assert ann.reasoning  # reasoning first: the "reasoning" field of the structured reply
    (req,) = server.requests  # parsed on the first attempt
    assert _key_header(backend, req)
    assert _images_sent(backend, req) == [("image/png", image.read_bytes())]
    sent = json.dumps(req["body"])
    assert "How many apples" in sent and "There are 4 responses." in sent
    assert "There are two apples." not in sent  # the truth is never sent to an API judge
    if backend == "gemini":
        gen = req["body"]["generationConfig"]
        assert gen["responseMimeType"] == "application/json"
        assert "responses" in json.dumps(gen.get("responseSchema") or gen.get("responseJsonSchema"))
    else:
        assert req["body"]["response_format"]["type"] == "json_schema"
        assert req["body"]["messages"][0]["role"] == "system"
    _assert_key_not_cached(cache)
    # deterministic: the same request gives the same ratings even without the cache
    again = annotate_responses(make_judge(backend, judge.model, None, base_url=server.url), "How many apples are "
                               "on the table?", image, RESPONSES)
    assert again.scores == ann.scores


def test_annotation_varies_across_prompts_and_yields_dpo_pairs(api, image):
    _, _, judge, _ = api
    scores = [annotate_responses(judge, f"Question {i}: what colour is the image?", image,
                                 [f"Answer {i}.{j}" for j in range(4)]).scores for i in range(5)]
    assert all(s is not None and len(s) == 4 for s in scores)
    assert len({tuple(x.model_dump_json() for x in s) for s in scores}) == 5
    assert all(dpo_pair(s, rng_seed=1) is not None for s in scores)


def test_annotation_without_structured_output_uses_fenced_json(tmp_path, monkeypatch, image,
                                                                no_network_but_loopback):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    with OpenAIServer(api_key=OPENAI_KEY) as server:
        judge = make_judge("openai", "m", None, base_url=server.url, structured_output=False)
        ann = annotate_responses(judge, "Which fruit?", image, RESPONSES[:3])
        assert ann.status == "ok" and len(ann.scores) == 3 and ann.reasoning.startswith("Step by step")
        assert "response_format" not in server.requests[0]["body"]


def test_gold_answer(api, image):
    backend, server, judge, cache = api
    text = gold_answer(judge, "What is on the table?", image, truth={"answer": "apples"})
    assert text and "\n" not in text and "{" not in text
    (req,) = server.requests
    assert _key_header(backend, req) and len(_images_sent(backend, req)) == 1
    assert "apples" not in json.dumps(req["body"])
    _assert_key_not_cached(cache)


# ---- benchmark grading -------------------------------------------------------------------------------------------

def _templates():
    if not BENCH.exists():
        return [None]
    return [None, "official"]


@pytest.mark.parametrize("which", _templates())
def test_mt_bench_single_grading(api, which):
    _, server, judge, _ = api
    templates = (ev_mt_bench.load_fastchat_judge_prompts(BENCH / "mt_bench" / "judge_prompts.jsonl")
                 if which else None)
    ratings = []
    for i in range(4):
        r1, j1 = grade_single(judge, [f"Write a haiku about apples #{i}"], ["Red apples fall"], templates=templates)
        r2, _ = grade_single(judge, ["What is 2+3?", "And times 4?"], ["5", "20"], reference=["5", "20"],
                             templates=templates, multi_turn=True)
        assert r1 in range(1, 11) and r2 in range(1, 11) and "[[" in j1
        ratings.append(r1)
    assert len(set(ratings)) > 1
    assert len(server.requests) == 5 and judge.usage()["cache_hits"] == 3  # the multi-turn grading is cached


@pytest.mark.parametrize("which", _templates())
def test_alpaca_eval_ranking(api, which):
    _, server, judge, _ = api
    template = ev_alpaca_eval.load_alpaca_template(BENCH / "alpaca_eval" / "alpaca_eval_gpt4_prompt.txt") if which else None
    prefs = [grade_pairwise_alpaca(judge, f"Say hello #{i}", "hello", "hi there", template=template)[0]
             for i in range(6)]
    assert set(prefs) <= {1.0, 2.0} and len(set(prefs)) == 2
    assert len(server.requests) == 6  # every reply parsed on the first attempt


def test_mmvet_grading(api):
    _, server, judge, _ = api
    scores = [grade_mmvet(judge, f"What is shown? #{i}", "apple <OR> apples", "two apples")[0] for i in range(6)]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) > 1
    assert len(server.requests) == 6


@pytest.mark.parametrize("which", _templates())
def test_llava_bench_grading(api, which):
    _, server, judge, _ = api
    rule = ev_llava_bench.llava_rule_for(ev_llava_bench.load_llava_rules(BENCH / "llava_bench" / "rule.json"), "conv") \
        if which else None
    for i in range(3):
        s_ref, s_model, text = grade_llava_bench(judge, f"Describe the image #{i}", "Two red apples on a table.",
                                                 "Two red apples.", "Some apples.", rule=rule)
        assert 1 <= s_ref <= 10 and 1 <= s_model <= 10, text
    assert len(server.requests) == 3


def test_classify_prompt_on_every_task():
    s, p, _ = ev_mt_bench.render_fastchat_single(["q"], ["a"])
    assert classify_prompt(s, p) == "mt_bench"
    assert classify_prompt(*ev_alpaca_eval.render_alpaca("i", "o1", "o2")) == "alpaca"
    assert classify_prompt(*ev_llava_bench.render_llava_bench("q", "c", "r", "a")) == "llava_bench"
    assert classify_prompt(ev_mmvet.MMVET_SYSTEM, ev_mmvet.render_mmvet_prompt("q", "gt", "p")) == "mmvet"
    assert classify_prompt(prompts.GOLD_SYSTEM, prompts.render_gold_prompt("q")) == "answer"
    assert classify_prompt(prompts.ANNOTATION_SYSTEM, prompts.render_annotation_prompt("q", ["a", "b"])) == "annotate"
    assert classify_prompt(None, "hello") == "generic"
    # identical responses are rated alike; distinct ones spread by >= 2 in quality
    sc = annotation_scores(["same", "same", "other"], "salt")
    assert sc[0] == sc[1]
    for salt in range(50):
        qs = [s["helpfulness"] + s["correctness"] + s["coherence"] for s in annotation_scores(list("abcd"), salt)]
        assert max(qs) - min(qs) >= 2


# ---- wire-level behaviour: keys, faults, validation --------------------------------------------------------------

def _post(url: str, body: dict, headers: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_gemini_key_checks_and_error_format(no_network_but_loopback):
    with GeminiServer(api_key=GEMINI_KEY) as server:
        url = f"{server.url}/v1beta/models/m:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        status, payload = _post(url, body, {})
        assert status == 401 and payload["error"]["status"] == "UNAUTHENTICATED"
        status, payload = _post(url, body, {"x-goog-api-key": "wrong"})
        assert status == 400 and payload["error"]["details"][0]["reason"] == "API_KEY_INVALID"
        status, payload = _post(url, {"contents": []}, {"x-goog-api-key": GEMINI_KEY})
        assert status == 400 and payload["error"]["status"] == "INVALID_ARGUMENT"
        status, payload = _post(url, {**body, "bogus": 1}, {"x-goog-api-key": GEMINI_KEY})
        assert status == 400 and "bogus" in payload["error"]["message"]
        status, payload = _post(url, body, {"x-goog-api-key": GEMINI_KEY})
        assert status == 200 and payload["candidates"][0]["finishReason"] == "STOP"
        assert payload["usageMetadata"]["totalTokenCount"] == (payload["usageMetadata"]["promptTokenCount"]
                                                                + payload["usageMetadata"]["candidatesTokenCount"])
        assert payload["modelVersion"].startswith("m")
        assert gemini_request_text(server.requests[-1]["body"]) == ("", "hi")


def test_wrong_key_is_a_permanent_judge_error(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "not-the-key")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-the-key")
    with GeminiServer(api_key=GEMINI_KEY) as g, OpenAIServer(api_key=OPENAI_KEY) as o:
        for backend, server in (("gemini", g), ("openai", o)):
            judge = make_judge(backend, "m", tmp_path / backend, base_url=server.url, backoff_initial_s=0.01)
            with pytest.raises(JudgeError, match="400|401"):
                judge.complete(JudgeRequest(task="answer", prompt="hello"))
            assert len(server.requests) == 1  # not retried
            assert not list((tmp_path / backend).rglob("*.json"))


def test_faults_then_default_responder(api):
    backend, server, judge, _ = api
    if backend == "gemini":
        server.error(429, "RESOURCE_EXHAUSTED", {"Retry-After": "0.01"})
        server.error(503)
    else:
        server.error(429, {"retry-after": "0.01"})
        server.error(503)
    server.malformed("not a number")
    score, _ = grade_mmvet(judge, "q", "gt", "pred")
    assert 0.0 <= score <= 1.0
    assert len(server.requests) == 4 and judge.usage()["retries"] == 2


def test_max_output_tokens_truncates(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    with GeminiServer() as server:
        judge = make_judge("gemini", "m", None, base_url=server.url, max_output_tokens=5)
        ann = annotate_responses(judge, "q", None, RESPONSES, max_retries=0)
        assert ann.status == "failed" and len(ann.raw) <= 20
        assert server.requests[0]["body"]["generationConfig"]["maxOutputTokens"] == 5


def test_gemini_annotation_schema_is_one_the_api_accepts(tmp_path, monkeypatch, image, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", GEMINI_KEY)
    with GeminiServer(strict_schema=True) as server:
        judge = make_judge("gemini", "m", None, base_url=server.url)
        ann = annotate_responses(judge, "Which fruit?", image, RESPONSES[:2])
    assert ann.status == "ok"
    config = server.requests[0]["body"]["generationConfig"]
    assert "responseSchema" not in config  # its OpenAPI subset refuses additionalProperties
    assert config["responseJsonSchema"]["$defs"]["AttributeScores"]["additionalProperties"] is False


def test_custom_responder_sees_request_json(monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    seen = []
    with OpenAIServer(responder=lambda body: seen.append(body) or "7 3\nfine") as server:
        judge = make_judge("openai", "m", None, base_url=server.url)
        assert grade_llava_bench(judge, "q", "c", "r", "a")[:2] == (7.0, 3.0)
    assert seen and seen[0]["model"] == "m"


# ---- the network guard -------------------------------------------------------------------------------------------

def test_guard_refuses_non_loopback_and_allows_loopback():
    before = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    with GeminiServer() as server, only_loopback() as guard:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(1)
            with pytest.raises(NetworkBlocked):
                s.connect(("10.255.255.1", 80))
            with pytest.raises(NetworkBlocked):
                s.connect_ex(("10.255.255.1", 80))
        with pytest.raises(NetworkBlocked):
            socket.create_connection(("10.255.255.1", 443), timeout=1)
        with pytest.raises(NetworkBlocked):
            socket.getaddrinfo("example.com", 443)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5):
            pass
        with socket.create_connection(("localhost", server.port), timeout=5):
            pass
        assert len(guard.blocked) == 4 and guard.allowed
    assert (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo) == before
    assert "connect" not in vars(socket.socket)  # restored to the inherited C method


def test_guard_stops_a_judge_aimed_off_the_machine(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    judge = make_judge("openai", "m", None, base_url="http://10.255.255.1:9/v1", network_retries=0, timeout_s=2)
    with pytest.raises(NetworkBlocked):  # not an OSError: never mistaken for a transient error and retried
        judge.complete(JudgeRequest(task="answer", prompt="hi"))
    assert no_network_but_loopback.blocked
    no_network_but_loopback.blocked.clear()  # expected here; the `api` fixture asserts none elsewhere

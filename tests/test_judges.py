"""Judge machinery (cache, retries, limits, accounting), prompt renderers, task functions, OpenAI backend."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path

import pytest

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, llava_bench as ev_llava_bench, mmvet as ev_mmvet, mt_bench as ev_mt_bench
from mmpref.judges import annotate_responses, make_judge
from mmpref.evaluate.alpaca_eval import grade_pairwise_alpaca
from mmpref.evaluate.llava_bench import grade_llava_bench
from mmpref.evaluate.mmvet import grade_mmvet
from mmpref.evaluate.mt_bench import grade_single
from mmpref.judges import prompts
from mmpref.judges.base import Judge, JudgeError, JudgeReply, JudgeRequest, RateLimiter, RetryableJudgeError
from mmpref.judges.base import parse_retry_after
from tests.loopback import OpenAIServer

BENCH = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


class ScriptedJudge(Judge):
    """Replies from a script; each item is a text or an exception to raise."""

    judge_id = "scripted"
    model = "scripted-1"

    def __init__(self, script=(), delay=0.0, **kw):
        kw.setdefault("backoff_initial_s", 0.001)
        super().__init__(**kw)
        self.script = list(script)
        self.calls: list[JudgeRequest] = []
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def _call(self, req):
        with self._lock:
            self.calls.append(req)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.delay:
                time.sleep(self.delay)
            item = self.script.pop(0) if self.script else f"echo {req.prompt}"
            if isinstance(item, Exception):
                raise item
            return JudgeReply(text=item, input_tokens=10, output_tokens=5, judge_id="x")
        finally:
            with self._lock:
                self.active -= 1


def req(prompt="p", **kw):
    return JudgeRequest(task="grade_single", prompt=prompt, **kw)


# ---- cache -------------------------------------------------------------------------------------------------------

def test_cache_hit_makes_no_call(tmp_path):
    j = ScriptedJudge(["first"], cache_dir=tmp_path)
    a = j.complete(req())
    b = j.complete(req())
    assert a.text == b.text == "first" and not a.cached and b.cached
    assert len(j.calls) == 1 and j.usage()["cache_hits"] == 1
    # a fresh judge instance reads the same disk cache
    j2 = ScriptedJudge(["other"], cache_dir=tmp_path)
    assert j2.complete(req()).text == "first" and not j2.calls


def test_cache_key_parts(tmp_path):
    j = ScriptedJudge(cache_dir=tmp_path)
    img = tmp_path / "a.png"
    img.write_bytes(b"one")
    base = j.cache_key(req(images=[str(img)]))
    assert j.cache_key(req(images=[str(img)], attempt=1)) != base
    assert j.cache_key(req(images=[str(img)], system="s")) != base
    assert j.cache_key(req(images=[str(img)], json_schema="annotation")) != base
    # API judges never see the truth, so it does not enter their key
    assert j.cache_key(req(images=[str(img)], truth={"answer": "8"})) == base
    img.write_bytes(b"two")  # same path, new content -> new key
    assert j.cache_key(req(images=[str(img)])) != base
    rubric = make_judge("rubric")
    assert rubric.cache_key(req(truth={"answer": "8"})) != rubric.cache_key(req(truth={"answer": "9"}))
    with pytest.raises(ValueError, match="not found"):
        j.cache_key(req(images=[str(tmp_path / "missing.png")]))


def test_cache_files_layout_and_unreadable_file_ignored(tmp_path):
    j = ScriptedJudge(["x", "y"], cache_dir=tmp_path)
    j.complete(req())
    key = j.cache_key(req())
    path = tmp_path / key[:2] / f"{key}.json"
    assert json.loads(path.read_text())["reply"]["text"] == "x"
    path.write_text("{broken")
    assert j.complete(req()).text == "y"  # re-asked, file rewritten
    assert json.loads(path.read_text())["reply"]["text"] == "y"


# ---- retries, limits, accounting ---------------------------------------------------------------------------------

def test_retry_honours_retry_after():
    j = ScriptedJudge([RetryableJudgeError("429", 429, retry_after=0.2), "ok"], backoff_max_s=5)
    t0 = time.monotonic()
    assert j.complete(req()).text == "ok"
    assert time.monotonic() - t0 >= 0.19
    assert j.usage()["retries"] == 1 and len(j.calls) == 2


def test_non_retryable_not_retried_and_exhaustion():
    j = ScriptedJudge([JudgeError("401 bad key")])
    with pytest.raises(JudgeError, match="401"):
        j.complete(req())
    assert len(j.calls) == 1
    j = ScriptedJudge([RetryableJudgeError("503", 503)] * 3, network_retries=2)
    with pytest.raises(JudgeError, match="giving up after 2 retries"):
        j.complete(req())
    assert len(j.calls) == 3


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("garbage") is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") < 1


def test_bounded_concurrency_and_accounting():
    j = ScriptedJudge(delay=0.05, max_concurrency=2, price_input_per_mtok=2.0, price_output_per_mtok=8.0)
    replies = j.complete_many([req(f"p{i}") for i in range(8)], max_workers=8)
    assert [r.text for r in replies] == [f"echo p{i}" for i in range(8)]
    assert j.max_active <= 2
    u = j.usage()
    assert u["calls"] == 8 and u["input_tokens"] == 80 and u["output_tokens"] == 40
    assert u["cost_usd"] == pytest.approx(8 * (10 * 2.0 + 5 * 8.0) / 1e6)
    assert replies[0].judge_id == "scripted"


def test_rate_limiter_spaces_requests():
    lim = RateLimiter(requests_per_minute=600)  # one per 0.1 s
    t0 = time.monotonic()
    for _ in range(4):
        lim.acquire()
    assert time.monotonic() - t0 >= 0.29
    RateLimiter(None).acquire()


def test_make_judge_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown judge backend"):
        make_judge("claude", "x", None)
    with pytest.raises(ValueError, match="pinned model"):
        make_judge("openai", None, None)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"):
        make_judge("openai", "gpt-4o", None)
    assert make_judge("rubric").judge_id == "rubric-v4"
    # the params' judge block fits every backend: API-only options are ignored by the rubric
    r = make_judge("rubric", "ignored", None, base_url=None, max_workers=3, requests_per_minute=None)
    assert r.max_concurrency == 3


# ---- task functions with scripted replies ------------------------------------------------------------------------

GOOD = '{"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2}'


def test_annotate_retries_malformed_with_new_attempt():
    j = ScriptedJudge(["no json here", f'Step 1: fine.\n{{"responses": [{GOOD}, {GOOD}]}}'])
    ann = annotate_responses(j, "q", None, ["a", "b"])
    assert ann.status == "ok" and ann.reasoning == "Step 1: fine." and len(ann.scores) == 2
    assert [c.attempt for c in j.calls] == [0, 1]
    assert j.calls[0].json_schema == "annotation"


def test_annotate_failed_keeps_raw_never_zero():
    j = ScriptedJudge(["bad 1", f'{{"responses": [{GOOD}]}}', "bad 3"])
    ann = annotate_responses(j, "q", None, ["a", "b"], max_retries=2)
    assert ann.status == "failed" and ann.scores is None and ann.raw == "bad 3"
    assert "no JSON object" in ann.error
    with pytest.raises(ValueError, match="no responses"):
        annotate_responses(j, "q", None, [])


def test_grade_functions_parse_and_failures_are_not_scored():
    j = ScriptedJudge(["Good.\nRating: [[8]]", "no rating at all"])
    assert grade_single(j, ["q"], ["a"])[0] == 8.0
    assert grade_single(j, ["q"], ["a2"])[0] == -1.0  # FastChat's own mark; show_result drops it
    rank = "[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]"
    j = ScriptedJudge([rank])
    assert grade_pairwise_alpaca(j, "i", "o1", "o2") == (2.0, rank) and len(j.calls) == 1
    j = ScriptedJudge(["Model 2 wins.\n" + rank, rank])  # alpaca_eval asks once: a wrapped ranking is a failure
    pref, raw = grade_pairwise_alpaca(j, "i", "o1", "o2")
    assert pref is None and raw.startswith("Model 2 wins.") and len(j.calls) == 1
    j = ScriptedJudge(["???", rank])
    assert grade_pairwise_alpaca(j, "i", "o1", "o2", max_retries=1)[0] == 2.0 and [c.attempt for c in j.calls] == [0, 1]
    j = ScriptedJudge(["7 9\nreasons", "Scores: 7 and 9"])
    assert grade_llava_bench(j, "q", "ctx", "ref", "ans")[:2] == (7.0, 9.0)
    assert grade_llava_bench(j, "q", "ctx", "ref", "ans2") == (None, None, "Scores: 7 and 9")  # not (-1, -1)
    assert all(c.system == "You are a helpful and precise assistant for checking the quality of the answer."
               and c.temperature == 0.2 for c in j.calls)


def test_mmvet_grading_follows_the_evaluator_retry_rule():
    j = ScriptedJudge(["The answer is right.", "1.7", "0.6 it is partly right"])
    score, raw = grade_mmvet(j, "What is x?", "-1<AND>-5", "x = -1")
    assert score == 0.6 and raw == "0.6 it is partly right"
    assert [c.attempt for c in j.calls] == [0, 1, 2] and [c.temperature for c in j.calls] == [0.0, 0.0, 0.5]
    first = ev_mmvet.render_mmvet_prompt("What is x?", "-1<AND>-5", "x = -1")
    assert j.calls[0].prompt == first and first.endswith("\nWhat is x? | -1 <AND> -5 | x = -1 | ")
    assert j.calls[1].prompt == j.calls[2].prompt == first + "\nPredict the correctness of the answer (digit): "
    assert j.calls[0].system is None  # the evaluator sends the user message only


def test_mmvet_grading_fails_after_five_replies_never_zero():
    j = ScriptedJudge(["x"] * 6)
    assert grade_mmvet(j, "q", "gt", "pred") == (None, "x")
    assert len(j.calls) == 5 and j.calls[-1].temperature == 1.5  # the evaluator's fifth reply: 0, 0, .5, 1, 1.5


def test_mmvet_prompt_is_read_from_the_official_evaluator_file(tmp_path):
    evaluator = tmp_path / "mm-vet_evaluator.py"
    evaluator.write_text('import os\n\nprompt = """Compare the ground truth and prediction. FEW-SHOT\n"""\n\n'
                         'def arg_parser(prompt=prompt):\n    raise SystemExit("never run")\n')
    header = ev_mmvet.load_mmvet_prompt(evaluator)
    assert header == "Compare the ground truth and prediction. FEW-SHOT\n"
    j = ScriptedJudge(["1.0"])
    grade_mmvet(j, "Q?", "A<OR>B", "B", header=header)
    assert j.calls[0].prompt == header + "\n" + "Q? | A <OR> B | B | "
    (tmp_path / "other.py").write_text("PROMPT = 'x'\n")
    with pytest.raises(ValueError, match="no top-level string `prompt"):
        ev_mmvet.load_mmvet_prompt(tmp_path / "other.py")


def test_request_temperature_reaches_the_cache_key_only_when_set():
    j = ScriptedJudge()
    plain = JudgeRequest(task="answer", prompt="p")
    assert j.cache_key(plain) == j.cache_key(plain.model_copy(update={"temperature": None}))
    assert j.cache_key(plain) != j.cache_key(plain.model_copy(update={"temperature": 0.5}))


# ---- prompt renderers ----------------------------------------------------------------------------------------------

def test_fallback_templates_fill_every_placeholder():
    for multi in (False, True):
        for ref in (None, ["r1", "r2"]):
            system, prompt, name = ev_mt_bench.render_fastchat_single(["Q1", "Q2"], ["A1", "A2"], ref, multi)
            assert system and "{" not in prompt and "A1" in prompt
            assert name == ("single-math-v1" if ref else "single-v1") + ("-multi-turn" if multi else "")
    with pytest.raises(ValueError, match="two questions"):
        ev_mt_bench.render_fastchat_single(["Q1"], ["A1"], None, True)
    s, u = ev_alpaca_eval.render_alpaca("INSTR", "OUT1", "OUT2")
    assert s and "INSTR" in u and "OUT2" in u and "<|im_start|>" not in u
    s, c = ev_llava_bench.render_llava_bench("Q", "CTX", "REF", "ANS")
    assert c.index("CTX") < c.index("Q") < c.index("REF") < c.index("ANS")
    p = prompts.render_annotation_prompt("Q?", ["r1", "r2", "r3"])
    assert "[Response 3]" in p and "There are 3 responses." in p and '"responses"' in p


def test_official_templates_render():
    if not BENCH.exists():
        pytest.skip("official benchmark files not present")
    tpl = ev_mt_bench.load_fastchat_judge_prompts(BENCH / "mt_bench" / "judge_prompts.jsonl")
    system, prompt, name = ev_mt_bench.render_fastchat_single(["Q1?", "Q2?"], ["A1.", "A2."], ["R1", "R2"], True, tpl)
    assert name == "single-math-v1-multi-turn" and system == tpl[name]["system_prompt"]
    assert "R2" in prompt and "A2." in prompt and "{" not in prompt
    _, prompt, _ = ev_mt_bench.render_fastchat_single(["Q1?"], ["A1."], None, False, tpl)
    assert "[[rating]]" in prompt and "A1." in prompt
    alpaca = ev_alpaca_eval.load_alpaca_template(BENCH / "alpaca_eval" / "alpaca_eval_gpt4_prompt.txt")
    system, user = ev_alpaca_eval.render_alpaca("Say hi", "hi", "hello", alpaca)
    assert system.startswith("You are a helpful assistant")
    assert '"""Say hi"""' in user and '"""hello"""' in user and "{'model': <model-name>" in user
    rules = ev_llava_bench.load_llava_rules(BENCH / "llava_bench" / "rule.json")
    rule = ev_llava_bench.llava_rule_for(rules, "conv")
    _, content = ev_llava_bench.render_llava_bench("Q", "CTX", "REF", "ANS", rule)
    assert content.endswith(rule["prompt"] + "\n\n") and "[Assistant 2]\nANS" in content
    with pytest.raises(ValueError, match="llava_bench_poetry"):
        ev_llava_bench.llava_rule_for(rules, "poetry")


def test_bad_template_files(tmp_path):
    bad = tmp_path / "jp.jsonl"
    bad.write_text('{"name": "x", "prompt_template": "t", "system_prompt": "s"}\n{oops\n')
    with pytest.raises(ValueError, match="jp.jsonl:2"):
        ev_mt_bench.load_fastchat_judge_prompts(bad)
    t = tmp_path / "a.txt"
    t.write_text("no placeholders")
    with pytest.raises(ValueError, match="instruction"):
        ev_alpaca_eval.load_alpaca_template(t)


# ---- OpenAI-compatible backend against a loopback fake ----------------------------------------------------------

@pytest.fixture()
def fake_openai():
    with OpenAIServer() as f:  # any key (a local server accepts "EMPTY"); scripted replies first
        yield f


def test_openai_backend_roundtrip(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    j = make_judge("openai", "gpt-test", tmp_path / "cache", base_url=fake_openai.url, backoff_initial_s=0.01)
    img = tmp_path / "i.png"
    img.write_bytes(b"\x89PNG fake")
    fake_openai.error(429, {"retry-after": "0.05"})
    fake_openai.ok(f'Reasoning.\n{{"responses": [{GOOD}]}}')
    ann = annotate_responses(j, "q?", img, ["a."])
    assert ann.status == "ok" and ann.judge == "openai:gpt-test"
    assert len(fake_openai.requests) == 2
    r = fake_openai.requests[-1]
    assert r["path"] == "/v1/chat/completions"
    assert r["headers"].get("authorization") == "Bearer sk-test-123456"
    body = r["body"]
    assert body["model"] == "gpt-test" and body["messages"][0]["role"] == "system"
    content = body["messages"][1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert body["response_format"]["type"] == "json_schema"
    assert j.usage()["input_tokens"] == 50 and j.usage()["retries"] == 1
    again = annotate_responses(j, "q?", img, ["a."])
    assert again.scores == ann.scores and len(fake_openai.requests) == 2
    for f in (tmp_path / "cache").rglob("*.json"):
        assert "sk-test-123456" not in f.read_text()


def test_openai_local_server_needs_no_key(fake_openai, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    j = make_judge("openai", "local-vlm", None, base_url=fake_openai.url)
    fake_openai.ok("hi")
    assert j.complete(JudgeRequest(task="answer", prompt="hello")).text == "hi"
    fake_openai.error(401)
    with pytest.raises(JudgeError, match="401"):
        j.complete(JudgeRequest(task="answer", prompt="hello again"))


def test_openai_backend_sends_the_official_temperature(fake_openai, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123456")
    j = make_judge("openai", "gpt-test", None, base_url=fake_openai.url)
    fake_openai.ok("8 7\nfine")
    fake_openai.ok("hi")
    assert grade_llava_bench(j, "q", "c", "r", "a")[:2] == (8.0, 7.0)
    j.complete(JudgeRequest(task="answer", prompt="hello"))
    assert [r["body"]["temperature"] for r in fake_openai.requests] == [0.2, 0.0]


def test_a_backend_describes_itself_to_params_make_judge_and_check(monkeypatch, tmp_path):
    """A judge backend is a Judge subclass plus its BACKENDS entry: params accept it, make_judge builds it, and
    `mmpref check` names its key variable and prices it, with no list elsewhere to edit."""
    from mmpref import judges, preflight
    from mmpref.config import JudgeParams
    from mmpref.judges import BACKENDS, make_judge

    class ToyJudge(Judge):
        backend, key_envs = "toy", ("TOY_KEY",)

        def __init__(self, model, cache_dir=None, **limits):
            super().__init__(cache_dir=cache_dir, max_concurrency=1)
            self.model, self.judge_id = model, f"toy:{model}"

        def _call(self, req):
            return JudgeReply(text="ok", input_tokens=1, output_tokens=1)

    with pytest.raises(ValueError, match=r"unknown judge backend 'toy'; allowed: \['rubric', 'reward_model', 'gemini', 'openai'\]"):
        JudgeParams(backend="toy", model="m")
    monkeypatch.setitem(BACKENDS, "toy", ToyJudge)
    jp = JudgeParams(backend="toy", model="m1", price_input_per_mtok=1.0, price_output_per_mtok=2.0)
    assert isinstance(make_judge("toy", "m1"), ToyJudge)
    monkeypatch.delenv("TOY_KEY", raising=False)
    row = preflight._key_row("annotation", jp)
    assert not row["ok"] and "TOY_KEY not set" in row["detail"] and "export TOY_KEY" in row["fix"]
    monkeypatch.setenv("TOY_KEY", "k")
    assert preflight._key_row("annotation", jp)["ok"]
    assert preflight._usd(jp, "judge", 1e6, 1e6) == (3.0, "")
    with pytest.raises(ValueError, match="no batch API"):
        JudgeParams(backend="toy", model="m1", batch=True)
    assert judges.BACKENDS["rubric"].free and preflight._usd(JudgeParams(backend="rubric"), "judge", 1e6, 0)[0] == 0

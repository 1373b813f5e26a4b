"""Parsers: our annotation JSON, FastChat ratings, AlpacaEval rankings, LLaVA-Bench and MM-Vet scores."""

from __future__ import annotations

import json

import pytest

from mmpref.judges.parsing import AnnotationSchema, ParseError, extract_json_object, parse_annotation
from mmpref.evaluate.alpaca_eval import parse_alpaca_ranking
from mmpref.evaluate.llava_bench import parse_llava_score
from mmpref.evaluate.mmvet import parse_mmvet_score
from mmpref.evaluate.mt_bench import parse_fastchat_rating

S = {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2}


def payload(*scores):
    return json.dumps({"responses": list(scores)})


def test_annotation_trailing_json():
    reasoning, scores = parse_annotation(f"Step 1: look.\nStep 2: compare.\n{payload(S, S)}", 2)
    assert reasoning == "Step 1: look.\nStep 2: compare."
    assert scores[0].correctness == 4 and scores[1].quality() == 11


def test_annotation_fenced_json_and_braces_in_reasoning():
    text = f"The set {{a, b}} matters. {{not json}}\n```json\n{payload(S)}\n```\n"
    reasoning, scores = parse_annotation(text, 1)
    assert reasoning.startswith("The set {a, b} matters.") and len(scores) == 1


def test_annotation_structured_reasoning_field():
    text = json.dumps({"reasoning": "Because.", "responses": [S]})
    reasoning, scores = parse_annotation(text, 1)
    assert reasoning == "Because." and scores[0].helpfulness == 3
    assert set(AnnotationSchema.model_json_schema()["properties"]) == {"reasoning", "responses"}


def test_annotation_last_json_object_wins():
    early = {"responses": [dict(S, helpfulness=0)]}
    _, scores = parse_annotation(f"draft {json.dumps(early)} final {payload(S)}", 1)
    assert scores[0].helpfulness == 3


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "empty"),
        ("I rate them all highly.", "no JSON object"),
        (payload(S), "rates 1 responses, expected 2"),
        (payload(S, dict(S, coherence=5)), "coherence"),
        (payload(S, dict(S, coherence=-1)), "coherence"),
        (payload(S, dict(S, verbosity=2.5)), "verbosity"),
        (payload(S, dict(S, verbosity="2")), "verbosity"),
        (payload(S, {k: v for k, v in S.items() if k != "complexity"}), "complexity"),
        (json.dumps({"scores": [S, S]}), "responses"),
    ],
)
def test_annotation_malformed_raises_clear_error(text, match):
    with pytest.raises(ParseError, match=match):
        parse_annotation(text, 2)


def test_parse_error_is_value_error():
    assert issubclass(ParseError, ValueError)
    with pytest.raises(ValueError):
        extract_json_object("[1, 2]")


def test_fastchat_rating_like_fastchat():
    assert parse_fastchat_rating("Good answer.\nRating: [[7]]") == 7.0
    assert parse_fastchat_rating("Rating: [[8.5]]") == 8.5
    assert parse_fastchat_rating("Rating: [6]") == 6.0  # the backup pattern
    assert parse_fastchat_rating("see [1] ... Rating: [[9]]") == 9.0  # [[x]] is tried first
    assert parse_fastchat_rating("Rating: 7/10") == -1.0
    assert parse_fastchat_rating("[[seven]]") == -1.0


RANK = "[{{'model': 'model_1', 'rank': {}}}, {{'model': 'model_2', 'rank': {}}}]"


def test_alpaca_ranking_as_alpaca_eval_ranking_parser():
    assert parse_alpaca_ranking(RANK.format(1, 2)) == 1.0
    assert parse_alpaca_ranking("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]") == 2.0
    assert parse_alpaca_ranking('[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 2}]') == 1.0
    assert parse_alpaca_ranking("\n" + RANK.format(2, 1) + "\n") == 2.0  # literal_eval takes the surrounding newlines
    assert parse_alpaca_ranking("# model_2 is clearer\n" + RANK.format(2, 1)) == 2.0  # a comment is valid Python
    assert parse_alpaca_ranking("[{'model': 'model_1', 'rank': 1.0}]") == 1.0


def test_alpaca_tied_ranks_give_model_1s_rank():
    assert parse_alpaca_ranking(RANK.format(1, 1)) == 1.0  # not a draw: the rank of model_1 is the preference
    assert parse_alpaca_ranking(RANK.format(2, 2)) == 2.0


@pytest.mark.parametrize("completion", [
    "Model 2 is clearer.\n" + RANK.format(2, 1),   # a ranking wrapped in other text is not parsed
    RANK.format(2, 1) + "\nModel 2 is clearer.",
    "```python\n" + RANK.format(1, 2) + "\n```",
    "[{'model': 'model_1', 'rank': 3}, {'model': 'model_2', 'rank': 1}]",
    "[{'model': 'model_1', 'rank': '1'}]",
    "[{'model': 'model_3', 'rank': 1}]",
    "[{'rank': 1}, {'model': 'model_1', 'rank': 1}]",  # an entry without "model" fails the whole list
    "{'model': 'model_1', 'rank': 1}",
    "model_1 is better",
    "",
])
def test_alpaca_unparsable_completions(completion):
    with pytest.raises(ParseError):
        parse_alpaca_ranking(completion)


def test_llava_score_like_llava():
    assert parse_llava_score("8 6\nAssistant 1 is better.") == [8.0, 6.0]
    assert parse_llava_score("7,9\nreasons") == [7.0, 9.0]
    assert parse_llava_score("7.5 9") == [7.5, 9.0]
    assert parse_llava_score("-1 -1") == [-1.0, -1.0]  # two numbers are two scores, whatever they are
    for bad in ("Scores: 8 6", "8  6", "8, 6", "8 6 ", "eight six", "8\t6", ""):
        with pytest.raises(ParseError):  # LLaVA's [-1, -1]: a failed review
            parse_llava_score(bad)


def test_mmvet_score_first_token():
    assert parse_mmvet_score("0.5") == 0.5
    assert parse_mmvet_score("0.5 because half of it is right") == 0.5
    assert parse_mmvet_score("0") == 0.0 and parse_mmvet_score("1.") == 1.0
    assert parse_mmvet_score("1.0\n") == 1.0  # the first token is stripped
    for bad, why in ((" 1.0", "not a number"),        # split(" ")[0] is the empty string
                     ("0.8\nThe prediction matches.", "not a number"),  # split on spaces only
                     ("Score: 0.5", "not a number"), ("nan", "NaN"), ("1.5", "outside"), ("-0.1", "outside")):
        with pytest.raises(ParseError, match=why):
            parse_mmvet_score(bad)


def test_literal_eval_runs_one_call_at_a_time(monkeypatch):
    """Judge replies are parsed in a thread pool, and CPython 3.11's parser is not thread-safe (a tiny run died with
    "SystemError: AST constructor recursion depth mismatch"): the official parsers' literal_eval is serialised."""
    import ast
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    from mmpref.evaluate import protocol

    inside, most, lock = [0], [0], threading.Lock()
    real = ast.literal_eval

    def slow_literal_eval(text):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.01)
        with lock:
            inside[0] -= 1
        return real(text)

    monkeypatch.setattr(ast, "literal_eval", slow_literal_eval)
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(protocol.literal_eval, ["[1, 2]"] * 24)) == [[1, 2]] * 24
    assert most[0] == 1

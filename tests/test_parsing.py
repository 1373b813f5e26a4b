"""Parsers: our annotation JSON, FastChat ratings, AlpacaEval rankings, LLaVA-Bench and MM-Vet scores."""

from __future__ import annotations

import json

import pytest

from mmpref.judges.parsing import (
    AnnotationSchema,
    ParseError,
    extract_json_object,
    parse_alpaca_ranking,
    parse_annotation,
    parse_fastchat_rating,
    parse_llava_score,
    parse_mmvet_score,
)

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


def test_alpaca_ranking():
    assert parse_alpaca_ranking("[{'model': 'model_1', 'rank': 1}, {'model': 'model_2', 'rank': 2}]") == 1.0
    assert parse_alpaca_ranking("[{'model': 'model_2', 'rank': 1}, {'model': 'model_1', 'rank': 2}]") == 2.0
    assert parse_alpaca_ranking('[{"model": "model_1", "rank": 1}, {"model": "model_2", "rank": 1}]') == 1.5
    wrapped = "Model 2 is clearer [see below].\n[\n {'model': 'model_2', 'rank': 1},\n {'model': 'model_1', 'rank': 2}\n]"
    assert parse_alpaca_ranking(wrapped) == 2.0
    with pytest.raises(ParseError, match="rank 3"):
        parse_alpaca_ranking("[{'model': 'model_1', 'rank': 3}]")
    with pytest.raises(ParseError, match="no AlpacaEval ranking"):
        parse_alpaca_ranking("model_1 is better")
    with pytest.raises(ParseError):
        parse_alpaca_ranking("[{'model': 'model_3', 'rank': 1}]")


def test_llava_score_like_llava():
    assert parse_llava_score("8 6\nAssistant 1 is better.") == [8.0, 6.0]
    assert parse_llava_score("7,9\nreasons") == [7.0, 9.0]
    assert parse_llava_score("7.5 9") == [7.5, 9.0]
    assert parse_llava_score("Scores: 8 6") == [-1.0, -1.0]
    assert parse_llava_score("8  6") == [-1.0, -1.0]  # LLaVA splits on single spaces
    assert parse_llava_score("eight six") == [-1.0, -1.0]


def test_mmvet_score():
    assert parse_mmvet_score("0.5") == 0.5
    assert parse_mmvet_score(" 1.0\n") == 1.0
    assert parse_mmvet_score("0") == 0.0
    with pytest.raises(ParseError, match="outside"):
        parse_mmvet_score("1.5")
    with pytest.raises(ParseError, match="not a number"):
        parse_mmvet_score("Score: 0.5")

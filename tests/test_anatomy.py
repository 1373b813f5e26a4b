"""The anatomy of the text regression: each answer sorted into one kind by the rubric's reading of it."""

import json

import pytest

from mmpref.world.anatomy import KINDS, anatomy_table, answer_kind, mt_bench_anatomy
from mmpref.world.truth import key_answer_correct, key_match


@pytest.mark.parametrize("answer, kind", [
    ("3 plus 5 is 8.", "full"),
    ("8.", "terse"),
    ("3 plus 5 is 9.", "wrong"),
    ("", "empty"),
    ("8 8 8 8 8 8 8 8", "not stopped"),
    ("3 plus 5 is 8 plus 5 is 8 plus 5 is 8 plus 5 is", "not stopped"),
])
def test_answer_kinds(answer, kind):
    assert answer_kind(answer, "8", "3 plus 5 is 8.") == kind


def test_over_long_when_one_word_was_asked():
    assert answer_kind("Paris.", "Paris", "Paris.") == "full"
    assert answer_kind("Well, the capital city of the country of France is the city of Paris, I think.", "Paris",
                       "Paris.") == "over-long"


def test_anatomy_frame_from_records(tmp_path):
    q = tmp_path / "question.jsonl"
    q.write_text(json.dumps({"question_id": 81, "category": "math", "turns": ["What is 3 plus 5?", "Now add 2."],
                             "reference": ["3 plus 5 is 8.", "8 plus 2 is 10."], "answer_keys": ["8", "10"]}) + "\n")
    for model, answers in (("base-lm", ["3 plus 5 is 8.", "8 plus 2 is 10."]), ("vit", ["8.", "8 plus 2 is 11."])):
        d = tmp_path / "eval" / model
        d.mkdir(parents=True)
        (d / "mt_bench.jsonl").write_text(json.dumps({"model": model, "benchmark": "mt_bench", "question_id": 81,
                                                           "answers": answers}) + "\n")
    a = mt_bench_anatomy(tmp_path, q, ["base-lm", "vit", "dpo"])
    t = anatomy_table(a)
    assert list(t.columns) == KINDS and set(t.index) == {"base-lm", "vit"}   # no records for dpo: left out
    assert t.loc["base-lm", "full"] == 100.0
    assert t.loc["vit", "terse"] == 50.0 and t.loc["vit", "wrong"] == 50.0


def test_human_labels_and_rubric_share_one_answer_rule():
    for response, key in [("There isn't a triangle.", "absent"), ("It is 8, no wait, 9.", "8"), ("No, yes.", "yes"),
                          ("The circle is reddish.", "red"), ("The values are 1, 2, 3.", "1, 2, 3")]:
        assert key_answer_correct(response, key) == key_match(response, key)[0]
    assert key_answer_correct("There isn't a triangle.", "absent")


def test_an_answer_that_only_contradicts_itself_is_sorted_by_correctness():
    """"not stopped" is for looping or garbled answers; a clean sentence that contradicts itself is right or wrong."""
    assert answer_kind("Yes, there is no star in the image.", "absent", "There is no star in the image.") == "wrong"
    assert answer_kind("No, the cross is green, not green.", "no", "No, the cross is green, not red.") == "full"
    assert answer_kind("no no no no no no no no no no no no", "no", "No, the cross is green, not red.") == "not stopped"

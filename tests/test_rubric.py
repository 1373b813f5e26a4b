"""The deterministic rubric judge: sensible scores against ground truth, emitted in LLM-judge text formats."""

from __future__ import annotations

import pytest

from mmpref.judges import annotate_responses, gold_answer, make_judge
from mmpref.evaluate.alpaca_eval import grade_pairwise_alpaca
from mmpref.evaluate.llava_bench import grade_llava_bench
from mmpref.evaluate.mmvet import grade_mmvet
from mmpref.evaluate.mt_bench import grade_single
from mmpref.judges.base import JudgeRequest
from mmpref.judges.parsing import parse_annotation
from mmpref.judges.rubric import assess, coherence_score, key_match, tokens

ADD = {"answer": "8", "reference": "3 plus 5 is 8."}
ABSENT = {"answer": "absent", "reference": "There is no triangle in the image."}
YES = {"answer": "yes", "reference": "Yes, there is a red circle."}


@pytest.fixture()
def judge():
    return make_judge("rubric")


def test_tokens_normalise():
    assert tokens("There isn't a Red-circle, 3.5!") == ["there", "is", "not", "a", "red", "circle", "3.5"]


@pytest.mark.parametrize(
    "response, key, ok",
    [
        ("3 plus 5 is 8.", "8", True),
        ("8", "8", True),
        ("3 plus 5 is 9.", "8", False),
        ("It is 8, no wait, 9.", "8", False),  # the last number is the claimed answer
        ("18 is the answer.", "8", False),  # whole-word match only
        ("Yes, there is a red circle.", "yes", True),
        ("No, there is no red circle.", "yes", False),
        ("There is a red circle, yes.", "yes", True),
        ("There is no triangle in the image.", "absent", True),
        ("No.", "absent", True),
        ("The image doesn't contain a triangle.", "absent", True),
        ("Yes, there is no doubt: a triangle.", "absent", False),
        ("There is a blue triangle.", "absent", False),
        ("The circle is red.", "red", True),
        ("The circle is blue.", "red", False),
        ("The values are 1, 2, 3.", "1, 2, 3", True),
        ("The values are 1 and 3.", "1, 2, 3", False),
        ("", "8", False),
    ],
)
def test_key_match(response, key, ok):
    assert key_match(response, key)[0] is ok


def test_list_partial_credit():
    assert key_match("1 and 3", "1, 2, 3")[1] == pytest.approx(2 / 3)


def test_correct_beats_wrong(judge):
    ann = annotate_responses(judge, "What is 3 plus 5?", None, ["3 plus 5 is 8.", "3 plus 5 is 9."], truth=ADD)
    right, wrong = ann.scores
    assert ann.status == "ok" and right.correctness == 4 and wrong.correctness == 0
    assert right.helpfulness > wrong.helpfulness and right.quality() - wrong.quality() >= 2
    assert right.verbosity == 2 and "step by step" in ann.reasoning


def test_reference_form_increases_helpfulness():
    full, bare = assess("3 plus 5 is 8.", "8", ADD["reference"]), assess("8", "8", ADD["reference"])
    assert full.correct and bare.correct
    assert full.helpfulness > bare.helpfulness and bare.verbosity < 2


def test_repetition_garbage_and_unfinished_lose_coherence():
    assert coherence_score("3 plus 5 is 8.")[0] == 4
    rep = "3 plus 5 is 8. 3 plus 5 is 8. 3 plus 5 is 8. 3 plus 5 is 8."
    assert coherence_score(rep)[0] <= 2
    assert coherence_score("the the the answer is 8.")[0] <= 3
    assert coherence_score("3 plus 5 is 8 and then the")[0] == 3
    assert coherence_score("#@$ %^& 8 ~~ ¤¤ @@")[0] <= 1
    assert coherence_score("   ")[0] == 0
    a_rep = assess(rep, "8", ADD["reference"])
    a_ok = assess("3 plus 5 is 8.", "8", ADD["reference"])
    assert a_rep.coherence < a_ok.coherence and a_rep.quality() < a_ok.quality() and a_rep.verbosity >= 3


def test_absent_questions(judge):
    ann = annotate_responses(judge, "Is there a triangle in the image?", None,
                             ["There is no triangle in the image.", "Yes, there is a green triangle."], truth=ABSENT)
    honest, hallucinated = ann.scores
    assert honest.correctness == 4 and hallucinated.correctness == 0
    assert honest.quality() - hallucinated.quality() >= 2


def test_yes_no(judge):
    ann = annotate_responses(judge, "Is there a red circle?", None,
                             ["Yes, there is a red circle.", "No, there is no red circle.", "Yes."], truth=YES)
    assert [s.correctness for s in ann.scores] == [4, 0, 4]
    assert ann.scores[0].helpfulness >= ann.scores[2].helpfulness > ann.scores[1].helpfulness


def test_verbosity_and_complexity_scale_with_length():
    long = " ".join(f"word{i}" for i in range(60)) + " so 3 plus 5 is 8."
    a = assess(long, "8", ADD["reference"])
    assert a.verbosity == 4 and a.complexity >= 3
    assert assess("8", "8", ADD["reference"]).complexity == 0


def test_annotation_text_runs_through_the_real_parser(judge):
    reply = judge.complete(JudgeRequest(task="annotate", prompt="p", inputs={"responses": ["a.", "8."]}, truth=ADD))
    reasoning, scores = parse_annotation(reply.text, 2)
    assert "Response 2" in reasoning and scores[1].correctness == 4 and "```json" in reply.text


def test_annotation_requires_truth(judge):
    with pytest.raises(ValueError, match="truth"):
        annotate_responses(judge, "q", None, ["a"], truth=None)


def test_gold_answer_is_reference(judge):
    assert gold_answer(judge, "What is 3 plus 5?", None, truth=ADD) == "3 plus 5 is 8."
    with pytest.raises(ValueError, match="gold answer"):
        gold_answer(judge, "q", None, truth={})


def test_mt_bench_rating(judge):
    good, text = grade_single(judge, ["What is 3 plus 5?"], ["3 plus 5 is 8."], truth=ADD)
    bad, _ = grade_single(judge, ["What is 3 plus 5?"], ["3 plus 5 is 9."], truth=ADD)
    assert good == 10 and 1 <= bad <= 5 and "[[10]]" in text
    t2 = {"answer": "10", "reference": "8 plus 2 is 10."}
    r2, _ = grade_single(judge, ["What is 3 plus 5?", "Now add 2."], ["3 plus 5 is 8.", "8 plus 2 is 10."],
                         truth=t2, multi_turn=True)
    r2_bad, _ = grade_single(judge, ["What is 3 plus 5?", "Now add 2."], ["3 plus 5 is 8.", "8 plus 2 is 8."],
                             truth=t2, multi_turn=True)
    assert r2 > r2_bad
    no_truth, _ = grade_single(judge, ["Tell me a fact."], ["The sky is blue."])
    assert 1 <= no_truth <= 10


def test_alpaca_pairwise_position_independent(judge):
    right, wrong = "3 plus 5 is 8.", "3 plus 5 is 9."
    assert grade_pairwise_alpaca(judge, "What is 3 plus 5?", right, wrong, truth=ADD)[0] == 1.0
    assert grade_pairwise_alpaca(judge, "What is 3 plus 5?", wrong, right, truth=ADD)[0] == 2.0
    # exact tie: deterministic, and a decision (never unparsable)
    p1 = grade_pairwise_alpaca(judge, "q", "3 plus 5 is 8.", "Three plus five is 8.", truth=ADD)[0]
    p2 = grade_pairwise_alpaca(make_judge("rubric"), "q", "3 plus 5 is 8.", "Three plus five is 8.", truth=ADD)[0]
    assert p1 == p2 and p1 in (1.0, 2.0)


def test_mmvet_grade(judge):
    assert grade_mmvet(judge, "What is 3 plus 5?", "8", "It is 8.", truth={"answer": "8"})[0] == 1.0
    assert grade_mmvet(judge, "What is 3 plus 5?", "8", "It is 9.", truth={"answer": "8"})[0] == 0.0
    assert grade_mmvet(judge, "List them.", "1, 2, 3", "1 and 2")[0] == pytest.approx(0.7)


def test_llava_bench_scores(judge):
    ref_s, model_s, text = grade_llava_bench(judge, "What is 3 plus 5?", "a chart", "3 plus 5 is 8.",
                                             "3 plus 5 is 9.", truth=ADD)
    assert 1 <= model_s < ref_s <= 10 and text.split("\n")[0] == f"{int(ref_s)} {int(model_s)}"
    _, same, _ = grade_llava_bench(judge, "What is 3 plus 5?", "a chart", "3 plus 5 is 8.", "3 plus 5 is 8.",
                                   truth=ADD)
    assert same == ref_s


def test_rubric_cache_and_unknown_task(tmp_path):
    j = make_judge("rubric", cache_dir=tmp_path)
    r1 = j.complete(JudgeRequest(task="answer", prompt="p", truth=ADD))
    r2 = j.complete(JudgeRequest(task="answer", prompt="p", truth=ADD))
    r3 = j.complete(JudgeRequest(task="answer", prompt="p", truth=YES))
    assert r2.cached and not r3.cached and r3.text == YES["reference"]
    with pytest.raises(ValueError, match="inputs lack"):
        j.complete(JudgeRequest(task="grade_pairwise", prompt="p", inputs={"output_1": "a"}))


def test_mt_bench_rating_rewards_answering_as_fully_as_asked(judge):
    """The behaviour the annotation rewards on visual prompts (a complete answer) is what MT-Bench rewards too."""
    full, _ = grade_single(judge, ["What is 3 plus 5?"], ["3 plus 5 is 8."], truth=ADD)
    terse, _ = grade_single(judge, ["What is 3 plus 5?"], ["8."], truth=ADD)
    wrong, _ = grade_single(judge, ["What is 3 plus 5?"], ["3 plus 5 is 9."], truth=ADD)
    assert (full, terse) == (10, 7) and wrong < terse
    # asked for just the number: the bare number is the complete answer, a long ramble costs a point
    short = {"answer": "8", "reference": "8."}
    bare, _ = grade_single(judge, ["Answer with just the number: what is 3 plus 5?"], ["8."], truth=short)
    ramble, _ = grade_single(judge, ["Answer with just the number: what is 3 plus 5?"],
                             ["Well, when you add 3 and 5 together you get the number 8 as the answer."], truth=short)
    assert bare == 10 and ramble < bare


@pytest.mark.parametrize("text, note", [
    ("Yes, there is no star in the image.", "says yes and then denies"),
    ("No, the cross is green, not green.", "contradicts itself"),
    ("The image shows a yellow ring, a green ring and a green ring.", "same thing twice"),
    ("No, there is a triangle in the image.", "says no and then affirms"),
])
def test_self_contradiction_and_repeated_items_lose_coherence(text, note):
    score, notes = coherence_score(text)
    assert score <= 2 and any(note in n for n in notes)


@pytest.mark.parametrize("text", ["No, the star is red, not yellow.", "The image shows a red ring and a green ring.",
                                  "Yes, there is a triangle in the image.", "The sorted list is 3, 3, 8.",
                                  "There are 3 shapes and 2 of them are red."])
def test_consistent_answers_keep_full_coherence(text):
    assert coherence_score(text) == (4, [])


@pytest.mark.parametrize("text, reference, strays", [
    ("The cross is green.", "The star is blue.", True),
    ("There is no cross in the image.", "There is no star in the image.", True),
    ("Yes, the diamond is red.", "No, there is no triangle in the image.", True),
    ("The star is green.", "The star is blue.", False),          # wrong, but about the right object
    ("The image shows a red ring.", "The image shows a red ring and a blue star.", False),
    ("The value of bar 3 is 7.", "The value of bar 2 is 7.", True),
    ("The value of bar 2 is 7.", "The value of bar 2 is 5.", False),
    ("There are 4 bars.", "The value of bar 2 is 5.", False),  # no subject named: nothing to compare
])
def test_answers_about_other_objects_lose_coherence(text, reference, strays):
    score, notes = coherence_score(text, reference)
    assert any("speaks of the" in n for n in notes) == strays
    assert (score <= 2) == strays
    # without a reference there is nothing to stray from
    assert not any("speaks of the" in n for n in coherence_score(text)[1])


@pytest.mark.parametrize("text, question, note", [
    # the other end of the question's superlative: it answers another question
    ("The shortest bar is bar 3.", "Which bar has the highest value?", "answers about the shortest"),
    ("The largest number is 9.", "What is the smallest number in 3, 9, 4?", "answers about the largest"),
    # a correction of a colour the question never named
    ("No, the triangle is green, not red.", "Is there a blue triangle in the image?", "corrects a red"),
    # denying the asked colour and shape, then saying the shape has that colour
    ("No, the diamond is red, not yellow.", "Is there a red diamond in the image?", "denies the red diamond"),
    # consistent with its question: wrong or right, it keeps full coherence
    ("The tallest bar is bar 3.", "Which bar has the highest value?", None),
    ("No, the triangle is green, not blue.", "Is there a blue triangle in the image?", None),
    ("No, the triangle is red, not blue.", "Is there a blue triangle in the image?", None),
    ("3, 4, 9.", "Sort 3, 9, 4 from smallest to largest.", None),
    ("The star is yellow.", "What color is the star?", None),
])
def test_answers_that_do_not_fit_their_question_lose_coherence(text, question, note):
    score, notes = coherence_score(text, None, question)
    if note is None:
        assert (score, notes) == (4, [])
    else:
        assert score <= 2 and any(note in n for n in notes), notes
    assert coherence_score(text) == (4, [])  # read without the question, each of these is coherent


def test_the_worlds_own_references_fit_their_questions():
    """Every question type of the world, answered with its own reference sentence, keeps full coherence when read
    with its question (the question-aware checks flag only answers that do not fit)."""
    import random

    from mmpref.world import questions, scenes

    rng = random.Random(0)
    qas = []
    for _ in range(200):
        scene = scenes.sample_scene(rng, 48)
        qas += questions.scene_positive_qas(scene, rng) + questions.scene_negative_qas(scene, rng)
        qas += questions.chart_qas(scenes.sample_chart(rng), rng)
    assert {qa.qtype for qa in qas} >= {"attr_absent", "color_absent", "bar_tallest", "bar_shortest", "line_max"}
    bad = [(qa.question, qa.reference, coherence_score(qa.reference, qa.reference, qa.question)[1]) for qa in qas
           if coherence_score(qa.reference, qa.reference, qa.question)[0] < 4]
    assert not bad


def test_annotation_reads_the_question(judge):
    """The judge is asked with the question, and the rubric reads it: the same answer is coherent to one question
    and contradicts another."""
    no = {"answer": "no", "reference": "No, the diamond is red, not yellow."}
    fits = annotate_responses(judge, "Is there a yellow diamond in the image?", None,
                              ["No, the diamond is red, not yellow."], truth=no)
    contradicts = annotate_responses(judge, "Is there a red diamond in the image?", None,
                                     ["No, the diamond is red, not yellow."], truth=no)
    assert fits.scores[0].coherence == 4
    assert contradicts.scores[0].coherence == 2 and "denies the red diamond" in contradicts.reasoning

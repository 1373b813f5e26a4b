"""The anatomy of the text regression: each answer sorted into one kind by the rubric's reading of it."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mmpref.world.anatomy import (KINDS, PARTS, anatomy_table, answer_kind, behaviour_change, decomposition,
                                  form_table, mentions_pictures, mt_bench_anatomy, transition_part, unit_interval)
from mmpref.world.probe import (chance, probe_by, probe_change, probe_items, probe_model, probe_table,
                                wrong_copies)
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


def test_format_adherence_reads_what_each_prompt_asks(tmp_path):
    """A prompt with a format instruction asks for the bare answer, any other for a sentence; adherence is about the
    form, right or wrong, and form_table reports it overall and per asked form."""
    from mmpref.world.anatomy import adheres, answer_rows, asked_format
    from mmpref.world.text_tasks import NUMBER_ONLY, ONE_WORD

    assert asked_format(f"{NUMBER_ONLY} what is 3 plus 5?") == asked_format(f"{ONE_WORD} what is up?") == "short"
    assert asked_format("Is there a star?\nAnswer the question using a single word or phrase.") == "short"
    assert asked_format("What is 3 plus 5?") == "sentence"
    assert adheres("9.", "short") and not adheres("3 plus 5 is 9.", "short") and not adheres("", "short")
    assert adheres("3 plus 5 is 9.", "sentence") and not adheres("8.", "sentence")
    q = tmp_path / "question.jsonl"
    items = [{"question_id": 81, "category": "math", "turns": [f"{NUMBER_ONLY} what is 3 plus 5?", "Now add 2."],
              "reference": ["8.", "8 plus 2 is 10."], "answer_keys": ["8", "10"]},
             {"question_id": 82, "category": "math", "turns": ["What is 2 plus 2?", "Now add 1."],
              "reference": ["2 plus 2 is 4.", "4 plus 1 is 5."], "answer_keys": ["4", "5"]}]
    q.write_text("".join(json.dumps(i) + "\n" for i in items))
    d = tmp_path / "eval" / "vit"
    d.mkdir(parents=True)
    answers = {81: ["3 plus 5 is 8.", "10."], 82: ["4.", "4 plus 1 is 6."]}
    d.joinpath("mt_bench.jsonl").write_text("".join(
        json.dumps({"model": "vit", "benchmark": "mt_bench", "question_id": k, "answers": a}) + "\n"
        for k, a in answers.items()))
    rows = answer_rows(tmp_path, {"mt_bench": q}, ["vit"])
    assert rows["asked"].tolist() == ["short", "sentence", "sentence", "sentence"]
    assert rows["adheres"].tolist() == [False, False, False, True]   # the wrong "6" still adheres: form, not truth
    t = form_table(rows).loc[("vit", "mt_bench")]
    assert t["format adherence"] == 25 and t["adherence, short asked"] == 0
    assert t["adherence, sentence asked"] == pytest.approx(100 / 3, abs=0.1)


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


# ----------------------------------------------------------------------------------------------- knowledge probe
FACTS = {"France": "Paris", "Spain": "Madrid", "Italy": "Rome", "Japan": "Tokyo", "Egypt": "Cairo", "Peru": "Lima"}


def test_wrong_copies_swap_only_the_key():
    copies = wrong_copies("The capital of France is Paris.", "Paris", n=3)
    assert len(copies) == 3 and len(set(copies)) == 3
    assert all(c.startswith("The capital of France is ") and "Paris" not in c for c in copies)
    assert wrong_copies("Cold.", "cold", n=2)[0][0].isupper()          # the key's case where it stands
    assert wrong_copies("Yes, desk is in the list.", "yes") == ["No, desk is not in the list."]
    assert wrong_copies("I do not know.", "Paris") == []               # no key in the reference: not probed
    with pytest.raises(ValueError):
        wrong_copies("The capital of France is Paris.", "Paris", n=0)


def _facts_file(path):
    path.write_text("".join(json.dumps({"question_id": i, "category": "humanities",
                                        "turns": [f"What is the capital of {x}?"],
                                        "reference": [f"The capital of {x} is {y}."], "answer_keys": [y]}) + "\n"
                            for i, (x, y) in enumerate(FACTS.items())))
    return path


def _tiny_policy(root, train_on: list[tuple[str, str]]):
    import torch

    from mmpref.sampling import Policy
    from mmpref.world.models import build_base_lm, encode_example, train_from_scratch, train_tokenizer

    texts = [f"USER: What is the capital of {x}? ASSISTANT: The capital of {x} is {y}." for x, y in FACTS.items()]
    tok = train_tokenizer(texts * 5, 300, root / "tok")
    torch.manual_seed(0)
    model = build_base_lm(tok, SimpleNamespace(hidden_size=48, intermediate_size=96, num_layers=2, num_heads=2,
                                               max_positions=64))
    if train_on:
        examples = [encode_example(tok, [q], [a]) for q, a in train_on]
        train_from_scratch(model, examples, tok.pad_token_id, epochs=100, lr=3e-3, batch_size=6, seed=0, desc="t")
    return Policy(model.eval(), tok, "m", is_vlm=False)


def test_the_probe_moves_when_the_model_learns_the_facts_and_not_otherwise(tmp_path):
    items = probe_items(_facts_file(tmp_path / "q.jsonl"), n_wrong=3)
    assert len(items) == len(FACTS) and all(len(it["candidates"]) == 4 for it in items)
    untrained = probe_model(_tiny_policy(tmp_path / "u", []), items)
    taught = [(f"What is the capital of {x}?", f"The capital of {x} is {y}.") for x, y in FACTS.items()]
    trained = probe_model(_tiny_policy(tmp_path / "t", taught), items)
    # taught the same questions with every key wrong (each country given the next one's capital): it "knows" them
    # wrongly, and the probe must not credit it with the facts
    ys = list(FACTS.values())
    mistaught = [(f"What is the capital of {x}?", f"The capital of {x} is {ys[(i + 1) % len(ys)]}.")
                 for i, x in enumerate(FACTS)]
    wrong = probe_model(_tiny_policy(tmp_path / "w", mistaught), items)
    assert trained["known"].all() and trained["margin"].min() > 1
    assert untrained["known"].mean() < 1 and wrong["known"].mean() < 1
    assert wrong["margin"].mean() < trained["margin"].mean() - 1
    assert chance(trained) == pytest.approx(0.25)
    frame = pd.concat([trained.assign(model="trained"), untrained.assign(model="untrained")])
    table = probe_table(frame)
    assert table.loc["trained", "accuracy"] == 100 and table.loc["trained", "chance"] == 25
    assert probe_change(frame, "trained", "untrained")["value"] == pytest.approx(1 - untrained["known"].mean())
    assert np.isnan(probe_change(frame, "trained", "absent")["value"])
    by = probe_by(frame)
    assert by.loc[("mt_bench", 1, "humanities"), "trained"] == 100 and by["items"].tolist() == [len(FACTS)]


# ----------------------------------------------------------------------------------------------- form and decomposition
def _rows(spec):
    """Answer rows from (model, benchmark, unit, turn, kind, pictures, score)."""
    return pd.DataFrame([{"model": m, "benchmark": b, "unit": u, "turn": t, "category": "math", "kind": k,
                          "n_words": 3, "pictures": p, "asked": "sentence", "adheres": k != "terse", "score": s}
                         for m, b, u, t, k, p, s in spec])


def test_unit_interval_resamples_units_and_pairs_rows():
    d = unit_interval(["a", "a", "b", "b"], [1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0])
    assert d == {"value": 0.0, "lo": 0.0, "hi": 0.0, "n_units": 2}
    d = unit_interval([str(i) for i in range(50)], np.ones(50))
    assert d["value"] == d["lo"] == d["hi"] == 1.0
    with pytest.raises(ValueError):
        unit_interval(["a"], [1.0, 2.0])


def test_form_shares_behaviour_failures_and_pictures_on_text_only():
    rows = _rows([("vit", "mt_bench", "1", 1, "terse", False, 5), ("vit", "mt_bench", "2", 1, "full", True, 9),
                  ("vit", "llava_bench", "1", 1, "full", True, np.nan),
                  ("vit", "llava_bench", "2", 1, "empty", False, np.nan)])
    t = form_table(rows)
    assert t.loc[("vit", "mt_bench"), "terse"] == 50 and t.loc[("vit", "mt_bench"), "pictures"] == 50
    assert t.loc[("vit", "mt_bench"), "behaviour failures"] == 100     # terse, and a picture on a text prompt
    assert t.loc[("vit", "llava_bench"), "behaviour failures"] == 50   # pictures are the point there
    assert mentions_pictures("Yes, there is 4 bars.") and mentions_pictures("No, W is not in the image.")
    assert not mentions_pictures("Yes, circle is in the list.")         # shape words alone: the text tasks' lists


def test_decomposition_parts_add_up_to_the_change():
    spec = []
    for u in range(20):  # vit: wrong on half, terse on a quarter; dpo fixes the terse ones and one wrong one
        kv = "wrong" if u < 10 else "terse" if u < 15 else "full"
        kd = "full" if (kv == "terse" or u == 0) else kv
        sv, sd = {"wrong": 2, "terse": 6, "full": 9}[kv], {"wrong": 2, "terse": 6, "full": 9}[kd]
        spec += [("vit", "mt_bench", str(u), 1, kv, False, sv), ("dpo", "mt_bench", str(u), 1, kd, False, sd)]
    rows = _rows(spec)
    d = decomposition(rows).set_index(["model", "part"])["contribution"]
    assert d[("dpo", "form")] == pytest.approx(5 * 3 / 20) and d[("dpo", "correctness")] == pytest.approx(7 / 20)
    assert d[("dpo", "total")] == pytest.approx(sum(d[("dpo", part)] for part in PARTS))
    assert behaviour_change(rows, "dpo", "vit", "mt_bench")["value"] == pytest.approx(-5 / 20)
    assert transition_part("terse", "full") == "form" and transition_part("wrong", "over-long") == "correctness"
    assert transition_part("not stopped", "wrong") == "form" and transition_part("full", "full") == "same kind"

"""Claim C2 as a decision (mmpref.world.anatomy.c2_decision), on constructed inputs for each outcome."""

import math

import pytest

from mmpref.world.anatomy import C2_INPUTS, c2_decision, c2_table

UP, DOWN, ZERO = (0.2, 0.1, 0.3), (-0.2, -0.3, -0.1), (0.0, -0.05, 0.05)


def inputs(**given):
    base = {"deficit": UP, "remaining": ZERO, "text_change": DOWN, "visual_change": DOWN, "mt_bench_change": UP,
            "probe_change": ZERO}
    base.update(given)
    return {k: dict(zip(("value", "lo", "hi"), v)) for k, v in base.items()}


def test_reproduced_when_dpo_removes_the_deficit_and_mt_bench_rises_without_the_probe_moving():
    verdict, sentence = c2_decision(inputs())
    assert verdict == "reproduced" and sentence.startswith("C2 reproduced")


def test_not_testable_without_a_behavioural_deficit_on_text():
    verdict, sentence = c2_decision(inputs(deficit=ZERO))
    assert verdict == "cannot test" and "no behavioural deficit" in sentence
    assert "held-out visual prompts" in sentence   # what DPO did do is still said


def test_refuted_when_dpo_fixes_visual_prompts_but_not_text():
    verdict, sentence = c2_decision(inputs(text_change=ZERO, remaining=UP, mt_bench_change=ZERO))
    assert verdict == "refuted" and "not on text" in sentence


def test_cannot_test_otherwise():
    # the deficit is removed, but the knowledge probe moves too: the MT-Bench gain is not behaviour alone
    verdict, sentence = c2_decision(inputs(probe_change=UP))
    assert verdict == "cannot test" and "knowledge probe moves" in sentence
    # nothing fixed anywhere
    verdict, sentence = c2_decision(inputs(text_change=ZERO, visual_change=ZERO, mt_bench_change=ZERO))
    assert verdict == "cannot test" and "does not remove" in sentence and "does not rise" in sentence
    # the deficit is removed, and MT-Bench does not rise
    assert c2_decision(inputs(mt_bench_change=ZERO))[0] == "cannot test"


def test_a_nan_interval_decides_nothing_and_missing_inputs_are_errors():
    nan = (math.nan, math.nan, math.nan)
    assert c2_decision(inputs(deficit=nan))[0] == "cannot test"
    assert c2_decision(inputs(mt_bench_change=nan))[0] == "cannot test"
    given = inputs()
    del given["probe_change"]
    with pytest.raises(ValueError, match="probe_change"):
        c2_decision(given)


def test_the_table_shows_every_input():
    t = c2_table(inputs())
    assert list(t["input"]) == list(C2_INPUTS) and t.loc[t["input"] == "deficit", "lo"].item() == 0.1

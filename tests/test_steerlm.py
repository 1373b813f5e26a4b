"""SteerLM's inference condition (issue 20, "SteerLM collapses to 2.11"): `train.steerlm.inference_condition` says
which ratings every evaluated question asks for -- all 4 (the authors' and NeMo's default), the ratings of the
top-quality training rows ("top_quality"), or an explicit mapping -- and it reaches the prompts stage 09 asks; the
06 notebook's share of training rows that carry it is counted right."""

from __future__ import annotations

import pytest

from mmpref import methods
from mmpref.config import ParamsError, load_params
from mmpref.evaluate import suite
from mmpref.io import read_jsonl, write_jsonl
from mmpref.pairing import condition_share, steerlm_condition
from mmpref.ratings import ATTRIBUTES, STEERLM_SUFFIX, steerlm_question


def row(h, c, o, x, v):
    return {"prompt_id": "p", "question": "Q", "response": "R",
            "attributes": dict(zip(ATTRIBUTES, (h, c, o, x, v)))}


# the miniature's shape: the most common condition overall is not a top-quality one, and no row asks for all 4
ROWS = ([row(2, 4, 4, 0, 0)] * 5 + [row(4, 4, 4, 1, 2)] * 3 + [row(4, 4, 4, 2, 2)] * 2 + [row(0, 0, 2, 1, 2)] * 4)


def test_all_4_is_the_default_of_the_code_and_the_paper_params():
    assert steerlm_condition("all_4") == {a: 4 for a in ATTRIBUTES}
    for name in ("params/paper-13b.yaml", "params/paper-7b.yaml"):
        assert load_params(name).train.steerlm.inference_condition == "all_4"
    from mmpref.config import SteerLMParams

    assert SteerLMParams().inference_condition == "all_4"


def test_top_quality_is_the_most_common_condition_among_the_highest_quality_rows():
    assert steerlm_condition("top_quality", ROWS) == dict(zip(ATTRIBUTES, (4, 4, 4, 1, 2)))
    # a tie between two top-quality conditions goes to the higher ratings, whatever the row order
    tie = [row(4, 4, 4, 1, 2), row(4, 4, 4, 2, 2)]
    assert steerlm_condition("top_quality", tie) == steerlm_condition("top_quality", tie[::-1]) == \
        dict(zip(ATTRIBUTES, (4, 4, 4, 2, 2)))
    explicit = dict(zip(ATTRIBUTES, (4, 4, 4, 2, 1)))
    assert steerlm_condition(explicit) == explicit


@pytest.mark.parametrize("bad, message", [
    ("best", "unknown SteerLM condition"),
    ({"helpfulness": 4}, "names exactly the attributes"),
    ({**{a: 4 for a in ATTRIBUTES}, "verbosity": 5}, "0..4"),
])
def test_a_bad_condition_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        steerlm_condition(bad, ROWS)
    with pytest.raises(ValueError, match="needs the SteerLM training rows"):
        steerlm_condition("top_quality", [])


def test_a_bad_condition_in_the_params_names_the_key():
    with pytest.raises(ParamsError, match="inference_condition"):
        load_params("params/tiny.yaml", {"train": {"steerlm": {"inference_condition": {"helpfulness": 9}}}})


def test_the_share_of_rows_carrying_a_condition():
    share = condition_share(ROWS, steerlm_condition("all_4"))
    assert share == {"rows": 14, "exact": 0,
                     "per_attribute": {"helpfulness": 5, "correctness": 10, "coherence": 10, "complexity": 0,
                                       "verbosity": 0}}
    top = condition_share(ROWS, steerlm_condition("top_quality", ROWS))
    assert top["exact"] == 3
    assert top["per_attribute"] == {"helpfulness": 5, "correctness": 10, "coherence": 10, "complexity": 7,
                                    "verbosity": 9}


def test_the_condition_reaches_the_prompts_stage_09_asks_and_a_new_one_answers_again(tmp_path, monkeypatch):
    import json

    from mmpref.sampling import Policy
    from tests.test_model_identity import make_pope
    from tests.test_moved_run import build_run

    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    vit, adapter = run / "models" / "vit", run / "adapters" / "steerlm"
    adapter.mkdir(parents=True)  # an adapter's files, as its identity reads them
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "mmpref_train.json").write_text(json.dumps({"fingerprint": "f"}))
    write_jsonl(run / "datasets" / "steerlm.jsonl", ROWS)
    pope = make_pope(tmp_path / "pope", n=2)
    monkeypatch.setattr(suite, "plan", lambda params, run_dir: [("steerlm", str(adapter), ["pope"])])
    asked = []  # the questions as the model sees them (its question_transform applied, as Policy._render does)

    class Answers:
        def __init__(self, question_transform):
            self.transform = question_transform

        def greedy_fn(self, *args):
            return lambda reqs: [asked.append(self.transform(r.turns[0])) or "yes" for r in reqs]

    monkeypatch.setattr(Policy, "from_params", classmethod(
        lambda cls, params, name, adapter=None, base_lm=False, question_transform=None: Answers(question_transform)))

    def params(condition):
        return load_params("params/tiny.yaml", {
            "run": {"run_dir": str(run)}, "models": {"policy": str(vit)},
            "evaluate": {"benchmarks": {"pope": str(pope)}},
            "train": {"steerlm": {"inference_condition": condition}}})

    def suffix(condition):
        return STEERLM_SUFFIX.format(**steerlm_condition(condition, ROWS))

    top = {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 2}
    assert suffix("top_quality") == suffix(top)
    suite.evaluate_all(params("top_quality"), run)
    assert len(asked) == 2 and all(q.endswith(suffix(top)) for q in asked)

    # another condition is another model answering: 09 answers again (not the answers saved for the old condition)
    suite.evaluate_all(params("all_4"), run)
    assert len(asked) == 4 and all(q.endswith(suffix("all_4")) for q in asked[2:])
    answers = read_jsonl(run / "eval" / "steerlm" / "pope.jsonl")
    assert suite.answer_identity(params("all_4"), "steerlm", str(adapter)) in {r["answered_by"] for r in answers}
    assert suite.answer_identity(params("all_4"), "steerlm", str(adapter)) != \
        suite.answer_identity(params("top_quality"), "steerlm", str(adapter))
    # the other models' identities do not depend on SteerLM's condition
    assert suite.answer_identity(params("all_4"), methods.POLICY, None) == \
        suite.answer_identity(params("top_quality"), methods.POLICY, None)

"""The critique-based reward model (mmpref/reward_model.py) and its judge backend (mmpref/judges/reward_model.py):
its rows come from the judge's own critiques and ratings, its held-out split never trains it, its agreement numbers
are right on known cases, and as a judge it answers stage 03's requests through the same parser, cache and re-asks."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpref import reward_model as rm
from mmpref.annotate import annotate_samples
from mmpref.config import load_params
from mmpref.judges import BACKENDS, judge_from_params, make_judge
from mmpref.judges.parsing import parse_annotation
from mmpref.judges.reward_model import RewardModelJudge
from mmpref.judges.rubric import RubricJudge
from mmpref.ratings import ATTRIBUTES, parse_ratings_line, ratings_line

SCORES = {"helpfulness": 3, "correctness": 2, "coherence": 4, "complexity": 1, "verbosity": 2}


# ------------------------------------------------------------------------------------------------- rows
def test_critiques_are_cut_per_response_from_the_judges_reasoning():
    reasoning = ("Let me work through this step by step.\nThe correct answer is \"no\".\n"
                 "Response 1: It gives \"yes\", so it is wrong. It is short.\n"
                 "**Response 2**: It gives \"no\", which matches.\n[Response 3] Fine.\nMore on it.")
    assert rm.response_critiques(reasoning, 3) == ["It gives \"yes\", so it is wrong. It is short.",
                                                   "It gives \"no\", which matches.", "Fine. More on it."]
    assert rm.response_critiques(reasoning, 4) is None            # response 4 is never named
    assert rm.response_critiques("All four answers are wrong.", 4) is None


def test_shorten_keeps_whole_sentences_and_cuts_a_long_first_one():
    text = "One two three. Four five six seven. Eight."
    assert rm.shorten(text, 3) == "One two three."
    assert rm.shorten(text, 8) == "One two three. Four five six seven. Eight."
    assert rm.shorten(text, 2) == "One two"


def test_a_reply_gives_back_its_critique_and_ratings():
    reply = rm.target("It is wrong.", SCORES)
    assert reply.endswith(ratings_line(SCORES))
    assert rm.parse_reply(reply) == ("It is wrong.", SCORES)
    with pytest.raises(ValueError, match="no ratings line"):
        rm.parse_reply("It is wrong.\nHelpfulness:3,Correctness:2")
    with pytest.raises(ValueError):  # out of range
        parse_ratings_line("Helpfulness:7,Correctness:2,Coherence:4,Complexity:1,Verbosity:2")


def test_the_split_is_by_prompt_id_stable_and_near_its_share():
    ids = [f"p{i}" for i in range(4000)]
    held = [i for i in ids if rm.split_of(i, 0.2, seed=0) == rm.HELD_OUT]
    assert 0.18 < len(held) / len(ids) < 0.22
    assert held == [i for i in reversed(ids) if rm.split_of(i, 0.2, seed=0) == rm.HELD_OUT][::-1]  # order-free
    assert held != [i for i in ids if rm.split_of(i, 0.2, seed=1) == rm.HELD_OUT]  # the seed moves it


def _world(tmp_path, n=40):
    """Prompts, samples and rubric-judge annotations of `n` one-image prompts (the real judge, its real replies)."""
    (tmp_path / "images").mkdir(parents=True)
    Image.new("RGB", (16, 16), "blue").save(tmp_path / "images" / "0.png")
    prompts = [{"id": f"p{i}", "image": "images/0.png", "question": f"Is there a square {i}?", "answer": "yes",
                "reference": "Yes, there is a square."} for i in range(n)]
    samples = [{"prompt_id": p["id"], "responses": ["Yes, there is a square.", "No.", "No, there is no square.",
                                                    "Yes."]} for p in prompts]
    annotations = annotate_samples(RubricJudge(), prompts, samples, tmp_path, tmp_path / "annotations.jsonl",
                                   max_workers=1)
    return prompts, samples, annotations


def test_training_rows_hold_the_judges_critique_and_scores_of_train_prompts_only(tmp_path):
    prompts, samples, annotations = _world(tmp_path)
    annotations[0] = {**annotations[0], "status": "failed", "scores": None}
    rows, summary = rm.training_rows(prompts, samples, annotations, held_out=0.25, seed=0, critique_words=12)
    held = {p["id"] for p in prompts if rm.split_of(p["id"], 0.25, 0) == rm.HELD_OUT}
    assert held and not held & {r["prompt_id"] for r in rows}
    assert summary["prompts"] == {rm.TRAIN: len(prompts) - len(held), rm.HELD_OUT: len(held)}
    failed_in_train = int(prompts[0]["id"] not in held)
    assert summary["prompts_left_out"] == ({rm.ANNOTATION_NOT_OK: 1} if failed_in_train else {})
    assert len(rows) == 4 * (len(prompts) - len(held) - failed_in_train)
    by_id = {a["prompt_id"]: a for a in annotations}
    for r in rows:
        a = by_id[r["prompt_id"]]
        critique, scores = rm.parse_reply(r["response"])
        assert scores == a["scores"][r["response_index"]]
        assert critique and critique in rm.response_critiques(a["reasoning"], 4)[r["response_index"]]
        assert len(critique.split()) <= 12
        assert r["question"] == rm.rm_question(next(p["question"] for p in prompts if p["id"] == r["prompt_id"]),
                                               samples[0]["responses"][r["response_index"]])


# ------------------------------------------------------------------------------------------------- agreement
def _frame(judge_q: list[list[int]], rm_q: list[list[int]]) -> pd.DataFrame:
    def ann(qs, pid):
        return {"prompt_id": pid, "status": "ok",
                "scores": [{**SCORES, "helpfulness": min(q, 4), "correctness": min(max(q - 4, 0), 4),
                            "coherence": max(q - 8, 0)} for q in qs]}  # quality q, 0..12
    return rm.paired_scores([ann(q, f"p{i}") for i, q in enumerate(judge_q)],
                            [ann(q, f"p{i}") for i, q in enumerate(rm_q)])


def test_agreement_is_one_for_a_copy_and_zero_for_a_reversal():
    judge = [[12, 6, 3, 9], [0, 3, 6, 12], [9, 6, 3, 0], [3, 12, 6, 9]]
    same = rm.agreement(_frame(judge, judge), n_resamples=200)
    pair = same[same["metric"] == "pairwise_accuracy"].iloc[0]
    assert pair["value"] == 1.0 and pair["n"] == 4 * 6 and pair["prompts"] == 4
    r = same[(same["metric"] == "pearson_r") & (same["attribute"] == "quality")].iloc[0]
    assert r["value"] == pytest.approx(1.0) and r["lo"] <= r["value"] <= r["hi"] + 1e-12
    assert math.isnan(same[same["attribute"] == "complexity"].iloc[0]["value"])  # constant: no correlation

    reversed_ = rm.agreement(_frame(judge, [[12 - q for q in qs] for qs in judge]), n_resamples=200)
    assert reversed_[reversed_["metric"] == "pairwise_accuracy"].iloc[0]["value"] == 0.0
    flat = rm.agreement(_frame(judge, [[6, 6, 6, 6]] * 4), n_resamples=200)
    assert flat[flat["metric"] == "pairwise_accuracy"].iloc[0]["value"] == 0.5  # ties count half


def test_agreement_interval_resamples_prompts_and_an_empty_comparison_says_n_0():
    rng = np.random.default_rng(0)
    judge = [[int(q) for q in rng.integers(0, 13, 4)] for _ in range(30)]
    noisy = [[int(np.clip(q + rng.integers(-3, 4), 0, 12)) for q in qs] for qs in judge]
    table = rm.agreement(_frame(judge, noisy), n_resamples=300)
    pair = table[table["metric"] == "pairwise_accuracy"].iloc[0]
    assert 0.5 < pair["value"] < 1.0 and pair["lo"] < pair["value"] < pair["hi"]
    empty = rm.agreement(pd.DataFrame())
    assert (empty["n"] == 0).all() and empty["value"].isna().all()


def test_cost_table_divides_the_judges_spend_and_the_models_seconds_per_prompt():
    cost = rm.cost_table({"cost_usd": 2.0, "calls": 100, "input_tokens": 4000, "output_tokens": 1000}, 100,
                         rm_seconds=8.0, rm_prompts=4, train_seconds=60.0, rm_tokens=(400, 200)).set_index("annotator")
    assert cost.loc["judge", "usd_per_prompt"] == 0.02 and cost.loc["judge", "input_tokens_per_prompt"] == 40
    assert cost.loc["reward model", "seconds_per_prompt"] == 2.0
    assert cost.loc["reward model", "output_tokens_per_prompt"] == 50


# ------------------------------------------------------------------------------------------------- the backend
class _Scripted:
    """Stands in for the loaded reward model: replies by (attempt temperature, response)."""

    def __init__(self, replies):
        self.replies, self.calls = replies, []
        self.tokenizer = lambda text, add_special_tokens=False: {"input_ids": text.split()}

    def generate(self, asks, temperature=0.0, **kw):
        self.calls.append((temperature, len(asks)))
        return [[self.replies(temperature, a.turns[0])] for a in asks]


def _adapter(tmp_path):
    """A folder that looks like a trained adapter of a checkpoint on this machine (what the judge checks)."""
    base = tmp_path / "base"
    base.mkdir(parents=True)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(base)}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v1")
    return adapter


def test_the_backend_answers_stage_03_through_its_parser_cache_and_re_asks(tmp_path):
    prompts, samples, judge_annotations = _world(tmp_path / "run", n=3)
    adapter = _adapter(tmp_path)

    def replies(temperature, question):  # the greedy reply of "No." has no ratings line; a sampled re-ask has one
        if question.endswith("Answer: No.") and temperature == 0.0:
            return "It is wrong and"
        return rm.target("It says something.", SCORES)

    judge = make_judge("reward_model", str(adapter), cache_dir=tmp_path / "cache")
    assert isinstance(judge, RewardModelJudge) and judge.judge_id.startswith("reward-model-")
    judge._policy = scripted = _Scripted(replies)
    out = annotate_samples(judge, prompts, samples, tmp_path / "run", tmp_path / "rm.jsonl", max_workers=1,
                           max_retries=1)
    assert [a["status"] for a in out] == ["ok"] * 3
    assert all(a["scores"] == [SCORES] * 4 for a in out)
    assert [t for t, _ in scripted.calls] == [0.0, 0.7] * 3  # each prompt: greedy, then one sampled re-ask
    assert rm.response_critiques(out[0]["reasoning"], 4) == ["It says something."] * 4
    assert "Response 4: It says something." in out[0]["raw"]

    # the same adapter again: the accepted replies come from the cache (a refused one is never cached: asked again)
    again = make_judge("reward_model", str(adapter), cache_dir=tmp_path / "cache")
    again._policy = second = _Scripted(replies)
    (tmp_path / "rm.jsonl").unlink()
    assert [a["scores"] for a in annotate_samples(again, prompts, samples, tmp_path / "run", tmp_path / "rm.jsonl",
                                                  max_workers=1, max_retries=1)] == [[SCORES] * 4] * 3
    assert [t for t, _ in second.calls] == [0.0] * 3
    # a retrained adapter is another judge: its replies are not the old one's
    (adapter / "adapter_model.safetensors").write_bytes(b"weights v2")
    assert make_judge("reward_model", str(adapter)).judge_id != judge.judge_id
    # and so is one that writes fewer tokens (a cut reply is another reply)
    assert make_judge("reward_model", str(adapter), max_new_tokens=64).judge_id != \
        make_judge("reward_model", str(adapter), max_new_tokens=96).judge_id


def test_the_backend_refuses_what_it_cannot_do(tmp_path):
    with pytest.raises(ValueError, match="holds no trained adapter"):
        make_judge("reward_model", str(tmp_path))
    with pytest.raises(ValueError, match="needs a pinned model id"):
        make_judge("reward_model", None)
    adapter = _adapter(tmp_path)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere"}))
    with pytest.raises(ValueError, match="not on this machine"):
        make_judge("reward_model", str(adapter))
    assert not BACKENDS["reward_model"].writes_gold and not BACKENDS["reward_model"].grades_benchmarks


def test_params_put_the_reward_model_only_where_it_can_answer(tmp_path):
    with pytest.raises(ValueError, match="only annotates"):
        load_params("params/tiny.yaml", {"evaluate": {"judge": {"backend": "reward_model", "model": "x"}}})
    with pytest.raises(ValueError, match="sft_gold"):
        load_params("params/tiny.yaml", {"judge": {"backend": "reward_model", "model": "x"}})
    with pytest.raises(ValueError, match="unknown reward_model.sft key"):
        load_params("params/tiny.yaml", {"reward_model": {"sft": {"learning_rte": 1e-3}}})
    with pytest.raises(ValueError, match="reward_model.*epochs"):
        load_params("params/tiny.yaml", {"reward_model": {"sft": {"epochs": "many"}}})
    methods = ["steerlm", "rejection_sampling", "dpo"]
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(tmp_path / "run")}, "train": {"methods": methods},
                                              "judge": {"backend": "reward_model",
                                                        "model": "{run_dir}/reward_model/adapter"}})
    adapter = _adapter(tmp_path / "run" / "reward_model")
    judge = judge_from_params(params.judge, None, params.path)  # {run_dir} expanded to this run's adapter
    assert judge.adapter == adapter


def test_stage_03b_exists_only_with_a_reward_model_section():
    from mmpref import stages

    with_rm = load_params("params/tiny.yaml")
    assert "03b_reward_model" in stages.active(with_rm)
    names = stages.names()
    assert names.index("03_annotate") < names.index("03b_reward_model") < names.index("04_pair")
    without = load_params("params/tiny.yaml", {"reward_model": None})
    assert "03b_reward_model" not in stages.active(without)


def test_ratings_line_is_the_steerlm_suffix_format():
    from mmpref.ratings import steerlm_question

    assert steerlm_question("Q?", SCORES).endswith("\n" + ratings_line(SCORES))
    assert parse_ratings_line("noise " + ratings_line(SCORES) + " more") == SCORES


def test_a_judge_writing_one_paragraph_gives_the_text_after_each_mention():
    reasoning = ("Step by step: I checked each of the 3 responses. Response 2 is the most accurate; response 1 rates "
                 "helpfulness 1; response 2 rates helpfulness 4; response 3 rates helpfulness 2.")
    assert rm.response_critiques(reasoning, 3) == ["rates helpfulness 1",
                                                   "is the most accurate rates helpfulness 4",
                                                   "rates helpfulness 2."]
    assert rm.response_critiques(reasoning, 4) is None


def test_a_handful_of_prompts_still_holds_one_out():
    ids = [f"q{i}" for i in range(4)]
    assert not [i for i in ids if rm.split_of(i, 0.01, seed=0) == rm.HELD_OUT]  # the hash alone holds none out
    held = rm.held_out_ids(ids, 0.01, seed=0)
    assert len(held) == 1 and held == rm.held_out_ids(list(reversed(ids)), 0.01, seed=0)
    assert rm.held_out_ids(["only"], 0.01, seed=0) == set()  # one prompt: nothing to train on otherwise

"""The DPO sweep's table holds the untrained policy's dev score (issue 20: "the chosen DPO setting barely trains ...
the sweep's table shows the untrained model's dev score so a reader can judge the choice"): one reference row, its
answers keyed by the policy's own identity, never chosen even when it scores best."""

from __future__ import annotations

import csv
import json

from mmpref import methods, train
from mmpref.config import load_params
from mmpref.evaluate import suite
from tests.test_moved_run import build_run


def test_the_sweep_table_holds_the_untrained_policy_and_the_choice_ignores_it(tmp_path, monkeypatch):
    from mmpref.sampling import Policy

    run = tmp_path / "run"
    run.mkdir()
    build_run(run)
    sweep = {"betas": [0.1, 0.2], "average_log_prob": [False], "learning_rates": [0.0005],
             "dev_path": str(tmp_path / "dev")}
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(run)},
                                              "models": {"policy": str(run / "models" / "vit")},
                                              "train": {"dpo": {"sweep": sweep}}})
    losses = {0.1: 0.69, 0.2: 0.55}

    def trained(policy_ref, rows, run_dir, out_dir, settings, **kw):  # a trial's training: its adapter files
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "adapter_model.safetensors").write_bytes(f"weights {settings.trainer.beta}".encode())
        (out_dir / "adapter_config.json").write_text("{}")
        (out_dir / "mmpref_train.json").write_text(json.dumps({"fingerprint": "f"}))
        return {"final_loss": losses[settings.trainer.beta]}

    # the untrained policy scores best on the dev split: it is shown, but only a trial can be chosen
    dev = {methods.POLICY: 70.0, "beta0.1_sum_lr0.0005": 60.0, "beta0.2_sum_lr0.0005": 65.0}
    scored = {}

    def score_policy(params, policy, bench, data_path, judge, out_jsonl, name, *, answered_by, judge_run=1):
        scored[name] = (answered_by, out_jsonl)
        return [{"metric": "relative_score", "value": dev[name]}]

    monkeypatch.setattr(train, "train_dpo", trained)
    monkeypatch.setattr(suite, "score_policy", score_policy)
    monkeypatch.setattr(Policy, "from_params", classmethod(lambda cls, *a, **k: object()))
    chosen, record = train.dpo_sweep(params, [], train.settings_from_params(params, "dpo"),
                                     run / "adapters" / "reference_logps.jsonl")

    table = list(csv.DictReader((run / "adapters" / "dpo_sweep" / "sweep.csv").open()))
    assert [r["tag"] for r in table] == [train.UNTRAINED, "beta0.1_sum_lr0.0005", "beta0.2_sum_lr0.0005"]
    untrained = table[0]
    assert float(untrained["dev_relative_score"]) == 70.0
    assert untrained["reference"] == "True" and untrained["chosen"] == "False"
    assert untrained["beta"] == untrained["final_loss"] == ""
    assert [r["reference"] for r in table[1:]] == ["False", "False"]
    assert [float(r["final_loss"]) for r in table[1:]] == [0.69, 0.55]
    # the choice: the best trial, not the better-scoring untrained policy
    assert [r["chosen"] for r in table] == ["False", "False", "True"]
    assert chosen.trainer.beta == 0.2 and record["chosen"]["tag"] == "beta0.2_sum_lr0.0005"
    assert json.loads((run / "adapters" / "dpo_sweep" / "choice.json").read_text())["tag"] == "beta0.2_sum_lr0.0005"
    assert record["table"][0] == {"tag": train.UNTRAINED, "beta": None, "average_log_prob": None,
                                  "learning_rate": None, "dev_relative_score": 70.0, "final_loss": None,
                                  "reference": True}
    # its dev answers are keyed by the untrained policy's own identity and kept apart from the trials'
    answered_by, out = scored[methods.POLICY]
    assert answered_by == suite.answer_identity(params, methods.POLICY, None)
    assert out == run / "adapters" / "dpo_sweep" / train.UNTRAINED / "dev_llava_bench.jsonl"

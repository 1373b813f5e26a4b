import json

import pytest

from mmpref import stages as stage_table
from mmpref import runner
from mmpref.config import load_params


def touch_world(run_dir):
    """Stand-ins for stage 00's outputs, so stage 01 can be opened."""
    for m in ("base-lm", "vit"):
        (run_dir / "world" / m).mkdir(parents=True, exist_ok=True)
        (run_dir / "world" / m / "model.safetensors").write_bytes(b"x")


def test_stage_ranges():
    stages = stage_table.active(load_params("params/tiny.yaml"))
    assert runner.parse_stage_range("02-04", stages) == ["02_sample", "03_annotate", "03b_reward_model", "04_pair"]
    assert runner.parse_stage_range("03b", stages) == ["03b_reward_model"]
    assert runner.parse_stage_range("5,08", stages) == ["05_train_sft_gold", "08_train_dpo"]
    assert runner.parse_stage_range("08_train_dpo", stages) == ["08_train_dpo"]
    assert runner.parse_stage_range(None, stages) == stages
    with pytest.raises(ValueError, match="unknown stage '42'; stages"):
        runner.parse_stage_range("42", stages)
    for typo, meant in (("dpo", "08_train_dpo or 08b_train_mm_dpo"), ("evalute", "09_evaluate"), ("08_train_dop", "08_train_dpo"),
                        ("analyze", "10_analyse"), ("steer", "06_train_steerlm")):
        with pytest.raises(ValueError, match=rf"unknown stage '{typo}' \(did you mean {meant}\?\)"):
            runner.parse_stage_range(typo, stages)
    with pytest.raises(ValueError, match=r"unknown stage 'sampel' \(did you mean 02_sample\?\)"):
        runner.run("params/tiny.yaml", force=["sampel"])


def test_reversed_and_open_ranges():
    stages = stage_table.active(load_params("params/tiny.yaml"))
    with pytest.raises(ValueError, match="reversed stage range '05-02'.*02-05.*00_world"):
        runner.parse_stage_range("05-02", stages)
    assert runner.parse_stage_range("04-", stages) == stages[stages.index("04_pair"):]
    assert runner.parse_stage_range("-02", stages) == ["00_world", "01_collect", "02_sample"]
    assert runner.parse_stage_range("09-", stages) == ["09_evaluate", "10_analyse"]


def test_version(capsys):
    from mmpref import __version__
    from mmpref.cli import main

    with pytest.raises(SystemExit) as end:
        main(["--version"])
    assert end.value.code == 0 and capsys.readouterr().out.strip() == f"mmpref {__version__}"


def test_status_table_for_stages_not_run(tmp_path, monkeypatch, capsys):
    from mmpref.cli import main

    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    assert main(["status", "params/tiny.yaml"]) == 0
    out = capsys.readouterr().out
    header, first = out.splitlines()[:2]
    assert header.split()[:5] == ["stage", "state", "when", "seconds", "why"]
    assert first.split()[:4] == ["00_world", "not", "run", "not"] and "None" not in out


def test_missing_input_names_stage_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    with pytest.raises(runner.MissingInput) as err:
        runner.Stage("params/tiny.yaml", {"sampling": {"k": 3}}, "03_annotate")
    msg = str(err.value)
    assert str(tmp_path / "samples.jsonl") in msg and "stage 02_sample" in msg
    assert "mmpref run params/tiny.yaml --stages 02 --set sampling.k=3" in msg
    with pytest.raises(runner.MissingInput, match="datasets, which stage 04_pair makes"):
        runner.Stage("params/tiny.yaml", {}, "08_train_dpo")


def test_active_stages_follow_params():
    tiny = load_params("params/tiny.yaml", {"train": {"methods": ["dpo"]}})
    stages = stage_table.active(tiny)
    assert "00_world" in stages and "05_train_sft_gold" not in stages and "08_train_dpo" in stages
    assert "00_world" not in stage_table.active(load_params("params/paper-13b.yaml"))


def test_stage_state_tracks_params_and_inputs(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    params_file = runner.resolve_params_path("params/tiny.yaml")
    touch_world(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"}\n')
    stage = runner.Stage(str(params_file), {}, "01_collect")
    assert runner.stage_state(stage.params, "01_collect") == "not run"
    stage.done(prompts=1)
    assert runner.stage_state(stage.params, "01_collect") == "complete"
    # params of another section do not matter; its own do
    assert runner.stage_state(load_params(params_file, {"sampling": {"k": 5}}), "01_collect") == "complete"
    assert runner.stage_state(load_params(params_file, {"prompts": {"sources": []}}), "01_collect") == "stale"
    # status names the key that changed, with its old and new value
    state, why = runner.stage_why(load_params(params_file, {"prompts": {"sources": []}}), "01_collect")
    assert state == "stale" and why.startswith("params changed: prompts.sources [{'name': 'scigraphqa'")
    assert why.endswith("... -> []"), why
    state, why = runner.stage_why(load_params(params_file, {"run": {"seed": 3}}), "01_collect")
    assert why == "params changed: run.seed 0 -> 3"
    # changed outputs make it stale, and downstream stages see new inputs
    (tmp_path / "prompts.jsonl").write_text('{"id": "b"}\n')
    assert runner.stage_state(stage.params, "01_collect") == "stale"
    lines = [json.loads(l) for l in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines[0]["stage"] == "01_collect" and lines[0]["status"] == "ok" and "torch" in lines[0]["versions"]
    # a complete stage behind a stale one says so in `mmpref status`
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"}\n')
    for name in ("samples.jsonl", "gold.jsonl"):
        (tmp_path / name).write_text('{"prompt_id": "a"}\n')
    runner.Stage(str(params_file), {}, "00_world").done()
    runner.Stage(str(params_file), {}, "01_collect").done()
    runner.Stage(str(params_file), {}, "02_sample").done()
    rows = {r["stage"]: r for r in runner.status(str(params_file), {"prompts": {"sources": []}})}
    assert rows["01_collect"]["state"] == "stale" and rows["02_sample"]["state"] == "upstream stale"
    assert rows["02_sample"]["why"].startswith("01_collect is stale")
    assert {r["stage"]: r["state"] for r in runner.status(str(params_file))}["02_sample"] == "complete"


def test_failed_notebook_names_notebook_and_cell(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    with pytest.raises(runner.StageFailed) as err:
        # 04_pair without annotations fails inside its first work cell
        runner.run("params/tiny.yaml", stages="04")
    msg = str(err.value)
    assert "04_pair.ipynb" in msg and "cell" in msg and str(tmp_path / "notebooks" / "04_pair.failed.ipynb") in msg
    status = runner.status("params/tiny.yaml")
    assert {r["stage"]: r["state"] for r in status}["04_pair"] == "failed"


def test_notebooks_come_from_the_project_of_the_params_file(tmp_path):
    other = tmp_path / "checkout"
    (other / "params").mkdir(parents=True)
    (other / "notebooks").mkdir()
    (other / "params" / "mine.yaml").write_text("run: {name: x}\n")
    assert runner.notebooks_dir(other / "params" / "mine.yaml") == other / "notebooks"
    here = runner.notebooks_dir("params/tiny.yaml")
    assert here == runner.notebooks_dir() and (here / "00_world.ipynb").exists()
    assert runner.notebooks_dir(tmp_path / "loose.yaml") == here  # a params file outside any project

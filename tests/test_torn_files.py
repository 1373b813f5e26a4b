"""Files a crash or a full disk can damage (issue 19): a torn last line of a file the project appends to is dropped
with a warning and its item redone (and the next row starts on a line of its own); a bad line elsewhere, or a damaged
JSON file, is an error naming the file and what to do; JSON files are written atomically; a full disk or an unwritable
run directory is one line from `mmpref`; a moved run directory keeps its stages complete."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from mmpref import annotate, io, runner
from mmpref.annotate import annotate_samples, collect_gold
from mmpref.cli import main
from mmpref.config import load_params
from mmpref.evaluate.protocol import ItemProtocol, run_items
from mmpref.io import append_jsonl, read_jsonl, write_json, write_jsonl
from mmpref.judges.base import JudgeError, JudgeReply
from mmpref.judges.rubric import RubricJudge
from mmpref.sampling import ChatRequest, Generator, sample_responses
from tests.loopback import killed_after_writes
from tests.test_annotate import CountingRubric

ROOT = Path(__file__).resolve().parents[1]


def tear(path: Path) -> bytes:
    """Cut the file in the middle of its last line, as a kill or a full disk during an append leaves it; returns the
    torn bytes."""
    data = path.read_bytes()
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    cut = start + (len(data) - start) // 2
    path.write_bytes(data[:cut])
    return data[start:cut]


def whole(path: Path) -> list[dict]:
    """Every line of the file parses (the strict reader: no torn tail either)."""
    return read_jsonl(path)


# ---- mmpref.io ---------------------------------------------------------------------------------------------------

def test_a_torn_last_line_is_dropped_with_a_warning_and_cut_before_the_next_append(tmp_path, caplog):
    path = tmp_path / "rows.jsonl"
    for i in range(3):
        append_jsonl(path, {"i": i, "text": "x" * 40})
    tear(path)
    with caplog.at_level(logging.WARNING):
        assert read_jsonl(path, appended=True) == [{"i": 0, "text": "x" * 40}, {"i": 1, "text": "x" * 40}]
    assert str(path) in caplog.text and "line 3" in caplog.text
    # the strict reader (files written whole, data someone gave us) still refuses it, naming file and line
    with pytest.raises(ValueError, match=f"{path}:3: not valid JSON"):
        read_jsonl(path)
    append_jsonl(path, {"i": 2, "text": "again"})  # the torn bytes are cut off: the new row is a line of its own
    assert whole(path) == [{"i": 0, "text": "x" * 40}, {"i": 1, "text": "x" * 40}, {"i": 2, "text": "again"}]


def test_a_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\n{"i": 1}')
    assert read_jsonl(path, appended=True) == [{"i": 0}, {"i": 1}]
    append_jsonl(path, {"i": 2})
    assert whole(path) == [{"i": 0}, {"i": 1}, {"i": 2}]
    # a file that is nothing but a torn line, and a tail of zero bytes (what a crash can leave on some filesystems)
    path.write_text('{"i": 0, "te')
    assert read_jsonl(path, appended=True) == []
    append_jsonl(path, {"i": 1})
    assert whole(path) == [{"i": 1}]
    path.write_bytes(b'{"i": 0}\n\x00\x00\x00\x00')
    assert read_jsonl(path, appended=True) == [{"i": 0}]
    append_jsonl(path, {"i": 1})
    assert whole(path) == [{"i": 0}, {"i": 1}]


def test_a_bad_line_before_the_last_is_an_error_saying_what_to_do(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"i": 0}\n{"i": 1, oops\n{"i": 2}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON .*remove that line") as err:
        read_jsonl(path, appended=True)
    assert "\n" not in str(err.value)


def _disk_full_on_write(monkeypatch, after: int):
    """Writes through os.fdopen files fail with ENOSPC after `after` bytes (a disk that fills up mid-write)."""
    real = os.fdopen

    class Full:
        def __init__(self, fh):
            self.fh, self.left = fh, after

        def write(self, s):
            if len(s) > self.left:
                self.fh.write(s[:self.left])
                self.fh.flush()
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(s)
            return self.fh.write(s)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(io.os, "fdopen", lambda *a, **kw: Full(real(*a, **kw)))


@pytest.mark.parametrize("writer", [write_json, lambda p, obj: write_jsonl(p, obj["rows"])])
def test_a_full_disk_during_an_atomic_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch, writer):
    path = tmp_path / "rows.json"
    writer(path, {"rows": [{"old": 1}]})
    before = path.read_bytes()
    _disk_full_on_write(monkeypatch, after=5)
    with pytest.raises(OSError) as err:
        writer(path, {"rows": [{"new": "x" * 100}]})
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.json"]


def test_a_damaged_json_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "info.json"
    path.write_text('{"fingerprint": "ab')
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON .*delete it"):
        io.read_json(path)
    with pytest.raises(ValueError, match=rf"{path}: not valid JSON .*re-download it"):
        io.read_json(path, fix="re-download it")
    write_json(path, {"a": 1})
    assert io.read_json(path) == {"a": 1}


# ---- every appended file, at the stage that appends it -----------------------------------------------------------

class Echo(Generator):
    """A generator that answers from the question alone and counts the prompts it was asked."""

    name = "echo"
    seeds_per_request = True

    def __init__(self):
        self.asked: list[str] = []

    def generate(self, requests, *, num_return_sequences=1, **kw):
        self.asked += [r.turns[0] for r in requests]
        return [[f"{r.turns[0]} answer {j}" for j in range(num_return_sequences)] for r in requests]


def _prompts(run_dir: Path, n: int) -> list[dict]:
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        (run_dir / "images" / f"{i}.png").write_bytes(f"image {i}".encode())
        out.append({"id": f"p{i}", "source": "scigraphqa", "image": f"images/{i}.png",
                    "question": f"What is {i} plus 5?", "answer": str(i + 5), "reference": f"{i} plus 5 is {i + 5}.",
                    "negative": False, "meta": {}})
    return out


def test_sampling_resumes_past_a_torn_samples_file(tmp_path):
    prompts = _prompts(tmp_path, 4)
    out = tmp_path / "samples.jsonl"
    sample = lambda gen: sample_responses(gen, prompts, tmp_path, out, k=2, temperature=0.7, top_p=1.0,
                                          max_new_tokens=8, batch_size=2, seed=0)
    first = sample(Echo())
    tear(out)
    again = Echo()
    assert sample(again) == first
    assert again.asked == ["What is 3 plus 5?"]  # only the torn item is done again
    assert whole(out) == first


def _samples(prompts):
    return [{"prompt_id": p["id"], "responses": [p["reference"], "no idea"], "model": "vit", "temperature": 0.7,
             "seed": 0} for p in prompts]


def test_annotation_resumes_past_a_torn_annotations_file_and_appends_on_a_fresh_line(tmp_path):
    prompts = _prompts(tmp_path, 4)
    out = tmp_path / "annotations.jsonl"
    first = annotate_samples(CountingRubric(), prompts, _samples(prompts)[:2], tmp_path, out, max_workers=1)
    tear(out)
    # killed again after one more record: that record must not be glued onto the torn bytes
    with killed_after_writes(annotate, 1):
        annotate_samples(CountingRubric(), prompts, _samples(prompts), tmp_path, out, max_workers=1)
    assert [r["prompt_id"] for r in whole(out)] == ["p0", "p1"]
    judge = CountingRubric()
    recs = annotate_samples(judge, prompts, _samples(prompts), tmp_path, out, max_workers=1)
    assert len(judge.seen) == 2 and recs[:2] == first
    assert [r["prompt_id"] for r in whole(out)] == ["p0", "p1", "p2", "p3"]


def test_gold_answers_resume_past_a_torn_gold_file(tmp_path):
    prompts = _prompts(tmp_path, 3)
    out = tmp_path / "gold.jsonl"
    first = collect_gold(CountingRubric(), prompts, tmp_path, out, max_workers=1)
    tear(out)
    judge = CountingRubric()
    assert collect_gold(judge, prompts, tmp_path, out, max_workers=1) == first
    assert len(judge.seen) == 1 and whole(out) == first


def test_evaluation_resumes_past_a_torn_per_item_file(tmp_path):
    items = [{"id": f"t{i}", "q": f"{i}+1?", "a": str(i + 1)} for i in range(4)]
    asked: list[str] = []

    def generate(reqs):
        asked.extend(r.turns[0] for r in reqs)
        return [str(int(r.turns[0].split("+")[0]) + 1) for r in reqs]

    out = tmp_path / "eval" / "vit" / "toy.jsonl"
    protocol = ItemProtocol("toy", key=lambda it: it["id"], requests=lambda it: [ChatRequest(turns=[it["q"]])],
                            describe=lambda it: {"truth": it["a"]})
    run = lambda: run_items(protocol, items, generate, out, "vit")
    first = run()
    tear(out)
    asked.clear()
    assert run() == first and asked == ["3+1?"]
    assert whole(out) == first


def test_a_torn_staged_batch_outcome_is_dropped(tmp_path):
    judge = RubricJudge()
    judge.stage(tmp_path, "k1", JudgeError("job failed"))
    judge.stage(tmp_path, "k2", JudgeReply(text="fine", judge_id="rubric-v4"))
    tear(tmp_path / "staged.jsonl")
    fresh = RubricJudge()
    fresh.load_staged(tmp_path)
    assert list(fresh._staged) == ["k1"]
    fresh.stage(tmp_path, "k2", JudgeReply(text="fine", judge_id="rubric-v4"))
    assert [r["key"] for r in whole(tmp_path / "staged.jsonl")] == ["k1", "k2"]


def touch_world(run_dir: Path) -> None:
    for m in ("base-lm", "vit"):
        (run_dir / "world" / m).mkdir(parents=True, exist_ok=True)
        (run_dir / "world" / m / "model.safetensors").write_bytes(b"x")


def test_a_torn_manifest_line_reruns_that_stage_and_the_manifest_stays_whole(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    touch_world(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"}\n')
    for name in ("samples.jsonl", "gold.jsonl"):
        (tmp_path / name).write_text('{"prompt_id": "a"}\n')
    runner.Stage("params/tiny.yaml", {}, "01_collect").done()
    runner.Stage("params/tiny.yaml", {}, "02_sample").done()
    tear(tmp_path / "manifest.jsonl")  # killed while 02's line was written
    states = {r["stage"]: r["state"] for r in runner.status("params/tiny.yaml")}
    assert states["01_collect"] == "complete" and states["02_sample"] == "not run"
    assert main(["status", "params/tiny.yaml"]) == 0
    runner.Stage("params/tiny.yaml", {}, "02_sample").done()
    assert [line["stage"] for line in whole(tmp_path / "manifest.jsonl")] == ["01_collect", "02_sample"]
    assert runner.stage_state(load_params("params/tiny.yaml"), "02_sample") == "complete"


# ---- JSON files written in place ---------------------------------------------------------------------------------

def test_a_damaged_training_record_is_named(tmp_path, caplog):
    from mmpref import train

    out = tmp_path / "adapters" / "dpo"
    out.mkdir(parents=True)
    (out / "adapter_config.json").write_text("{}")
    (out / "mmpref_train.json").write_text('{"fingerprint": "abc", "rows')  # a kill mid-write, before this fix
    with caplog.at_level(logging.WARNING):
        assert not train._finished(out, "abc")  # not finished: trained again, and the file named
    assert f"{out / 'mmpref_train.json'}: not valid JSON" in caplog.text


def test_a_damaged_world_marker_is_named(tmp_path):
    from mmpref.config import WorldParams
    from mmpref.world.build import build_world

    (tmp_path / "world.json").write_text('{"fingerprint": ')
    with pytest.raises(ValueError, match=rf"{tmp_path / 'world.json'}: not valid JSON .*delete it"):
        build_world(tmp_path, WorldParams(), seed=0)


# ---- a full disk, an unwritable run directory --------------------------------------------------------------------

def _one_clean_line(err: str) -> str:
    """The one line mmpref printed (a run's progress bar aside), and no traceback."""
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("run tiny:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_unwritable_run_directory_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    assert main(["run", "params/tiny.yaml", "--set", f"run.run_dir={blocker / 'run'}"]) == 1
    line = _one_clean_line(capsys.readouterr().err)
    assert line.startswith(f"mmpref: cannot write {blocker / 'run'} (Not a directory); ")
    assert "run.run_dir" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder; the not-a-folder case covers it")
def test_a_read_only_run_directory_is_one_line(tmp_path, capsys):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        assert main(["run", "params/tiny.yaml", "--set", f"run.run_dir={parent / 'run'}"]) == 1
    finally:
        parent.chmod(0o755)
    line = _one_clean_line(capsys.readouterr().err)
    assert line.startswith(f"mmpref: cannot write {parent / 'run'} (Permission denied); ")


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    full = tmp_path / "run" / "samples.jsonl"

    def run(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(full))

    monkeypatch.setattr(runner, "run", run)
    assert main(["run", "params/tiny.yaml"]) == 1
    line = _one_clean_line(capsys.readouterr().err)
    assert line.startswith(f"mmpref: cannot write {full} (No space left on device); ") and "free" in line


_FULL = {"cells": [
    {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
     "source": 'params_path = "params/tiny.yaml"\noverrides = {}'},
    {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source":
        "import errno, os\nfrom mmpref.runner import Stage\nstage = Stage(params_path, overrides, '01_collect')\n"
        "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(stage.run_dir / 'prompts.jsonl'))"}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5}


def test_a_full_disk_inside_a_stage_is_one_line_naming_the_notebook(tmp_path, monkeypatch, capsys):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    (nb_dir / "01_collect.ipynb").write_text(json.dumps(_FULL))
    run_dir = tmp_path / "run"
    touch_world(run_dir)
    monkeypatch.setattr(runner, "notebooks_dir", lambda *a: nb_dir)
    monkeypatch.chdir(ROOT)
    assert main(["run", "params/tiny.yaml", "--stages", "01", "--set", f"run.run_dir={run_dir}"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line, where = err[err.index("mmpref:"):].splitlines()  # the runner's message: what failed, then the executed copy
    assert line.startswith("mmpref: stage 01_collect failed in notebook 01_collect.ipynb")
    assert "No space left on device" in line and str(run_dir / "prompts.jsonl") in line
    assert str(run_dir / "notebooks" / "01_collect.failed.ipynb") in where


# ---- a moved run directory ---------------------------------------------------------------------------------------

def _finished_run(run_dir: Path, overrides: dict | None = None) -> None:
    """Stages 01 and 02 recorded complete through the real Stage API (stand-in outputs)."""
    touch_world(run_dir)
    (run_dir / "prompts.jsonl").write_text('{"id": "a"}\n')
    for name in ("samples.jsonl", "gold.jsonl"):
        (run_dir / name).write_text('{"prompt_id": "a"}\n')
    for stage in ("01_collect", "02_sample"):
        runner.Stage("params/tiny.yaml", {"run": {"run_dir": str(run_dir)}, **(overrides or {})}, stage).done()


def _states(capsys, *args) -> dict[str, str]:
    capsys.readouterr()
    assert main(["status", "params/tiny.yaml", *args]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    return {r.split()[0]: r.split()[1] for r in rows if r.startswith(("01", "02"))}


def test_a_moved_run_directory_keeps_every_stage_complete(tmp_path, monkeypatch, capsys):
    old, new = tmp_path / "old", tmp_path / "disk2" / "moved"
    _finished_run(old)
    assert _states(capsys, "--set", f"run.run_dir={old}") == {"01_collect": "complete", "02_sample": "complete"}
    shutil.copytree(old, new)
    shutil.rmtree(old)
    assert _states(capsys, "--set", f"run.run_dir={new}") == {"01_collect": "complete", "02_sample": "complete"}
    monkeypatch.setenv("MMPREF_RUN_DIR", str(new))
    assert _states(capsys) == {"01_collect": "complete", "02_sample": "complete"}
    # a copied run under another name is complete too; what a stage computes still counts
    assert _states(capsys, "--set", "run.name=other") == {"01_collect": "complete", "02_sample": "complete"}
    assert _states(capsys, "--set", "run.seed=1") == {"01_collect": "stale", "02_sample": "stale"}
    assert _states(capsys, "--set", "sampling.k=3") == {"01_collect": "complete", "02_sample": "stale"}


def test_data_dir_counts_only_for_stages_that_read_from_it(tmp_path, capsys):
    run_dir = tmp_path / "run"
    sources = '[{name: lrv, path: "{data_dir}/lrv.json", n: 1}]'
    _finished_run(run_dir, {"prompts": {"sources": [{"name": "lrv", "path": "{data_dir}/lrv.json", "n": 1}]},
                            "run": {"run_dir": str(run_dir), "data_dir": str(tmp_path / "data")}})
    common = ["--set", f"run.run_dir={run_dir}", "--set", f"prompts.sources={sources}"]
    assert _states(capsys, *common, "--set", f"run.data_dir={tmp_path / 'data'}") == {
        "01_collect": "complete", "02_sample": "complete"}
    # another data folder may hold other data, and nothing hashes the downloaded files: 01, which reads from it,
    # must run again; 02 reads no path under data_dir, so its own state is complete, shown as behind a stale stage
    # ("upstream stale": it reruns only if 01's outputs change)
    assert _states(capsys, *common, "--set", f"run.data_dir={tmp_path / 'other'}") == {
        "01_collect": "stale", "02_sample": "upstream"}
    params = load_params("params/tiny.yaml", {"run": {"run_dir": str(run_dir), "data_dir": str(tmp_path / "other")},
                                              "prompts": {"sources": [{"name": "lrv", "path": "{data_dir}/lrv.json",
                                                                       "n": 1}]}})
    assert runner.stage_state(params, "02_sample") == "complete"


def test_stage_output_hashes_name_files_relative_to_the_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        touch_world(d)
        (d / "datasets").mkdir()
        (d / "datasets" / "dpo.jsonl").write_text('{"x": 1}\n')
    for stage in ("00_world", "04_pair"):
        assert runner.outputs_hash(load_params("params/tiny.yaml", {"run": {"run_dir": str(a)}}), stage) == \
            runner.outputs_hash(load_params("params/tiny.yaml", {"run": {"run_dir": str(b)}}), stage)


def test_files_written_whole_get_the_mode_open_would_give_them(tmp_path):
    """mkstemp makes its files 0600: a JSON file renamed into place keeps the usual mode (readable by the group)."""
    from mmpref.io import write_json, write_jsonl

    write_json(tmp_path / "a.json", {"a": 1})
    write_jsonl(tmp_path / "b.jsonl", [{"b": 1}])
    (tmp_path / "c.txt").write_text("c")
    usual = (tmp_path / "c.txt").stat().st_mode & 0o777
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == usual
    assert (tmp_path / "b.jsonl").stat().st_mode & 0o777 == usual

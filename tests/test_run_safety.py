"""A run directory is safe to run in (issue 9): one `mmpref run` at a time, a killed run leaves no kernel behind and
keeps the previous executed notebook, and completeness is judged from the files on disk."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmpref import runner


def touch_world(run_dir):
    """Stand-ins for stage 00's outputs, so stage 01 can be opened."""
    for m in ("base-lm", "vit"):
        (run_dir / "world" / m).mkdir(parents=True, exist_ok=True)
        (run_dir / "world" / m / "model.safetensors").write_bytes(b"x")
from mmpref.config import load_params

ROOT = Path(__file__).resolve().parents[1]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_run_is_refused_and_stale_lock_taken_over(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    held = runner.acquire_lock(tmp_path)
    with pytest.raises(runner.RunLocked, match=f"pid {os.getpid()}"):
        runner.run("params/tiny.yaml", stages="04")
    # a stage started by hand (not under this lock's runner) is refused too
    with pytest.raises(runner.RunLocked):
        runner.Stage("params/tiny.yaml", {}, "04_pair")
    assert "running" in {r["state"] for r in runner.status("params/tiny.yaml")}
    runner.release_lock(tmp_path, held)
    assert not (tmp_path / runner.LOCK_NAME).exists()
    # the lock of a process that is gone is stale: taken over (04 then fails for lack of input, as it should)
    (tmp_path / runner.LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": os.uname().nodename,
                                                          "started": "then", "argv": ["mmpref"], "token": "x"}))
    assert "stale lock" in {r["state"] for r in runner.status("params/tiny.yaml")}
    with pytest.raises(runner.StageFailed):
        runner.run("params/tiny.yaml", stages="04")
    assert not (tmp_path / runner.LOCK_NAME).exists()  # released after the run


def test_completeness_follows_input_files_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path))
    params = load_params("params/tiny.yaml")
    touch_world(tmp_path)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"}\n')
    runner.Stage("params/tiny.yaml", {}, "01_collect").done()
    for name in ("samples.jsonl", "gold.jsonl"):
        (tmp_path / name).write_text('{"prompt_id": "a"}\n')
    runner.Stage("params/tiny.yaml", {}, "02_sample").done()
    assert runner.stage_why(params, "02_sample") == ("complete", "")
    # 01's output damaged: 01 is stale, and 02, which read it, is stale too (the manifest alone would say complete)
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"')
    assert runner.stage_why(params, "01_collect") == ("stale", "its outputs changed or are damaged")
    assert runner.stage_why(params, "02_sample") == ("stale", "the outputs of 01_collect it read changed since it ran")
    # 01 run again with the same result: 02 is complete again; a different result keeps 02 stale
    (tmp_path / "prompts.jsonl").write_text('{"id": "a"}\n')
    assert runner.stage_state(params, "02_sample") == "complete"
    (tmp_path / "prompts.jsonl").write_text('{"id": "b"}\n')
    runner.Stage("params/tiny.yaml", {}, "01_collect").done()
    assert runner.stage_state(params, "01_collect") == "complete"
    assert runner.stage_why(params, "02_sample")[0] == "stale"
    (tmp_path / "gold.jsonl").unlink()
    assert runner.stage_why(params, "02_sample")[1] in ("an output file is missing",
                                                        "the outputs of 01_collect it read changed since it ran")
    rows = {r["stage"]: r for r in runner.status("params/tiny.yaml")}
    assert rows["02_sample"]["why"]


_SLOW = {"cells": [
    {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "execution_count": None, "outputs": [],
     "source": 'params_path = "params/tiny.yaml"\noverrides = {}'},
    {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source":
        "import os, time\nfrom mmpref.runner import Stage\nstage = Stage(params_path, overrides, '01_collect')\n"
        "(stage.run_dir / 'kernel.pid').write_text(str(os.getpid()))\n"
        "for i in range(3000):\n    (stage.run_dir / 'beats').open('a').write('.')\n    time.sleep(0.02)"}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4, "nbformat_minor": 5}


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_run_takes_its_kernel_down_and_keeps_the_last_notebook(tmp_path, sig):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    (nb_dir / "01_collect.ipynb").write_text(json.dumps(_SLOW))
    run_dir = tmp_path / "run"
    (run_dir / "notebooks").mkdir(parents=True)
    touch_world(run_dir)
    (run_dir / "notebooks" / "01_collect.ipynb").write_text("previous executed copy")
    script = ("import sys; from pathlib import Path; from mmpref import runner; "
              f"runner.notebooks_dir = lambda *a: Path({str(nb_dir)!r}); runner.run('params/tiny.yaml', stages='01')")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "MMPREF_RUN_DIR": str(run_dir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while not (run_dir / "kernel.pid").exists() or not (run_dir / "beats").exists():
            assert proc.poll() is None and time.time() < deadline, "the stage did not start"
            time.sleep(0.1)
        kernel = int((run_dir / "kernel.pid").read_text())
        time.sleep(0.3)
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.time() + 0.4  # ipykernel's own parent polling would take a second or more
        while not _gone(kernel) and time.time() < deadline:
            time.sleep(0.02)
        assert _gone(kernel), "the kernel outlived mmpref run"
        beats = (run_dir / "beats").read_text()
        time.sleep(0.5)
        assert (run_dir / "beats").read_text() == beats  # nothing more written
        assert (run_dir / "notebooks" / "01_collect.ipynb").read_text() == "previous executed copy"
        if sig == signal.SIGTERM:  # an orderly end releases the lock; after SIGKILL it is stale, taken over later
            assert not (run_dir / runner.LOCK_NAME).exists()
        else:
            holder = runner.read_lock(run_dir)
            assert holder is not None and not runner.lock_alive(holder)
    finally:
        if proc.poll() is None:
            proc.kill()

"""Judges that fail (issue 19): a judge that fails every call stops the stage after
`judge.max_consecutive_failures` failures in a row (also under --retry-failed), keeping what was done; 09 writes
results.csv when every grading of a benchmark failed, and that benchmark's rows say why; failed items under the
threshold are reported on the terminal with the command that re-asks them, and `mmpref status` shows a failed stage
as failed with its failed-item count; Ctrl-C and SIGTERM end `mmpref run` with one line; no per-request HTTP log line;
a batch stage killed after its job was created (before it learnt the job's name) finds that job on restart."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from mmpref import methods, runner
from mmpref.annotate import TooManyFailures, annotate_samples
from mmpref.config import JudgeParams, load_params
from mmpref.evaluate import registry, suite
from mmpref.evaluate.protocol import FAILURES, run_benchmark
from mmpref.io import read_jsonl
from mmpref.judges import judge_from_params, make_judge
from mmpref.judges.base import JudgeStopped
from tests.loopback import GeminiServer, annotation_run, gemini_request_text
from tests.test_run_safety import _SLOW, touch_world
from tests.test_sigkill import canned, lines, make_mmvet, sigkill, start, wait_for

ROOT = Path(__file__).resolve().parents[1]


def gemini(url, cache, **kw):
    j = make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=url, backoff_initial_s=0.0, backoff_max_s=0.0,
                   max_concurrency=2)
    for k, v in kw.items():
        setattr(j, k, v)
    return j


# ---------------------------------------------------------------------------------------------------- stop early
def test_a_judge_failing_every_call_stops_early_keeps_what_it_did_and_retry_failed_stops_too(tmp_path, monkeypatch,
                                                                                             no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    run_dir, prompts, samples = annotation_run(tmp_path / "run", 30)
    out = run_dir / "annotations.jsonl"
    with GeminiServer(api_key="k") as g:
        default, answered = g.responder, []

        def revoked_after_three(body):  # the key works for three prompts, then is refused (revoked, quota, ...)
            answered.append(1)
            if len(answered) == 3:
                g.api_key = "another key"
            return default(body)

        g.responder = revoked_after_three
        judge = judge_from_params(JudgeParams(backend="gemini", model="gemini-fake", base_url=g.url,
                                              max_consecutive_failures=5, network_retries=0), run_dir / "judge_cache")
        assert judge.max_consecutive_failures == 5
        with pytest.raises(JudgeStopped) as stop:
            annotate_samples(judge, prompts, samples, run_dir, out, max_workers=2)
        msg = str(stop.value)
        for part in ("gemini:gemini-fake", "5 judge calls failed in a row", "judge.max_consecutive_failures",
                     "API key not valid", "GEMINI_API_KEY", "'gemini-fake'", g.url):
            assert part in msg, (part, msg)
        assert g.generate_calls() <= 3 + 5 + 2  # not 30: the stop, plus what was in flight
        kept = {r["prompt_id"]: r for r in read_jsonl(out)}
        assert sum(r["status"] == "ok" for r in kept.values()) == 3  # what was done is kept
        assert 1 <= sum(r["status"] == "failed" for r in kept.values()) <= 5 + 2
        # --retry-failed with the judge still broken stops the same way
        g.clear()
        with pytest.raises(JudgeStopped):
            annotate_samples(gemini(g.url, run_dir / "judge_cache", max_consecutive_failures=5), prompts, samples,
                             run_dir, out, max_workers=2, retry_failed=True)
        assert g.generate_calls() <= 5 + 2
        # fixed: --retry-failed finishes the stage; the three prompts done before are not asked again
        g.api_key, g.responder = "k", default
        g.clear()
        recs = annotate_samples(gemini(g.url, run_dir / "judge_cache", max_consecutive_failures=5), prompts, samples,
                                run_dir, out, max_workers=2, retry_failed=True)
        assert [r["status"] for r in recs] == ["ok"] * 30 and g.generate_calls() == 27


def test_a_failing_judge_stops_a_benchmark_grading_early(tmp_path, monkeypatch, no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    data = make_mmvet(tmp_path / "mmvet", 12)
    with GeminiServer(models=["gemini-2.5-pro"]) as g:  # the params name a model the API does not have
        with pytest.raises(JudgeStopped, match="models/gemini-fake is not found"):
            run_benchmark("mmvet", data, canned(), gemini(g.url, tmp_path / "cache", max_consecutive_failures=4),
                          tmp_path / "mmvet.jsonl", "vit", chunk_size=12)
        assert g.generate_calls() <= 4 + 2


# ------------------------------------------------------------------------------------- 09: a benchmark all failed
def test_evaluate_writes_results_when_every_grading_of_a_benchmark_is_unparsable(tmp_path, monkeypatch,
                                                                                  no_network_but_loopback):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    run_dir = tmp_path / "run"
    data = make_mmvet(tmp_path / "mmvet", 4)
    models = [(methods.POLICY, None, ["mmvet"]), ("dpo", str(run_dir / "adapters" / "dpo"), ["mmvet"])]
    monkeypatch.setattr(suite, "plan", lambda params, rd: models)
    monkeypatch.setattr(suite, "_checkpoint_id", lambda params, name, adapter: f"ckpt-{name}")
    monkeypatch.setattr(suite, "answer_identity", lambda params, name, *a, **k: f"answers-{name}", raising=False)

    class Answers:  # the vit policy's answers make the judge ramble (no grade); dpo's are graded
        def __init__(self, name):
            self.name = name

        def greedy_fn(self, *args):
            return lambda reqs: [f"It shows {'RAMBLE' if self.name == methods.POLICY else r.turns[-1].split()[-1]}"
                                 for r in reqs]

    import mmpref.engine

    monkeypatch.setattr(mmpref.engine, "load_generator", lambda params, name, **kw: Answers(name))
    with GeminiServer() as g:
        default = g.responder
        g.responder = lambda body: ("I cannot grade this." if "RAMBLE" in gemini_request_text(body)[1]
                                    else default(body))
        params = load_params("params/tiny.yaml", {
            "run": {"run_dir": str(run_dir)}, "evaluate": {"benchmarks": {"mmvet": str(data)}, "judge": {
                "backend": "gemini", "model": "gemini-fake", "base_url": g.url, "max_workers": 2}}})
        with pytest.raises(TooManyFailures, match="vit/mmvet: 4 of 4"):
            suite.evaluate_all(params, run_dir)
    results = pd.read_csv(run_dir / "eval" / "results.csv")
    headline = registry.get("mmvet").headline
    dpo = results[(results.model == "dpo") & (results.metric == headline)]
    assert len(dpo) == 1 and not math.isnan(dpo.value.iloc[0])  # the other model is graded
    vit = results[results.model == methods.POLICY].set_index("metric")
    assert math.isnan(vit.loc[headline, "value"]) and vit.loc[FAILURES, "value"] == 4 and vit.loc[FAILURES, "n"] == 4
    why = vit.loc[headline, "note"]
    # the judge's reply, as MM-Vet's max_tokens cut it, and the command that re-grades
    assert "all 4 gradings failed" in why and "did not parse, e.g. 'I cannot gra" in why and "--retry-failed" in why, why
    assert pd.isna(dpo.note.iloc[0])


# --------------------------------------------------------------------------- the terminal and `mmpref status`
def real_annotation_run(run_dir: Path, n: int):
    """A run directory stage 03 can open: n prompts with real PNG images, two responses each, 02's outputs."""
    run_dir, prompts, samples = annotation_run(run_dir, n)
    for i in range(n):
        Image.new("RGB", (8, 8), (20 * i, 0, 0)).save(run_dir / "images" / f"{i}.png")
    for name, rows in (("prompts.jsonl", prompts), ("samples.jsonl", samples), ("gold.jsonl", [])):
        (run_dir / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir


def mmpref(*args: str, run_dir: Path) -> subprocess.CompletedProcess:
    """`mmpref ARGS` as a user runs it, in its own process (its terminal output captured)."""
    return subprocess.run([sys.executable, "-m", "mmpref.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MMPREF_RUN_DIR": str(run_dir), "GEMINI_API_KEY": "k"}, timeout=300)


def test_failed_items_are_reported_on_the_terminal_and_by_status(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    run_dir = real_annotation_run(tmp_path / "run", 6)
    monkeypatch.setenv("MMPREF_RUN_DIR", str(run_dir))
    with GeminiServer() as g:
        default = g.responder
        g.responder = lambda body: "no ratings here" if "q1x" in gemini_request_text(body)[1] else default(body)
        sets = ["--set", "judge.backend=gemini", "--set", "judge.model=gemini-fake", "--set", f"judge.base_url={g.url}",
                "--set", "judge.max_failed_fraction=0.5"]
        proc = mmpref("run", "params/tiny.yaml", "--stages", "03", *sets, run_dir=run_dir)
        assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    line = next((ln for ln in out.splitlines() if ln.startswith("03_annotate: ")), None)
    assert line is not None, out
    assert "1 judge item failed" in line, line
    assert f"mmpref run params/tiny.yaml --stages 03 --set judge.backend=gemini" in line and line.endswith(
        "--retry-failed"), line
    rows = {r["stage"]: r for r in runner.status("params/tiny.yaml", {"judge": {
        "backend": "gemini", "model": "gemini-fake", "base_url": g.url, "max_failed_fraction": 0.5}})}
    assert rows["03_annotate"]["state"] == "complete" and rows["03_annotate"]["failed items"] == 1
    assert "--retry-failed" in rows["03_annotate"]["why"]


def test_a_stopped_stage_is_failed_in_status_with_its_failed_items(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    run_dir = real_annotation_run(tmp_path / "run", 12)
    monkeypatch.setenv("MMPREF_RUN_DIR", str(run_dir))
    overrides = {"judge": {"backend": "gemini", "model": "gemini-fake", "max_consecutive_failures": 3,
                           "network_retries": 0}}
    with GeminiServer(models=["gemini-2.5-pro"]) as g:
        overrides["judge"]["base_url"] = g.url
        sets = [a for k, v in overrides["judge"].items() for a in ("--set", f"judge.{k}={v}")]
        proc = mmpref("run", "params/tiny.yaml", "--stages", "03", *sets, run_dir=run_dir)
        assert proc.returncode == 1, proc.stderr
        assert g.generate_calls() <= 3 + 2
    err = proc.stderr
    assert "JudgeStopped" in err and "models/gemini-fake is not found" in err and "the model name" in err, err
    failed = sum(r["status"] == "failed" for r in read_jsonl(run_dir / "annotations.jsonl"))
    assert failed >= 1
    row = {r["stage"]: r for r in runner.status("params/tiny.yaml", overrides)}["03_annotate"]
    assert row["state"] == "failed" and row["failed items"] == failed and row["when"] != "not run", row
    assert "JudgeStopped" in row["why"]


# ------------------------------------------------------------------------------------------ Ctrl-C and SIGTERM
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_end_the_run_with_one_line(tmp_path, sig):
    nb_dir = tmp_path / "nbs"
    nb_dir.mkdir()
    (nb_dir / "01_collect.ipynb").write_text(json.dumps(_SLOW))
    run_dir = tmp_path / "run"
    touch_world(run_dir)
    script = ("import sys; from pathlib import Path; from mmpref import runner, cli; "
              f"runner.notebooks_dir = lambda *a: Path({str(nb_dir)!r}); "
              "sys.exit(cli.main(['run', 'params/tiny.yaml', '--stages', '01']))")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "MMPREF_RUN_DIR": str(run_dir)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300   # a kernel's start: seconds alone, more late in the full suite on 2 cores
        while not (run_dir / "beats").exists():
            assert proc.poll() is None and time.time() < deadline, "the stage did not start"
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C reaches the foreground process group
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    assert "Traceback" not in out + err, err
    ours = [ln for ln in err.splitlines() if ln.startswith("mmpref")]
    assert len(ours) == 1 and ("Ctrl-C" if sig == signal.SIGINT else "SIGTERM") in ours[0], err
    assert "01_collect" in ours[0] and "again" in ours[0]
    assert not [ln for ln in err.splitlines() if "IPKernelApp" in ln], err  # the kernel's own noise stays off too
    assert not (run_dir / runner.LOCK_NAME).exists()


# ------------------------------------------------------------------------------------ no per-request log lines
def test_no_per_request_http_log_line(tmp_path):
    """In the runner's logging set-up (INFO on the terminal) and a kernel's (INFO to the stage's log file), a judge
    call logs no HTTP request line (httpx / the SDK's vendored httpx2) and no SDK per-call INFO line."""
    script = (
        "import sys; from mmpref.console import setup_logging; from mmpref.judges import make_judge; "
        "from mmpref.judges.base import JudgeRequest; "
        "setup_logging(log_file=sys.argv[2]) if len(sys.argv) > 2 else setup_logging(); "
        "make_judge('gemini', 'gemini-fake', base_url=sys.argv[1]).complete(JudgeRequest(task='answer', "
        "prompt='Answer the question: what is shown?'))")
    with GeminiServer() as g:
        for extra in ([], [str(tmp_path / "stage.log")]):
            proc = subprocess.run([sys.executable, "-c", script, g.url, *extra], cwd=ROOT, capture_output=True,
                                  text=True, env={**os.environ, "GEMINI_API_KEY": "k"}, timeout=120)
            assert proc.returncode == 0, proc.stderr
            logged = proc.stdout + proc.stderr + ((tmp_path / "stage.log").read_text() if extra else "")
            assert g.generate_calls() == (1 if not extra else 2)
            assert "HTTP Request" not in logged and "AFC is enabled" not in logged, logged


# --------------------------------------------------------------------- a batch stage killed after its job was made
def test_sigkill_after_the_batch_job_was_created_then_restart(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    n = 6
    run_dir, prompts, samples = annotation_run(tmp_path / "run", n)
    out = tmp_path / "annotations.jsonl"
    spec = {"stage": "annotate", "run_dir": str(run_dir), "prompts": prompts, "samples": samples, "out": str(out),
            "cache": str(tmp_path / "cache"), "batch": True}
    with GeminiServer() as g:
        ref = tmp_path / "ref.jsonl"
        annotate_samples(gemini(g.url, tmp_path / "ref_cache"), prompts, samples, run_dir, ref, max_workers=3)
        g.clear()
        spec["url"] = g.url
        g.hold_batch_creates()  # the job is made, its name never reaches the killed process
        proc = start(spec, tmp_path / "spec.json")
        wait_for(lambda: len(g.jobs) == 1, proc, "the batch job being created")
        sigkill(proc)
        g.release()
        assert lines(out) == 0
        proc = start(spec, tmp_path / "spec.json")  # the restart, in a new process
        proc.wait(timeout=120)
        assert proc.returncode == 0, proc.output()
        assert g.batch_calls("create") == 1 and len(g.jobs) == 1  # found by its display name, not submitted again
        assert g.generate_calls() == 0 and g.batch_calls("list") >= 1
        assert out.read_bytes() == ref.read_bytes()  # nothing lost
        assert json.loads((run_dir / "batch_jobs" / "annotate" / "pending.json").read_text()) == []


# ------------------------------------------------- the kernel-watch task a Ctrl-C orphans stays quiet at exit
@pytest.mark.parametrize("filtered", [False, True])
def test_orphan_kernel_watch_task_logs_nothing_at_exit(filtered):
    """A stage stopped by Ctrl-C leaves nbclient's kernel-watch task failed with DeadKernelError and never awaited;
    asyncio logged it at exit with a traceback after the runner's one line (the race behind a flaky Ctrl-C test).
    The runner's asyncio filter drops that record, and only that: another orphan task's error is still logged."""
    script = (
        "import asyncio, logging, gc; from nbclient.exceptions import DeadKernelError; from mmpref import runner\n"
        f"if {filtered}: logging.getLogger('asyncio').addFilter(runner.drop_orphan_kernel_watch)\n"
        "async def watch(): raise DeadKernelError('Kernel died')\n"
        "async def other(): raise ValueError('a real bug')\n"
        "async def main():\n"
        "    asyncio.ensure_future(watch()); asyncio.ensure_future(other()); await asyncio.sleep(0.05)\n"
        "asyncio.run(main()); gc.collect()\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ("DeadKernelError" in proc.stderr) is not filtered, proc.stderr
    assert "a real bug" in proc.stderr, proc.stderr

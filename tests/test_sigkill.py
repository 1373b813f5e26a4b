"""Real SIGKILLs (issue 9): stage 02's sampling, 02's gold answers, 03's annotation and 09's grading (one by one and
through batch jobs) run in a process of their own (tests/stage_worker.py, the same mmpref functions), are killed with
SIGKILL after some items were written while others are in flight, and are started again: in a new process (gold
answers, annotation), or in the test's process where the stage needs torch, to keep the tests fast. Asserted:
every item asked exactly once over both processes (counted by the loopback server, or by the generation log for
sampling: a request the killed process never got an answer to is not an answer), and the final file byte-identical to
an uninterrupted run's."""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mmpref.annotate import annotate_samples, collect_gold
from mmpref.evaluate.protocol import run_benchmark
from mmpref.judges import make_judge
from mmpref.sampling import Policy, sample_responses
from tests.loopback import GeminiServer, annotation_run, gemini_request_text
from tests.test_models import checkpoint  # noqa: F401  (the tiny LLaVA fixture)

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("stage_worker.py")
N = 8
TIMEOUT_S = 90  # generous: the machine is shared; every wait polls and returns as soon as its condition holds


def start(spec: dict, path: Path) -> subprocess.Popen:
    path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "GEMINI_API_KEY": "k"}
    with open(path.with_suffix(".log"), "ab") as log:  # a file, not a pipe: a full pipe would stall the worker
        proc = subprocess.Popen([sys.executable, str(WORKER), str(path)], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    proc.output = lambda: path.with_suffix(".log").read_text(errors="replace")
    return proc


def wait_for(condition, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the worker ended (rc {proc.returncode}) before {what}:\n{proc.output()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def sigkill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == -signal.SIGKILL


def finish(spec: dict, path: Path) -> None:
    proc = start(spec, path)
    proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.output()


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def gemini(url, cache, batch=False):
    j = make_judge("gemini", "gemini-fake", cache_dir=cache, base_url=url, backoff_initial_s=0.0, backoff_max_s=0.0,
                   max_concurrency=3)
    j.batch, j.batch_poll_s = batch, 0.02
    return j


def make_mmvet(root: Path, n: int) -> Path:
    """An MM-Vet folder in the release's format with n items, item i asking about "q<i>x"."""
    (root / "images").mkdir(parents=True)
    items = {}
    for i in range(n):
        Image.new("RGB", (4, 4), (i * 20, 0, 0)).save(root / "images" / f"v1_{i}.png")
        items[f"v1_{i}"] = {"imagename": f"v1_{i}.png", "capability": ["rec"], "question": f"What is in q{i}x?",
                            "answer": f"q{i}x"}
    (root / "mm-vet.json").write_text(json.dumps(items))
    return root


def canned(log: list | None = None):
    """The model of the 09 tests (the worker's too): "It shows <the question's last word>"; logs the questions."""
    def generate(reqs):
        if log is not None:
            log.extend(r.turns[-1] for r in reqs)
        return [f"It shows {r.turns[-1].split()[-1]}" for r in reqs]
    return generate


def per_item(requests: list[dict]) -> collections.Counter:
    """How often each item's tag "q<i>x" was asked in these requests."""
    count = collections.Counter()
    for r in requests:
        text = gemini_request_text(r["body"])[1]
        count.update(f"q{i}x" for i in range(N) if f"q{i}x" in text)
    return count


@pytest.fixture()
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    return annotation_run(tmp_path / "run", N)


@pytest.mark.parametrize("stage", ["annotate", "gold", "mmvet"])
def test_sigkill_mid_stage_then_restart(stage, world, tmp_path):
    run_dir, prompts, samples = world
    data = make_mmvet(tmp_path / "mmvet", N)
    spec = {"stage": stage, "run_dir": str(run_dir), "prompts": prompts, "samples": samples, "data": str(data),
            "log": str(tmp_path / "generated.log")}
    with GeminiServer() as g:
        ref = tmp_path / "ref.jsonl"
        j = gemini(g.url, tmp_path / "ref_cache")
        if stage == "annotate":
            annotate_samples(j, prompts, samples, run_dir, ref)
        elif stage == "gold":
            collect_gold(j, prompts, run_dir, ref)
        else:
            run_benchmark("mmvet", data, canned(), j, ref, "vit", chunk_size=3)
        g.clear()
        kill_after = random.Random(stage).randint(1, N - 2)
        out = tmp_path / "out.jsonl"
        spec.update(out=str(out), cache=str(tmp_path / "cache"), url=g.url)
        g.hold(kill_after)  # answer kill_after requests, then hold the ones in flight
        proc = start(spec, tmp_path / "spec.json")
        wait_for(lambda: lines(out) >= kill_after and g.held >= 1, proc, f"{kill_after} lines and a held request")
        sigkill(proc)
        assert lines(out) == kill_after
        held = g.held
        g.release()
        restarted: list[str] = []
        if stage == "mmvet":  # the restart, in the test's process (which has torch imported already)
            run_benchmark("mmvet", data, canned(restarted), gemini(g.url, tmp_path / "cache"), out, "vit", chunk_size=3)
        else:  # the restart, in a new process
            finish(spec, tmp_path / "spec.json")
        # every item answered exactly once over both processes; only the requests in flight at the kill were asked
        # again
        assert per_item(g.answered()) == {f"q{i}x": 1 for i in range(N)}, (kill_after, held)
        assert len(g.answered()) == N and len(g.requests) == N + held
        assert out.read_bytes() == ref.read_bytes()
        if stage == "mmvet":  # every question answered by the model once: the restart regenerated only what was lost
            generated = collections.Counter(Path(spec["log"]).read_text().splitlines() + restarted)
            assert set(generated) == {f"What is in q{i}x?" for i in range(N)}
            assert sum(generated.values()) <= N + 3  # at most the chunk the kill cut off again


def test_sigkill_while_polling_a_batch_job_then_restart(world, tmp_path):
    run_dir, _, _ = world
    data = make_mmvet(tmp_path / "mmvet", N)
    out = tmp_path / "out.jsonl"
    spec = {"stage": "mmvet", "run_dir": str(run_dir), "data": str(data), "out": str(out), "batch": True,
            "cache": str(tmp_path / "cache"), "log": str(tmp_path / "generated.log")}
    with GeminiServer() as g:
        ref = tmp_path / "ref.jsonl"
        run_benchmark("mmvet", data, canned(), gemini(g.url, tmp_path / "ref_cache"), ref, "vit", chunk_size=3)
        g.clear()
        spec["url"] = g.url
        g.batch_polls = 10 ** 6  # the job runs until the test lets it end
        proc = start(spec, tmp_path / "spec.json")
        wait_for(lambda: g.batch_calls("get") >= 2, proc, "the batch job being polled")
        sigkill(proc)
        pending = json.loads((tmp_path / "batch_jobs" / "out" / "pending.json").read_text())
        assert [p["name"] for p in pending] == ["batches/loopback1"] and len(pending[0]["items"]) == N
        assert lines(out) == N  # every answer written (ungraded) before the job was submitted
        g.batch_polls = g.jobs["batches/loopback1"]["polls"] + 1  # the job ends at the restart's second poll
        restarted: list[str] = []
        run_benchmark("mmvet", data, canned(restarted), gemini(g.url, tmp_path / "cache", batch=True), out, "vit",
                      chunk_size=3)  # the restart, in the test's process
        assert g.batch_calls("create") == 1 and g.generate_calls() == 0  # polled, not submitted again
        assert out.read_bytes() == ref.read_bytes()
        assert not restarted
        generated = Path(spec["log"]).read_text().splitlines()
        assert sorted(generated) == sorted(f"What is in q{i}x?" for i in range(N))  # answered once, before the kill


K = 3
SAMPLING = {"k": K, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6, "batch_size": 2, "seed": 7}


def test_sigkill_mid_sampling_then_restart(checkpoint, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    (run_dir / "images").mkdir(parents=True)
    prompts = []
    for i in range(7):
        Image.new("RGB", (16, 16), ["red", "blue", "green"][i % 3]).save(run_dir / "images" / f"{i}.png")
        prompts.append({"id": f"p{i}", "image": f"images/{i}.png",
                        "question": ["What color is the square?", "Is there a red circle in the image?"][i % 2]})
    ref = tmp_path / "ref.jsonl"
    policy = Policy.load(checkpoint.vit, "policy", dtype="float32", device="cpu")
    sample_responses(policy, prompts, run_dir, ref, **SAMPLING)
    out, log, marker = tmp_path / "samples.jsonl", tmp_path / "generated.log", tmp_path / "held"
    hold = random.Random(2).randint(1, 3)  # of the 4 batches of 2
    spec = {"stage": "sample", "run_dir": str(run_dir), "out": str(out), "prompts": prompts, "options": SAMPLING,
            "checkpoint": checkpoint.vit, "log": str(log), "marker": str(marker), "hold_batches": hold}
    proc = start(spec, tmp_path / "spec.json")
    wait_for(lambda: marker.exists() and lines(out) >= 2 * hold, proc, f"{hold} batches written")
    sigkill(proc)
    assert lines(out) == 2 * hold
    restarted: list[str] = []  # the restart, in the test's process (the model is loaded already)
    real = policy.generate
    policy.generate = lambda reqs, **kw: restarted.extend(Path(r.image).stem for r in reqs) or real(reqs, **kw)
    sample_responses(policy, prompts, run_dir, out, **SAMPLING)
    generated = collections.Counter(log.read_text().splitlines() + restarted)
    assert generated == {str(i): 1 for i in range(7)}  # every prompt generated once over both processes
    assert out.read_bytes() == ref.read_bytes()

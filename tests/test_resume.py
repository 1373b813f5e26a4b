"""Exact resume and reconciliation of the sampling, gold and annotation stages (issue 9): a stage cut off at any
point and started again writes the same file as an uninterrupted run, pays no finished item twice, and keeps no row
of a prompt that is no longer in its input."""

from __future__ import annotations

import random

from PIL import Image

from mmpref import sampling
from mmpref.io import read_jsonl
from mmpref.sampling import Policy, sample_responses
from tests.loopback import killed_after_writes
from tests.test_models import checkpoint  # noqa: F401  (the tiny LLaVA fixture)

K = 3


def _prompts(run_dir, n):
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        Image.new("RGB", (16, 16), ["red", "blue", "green"][i % 3]).save(run_dir / "images" / f"{i}.png")
        out.append({"id": f"p{i}", "image": f"images/{i}.png",
                    "question": ["What color is the square?", "Is there a red circle in the image?"][i % 2]})
    return out


def _sample(policy, prompts, run_dir, out, batch_size=2):
    return sample_responses(policy, prompts, run_dir, out, k=K, temperature=1.0, top_p=1.0, max_new_tokens=6,
                            batch_size=batch_size, seed=7)


def test_resumed_sampling_equals_uninterrupted(checkpoint, tmp_path, monkeypatch):  # noqa: F811
    policy = Policy.load(checkpoint.vit, "policy", dtype="float32", device="cpu")
    prompts = _prompts(tmp_path, 7)
    ref = tmp_path / "ref.jsonl"
    _sample(policy, prompts, tmp_path, ref)
    assert len({tuple(r["responses"]) for r in read_jsonl(ref)}) > 1  # sampling, not a constant
    rng = random.Random(0)
    for trial in range(3):  # a kill after a random number of written rows, then a restart
        out = tmp_path / f"cut{trial}.jsonl"
        kill_after = rng.randint(1, 6)
        with killed_after_writes(sampling, kill_after):
            _sample(policy, prompts, tmp_path, out)
        calls = []
        real_generate = policy.generate
        monkeypatch.setattr(policy, "generate", lambda reqs, **kw: calls.append(len(reqs)) or real_generate(reqs, **kw))
        _sample(policy, prompts, tmp_path, out)
        monkeypatch.undo()
        assert out.read_bytes() == ref.read_bytes(), f"kill after {kill_after} rows"
        # only the batches with missing rows were generated again
        assert sum(calls) <= 7 - kill_after + 1


def test_sampling_reconciles_with_its_prompts(checkpoint, tmp_path):  # noqa: F811
    prompts = _prompts(tmp_path, 4)
    out = tmp_path / "samples.jsonl"
    loads = []

    def load():
        loads.append(1)
        return Policy.load(checkpoint.vit, "policy", dtype="float32", device="cpu")

    _sample(load, prompts, tmp_path, out, batch_size=1)
    first = {r["prompt_id"]: r for r in read_jsonl(out)}
    # a prompt removed and one added: the removed one's row goes, the others are kept as they were
    changed = prompts[1:] + _prompts(tmp_path / "more", 5)[4:]
    changed[-1] = dict(changed[-1], id="new", image="images/0.png")
    rows = _sample(load, changed, tmp_path, out, batch_size=1)
    assert [r["prompt_id"] for r in rows] == ["p1", "p2", "p3", "new"]
    assert [r["prompt_id"] for r in read_jsonl(out)] == ["p1", "p2", "p3", "new"]
    assert all(first[p] == r for p, r in zip(["p1", "p2", "p3"], rows))
    # nothing left to sample: the policy is not even loaded
    n = len(loads)
    _sample(load, changed, tmp_path, out, batch_size=1)
    assert len(loads) == n == 2

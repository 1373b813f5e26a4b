"""One stage's work in a process of its own, for the SIGKILL tests (tests/test_sigkill.py), which kill it and start
it again: `python -m tests.stage_worker SPEC.json`.

SPEC: {"stage": "sample" | "annotate" | "gold" | "mmvet", "run_dir", "out", ...}. The judge stages call the same
mmpref functions as stages 02, 03 and 09 with a gemini judge at `url` (the test's loopback server, which counts the
calls); "mmvet" answers with a canned generate function that logs every answered question to `log`, and grades
through batch jobs when `batch` is true. "sample" loads the tiny LLaVA at `checkpoint` and samples as stage 02 does,
logging the prompt ids of every finished generation to `log`; with `hold_batches` h, the generation of batch h + 1
waits forever (after touching `marker`), so the test kills it at a known point.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def _log(path: str, lines: list[str]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("".join(f"{line}\n" for line in lines))
        fh.flush()


def _judge(spec: dict):
    from mmpref.judges import make_judge

    judge = make_judge("gemini", "gemini-fake", cache_dir=spec["cache"], base_url=spec["url"], backoff_initial_s=0.0,
                       backoff_max_s=0.0, max_concurrency=3)
    if spec.get("batch"):
        judge.batch, judge.batch_poll_s = True, 0.02
    return judge


def sample(spec: dict) -> None:
    from mmpref.sampling import Policy, sample_responses

    policy = Policy.load(spec["checkpoint"], "policy", dtype="float32", device="cpu")
    real, calls = policy.generate, []

    def generate(reqs, **kw):
        if spec.get("hold_batches") is not None and len(calls) == spec["hold_batches"]:
            Path(spec["marker"]).touch()
            time.sleep(3600)  # killed here
        out = real(reqs, **kw)
        calls.append(len(reqs))
        _log(spec["log"], [Path(r.image).stem for r in reqs])
        return out

    policy.generate = generate
    sample_responses(policy, spec["prompts"], Path(spec["run_dir"]), Path(spec["out"]), **spec["options"])


def main(spec: dict) -> None:
    from mmpref.annotate import annotate_samples, collect_gold

    stage, run_dir, out = spec["stage"], Path(spec["run_dir"]), Path(spec["out"])
    if stage == "sample":
        sample(spec)
    elif stage == "annotate":
        annotate_samples(_judge(spec), spec["prompts"], spec["samples"], run_dir, out, max_workers=3)
    elif stage == "gold":
        collect_gold(_judge(spec), spec["prompts"], run_dir, out, max_workers=3)
    elif stage == "mmvet":
        from mmpref.evaluate.protocol import run_benchmark

        def generate(reqs):
            _log(spec["log"], [r.turns[-1] for r in reqs])
            return [f"It shows {r.turns[-1].split()[-1]}" for r in reqs]

        run_benchmark("mmvet", spec["data"], generate, _judge(spec), out, "vit", chunk_size=3)
    else:
        raise ValueError(f"unknown stage {stage!r}")


if __name__ == "__main__":
    main(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")))

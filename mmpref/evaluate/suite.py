"""Stage 09: every model of a run on every configured benchmark, into eval/results.csv.

Models: the base LM (text benchmarks only), the visually tuned policy ("vit"), one adapter per trained method, and
the DPO data-fraction adapters (MT-Bench only, for Figure 2). A (model, benchmark) pair whose rows were computed for
the same checkpoint, data and judge is not recomputed; inside a benchmark, items already answered are reused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from mmpref.io import sha256_json

log = logging.getLogger(__name__)

TEXT_ONLY = ("mt_bench", "alpaca_eval")


def plan(params, run_dir: Path) -> list[tuple[str, str | None, list[str]]]:
    """(model name, adapter dir or None, benchmarks) for this run."""
    configured = list(params.evaluate.benchmarks)
    out: list[tuple[str, str | None, list[str]]] = []
    if params.models.base_lm:
        out.append(("base-lm", None, [b for b in configured if b in TEXT_ONLY]))
    out.append(("vit", None, configured))
    for method in params.train.methods:
        out.append((method, str(run_dir / "adapters" / method), configured))
    if "dpo" in params.train.methods and "mt_bench" in configured:
        for f in params.train.dpo.fractions:
            out.append((f"dpo_frac{f:g}", str(run_dir / "adapters" / f"dpo_frac{f:g}"), ["mt_bench"]))
    return [p for p in out if p[2]]


def _checkpoint_id(params, name: str, adapter: str | None) -> str:
    from mmpref.models import checkpoint_identity

    if name == "base-lm":
        return checkpoint_identity(params.model_ref(params.models.base_lm))
    ref = checkpoint_identity(params.model_ref(params.models.policy))
    if adapter is None:
        return ref
    info = Path(adapter) / "mmpref_train.json"
    if not info.exists():
        raise ValueError(f"model {name}: no trained adapter in {adapter}; run its training stage first")
    return f"{ref}+{json.loads(info.read_text())['fingerprint']}"


def _judge_templates(params) -> dict[str, str]:
    return {k: str(params.path(v)) for k, v in params.evaluate.judge_templates.items()}


def _noise_dir(params) -> str | None:
    return str(params.path(params.evaluate.noise_images)) if params.evaluate.noise_images else None


def score_policy(params, policy, bench: str, data_path, judge, out_jsonl: Path, name: str) -> list[dict]:
    """One loaded model on one benchmark file with the run's evaluation settings (greedy answers of
    `evaluate.max_new_tokens`, MT-Bench decoding, judge templates, noise images, limit): tidy rows. Stage 09 scores
    every model this way; DPO's sweep scores its trials on the dev split this way too."""
    from mmpref.evaluate import run_benchmark

    ev = params.evaluate
    options = {"decoding": ev.mt_bench_decoding} if bench in ("mt_bench", "mt_bench_noisy") else {}
    return run_benchmark(bench, data_path, policy.greedy_fn(ev.max_new_tokens, ev.batch_size, params.run.seed), judge,
                         out_jsonl, model=name,
                         judge_templates=_judge_templates(params), noise_images_dir=_noise_dir(params),
                         limit=ev.limit, **options)


def evaluate_all(params, run_dir: Path) -> pd.DataFrame:
    from mmpref.evaluate.benchmarks import SCORING_VERSION
    from mmpref.judges import judge_from_params
    from mmpref.models import chat_templates
    from mmpref.pairing import steerlm_inference_question
    from mmpref.sampling import Policy

    ev = params.evaluate
    judge = judge_from_params(ev.judge, run_dir / "judge_cache")
    templates, noise = _judge_templates(params), _noise_dir(params)
    rows: list[dict] = []
    for name, adapter, benchmarks in plan(params, run_dir):
        fingerprint = {"checkpoint": _checkpoint_id(params, name, adapter), "judge": judge.judge_id,
                       "limit": ev.limit, "max_new_tokens": ev.max_new_tokens, "templates": templates,
                       "chat_templates": sha256_json(list(chat_templates(params)))[:16], "decoding": ev.mt_bench_decoding,
                       "seed": params.run.seed, "scoring": SCORING_VERSION}
        policy = None
        for bench in benchmarks:
            data_path = params.path(ev.benchmarks[bench])
            key = sha256_json({**fingerprint, "data": str(data_path), "noise": noise if bench == "mt_bench_noisy" else None})
            done = run_dir / "eval" / name / f"{bench}.rows.json"
            if done.exists() and json.loads(done.read_text()).get("key") == key:
                rows += json.loads(done.read_text())["rows"]
                continue
            if policy is None:
                log.info("loading %s", name)
                policy = Policy.from_params(params, name, adapter=adapter, base_lm=name == "base-lm",
                                            question_transform=steerlm_inference_question if name == "steerlm" else None)
            log.info("%s on %s", name, bench)
            got = score_policy(params, policy, bench, data_path, judge, run_dir / "eval" / name / f"{bench}.jsonl",
                               name)
            done.write_text(json.dumps({"key": key, "rows": got}))
            rows += got
        del policy
    frame = pd.DataFrame(rows, columns=["model", "benchmark", "metric", "value", "n", "judge"])
    frame.to_csv(run_dir / "eval" / "results.csv", index=False)
    frame.attrs["judge_usage"] = {"judge": judge.judge_id, **judge.usage()}  # for the stage's manifest line
    return frame

"""Stage 09: every model of a run on every configured benchmark, into eval/results.csv.

Models: the base LM (text-only benchmarks only), the visually tuned policy ("vit"), one adapter per trained method
(mmpref.methods), and the data-fraction adapters (their benchmark only, for Figure 2). Answers come from HF
`generate` or, with params `engine` (use_for: evaluate), from the served models on a serving engine
(mmpref.engine; the served name enters the rows' cache key). Every saved answer is keyed by the content identity of
the model that gave it (`answer_identity`: checkpoint and adapter file hashes, served name, decoding settings), so a
retrained adapter answers again. A (model, benchmark) pair whose rows were computed for the same model identity,
data and judge is not recomputed; inside a benchmark, items already answered by the same model identity are reused.

Judge variance: with `evaluate.judge_runs` N >= 2 every judge-graded benchmark is graded N times (run 1's answers,
distinct judge calls) and its rows hold the mean over runs with the standard deviation in `sd` (numpy's population sd,
as MM-Vet reports it); `judge_failures` rows count the failed gradings of all runs. results.csv columns: model,
benchmark, metric, value, sd, n, judge (the judge model id, "rule" for rule-scored benchmarks), judge_runs, note
(empty, or why a row has no value: every grading of that model and benchmark failed).

Judge failures: results.csv is written whatever happened (a benchmark whose every grading failed gets a NaN headline
and a note saying why, `scored_or_why`, and the other models and benchmarks are graded); then, as annotation does with `judge.max_failed_fraction`,
the stage fails (`TooManyFailures`) when any (model, benchmark) has more failed gradings than
`evaluate.judge.max_failed_fraction` of its gradings, after a summary of the failures per model and benchmark;
`mmpref run ... --retry-failed` re-grades exactly the failed items (also of pairs whose rows were already written).

Batch judging: with `evaluate.judge.batch: true` (a gemini judge) each (model, benchmark) is graded through Gemini Batch
API jobs kept in eval/<model>/batch_jobs/<benchmark>/ (mmpref.evaluate.protocol); a restarted stage polls them.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd

from mmpref import methods
from mmpref.console import bar
from mmpref.evaluate import registry
from mmpref.evaluate.protocol import (FAILURES, SCORING_VERSION, judge_run_path, judge_run_rows, run_benchmark,
                                      scored_records)
from mmpref.io import read_json, sha256_json, write_json

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["model", "benchmark", "metric", "value", "sd", "n", "judge", "judge_runs", "note"]


def plan(params, run_dir: Path) -> list[tuple[str, str | None, list[str]]]:
    """(model name, adapter dir or None, benchmarks) for this run."""
    configured = list(params.evaluate.benchmarks)
    out: list[tuple[str, str | None, list[str]]] = []
    if params.models.base_lm:
        out.append((methods.BASE_LM, None, [b for b in configured if registry.get(b).text_only]))
    out.append((methods.POLICY, None, configured))
    for method in params.train.methods:
        out.append((method, str(run_dir / "adapters" / method), configured))
    for frac in methods.fraction_methods():
        if frac.name not in params.train.methods or methods.FRACTIONS_BENCHMARK not in configured:
            continue
        for f in params.train.dpo.fractions:
            name = methods.fraction_adapter(frac.name, f)
            out.append((name, str(run_dir / "adapters" / name), [methods.FRACTIONS_BENCHMARK]))
    return [p for p in out if p[2]]


def _checkpoint_id(params, name: str, adapter: str | None) -> str:
    from mmpref.models import checkpoint_identity

    if name == methods.BASE_LM:
        return checkpoint_identity(params.model_ref(params.models.base_lm))
    ref = checkpoint_identity(params.model_ref(params.models.policy))
    if adapter is None:
        return ref
    from mmpref.train import ADAPTER_FILES, adapter_hashes

    missing = [f for f in ("mmpref_train.json", *ADAPTER_FILES) if not (Path(adapter) / f).is_file()]
    if missing:
        raise ValueError(f"model {name}: no trained adapter in {adapter} ({', '.join(missing)} missing); run its "
                         f"training stage first")
    # the adapter's content, not the fingerprint of its training inputs: a forced or otherwise repeated training
    # of the same inputs can give other weights
    return f"{ref}+{sha256_json(adapter_hashes(Path(adapter)))[:16]}"


def answer_identity(params, name: str, adapter: str | None, served: str | None = None) -> str:
    """The content identity of the model that answers, as saved answers are keyed by it (mmpref.evaluate.protocol):
    its checkpoint (and adapter) content, the serving engine's model name when it answers there, and every setting
    that changes a greedy answer: the `models` section (dtype, device, prompt format and picture padding, which the
    checkpoint's family resolves), the prompt format it resolves to, max_new_tokens and the seed; for a method that
    rewrites its questions at inference (SteerLM's condition, `methods.inference_question`), what it appends."""
    from mmpref.models import chat_templates

    identity = {"checkpoint": _checkpoint_id(params, name, adapter), "served": served,
                "models": params.section_hash("models"), "chat_templates": list(chat_templates(params)),
                "max_new_tokens": params.evaluate.max_new_tokens, "seed": params.run.seed}
    transform = methods.inference_question(params, name)
    if transform is not None:  # the other models keep the identity they had before questions could be rewritten
        identity["question_transform"] = transform("")
    return sha256_json(identity)[:16]


def _judge_templates(params) -> dict[str, str]:
    return {k: str(params.path(v)) for k, v in params.evaluate.judge_templates.items()}


def _noise_dir(params) -> str | None:
    return str(params.path(params.evaluate.noise_images)) if params.evaluate.noise_images else None


def score_policy(params, policy, bench: str, data_path, judge, out_jsonl: Path, name: str, *, answered_by: str,
                 judge_run: int = 1) -> list[dict]:
    """One loaded model on one benchmark file with the run's evaluation settings (greedy answers of
    `evaluate.max_new_tokens`, the benchmark's own options such as MT-Bench decoding, judge templates, noise images,
    limit): tidy rows. Stage 09 scores every model this way; DPO's sweep scores its trials on the dev split this way
    too. `answered_by`: the model's `answer_identity` (answers saved under another are answered again). `judge_run`
    >= 2 grades run 1's answers again (mmpref.evaluate.protocol)."""
    ev = params.evaluate
    return run_benchmark(bench, data_path, policy.greedy_fn(ev.max_new_tokens, ev.batch_size, params.run.seed), judge,
                         out_jsonl, model=name, judge_templates=_judge_templates(params),
                         noise_images_dir=_noise_dir(params), limit=ev.limit, judge_run=judge_run,
                         answered_by=answered_by, **registry.get(bench).options(ev))


def score_runs(score, judged: bool, judge_runs: int) -> list[dict]:
    """Rows of one (model, benchmark): `score(judge_run)` gives the rows of one run. A judge-graded benchmark is
    graded `judge_runs` times and summarised by mmpref.evaluate.protocol.judge_run_rows; a rule-scored one once
    (judge_runs 0, sd NaN)."""
    if not judged:
        return [{**r, "sd": math.nan, "judge_runs": 0} for r in score(1)]
    return judge_run_rows([score(r) for r in range(1, judge_runs + 1)])


def evaluate_all(params, run_dir: Path) -> pd.DataFrame:
    from mmpref.judges import judge_from_params
    from mmpref import engine

    ev = params.evaluate
    judge = judge_from_params(ev.judge, run_dir / "judge_cache", params.path)
    templates, noise = _judge_templates(params), _noise_dir(params)
    rows: list[dict] = []
    models = plan(params, run_dir)
    on_engine = engine.uses_engine(params, "evaluate")
    # every model's served name before any work (an adapter missing from engine.adapters fails here, naming it)
    served = {name: engine.served_name(params, name, adapter, name == methods.BASE_LM) if on_engine else None
              for name, adapter, _ in models}
    progress = bar(total=sum(len(b) for _, _, b in models), desc="evaluate", unit="benchmark")
    for name, adapter, benchmarks in models:
        answered_by = answer_identity(params, name, adapter, served[name][0] if served[name] else None)
        fingerprint = {"answers": answered_by, "judge": judge.judge_id, "limit": ev.limit, "templates": templates,
                       "decoding": ev.mt_bench_decoding, "scoring": SCORING_VERSION}
        policy = None
        for bench in benchmarks:
            progress.set_postfix_str(f"{name} / {bench}")
            spec = registry.get(bench)
            data_path = params.path(ev.benchmarks[bench])
            runs = ev.judge_runs if spec.judged else 1
            key = sha256_json({**fingerprint, "data": str(data_path), "noise": noise if spec.uses_noise_images else None,
                               **({"judge_runs": runs} if runs > 1 else {})})
            done = run_dir / "eval" / name / f"{bench}.rows.json"
            if done.exists() and read_json(done).get("key") == key and not (
                    ev.judge.retry_failed and _n_failed(read_json(done)["rows"])):
                # rows written before judge runs were recorded: one run (judged) or none (rule)
                rows += [{"sd": math.nan, "judge_runs": 1 if spec.judged else 0, **r}
                         for r in read_json(done)["rows"]]
                progress.update(1)
                continue
            if policy is None:
                log.info("loading %s", name)
                policy = engine.load_generator(params, name, stage="evaluate", adapter=adapter,
                                               base_lm=name == methods.BASE_LM,
                                               question_transform=methods.inference_question(params, name))
            log.info("%s on %s", name, bench)
            out = run_dir / "eval" / name / f"{bench}.jsonl"
            got = score_runs(lambda r: scored_or_why(
                lambda: score_policy(params, policy, bench, data_path, judge, out, name, answered_by=answered_by,
                                     judge_run=r), out, r, name, bench), spec.judged, runs)
            write_json(done, {"key": key, "rows": got})
            rows += got
            progress.update(1)
        del policy
    progress.set_postfix_str(f"{len(models)} models", refresh=False)
    progress.close()
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame.to_csv(run_dir / "eval" / "results.csv", index=False)
    frame.attrs["judge_usage"] = {"judge": judge.judge_id, **judge.usage()}  # for the stage's manifest line
    check_judge_failures(frame, ev.judge.max_failed_fraction)
    return frame


def scored_or_why(score, out: Path, judge_run: int, model: str, bench: str) -> list[dict]:
    """`score()`, the rows of one judge run; when every grading of that run failed (the benchmark's metric has
    nothing to score and raises ValueError), rows that say so instead: the headline metric NaN with n 0, the
    `judge_failures` count, and a `note` with the reason and the command that re-grades them, so that results.csv is
    still written and the other benchmarks and models are graded."""
    try:
        return score()
    except ValueError:
        spec, path = registry.get(bench), judge_run_path(out, judge_run)
        recs = scored_records(path, model, bench) if spec.judged else []
        failed = spec.failures(recs) if recs else None
        if failed is None or not failed.n or failed.value < failed.n:
            raise
    last = recs[-1]
    raw = last.get("judge_raw")
    raw = raw[-1] if isinstance(raw, list) else raw
    example = last.get("judge_error") or f"the judge's replies did not parse, e.g. {str(raw)[:80]!r}"
    note = (f"all {failed.n} gradings failed, nothing to score ({example}); per-item records in {path}; re-grade "
            f"them with `mmpref run PARAMS --stages 09 --retry-failed`")
    log.warning("%s / %s: %s", model, bench, note)
    judge = last.get("judge")
    return [{"model": model, "benchmark": bench, "metric": spec.headline, "value": math.nan, "n": 0, "judge": judge,
             "note": note},
            {"model": model, "benchmark": bench, "metric": FAILURES, "value": float(failed.value), "n": failed.n,
             "judge": judge, "note": note}]


def _n_failed(rows: list[dict]) -> int:
    return int(sum(r["value"] for r in rows if r["metric"] == FAILURES and r["value"] == r["value"]))


def check_judge_failures(frame: pd.DataFrame, max_failed_fraction: float | None) -> str:
    """Summarise the failed gradings per (model, benchmark) (the `judge_failures` rows: value failed, n gradings);
    raise TooManyFailures when one pair has more than `max_failed_fraction` of its gradings failed. Returns the
    summary."""
    from mmpref.annotate import TooManyFailures

    rows = frame[frame["metric"] == FAILURES]
    failed, gradings = int(rows["value"].sum()), int(rows["n"].sum())
    parts = [f"{r.model}/{r.benchmark} {int(r.value)} of {int(r.n)}" for r in rows.itertuples() if r.value > 0]
    summary = (f"evaluate: {gradings} judge gradings, {failed} failed"
               + (f" ({', '.join(parts)})" if parts else ""))
    log.info(summary)
    print(summary)
    if max_failed_fraction is None:
        return summary
    over = [f"{r.model}/{r.benchmark}: {int(r.value)} of {int(r.n)}" for r in rows.itertuples()
            if r.n and r.value > max_failed_fraction * r.n]
    if over:
        raise TooManyFailures(
            f"evaluate: judge failures above evaluate.judge.max_failed_fraction = {max_failed_fraction} in "
            f"{'; '.join(over)}; every result is in eval/results.csv and the per-item records in eval/. Fix the cause, "
            f"then re-grade the failed items with `mmpref run PARAMS --retry-failed`.")
    return summary

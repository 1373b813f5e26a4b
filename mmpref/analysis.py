"""Stage 10: the paper's tables and figures from one run, saved into the run (and, for the repository's own tiny run
only, see :func:`is_repository_run`, into the repository's figures/); the 95 % bootstrap intervals of the run's Table 2 / Table 3 cells
(``eval/intervals.csv``, ``tables/table2_ci``, ``tables/table3_ci``, see :mod:`mmpref.stats`) and the paper's claims
judged on them (``tables/claims``)."""

from __future__ import annotations

import functools
import logging
import shutil
from pathlib import Path

import pandas as pd

from mmpref import figures, methods, stats
from mmpref.evaluate import registry
from mmpref.evaluate.protocol import scored_records
from mmpref.io import read_jsonl
from mmpref.world.anatomy import anatomy_table, dpo_diagnosis, mt_bench_anatomy, pair_anatomy
from mmpref.world.truth import noisy_human_preferences

log = logging.getLogger(__name__)


def analyse_run(params, run_dir: Path) -> dict:
    """Table 2, Table 3, paper-vs-run, their bootstrap intervals, the claims, Figure 2 and Figure 3; returns the
    frames and the files written."""
    results = figures.load_results(run_dir / "eval" / "results.csv")
    paper = figures.load_paper_results(params.path("params/paper_results.yaml"))
    tables_dir, figures_dir = run_dir / "tables", run_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    out: dict = {"tables": {}, "figures": {}}
    miniature = params.world is not None
    source = "this run, miniature world" if miniature else f"this run ({params.run.name})"
    for name, frame in [("table2", figures.table2(results, paper, run_label="miniature" if miniature else "")), ("table3", figures.table3(results, paper)),
                        ("paper_vs_run", figures.paper_vs_run(results, paper))]:
        out[name] = frame
        out["tables"][name] = figures.save_table(frame, tables_dir, name)
    items = _items(params)
    out["intervals"] = stats.write_intervals(run_dir, results=results, items=items)
    for name, frame in [("table2_ci", figures.table2_intervals(out["intervals"])),
                        ("table3_ci", figures.table3_intervals(out["intervals"]))]:
        out[name] = frame
        out["tables"][name] = figures.save_interval_table(frame, tables_dir, name)
    out["claims"] = stats.claims(run_dir, items=items)
    out["tables"]["claims"] = figures.save_table(out["claims"], tables_dir, "claims")
    fig2 = figures_dir / "figure2_dpo_data_scaling.png"
    out["figure2_points"] = figures.figure2(results, params.train.dpo.fractions, fig2, paper, source=source,
                                            intervals=out["intervals"])
    out["figures"]["figure2"] = fig2
    if params.world is not None:
        prefs = noisy_human_preferences(read_jsonl(run_dir / "prompts.jsonl"), read_jsonl(run_dir / "samples.jsonl"),
                                        seed=params.run.seed, flip_prob=params.world.human_flip_prob)
        pairs = figures.attribute_diff_frame(read_jsonl(run_dir / "annotations.jsonl"), prefs)
        fig3 = figures_dir / "figure3_attribute_correlation.png"
        out["figure3_corr"] = figures.figure3(pairs, fig3, simulated_labels=True, source="miniature world",
                                              paper=paper)
        out["figures"]["figure3"] = fig3
        figures.save_table(out["figure3_corr"].round(3), tables_dir, "figure3_correlations")
        mt = params.evaluate.benchmarks.get("mt_bench")
        if mt:
            out["anatomy"] = mt_bench_anatomy(run_dir, params.path(mt), methods.model_order())
            out["anatomy_table"] = anatomy_table(out["anatomy"])
            out["tables"]["regression_anatomy"] = figures.save_table(out["anatomy_table"], tables_dir,
                                                                     "regression_anatomy")
            out.update(_components_and_c2(params, run_dir, tables_dir, out["tables"], out["claims"]))
        if (run_dir / "datasets" / "dpo.jsonl").exists():
            out["pair_anatomy"] = pair_anatomy(run_dir)
            out["tables"]["dpo_pair_anatomy"] = figures.save_table(out["pair_anatomy"], tables_dir,
                                                                   "dpo_pair_anatomy")
            out["dpo_diagnosis"] = dpo_diagnosis(run_dir)
            out["tables"]["dpo_diagnosis"] = figures.save_table(out["dpo_diagnosis"], tables_dir, "dpo_diagnosis")
    elif params.human_preferences is not None:  # a paper run: LLaVA-RLHF's human labels, scored by the judge
        from mmpref.human_prefs import load_llava_rlhf_preferences, score_human_pairs
        from mmpref.judges import judge_from_params

        hp, j = params.human_preferences, params.judge
        records = load_llava_rlhf_preferences(params.path(hp.path), n=hp.n, seed=hp.seed)
        pairs = score_human_pairs(judge_from_params(j, run_dir / "judge_cache", params.path), records, params.path(hp.images),
                                  run_dir / "human_preferences" / "annotations.jsonl", max_workers=j.max_workers,
                                  max_retries=j.max_retries, retry_failed=j.retry_failed,
                                  max_failed_fraction=j.max_failed_fraction)
        fig3 = figures_dir / "figure3_attribute_correlation.png"
        out["figure3_corr"] = figures.figure3(pairs, fig3, source="LLaVA-RLHF human labels", paper=paper)
        out["figures"]["figure3"] = fig3
        out["tables"]["figure3_correlations"] = figures.save_table(out["figure3_corr"].round(3), tables_dir,
                                                                   "figure3_correlations")
    else:
        log.info("figure 3 needs human preference labels for annotated pairs; the miniature world makes them, a real "
                 "run reads LLaVA-RLHF's (params `human_preferences`), none configured, so it is skipped")
    for name, table in (("table2", "table2"), ("table3", "table3"), ("paper_vs_run", "paper_vs_run"),
                        ("claims", "claims"), ("anatomy_table", "regression_anatomy"),
                        ("pair_anatomy", "dpo_pair_anatomy"), ("dpo_diagnosis", "dpo_diagnosis"),
                        ("response_form", "response_form"), ("response_form_by", "response_form_by_category_turn"),
                        ("decomposition", "mt_bench_decomposition"), ("transitions", "mt_bench_transitions"),
                        ("probe_table", "knowledge_probe"), ("probe_by", "knowledge_probe_by_item_group"),
                        ("c2_inputs", "c2_decision")):
        if name in out:  # what the notebook shows, rounded for reading, units in its headers as in tables/<name>.md
            out[name] = figures.with_table_units(figures.readable(out[name]), table)  # (the CSVs: full precision)
    if is_repository_run(params, run_dir):
        out["copied"] = copy_figures(run_dir, params.path("figures"))
    return out


def _components_and_c2(params, run_dir: Path, tables_dir: Path, tables: dict, claims) -> dict:
    """The miniature's components of the text scores and claim C2 as a decision (mmpref.world.anatomy,
    mmpref.world.probe): response form per model and benchmark, the decomposition of each MT-Bench change against
    the policy with its per-item transitions, the knowledge probe, and C2's verdict from them, added as a row to the
    claims (tables/claims is written again). Saves each table into `tables` and returns the frames."""
    import pandas as pd

    from mmpref.world import anatomy, probe

    benchmarks = {b: params.path(params.evaluate.benchmarks[b]) for b in anatomy.FORM_BENCHMARKS
                  if params.evaluate.benchmarks.get(b)}
    rows = anatomy.answer_rows(run_dir, benchmarks, methods.model_order())
    out = {"answer_rows": rows, "response_form": anatomy.form_table(rows),
           "response_form_by": anatomy.form_table(rows, ("model", "benchmark", "category", "turn")),
           "decomposition": anatomy.decomposition(rows, methods.POLICY),
           "transitions": anatomy.transitions(rows, methods.POLICY)}
    out["probe"] = probe.run_probe(params, run_dir)
    out["probe_table"], out["probe_by"] = probe.probe_table(out["probe"]), probe.probe_by(out["probe"])
    inputs = anatomy.c2_inputs(run_dir, rows, out["probe"])
    verdict, sentence = anatomy.c2_decision(inputs)
    out["c2_inputs"], out["c2_verdict"] = anatomy.c2_table(inputs), {"verdict": verdict, "sentence": sentence}
    row = {"claim": "C2 (decision): DPO on visual pairs repairs a behavioural deficit on text, not knowledge",
           "evidence": sentence, "difference": inputs["deficit"]["value"], "lo": inputs["deficit"]["lo"],
           "hi": inputs["deficit"]["hi"], "verdict": verdict}
    out["claims"] = pd.concat([claims, pd.DataFrame([row])], ignore_index=True)
    for key, name in (("response_form", "response_form"),
                      ("response_form_by", "response_form_by_category_turn"),
                      ("decomposition", "mt_bench_decomposition"),
                      ("transitions", "mt_bench_transitions"), ("probe_table", "knowledge_probe"),
                      ("probe_by", "knowledge_probe_by_item_group"),
                      ("c2_inputs", "c2_decision"), ("claims", "claims")):
        tables[name] = figures.save_table(out[key], tables_dir, name)
    return out


def is_repository_run(params, run_dir: Path) -> bool:
    """Whether this is the repository's own run, whose figures the tracked `figures/` holds: the miniature run named
    "tiny" (params/tiny.yaml) in its default run directory. Any other run (another run.name, run_dir or world) leaves
    `figures/` alone; `mmpref figures PARAMS --to figures/` copies a run's figures on request."""
    return (params.world is not None and params.run.name == "tiny"
            and Path(run_dir).resolve() == params.path("runs/tiny").resolve())


def copy_figures(run_dir: Path, to: Path) -> list[Path]:
    """Copy a run's figure files (PNG and PDF) from run_dir/figures into `to`; returns the copies."""
    src = Path(run_dir) / "figures"
    files = sorted(p for p in src.glob("*") if p.suffix in (".png", ".pdf")) if src.is_dir() else []
    if not files:
        raise ValueError(f"no figures in {src}; run stage 10 first (mmpref run PARAMS --stages 10)")
    Path(to).mkdir(parents=True, exist_ok=True)
    copies = [Path(shutil.copy2(f, Path(to) / f.name)) for f in files]
    log.info("copied the figures of %s into %s", run_dir, to)
    return copies


def _items(params):
    """A loader of a benchmark's items (bench -> items, each loaded once), for per-item records of an older format
    (stats.records); ValueError for a benchmark without configured data."""

    def load(bench: str):
        from mmpref.evaluate import registry

        path = params.evaluate.benchmarks.get(bench)
        if not path:
            raise ValueError(f"no {bench} data configured (evaluate.benchmarks.{bench})")
        return registry.get(bench).load(params.path(path), params.evaluate.limit)
    return functools.cache(load)


SIDE_BY_SIDE_COLUMNS = ["item", "question", "model", "answer", "score", "changed vs tuned"]


def _questions(params, bench: str) -> dict[str, str]:
    """{record key or question id: the question as asked} from the benchmark's loaded items (LLaVA-Bench, MM-Vet:
    the records hold only the id); {} when the file is not configured."""
    spec, path = registry.get(bench), params.evaluate.benchmarks.get(bench)
    if not path:
        return {}
    out = {}
    for it in spec.load(params.path(path), None):
        key = getattr(it, "question_id", None) or getattr(it, "id", None)
        text = getattr(it, "text", None) or getattr(it, "question", None)
        if key is not None and text:
            out[str(key)] = text
    return out


def answers_side_by_side(params, run_dir: Path, bench: str, models: list[str], n: int = 3) -> pd.DataFrame:
    """What every model answered on the `n` items of `bench` where their scores differ most (ties: the first items),
    one row per (item, model): the question (MT-Bench: both turns, " / " between them), the answer, the item's score by the
    benchmark's own metric (`Benchmark.score` of that one record: MT-Bench's mean turn rating, LLaVA-Bench's relative
    score, MM-Vet's 0..1 grade, AlpacaEval's win) and whether the answer differs from the tuned policy's."""
    spec = registry.get(bench)
    recs = {m: {r["key"]: r for r in scored_records(Path(run_dir) / "eval" / m / f"{bench}.jsonl", m, bench)}
            for m in models}
    recs = {m: r for m, r in recs.items() if r}
    if not recs:
        return pd.DataFrame(columns=SIDE_BY_SIDE_COLUMNS)
    shared = [k for k in next(iter(recs.values())) if all(k in r for r in recs.values())]
    score = {(m, k): spec.score([recs[m][k]])[spec.headline].value for m in recs for k in shared}
    spread = {k: max(score[m, k] for m in recs) - min(score[m, k] for m in recs) for k in shared}
    chosen = sorted(shared, key=lambda k: -spread[k])[:n]
    asked: dict[str, str] | None = None  # loaded only for records that do not hold their question
    rows = []
    for k in chosen:
        first = next(iter(recs.values()))[k]
        question = " / ".join(first.get("turns") or []) or first.get("instruction")
        if not question:
            asked = _questions(params, bench) if asked is None else asked
            question = asked.get(str(first.get("question_id", k))) or k
        policy = recs.get(methods.POLICY, {}).get(k)
        for m in recs:
            answer = " / ".join(recs[m][k].get("answers") or [])
            rows.append({"item": k, "question": question, "model": methods.display_name(m) if m in
                         methods.model_order() else m, "answer": answer, "score": round(score[m, k], 2),
                         "changed vs tuned": "" if policy is None or m == methods.POLICY else
                         ("changed" if answer != " / ".join(policy.get("answers") or []) else "same")})
    return pd.DataFrame(rows, columns=SIDE_BY_SIDE_COLUMNS)


def run_story(claims: pd.DataFrame, c2_sentence: str | None = None) -> str:
    """What this run found, in sentences computed from its claims table (tables/claims): which claims reproduced in
    every comparison, which in some, which did not, which the run could not decide or measure, and C2's decision
    with its reason."""
    rows = claims[~claims["claim"].str.startswith("C2 (decision)")]
    ids = list(dict.fromkeys(c.split(" ")[0] for c in rows["claim"]))
    groups: dict[str, list[str]] = {}
    for cid in ids:
        verdicts = list(rows[rows["claim"].str.startswith(cid + " ")]["verdict"])
        if len(set(verdicts)) == 1:
            groups.setdefault(verdicts[0], []).append(cid)
            continue
        verdict = next(v for v in ("reproduced", "not reproduced", "inconclusive", "not measured") if v in verdicts)
        groups.setdefault("mixed" if verdict == "reproduced" else verdict, []).append(
            f"{cid} ({verdicts.count(verdict)} of {len(verdicts)} comparisons)")
    say = {"reproduced": "reproduced", "mixed": "reproduced in part", "not reproduced": "did not reproduce",
           "inconclusive": "were inconclusive (the interval holds 0)",
           "not measured": "were not measured (a model or benchmark missing)"}
    parts = [f"{', '.join(groups[v])} {text}" for v, text in say.items() if groups.get(v)]
    story = ("In this run " + "; ".join(parts) + ".") if parts else "This run judged no claims."
    if c2_sentence:
        story += f" C2 as a decision: {c2_sentence}"
    return story

"""Bootstrap intervals, paired differences and claim verdicts on hand-made per-item records in a tmp run dir."""

from __future__ import annotations

import base64
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, llava_bench as ev_llava_bench, mmbench as ev_mmbench, mmvet as ev_mmvet, mt_bench as ev_mt_bench, pope as ev_pope
from mmpref import stats
from mmpref.evaluate.protocol import run_benchmark
from mmpref.figures import interval_cells, save_interval_table, table2_intervals, table3_intervals
from mmpref.io import read_jsonl, write_jsonl

SPLITS = ("random", "popular", "adversarial")


# ---- hand-made records in the fields benchmarks.py writes ----------------------------------------------------------

def mt(model, ratings, bench="mt_bench"):
    return [{"key": str(i), "model": model, "benchmark": bench, "question_id": i, "scores": list(s), "scored": True}
            for i, s in enumerate(ratings)]


def alpaca(model, prefs):
    return [{"key": f"k{i}", "model": model, "benchmark": "alpaca_eval", "preference": p, "scored": True}
            for i, p in enumerate(prefs)]


def mmb(model, passes):
    return [{"key": str(i), "model": model, "benchmark": "mmbench", "passes": list(p), "scored": True}
            for i, p in enumerate(passes)]


def pope(model, answers_by_split):
    out = []
    for split, pairs in answers_by_split.items():
        out += [{"key": f"{split}/{i}", "model": model, "benchmark": "pope", "split": split, "answers": [a],
                 "label": lab, "scored": True} for i, (a, lab) in enumerate(pairs)]
    return out


def llava(model, pairs, categories=None):
    return [{"key": str(i), "model": model, "benchmark": "llava_bench", "scores": list(p),
             "category": (categories or ["conv"] * len(pairs))[i], "scored": True} for i, p in enumerate(pairs)]


def mmvet(model, grades, caps=None):
    return [{"key": f"v{i}", "model": model, "benchmark": "mmvet", "score": g,
             "capability": (caps or [["rec"]] * len(grades))[i], "scored": True} for i, g in enumerate(grades)]


def put(run: Path, recs: list[dict]) -> None:
    r = recs[0]
    write_jsonl(run / "eval" / r["model"] / f"{r['benchmark']}.jsonl", recs)


def varied(n, lo=2.0, hi=8.0, seed=1):
    rng = np.random.default_rng(seed)
    return [(float(a), float(b)) for a, b in rng.choice([lo, 5.0, hi], size=(n, 2))]


# ---- the interval ----------------------------------------------------------------------------------------------

CASES = {
    "mt_bench": (mt("m", [(8, -1), (3, 7), (-1, -1), (9, 2), (5, 5), (6, 1), (2, 8), (7, 7)]),
                 lambda: ev_mt_bench.mt_bench_scores([8, 3, -1, 9, 5, 6, 2, 7], [-1, 7, -1, 2, 5, 1, 8, 7])["overall"]),
    "alpaca_eval": (alpaca("m", [2.0, 1.0, 0.0, math.nan, 2.0, 1.5, 1.0, 2.0, 2.0, 1.0]),
                    lambda: ev_alpaca_eval.alpaca_win_rate([2.0, 1.0, 0.0, math.nan, 2.0, 1.5, 1.0, 2.0, 2.0,
                                                     1.0])["win_rate"]),
    "mmbench": (mmb("m", [[True, True], [True, False], [False, False], [True, True, True], [True, True]]),
                lambda: ev_mmbench.mmbench_scores([[True, True], [True, False], [False, False], [True, True, True],
                                                [True, True]])["circular_accuracy"]),
    "llava_bench": (llava("m", [(8, 6), (7, 7), (-1, -1), (9, 4), (6, 5), (8, 8)]),
                    lambda: ev_llava_bench.llava_bench_scores([(8, 6), (7, 7), (-1, -1), (9, 4), (6, 5), (8, 8)],
                                                       ["conv"] * 6)["relative_score"]),
    "mmvet": (mmvet("m", [1.0, 0.5, 0.0, 0.8, 1.0, 0.2]),
              lambda: ev_mmvet.mmvet_scores([1.0, 0.5, 0.0, 0.8, 1.0, 0.2], [["rec"]] * 6)["total"]),
    "pope": (pope("m", {s: [("Yes", "yes"), ("No.", "no"), ("Yes", "no"), ("No, not", "yes"), ("Yes", "yes"),
                            ("no", "no")] for s in SPLITS}),
             lambda: ev_pope.pope_scores({s: (["Yes", "No.", "Yes", "No, not", "Yes", "no"],
                                              ["yes", "no", "no", "yes", "yes", "no"]) for s in SPLITS})["f1"]),
}


@pytest.mark.parametrize("bench", list(CASES))
def test_interval_contains_the_metric_value_on_the_full_sample(bench):
    recs, metric_value = CASES[bench]
    got = stats.bootstrap(bench, recs, n_resamples=300)
    assert got["value"] == pytest.approx(metric_value().value)          # the metric function's own number
    assert stats._score(bench, recs, np.arange(len(recs))) == pytest.approx(metric_value().value)
    assert got["lo"] <= got["value"] <= got["hi"] and got["lo"] < got["hi"]
    assert got["n_units"] == len(recs) and got["n_resamples"] > 250
    assert stats.bootstrap(bench, recs, n_resamples=300) == got        # seeded: the same numbers again


def test_interval_narrows_with_more_items():
    small = stats.bootstrap("mt_bench", mt("m", varied(20)))
    large = stats.bootstrap("mt_bench", mt("m", varied(320)))
    assert (large["hi"] - large["lo"]) < 0.5 * (small["hi"] - small["lo"])


def test_failed_judge_items_are_treated_as_the_metric_treats_them():
    # MT-Bench: -1 ratings are dropped, so every resample of 8s and -1s scores 8 (averaging -1 in would not)
    got = stats.bootstrap("mt_bench", mt("m", [(8, -1), (-1, 8), (8, 8), (-1, -1), (8, 8)] * 4))
    assert (got["value"], got["lo"], got["hi"]) == (8.0, 8.0, 8.0)
    # AlpacaEval: NaN preferences are dropped
    got = stats.bootstrap("alpaca_eval", alpaca("m", [2.0, math.nan] * 10))
    assert (got["value"], got["lo"], got["hi"]) == (100.0, 100.0, 100.0)
    # LLaVA-Bench: failed reviews are left out (never averaged in as LLaVA's -1), so every resample scores 50 %
    recs = llava("m", [(8, 4)] * 9 + [(8, 4)])
    recs[-1].update(scores=None, failed=True)
    got = stats.bootstrap("llava_bench", recs)
    assert (got["value"], got["lo"], got["hi"]) == (50.0, 50.0, 50.0)


def test_pope_resamples_questions_within_each_split():
    recs = pope("m", {"random": [("Yes", "yes")] * 5, "popular": [("No", "no")] * 7,
                      "adversarial": [("Yes", "no")] * 3})
    split_of = np.array([r["split"] for r in recs])
    for row in stats._draws("pope", recs, 50, 0):
        assert [int((split_of[row] == s).sum()) for s in ("random", "popular", "adversarial")] == [5, 7, 3]


def test_mmbench_resamples_whole_question_groups():
    # every question is right in 3 of its 4 rotations: circular accuracy is 0 however the questions are drawn
    passes = [[True, True, True, False]] * 12
    got = stats.bootstrap("mmbench", mmb("m", passes))
    assert (got["value"], got["lo"], got["hi"]) == (0.0, 0.0, 0.0)
    # resampling rotations one by one (then regrouping them by four) would often make a question "all right"
    rng = np.random.default_rng(0)
    flat = np.array([p for q in passes for p in q])
    per_rotation = [100 * np.mean(flat[rng.integers(0, flat.size, flat.size)].reshape(12, 4).all(axis=1))
                    for _ in range(200)]
    assert np.percentile(per_rotation, 97.5) > 0


def test_paired_difference_draws_the_same_items_for_both_models():
    base = varied(40)
    a = mt("a", [(x + 1, y + 1) for x, y in base])
    b = list(reversed(mt("b", base)))        # another order: items are matched by key
    d = stats.paired_difference("mt_bench", a, b)
    assert (d["value"], d["lo"], d["hi"]) == pytest.approx((1.0, 1.0, 1.0))
    assert d["a"] == pytest.approx(d["b"] + 1) and d["n_units"] == 40
    # unpaired, the two intervals overlap although every item differs by exactly one point
    ia, ib = stats.bootstrap("mt_bench", a), stats.bootstrap("mt_bench", b)
    assert ia["lo"] < ib["hi"]


# ---- a run: intervals.csv, tables, claims ------------------------------------------------------------------------

def make_run(run: Path, dpo_shift: float = 3.0, dpo_mmbench_right: bool = True, dpo_jitter: bool = False,
             models=("base-lm", "vit", "sft_gold", "steerlm", "rejection_sampling", "dpo")) -> Path:
    base = varied(60)
    shift = {"base-lm": 2.0, "vit": 0.0, "sft_gold": 0.5, "steerlm": 0.5, "rejection_sampling": 0.5,
             "dpo": dpo_shift, "mm_dpo": dpo_shift + 1.0}
    for m in models:
        jit = [(1 if i % 2 else -1) if m == "dpo" and dpo_jitter else 0 for i in range(len(base))]
        put(run, mt(m, [(min(10, max(1, x + shift[m] + j)), min(10, max(1, y + shift[m] + j)))
                        for (x, y), j in zip(base, jit)]))
        put(run, alpaca(m, [2.0 if i % 10 < 3 + 2 * shift[m] else 1.0 for i in range(60)]))
        if m == "base-lm":
            continue
        put(run, mt(m, [(x, y) for x, y in base], bench="mt_bench_noisy"))
        right = m != "dpo" or dpo_mmbench_right
        put(run, mmb(m, [[right or i % 2 == 0, True] if i % 3 else [False, True] for i in range(60)]))
        put(run, pope(m, {s: [("Yes", "yes"), ("No", "no"), ("Yes", "no")] * 5 for s in SPLITS}))
    return run


def verdicts(frame: pd.DataFrame) -> list[str]:
    return list(frame["verdict"])


def test_intervals_csv_and_tables_with_intervals(tmp_path):
    run = make_run(tmp_path / "run")
    put(run, [{**r, "scored": False, "key": "stale" + r["key"], "scores": [1, 1]}
              for r in mt("vit", [(1, 1)] * 5)] + mt("vit", varied(60)))  # stale records are not scored
    iv = stats.write_intervals(run, n_resamples=200)
    back = pd.read_csv(run / "eval" / "intervals.csv")
    assert list(back.columns) == stats.INTERVAL_COLUMNS and len(back) == len(iv)
    vit = back[(back.model == "vit") & (back.benchmark == "mt_bench") & (back.metric == "overall")].iloc[0]
    assert vit["n_units"] == 60 and vit["value"] == pytest.approx(ev_mt_bench.mt_bench_scores(
        *zip(*varied(60)))["overall"].value)
    t2 = table2_intervals(iv)
    assert t2.loc["DPO", "MT-bench lo"] <= t2.loc["DPO", "MT-bench"] <= t2.loc["DPO", "MT-bench hi"]
    assert math.isnan(t2.loc["Vicuna (base LM)", "PoPe"])  # the base LM: text benchmarks only
    paths = save_interval_table(t2, tmp_path / "tables", "table2_ci")
    assert "MT-bench lo" in pd.read_csv(paths["csv"], index_col="Model").columns
    cell = interval_cells(t2).loc["DPO", "MT-bench"]
    assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d\d, \d+\.\d\d\]", cell)
    assert cell in paths["md"].read_text()
    t3 = table3_intervals(iv)
    change = iv[(iv.model == "dpo") & (iv.metric == stats.CHANGE_METRIC)].iloc[0]
    noisy, clean = t3.loc["DPO", "Noisy-image MT-Bench"], t3.loc["DPO", "MT-bench (no image)"]
    assert change["value"] == pytest.approx(noisy - clean) and t3.loc["DPO", "Change (noisy - no image) lo"] < 0


def test_claim_verdicts_follow_the_data(tmp_path):
    good = stats.claims(make_run(tmp_path / "good"), n_resamples=300)
    assert list(good.columns) == stats.CLAIM_COLUMNS
    assert verdicts(good) == ["reproduced"] * 8 + ["not measured"] * 2   # M1: this run trains no MM-DPO
    c2 = good.iloc[2]
    assert c2["lo"] > 0 and c2["difference"] == pytest.approx(2.63, abs=0.1) and "dpo" in c2["evidence"]

    bad = stats.claims(make_run(tmp_path / "bad", dpo_shift=-1.0, dpo_mmbench_right=False), n_resamples=300)
    assert verdicts(bad)[:2] == ["reproduced", "reproduced"]                  # C1 does not involve dpo
    assert verdicts(bad)[2:8] == ["not reproduced"] * 6
    assert bad.iloc[7]["hi"] < 0                                              # C4: a significant MMBench loss

    # dpo = sft_gold etc. up to +-1 per item: the difference's interval straddles 0
    same = stats.claims(make_run(tmp_path / "same", dpo_shift=0.5, dpo_jitter=True), n_resamples=300)
    assert verdicts(same)[4:7] == ["inconclusive"] * 3
    assert all(same.iloc[i]["lo"] < 0 < same.iloc[i]["hi"] for i in (4, 5, 6))
    md = stats.claims_markdown(same)
    assert md.count("\n- **") == 10 and "inconclusive" in md


def test_mm_dpo_claim_compares_it_with_dpo_on_shared_items(tmp_path):
    run = make_run(tmp_path / "mm", models=("vit", "dpo", "mm_dpo"))
    m1 = stats.claims(run, n_resamples=300).iloc[8]
    assert m1["claim"].startswith("M1 (MT-Bench overall)") and m1["verdict"] == "reproduced"
    assert m1["lo"] > 0 and m1["difference"] > 0.5 and "mm_dpo - dpo" in m1["evidence"]  # +1 per turn, clipped at 10


def test_missing_models_and_benchmarks_are_not_measured(tmp_path):
    run = make_run(tmp_path / "subset", models=("vit", "sft_gold", "dpo"))   # the rehearsal's subset
    c = stats.claims(run, n_resamples=100)
    by = dict(zip(c["claim"], c["verdict"]))
    assert all(v == "not measured" for k, v in by.items() if "base-lm" in k or "steerlm" in k
               or "rejection_sampling" in k)
    assert [v for k, v in by.items() if k.startswith("C2") and "dpo > vit" in k] == ["reproduced"]
    assert "no MT-Bench overall records for base-lm" in c.iloc[0]["evidence"] and math.isnan(c.iloc[0]["difference"])
    empty = stats.claims(tmp_path / "nothing")
    assert verdicts(empty) == ["not measured"] * 10
    iv = stats.intervals(tmp_path / "nothing")
    assert iv.empty and table2_intervals(iv).empty and table3_intervals(iv).empty


def test_mmbench_records_of_a_run_carry_passes_scored_by_option_text(tmp_path):
    """The protocol stores each rotation's correctness (matched by letter, then by option text), and the
    bootstrap's value equals the run's circular accuracy."""
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 0, 0)).save(buf, format="PNG")
    img = base64.b64encode(buf.getvalue()).decode()
    path = tmp_path / "mmbench" / "mmbench_dev.tsv"
    path.parent.mkdir()
    rows = [["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "split", "image"],
            ["0", "What color is the circle?", "", "red", "blue", "", "", "A", "c", "l2", "dev", img],
            ["1", "Is there a cat?", "", "yes", "no", "", "", "B", "c", "l2", "dev", img]]
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")
    answer = {"What color is the circle?": "It is red.", "Is there a cat?": "It is yes."}
    gen = lambda reqs: [next(a for q, a in answer.items() if q in r.turns[0]) for r in reqs]
    out = tmp_path / "run" / "eval" / "vit" / "mmbench.jsonl"
    rows_out = run_benchmark("mmbench", path, gen, None, out, "vit")
    recs = read_jsonl(out)
    assert [r["passes"] for r in recs] == [[True, True], [False, False]] and all(r["scored"] for r in recs)
    circ = next(r["value"] for r in rows_out if r["metric"] == "circular_accuracy")
    iv = stats.intervals(tmp_path / "run", n_resamples=100)
    assert iv.loc[iv.benchmark == "mmbench", "value"].item() == pytest.approx(circ) == 50.0

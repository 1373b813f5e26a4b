"""Tables, figures and paper numbers on small hand-made results."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from mmpref.figures import (
    DIFF_COLUMNS,
    attribute_diff_frame,
    figure2,
    figure3,
    load_paper_results,
    paper_vs_run,
    save_table,
    table2,
    table3,
)
from mmpref.ratings import ATTRIBUTES
from mmpref.world.truth import key_answer_correct, noisy_human_preferences

PAPER = Path(__file__).resolve().parents[1] / "params" / "paper_results.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _results() -> pd.DataFrame:
    rows = []
    add = lambda m, b, metric, v: rows.append({"model": m, "benchmark": b, "metric": metric, "value": v, "n": 10,
                                               "judge": "rubric-v3"})
    add("base-lm", "mt_bench", "overall", 6.0)
    add("base-lm", "mt_bench", "turn1", 7.0)          # not a headline metric: ignored
    add("base-lm", "alpaca_eval", "win_rate", 70.0)
    add("base-lm", "pope", "f1", 0.5)                 # a stray visual score for the base LM stays blank
    for m, mt in [("vit", 5.0), ("dpo", 6.5), ("dpo_frac0.25", 5.2), ("dpo_frac0.5", 5.8), ("dpo_frac0.75", 6.2)]:
        add(m, "mt_bench", "overall", mt)
    add("vit", "mmvet", "total", 30.0)
    add("vit", "pope", "f1", 0.8)
    add("vit", "pope", "accuracy", 0.9)
    add("vit", "alpaca_eval", "win_rate", 60.0)
    add("vit", "mt_bench_noisy", "overall", 4.0)
    add("dpo", "mmvet", "total", 35.0)
    add("dpo", "mmbench", "circular_accuracy", 0.6)
    add("dpo", "mt_bench_noisy", "overall", 6.0)
    return pd.DataFrame(rows)


def test_table2_cells_and_blanks():
    t = table2(_results())
    assert list(t.index) == ["Vicuna (base LM)", "LLaVA-1.5 (visual instruction tuned)", "DPO"]
    assert list(t.columns) == ["MM-Vet", "LLaVA-bench", "PoPe", "MM-Bench", "MT-bench", "AlpacaEval"]
    assert t.loc["Vicuna (base LM)", "MT-bench"] == 6.0
    assert t.loc["Vicuna (base LM)", "AlpacaEval"] == 70.0
    assert math.isnan(t.loc["Vicuna (base LM)", "PoPe"])       # blank as in the paper
    assert t.loc["LLaVA-1.5 (visual instruction tuned)", "PoPe"] == 0.8
    assert math.isnan(t.loc["LLaVA-1.5 (visual instruction tuned)", "MM-Bench"])
    assert t.loc["DPO", "MM-Bench"] == 0.6 and t.loc["DPO", "MT-bench"] == 6.5


def test_table2_with_paper_rows_and_markdown(tmp_path):
    paper = load_paper_results(PAPER)
    t = table2(_results(), paper)
    assert t.loc["DPO (paper)", "MT-bench"] == 6.73
    assert t.loc["LLaVA-RLHF-13b (paper)", "MM-Bench"] == 60.1
    assert math.isnan(t.loc["Vicuna-1.5-13b (paper)", "MM-Vet"])
    paths = save_table(t, tmp_path, "table2")
    md = paths["md"].read_text()
    # the markdown names each column's unit; the CSV keeps the plain names other code reads
    assert md.splitlines()[0] == ("| Model | MM-Vet (0–100) | LLaVA-bench (%) | PoPe (F1, 0–1) | MM-Bench (%) | "
                                  "MT-bench (1–10) | AlpacaEval (%) |")
    assert "| Vicuna (base LM) |  |  |  |  | 6.00 | 70.0 |" in md  # one precision per column (MT-bench 6.73)
    assert "| DPO (paper) | 41.2 | 79.1 | 0.870 | 66.8 | 6.73 | 86.4 |" in md
    back = pd.read_csv(paths["csv"], index_col="Model")
    assert back.loc["DPO (paper)", "AlpacaEval"] == 86.4
    assert list(back.columns) == list(t.columns)


def test_conflicting_duplicates_raise():
    r = _results()
    r = pd.concat([r, pd.DataFrame([{"model": "dpo", "benchmark": "mt_bench", "metric": "overall", "value": 1.0,
                                     "n": 1, "judge": "x"}])])
    with pytest.raises(ValueError, match="dpo"):
        table2(r)
    with pytest.raises(ValueError, match="missing columns"):
        table2(pd.DataFrame({"model": ["dpo"]}))


def test_table3_noisy_rows():
    t = table3(_results(), load_paper_results(PAPER))
    assert t.loc["DPO", "Noisy-image MT-Bench"] == 6.0
    assert t.loc["DPO", "Change (noisy - no image)"] == pytest.approx(-0.5)
    assert math.isnan(t.loc["Vicuna (base LM)", "Noisy-image MT-Bench"])
    assert t.loc["Vicuna (base LM)", "MT-bench (no image)"] == 6.0
    assert t.loc["DPO (ours) (paper)", "Noisy-image MT-Bench"] == 6.63
    assert len([i for i in t.index if i.endswith("(paper)")]) == 6


def test_paper_results_load_and_validate(tmp_path):
    paper = load_paper_results(PAPER)
    assert paper.table2_for("dpo").mt_bench == 6.73
    assert len(paper.table2) == 7 and len(paper.table3) == 6
    assert paper.figure2.points == {0.0: 5.99, 1.0: 6.73} and paper.figure2.base_lm == 6.57
    bad = tmp_path / "bad.yaml"
    bad.write_text(PAPER.read_text().replace("mt_bench: 6.73", "mt_bench: 6.73, mt_bnech: 1"))
    with pytest.raises(ValueError, match="bad.yaml"):
        load_paper_results(bad)


def test_paper_vs_run_directions():
    pvr = paper_vs_run(_results(), load_paper_results(PAPER))
    row = pvr[(pvr.model == "dpo") & (pvr.benchmark == "MT-bench")].iloc[0]
    assert row.unit == "1–10" and pvr[pvr.benchmark == "PoPe"].iloc[0].unit == "F1, 0–1"  # each row's own unit
    assert row.run == 6.5 and row.paper == 6.73
    assert row.run_change == pytest.approx(1.5) and row.paper_change == pytest.approx(0.74)
    assert bool(row.same_direction)
    noisy = pvr[(pvr.model == "dpo") & (pvr.benchmark == "Noisy-image MT-Bench")].iloc[0]
    assert noisy.run == 6.0 and noisy.paper == 6.63
    assert "LLaVA-RLHF-13b" not in set(pvr.paper_model)
    base = pvr[pvr.model == "base-lm"]
    assert set(base.benchmark) == {"MT-bench", "AlpacaEval", "Noisy-image MT-Bench"}  # text-only: no PoPe row
    assert bool(base[base.benchmark == "MT-bench"].iloc[0].same_direction)  # base LM above vit, as in the paper


def test_figure2_writes_png_and_points(tmp_path):
    out = tmp_path / "fig" / "figure2.png"
    pts = figure2(_results(), [0.25, 0.5, 0.75], out, paper=load_paper_results(PAPER))
    assert list(pts.fraction) == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert list(pts.mt_bench) == [5.0, 5.2, 5.8, 6.2, 6.5]
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert out.with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"
    out2 = tmp_path / "figure2_run_only.png"
    pts2 = figure2(_results()[lambda d: d.model != "dpo_frac0.5"], [0.25, 0.5, 0.75], out2)
    assert list(pts2.fraction) == [0.0, 0.25, 0.75, 1.0]
    assert out2.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="MT-Bench"):
        figure2(_results()[lambda d: d.benchmark != "mt_bench"], [0.5], tmp_path / "x.png")


def test_figure2_draws_intervals_shares_the_y_scale_and_names_n_and_judge():
    from mmpref.figures import figure2_plot

    models = ["base-lm", "vit", "dpo_frac0.5", "dpo"]
    values = {"base-lm": 6.0, "vit": 5.0, "dpo_frac0.5": 5.8, "dpo": 6.5}
    intervals = pd.DataFrame([{"model": m, "benchmark": "mt_bench", "metric": "overall", "value": values[m],
                               "lo": values[m] - 0.3, "hi": values[m] + 0.4, "n_units": 80} for m in models])
    fig, pts = figure2_plot(_results(), [0.5], paper=load_paper_results(PAPER), intervals=intervals)
    assert list(pts.lo) == [4.7, 5.5, 6.2] and list(pts.hi) == [5.4, 6.2, 6.9]
    run_ax, paper_ax = fig.axes
    assert run_ax.get_ylim() == paper_ax.get_ylim()                       # one scale for both panels
    low, high = run_ax.get_ylim()
    assert low <= 4.7 and high >= 6.9 and low <= 5.99 <= high            # every run interval and paper point shown
    bars = [c for c in run_ax.collections if c.__class__.__name__ == "LineCollection"]
    assert bars and len(bars[0].get_segments()) == 3                       # an interval per run point
    assert "n = 80 questions per point" in fig._suptitle.get_text() and "judge rubric-v3" in fig._suptitle.get_text()
    _, bare = figure2_plot(_results(), [0.5])                              # without intervals: points only
    assert bare["lo"].isna().all()


def _capture(monkeypatch):
    """The Figure objects that mmpref.figures saves, in order."""
    from mmpref import figures as figs

    made, save = [], figs.save_figure
    monkeypatch.setattr(figs, "save_figure", lambda fig, out, **kw: (made.append(fig), save(fig, out, **kw))[1])
    return made


def test_figure_files_png_200dpi_and_pdf(tmp_path):
    from PIL import Image

    out = tmp_path / "f2.png"
    figure2(_results(), [0.5], out)
    dpi = Image.open(out).info["dpi"]
    assert round(dpi[0]) >= 200 and out.with_suffix(".pdf").stat().st_size > 1000
    # fonts embedded as TrueType (Type 42), none as Type 3 (conference PDF checkers refuse Type 3)
    pdf = out.with_suffix(".pdf").read_bytes()
    assert (b"/Subtype /TrueType" in pdf or b"/Subtype /CIDFontType2" in pdf) and b"/Type3" not in pdf


def test_figure2_paper_points_are_points(tmp_path, monkeypatch):
    made = _capture(monkeypatch)
    figure2(_results(), [0.25, 0.5, 0.75], tmp_path / "f2.png", paper=load_paper_results(PAPER),
            source="this run, miniature world")
    run_ax, paper_ax = made[0].axes[:2]
    paper_points = [l for l in paper_ax.get_lines() if "Vicuna" not in l.get_label()]
    assert len(paper_points) == 2
    for line in paper_points:  # markers only: nothing joins the paper's reported endpoints
        assert line.get_linestyle() == "None" and line.get_marker() not in (None, "None", "")
    zero = next(l for l in paper_points if list(l.get_xdata()) == [0.0])
    assert "visual instruction tuned" in zero.get_label() and "+ DPO" not in zero.get_label()
    assert all("(paper)" in l.get_label() for l in paper_ax.get_lines())
    assert all("miniature" in l.get_label() for l in run_ax.get_lines())
    assert "(1–10)" in run_ax.get_ylabel() and "%" in run_ax.get_xlabel()


def test_table2_marks_miniature_rows():
    t = table2(_results(), load_paper_results(PAPER), run_label="miniature")
    assert "DPO (miniature)" in t.index and "DPO (paper)" in t.index and "DPO" not in t.index


def test_key_answer_rule():
    assert key_answer_correct("3 plus 5 is 8.", "8")
    assert not key_answer_correct("It is 8, no wait, 9.", "8")
    assert not key_answer_correct("3 plus 5 is 7.", "8")
    assert key_answer_correct("Yes, there is a red circle.", "yes")
    assert not key_answer_correct("No, yes.", "yes")
    assert key_answer_correct("There is no triangle in the image.", "absent")
    assert not key_answer_correct("Yes, there is no doubt.", "absent")
    assert not key_answer_correct("There is a triangle.", "absent")
    assert key_answer_correct("The tallest bar is bar 3.", "3")
    assert key_answer_correct("The circle is Red!", "red")
    assert not key_answer_correct("The circle is reddish.", "red")
    assert key_answer_correct("The values are 1, 2, 3.", "1, 2, 3")


def _pref_world(n=200):
    prompts = [{"id": f"p{i}", "answer": "8", "question": "q"} for i in range(n)]
    prompts.append({"id": "nokey", "answer": None, "question": "q"})
    samples = []
    for i in range(n):
        right, wrong = "It is 8.", "It is 7."
        samples.append({"prompt_id": f"p{i}", "responses": [right, wrong] if i % 2 else [wrong, right]})
    samples.append({"prompt_id": "nokey", "responses": ["a", "b"]})
    return prompts, samples


def test_noisy_human_preferences_follow_truth_and_flip():
    prompts, samples = _pref_world()
    clean = noisy_human_preferences(prompts, samples, seed=0, flip_prob=0.0)
    assert len(clean) == 200  # the prompt without a key answer is skipped
    assert all(r["preferred"] == (0 if int(r["prompt_id"][1:]) % 2 else 1) and r["basis"] == "truth" for r in clean)
    noisy = noisy_human_preferences(prompts, samples, seed=0, flip_prob=0.3)
    assert noisy == noisy_human_preferences(prompts, samples, seed=0, flip_prob=0.3)
    flipped = sum(r["flipped"] for r in noisy)
    assert 30 < flipped < 90
    assert all((a["preferred"] != b["preferred"]) == b["flipped"] for a, b in zip(clean, noisy))
    both_right = [{"prompt_id": "p0", "responses": ["8", "8."]}]
    coin = noisy_human_preferences(prompts[:1], both_right, seed=1, flip_prob=0.0)
    assert coin[0]["basis"] == "coin"
    with pytest.raises(ValueError):
        noisy_human_preferences(prompts, samples, seed=0, flip_prob=1.5)


def _s(h, c, o, x, v):
    return {"helpfulness": h, "correctness": c, "coherence": o, "complexity": x, "verbosity": v}


def test_figure3_correlation_on_constructed_case(tmp_path, monkeypatch):
    # correctness difference decides the label exactly; verbosity difference is unrelated noise
    annotations, prefs = [], []
    for i in range(40):
        c_a, c_b = (4, 1) if i % 2 else (1, 4)
        annotations.append({"prompt_id": f"p{i}", "status": "ok",
                            "scores": [_s(3, c_a, 3, i % 3, i % 5), _s(3, c_b, 2, 1, (i * 7) % 5)]})
        prefs.append({"prompt_id": f"p{i}", "preferred": 0 if c_a > c_b else 1})
    annotations.append({"prompt_id": "failed", "status": "failed", "scores": None})
    prefs.append({"prompt_id": "failed", "preferred": 0})
    pairs = attribute_diff_frame(annotations, prefs)
    assert len(pairs) == 40
    assert set(pairs.human_preference) == {0, 1}
    out = tmp_path / "figure3.png"
    made = _capture(monkeypatch)
    corr = figure3(pairs, out, simulated_labels=True)
    assert corr.loc["d_correctness", "human_preference"] == pytest.approx(1.0)
    assert abs(corr.loc["d_verbosity", "human_preference"]) < 0.5
    assert math.isnan(corr.loc["d_helpfulness", "human_preference"])  # constant difference: undefined
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 5000
    assert out.with_suffix(".pdf").exists()
    fig = made[0]
    ax = fig.axes[0]
    assert "variable" not in ax.get_xlabel() + ax.get_ylabel()
    assert [t.get_text() for t in ax.get_yticklabels()][:5] == [f"Δ {a}" for a in ATTRIBUTES]
    text = " ".join([fig.get_suptitle(), *(t.get_text() for t in [*fig.texts, *ax.texts, ax.title])])
    assert "n = 40" in text and "SIMULATED" in text
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    title = fig._suptitle.get_window_extent(canvas.get_renderer())
    for part in fig.axes:       # the heatmap and its colour bar, tick labels included, sit below the title
        assert not title.overlaps(part.get_tightbbox(canvas.get_renderer()))
    assert "Δ helpfulness: constant over all 40 pairs" in text  # a note, not an empty row
    assert "Paper" not in text  # no paper given
    # with the paper: its values beside this run's in the note, and the most correlated attributes named
    figure3(pairs, out, simulated_labels=True, paper=load_paper_results(PAPER))
    note = " ".join(t.get_text() for t in made[-1].texts)
    assert "Paper (n = 500 LLaVA-RLHF pairs, Gemini): every |r| with the human label below 0.1" in note
    assert "This run: largest |r| 1.00 (Δ correctness)" in note
    _, a, b = max((abs(corr.loc[a, b]), a, b) for i, a in enumerate(DIFF_COLUMNS) for b in DIFF_COLUMNS[i + 1:]
                  if not math.isnan(corr.loc[a, b]))
    assert (f"Most correlated judge attributes: Δ {a.removeprefix('d_')} and Δ {b.removeprefix('d_')}, "
            f"r = {corr.loc[a, b]:.2f}") in note
    with pytest.raises(ValueError, match="lacks columns"):
        figure3(pairs.drop(columns=["d_coherence"]), out)


def test_figure3_noisy_labels_weaken_correlation(tmp_path):
    """The miniature Figure 3 pipeline end to end: judge diffs vs truth-based labels, clean vs heavily flipped."""
    prompts, samples = _pref_world(300)
    annotations = []
    for s in samples[:-1]:
        ok = [key_answer_correct(r, "8") for r in s["responses"]]
        annotations.append({"prompt_id": s["prompt_id"], "status": "ok",
                            "scores": [_s(3, 4 if k else 0, 3, 1, 1) for k in ok]})
    clean = figure3(attribute_diff_frame(annotations, noisy_human_preferences(prompts, samples, 0, 0.0)),
                    tmp_path / "a.png")
    noisy = figure3(attribute_diff_frame(annotations, noisy_human_preferences(prompts, samples, 0, 0.45)),
                    tmp_path / "b.png")
    assert clean.loc["d_correctness", "human_preference"] == pytest.approx(1.0)
    assert abs(noisy.loc["d_correctness", "human_preference"]) < 0.35


def test_no_backend_switching_in_the_package():
    """A notebook's kernel keeps its backend: nothing in mmpref calls matplotlib.use or imports pyplot."""
    package = Path(__file__).resolve().parents[1] / "mmpref"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "matplotlib.use(" not in text and "import matplotlib.pyplot" not in text, path


def test_only_the_default_tiny_run_writes_the_repository_figures(tmp_path, monkeypatch):
    from mmpref.analysis import copy_figures, is_repository_run
    from mmpref.cli import main
    from mmpref.config import load_params

    monkeypatch.delenv("MMPREF_RUN_DIR", raising=False)
    tiny = load_params("params/tiny.yaml")
    assert is_repository_run(tiny, tiny.run_dir)
    renamed = load_params("params/tiny.yaml", {"run": {"name": "beta02"}})
    assert not is_repository_run(renamed, renamed.run_dir)
    elsewhere = load_params("params/tiny.yaml", {"run": {"run_dir": str(tmp_path / "run")}})
    assert not is_repository_run(elsewhere, elsewhere.run_dir)
    assert not is_repository_run(load_params("params/paper-13b.yaml"), tiny.run_dir)
    # on request: mmpref figures PARAMS --to DIR copies PNG and PDF
    run = tmp_path / "run"
    figure2(_results(), [0.5], run / "figures" / "figure2_dpo_data_scaling.png")
    assert main(["figures", "params/tiny.yaml", "--set", f"run.run_dir={run}", "--to", str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["figure2_dpo_data_scaling.pdf",
                                                                     "figure2_dpo_data_scaling.png"]
    with pytest.raises(ValueError, match="no figures"):
        copy_figures(tmp_path / "empty", tmp_path / "out")


def test_readable_rounds_for_reading():
    from mmpref.figures import readable

    t = pd.DataFrame({"win": [36.666667, 50.0], "f1": [0.123456, 0.5], "mt": [6.12345, float("nan")],
                      "n": [3, 4], "name": ["a", "b"], "rows": [208.0, 52.0], "none": [float("nan")] * 2})
    r = readable(t)
    assert list(r.win) == [36.7, 50.0] and list(r.f1) == [0.123, 0.5] and r.mt[0] == 6.12 and r.mt[1] == ""
    assert list(r.n) == [3, 4] and list(r.name) == ["a", "b"] and t.win[0] == 36.666667  # a copy
    assert list(r.rows) == [208, 52] and "208.0" not in r.to_html() and list(r["none"]) == ["", ""]
    assert "NaN" not in r.to_html() and "36.666667" not in r.to_html() and "36.7" in r.to_html()
    mixed = readable(pd.DataFrame({"paper": [6.5734, None], "note": ["x", None]}, dtype=object))
    assert list(mixed.paper) == [6.57, ""] and list(mixed.note) == ["x", ""]
    assert "-0.0" not in readable(pd.DataFrame({"r": [-0.00012, 0.5]})).to_html()


def test_saved_pdf_is_byte_identical_when_the_figure_is(tmp_path, monkeypatch):
    """A regenerated figure that did not change must not change `figures/` (no creation date in the PDF)."""
    import matplotlib.pyplot as plt

    from mmpref.figures import save_figure

    pdfs = []
    for i, epoch in enumerate(("1700000000", "1800000000")):
        monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
        monkeypatch.setattr("time.time", lambda e=epoch: float(e))
        fig, ax = plt.subplots()
        ax.plot([1, 2, 3], [2, 1, 3])
        pdfs.append(save_figure(fig, tmp_path / f"f{i}.png")["pdf"].read_bytes())
        plt.close(fig)
    assert pdfs[0] == pdfs[1] and pdfs[0].startswith(b"%PDF")


def test_markdown_tables_use_one_precision_per_column_and_no_scientific_notation():
    from mmpref.figures import to_markdown

    df = pd.DataFrame({"check": ["margin", "accuracy"], "first": [-3.631e-05, 0.25], "last": [0.02055, 0.8417],
                       "n": [240, 100], "score": [float("nan"), 54.2]})
    lines = to_markdown(df, index=False).splitlines()
    assert lines[2] == "| margin | 0.000 | 0.021 | 240 |  |"       # below the column's precision: 0.000, not -3.6e-05
    assert lines[3] == "| accuracy | 0.250 | 0.842 | 100 | 54.2 |"
    assert "e-0" not in "".join(lines)


def test_rendered_tables_name_their_units_and_keep_plain_csv_columns(tmp_path):
    from mmpref.figures import TABLE2_COLUMNS, table_units, with_table_units, with_units

    # a header means one thing per table: "full" counts pairs in one, is a share of answers in another
    kinds = pd.DataFrame({"full": [32.0], "wrong": [158.0]}, index=pd.Index(["full"], name="chosen"))
    assert list(with_table_units(kinds, "dpo_pair_anatomy").columns) == ["full (pairs)", "wrong (pairs)"]
    assert list(with_table_units(kinds, "regression_anatomy").columns) == ["full (%)", "wrong (%)"]
    assert with_table_units(kinds, "dpo_pair_anatomy").index.name == "chosen"   # no unit: kept
    assert list(with_table_units(kinds, "claims").columns) == ["full", "wrong"]  # rows of mixed units: none
    # every Table 2 benchmark has its unit, from its registry entry
    assert set(TABLE2_COLUMNS.values()) <= set(table_units("table2")) and table_units("table2")["MT-bench"] == "1–10"
    assert list(with_units(pd.DataFrame(columns=["h (nats)", "h"]), {"h (nats)": "nats", "h": "nats"}).columns) == \
        ["h (nats)", "h (nats)"]  # a header that names its unit already is kept
    probe = pd.DataFrame({"accuracy": [66.5], "lo": [63.0], "hi": [70.0], "chance": [30.9], "items": [720]},
                         index=pd.Index(["vit"], name="model"))
    paths = save_table(probe, tmp_path, "knowledge_probe")
    assert paths["md"].read_text().splitlines()[0] == \
        "| model | accuracy (%) | lo (%) | hi (%) | chance (%) | items |"
    assert list(pd.read_csv(paths["csv"]).columns) == ["model", "accuracy", "lo", "hi", "chance", "items"]


def test_figure2_draws_a_curve_per_data_fraction_method():
    """MM-DPO's data-fraction adapters give Figure 2 a second curve beside DPO's, from the same 0 % point (the
    visually tuned model); a method with no data-fraction result draws none."""
    from mmpref.figures import figure2_plot

    extra = pd.DataFrame([{"model": m, "benchmark": "mt_bench", "metric": "overall", "value": v, "n": 10,
                           "judge": "rubric-v3"}
                          for m, v in (("mm_dpo_frac0.5", 5.6), ("mm_dpo", 6.1))])
    results = pd.concat([_results(), extra], ignore_index=True)
    fig, pts = figure2_plot(results, [0.5])
    assert list(zip(pts.method, pts.fraction, pts.mt_bench)) == [
        ("dpo", 0.0, 5.0), ("dpo", 0.5, 5.8), ("dpo", 1.0, 6.5),
        ("mm_dpo", 0.0, 5.0), ("mm_dpo", 0.5, 5.6), ("mm_dpo", 1.0, 6.1)]
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert any(label.startswith("DPO on a share") for label in labels)
    assert any(label.startswith("MM-DPO on a share") for label in labels)
    _, only_dpo = figure2_plot(_results(), [0.5])
    assert set(only_dpo.method) == {"dpo"}

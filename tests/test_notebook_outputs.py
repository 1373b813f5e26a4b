"""What a notebook shows: the checker of saved outputs (mmpref.nbcheck) on hand-made notebooks, the pieces that keep
outputs clean (mmpref.console: log file, final-line progress bars, library noise; console.StageReport), and one real
stage notebook executed headless the way `mmpref run` does. The end-to-end test checks every notebook of a tiny run
with the same checker (tests/test_end_to_end.py::test_notebook_outputs_are_evidence_not_logs)."""

from __future__ import annotations

import io
import json
import logging
import warnings

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from mmpref import console, nbcheck

SUMMARY_HTML = f'<table class="{nbcheck.SUMMARY_CLASS}"><tr><th>stage</th><td>x</td></tr></table>'
TABLE_HTML = ('<table border="1" class="dataframe"><thead><tr><th></th><th>win</th></tr></thead>'
              '<tbody><tr><th>0</th><td>36.7</td></tr><tr><th>1</th><td>0.000500</td></tr></tbody></table>')


def _notebook(*cells: list) -> dict:
    """A notebook whose code cells have the given outputs; a last cell with Stage.done()'s summary."""
    nb = new_notebook()
    for outputs in cells:
        nb.cells.append(new_code_cell("x = 1", outputs=outputs))
    nb.cells.append(new_code_cell("stage.done()", outputs=[
        new_output("execute_result", data={"text/html": SUMMARY_HTML, "text/plain": "stage  01_collect"},
                   execution_count=1)]))
    return json.loads(nbformat.writes(nb))


def _stream(text: str, name: str = "stdout") -> dict:
    return new_output("stream", name=name, text=text)


def _display(data: dict) -> dict:
    return new_output("display_data", data=data)


PNG = {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}
TABLE = {"text/html": TABLE_HTML, "text/plain": "   win\n0  36.7"}
CLEAN = [[_stream("stage 01_collect of run tiny; its log: runs/tiny/logs/01_collect.log\n")],
         [_display(TABLE)], [_display(PNG)],
         [_stream("sample: 100%|██████████| 6/6 [00:04<00:00,  1.41it/s]\n"),
          _stream("WARNING mmpref.train: prompt p1: a completion will be truncated\n")]]


def test_a_clean_notebook_passes():
    assert nbcheck.problems(_notebook(*CLEAN), {"png": 1, "tables": 1, "summary": True}) == []


@pytest.mark.parametrize("bad, says", [
    (new_output("error", ename="ValueError", evalue="boom", traceback=["Traceback ...", "ValueError: boom"]),
     "a traceback (ValueError: boom)"),
    (_stream("04:22:35 INFO mmpref.runner: stage 00_world of run tiny\n"), "a raw log line: 04:22:35 INFO"),
    (_stream("ok\n2026-12-02 04:22:35 DEBUG mmpref.x: y\n"), "a raw log line: 2026-12-02 04:22:35 DEBUG"),
    (_stream("INFO:transformers.modeling_utils:loading weights\n", "stderr"), "a raw log line: INFO:transformers"),
    (_stream("INFO mmpref.train: dpo: trained\n"), "a raw log line: INFO mmpref.train"),
    (_stream("{'loss': 0.69, 'grad_norm': 1.2, 'epoch': 0.5}\n"), "a raw log line: {'loss'"),
    (_stream("/x/modeling_utils.py:3312: FutureWarning: `is_gradient_checkpointing` is deprecated\n  warnings.warn(\n",
             "stderr"), "a library warning: /x/modeling_utils.py:3312: FutureWarning"),
    (_display({"application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2,
                                                           "version_minor": 0},
               "text/plain": "sample:   0%|          | 0/6 [00:00<?, ?it/s]"}),
     "a progress widget saved without its state (sample:   0%"),
    (_stream("sample:  50%|█████     | 3/6 [00:02<00:02,  1.41it/s]\n", "stderr"), "an unfinished progress bar"),
    (_stream("a: 0%|   | 0/6\ra: 50%|█  | 3/6\ra: 100%|███| 6/6\n", "stderr"), "a progress bar rewritten in place (3"),
    (_display({"text/html": "<div><progress value='26' max='26'></progress></div><table class=\"dataframe\">"
                            "</table>", "text/plain": "<IPython.core.display.HTML object>"}),
     "an HTML progress table"),
    (new_output("execute_result", data={"text/plain": "{'stage': '01_collect',\n 'params_hash': 'f50da3e0350c3f13'}"},
                execution_count=3), "the whole manifest line printed"),
    (_display({"text/html": TABLE_HTML.replace("36.7", "36.666667"), "text/plain": "t"}),
     "a table not rounded for reading (1 cells such as 36.666667)"),
    (_display({"text/html": TABLE_HTML.replace("36.7", "NaN"), "text/plain": "t"}),
     "a table not rounded for reading (1 cells such as NaN)"),
])
def test_each_kind_of_noise_fails_the_check(bad, says):
    found = nbcheck.problems(_notebook(*CLEAN, [bad]), {"png": 1, "tables": 1, "summary": True})
    assert len(found) == 1 and says in found[0], found
    assert found[0].startswith("cell 5 (x = 1): ")  # where it is: the cell a reader would open


def test_missing_plots_tables_and_summary_fail_the_check():
    nb = _notebook(*CLEAN)
    assert nbcheck.problems(nb, {"png": 2, "tables": 1}) == ["1 plots (image/png outputs), expected at least 2"]
    assert nbcheck.problems(nb, {"tables": 2}) == ["1 tables (pandas HTML tables), expected at least 2"]
    nb["cells"] = nb["cells"][:-1]  # no Stage.done() summary at the end
    assert nbcheck.problems(nb, {"summary": True}) == ["the last code cell shows no stage summary (Stage.done())"]
    # a trainer's progress table is rendered by pandas too, but is no table of results
    progress = {"text/html": "<progress value='2' max='2'></progress>" + TABLE_HTML, "text/plain": "<HTML>"}
    assert nbcheck.counts(_notebook([_display(progress)]))["tables"] == 0


def test_main_reports_a_folder(tmp_path, capsys):
    (tmp_path / "01_collect.ipynb").write_text(json.dumps(_notebook(*CLEAN, [_display(TABLE)])))
    assert nbcheck.main([str(tmp_path)]) == 0
    (tmp_path / "04_pair.ipynb").write_text(json.dumps(_notebook([_stream("12:00:00 INFO a.b: c\n")])))
    assert nbcheck.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "01_collect.ipynb: ok" in out and "04_pair.ipynb: 2 problems" in out
    assert "1 tables, expected at least 1" not in out and "0 tables (pandas HTML tables), expected at least 1" in out


# ---- mmpref.console ---------------------------------------------------------------------------------------------

def test_final_line_bar_writes_only_its_final_state(monkeypatch):
    monkeypatch.setenv(console.PROGRESS_ENV, "summary")
    out = io.StringIO()
    for _ in console.bar(range(40), desc="sample", file=out, mininterval=0):
        pass
    with console.bar(total=5, desc="inner", file=out, leave=False) as b:
        b.update(5)
    for _ in console.bar([], desc="nothing left to do", file=out):
        pass
    b = console.bar(total=10, desc="annotate", file=out)
    b.update(4)
    b.set_postfix(loss="0.69")
    b.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue(), lines
    assert lines[0].startswith("sample: 100%|") and "| 40/40 [" in lines[0]
    assert lines[1].startswith("annotate:  40%|") and "4/10" in lines[1] and "loss=0.69" in lines[1]
    assert nbcheck._bar_problems(lines[0] + "\n") == []


def test_bar_mode_follows_the_environment(monkeypatch):
    from tqdm.auto import tqdm as auto_tqdm

    monkeypatch.delenv(console.PROGRESS_ENV, raising=False)
    b = console.bar(total=1, file=io.StringIO())
    assert isinstance(b, auto_tqdm) and not isinstance(b, console.FinalLineBar)
    b.close()
    monkeypatch.setenv(console.PROGRESS_ENV, "off")
    assert console.bar(total=1).disable
    monkeypatch.setenv(console.PROGRESS_ENV, "sideways")
    with pytest.raises(ValueError, match="MMPREF_PROGRESS='sideways': use live, summary or off"):
        console.bar(total=1)


def test_logging_goes_to_the_file_and_only_warnings_to_the_notebook(tmp_path, capsys):
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        path = console.setup_logging(log_file=tmp_path / "logs" / "04_pair.log")
        log = logging.getLogger("mmpref.test")
        log.info("pairs written")
        log.warning("3 prompts had no pair")
        second = console.setup_logging(log_file=tmp_path / "logs" / "05_train.log")  # a re-run in the same kernel
        log.info("training")
        for h in root.handlers:
            h.flush()
        out = capsys.readouterr().out
        assert "pairs written" not in out and "training" not in out
        assert out.count("WARNING mmpref.test: 3 prompts had no pair") == 1
        first = path.read_text()
        assert "INFO mmpref.test: pairs written" in first and "WARNING mmpref.test: 3 prompts" in first
        assert "training" not in first and "INFO mmpref.test: training" in second.read_text()
        assert sum(getattr(h, "_mmpref", False) for h in root.handlers) == 2  # replaced, not added
    finally:
        for h in [h for h in root.handlers if getattr(h, "_mmpref", False)]:
            root.removeHandler(h)
            h.close()
        root.handlers[:] = before[0]
        root.setLevel(before[1])


def test_known_library_warnings_are_filtered_exactly():
    import transformers.utils.logging as hf_logging

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        console.quiet_libraries()
        # the exact warning, raised from the module named in KNOWN_WARNINGS, is filtered
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
                               "modeling_utils.py", 3312, module="transformers.modeling_utils")
        # the same category from elsewhere, or another message, still shows
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning, "x.py", 1, module="mine")
        warnings.warn_explicit("something else is deprecated", FutureWarning, "modeling_utils.py", 1,
                               module="transformers.modeling_utils")
    assert [str(w.message) for w in caught] == ["`is_gradient_checkpointing` is deprecated",
                                                "something else is deprecated"]
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()


def test_peft_still_raises_the_filtered_warning():
    """KNOWN_WARNINGS holds only what the installed libraries still do: when peft stops reading the deprecated
    property, this fails and the filter can go."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    assert any(issubclass(w.category, FutureWarning) and "`is_gradient_checkpointing` is deprecated" in str(w.message)
               for w in caught), [str(w.message) for w in caught]


# ---- Stage.done()'s summary ---------------------------------------------------------------------------------------

def test_stage_report_is_short_and_names_what_was_written(tmp_path):
    from mmpref.console import StageReport

    (tmp_path / "datasets").mkdir()
    for name, size in (("dpo.jsonl", 2000), ("sft_gold.jsonl", 1500)):
        (tmp_path / "datasets" / name).write_bytes(b"x" * size)
    line = {"stage": "04_pair", "status": "ok", "params_hash": "f1e73e4f8c953be3", "input_hashes": {"a": "b"},
            "outputs_hash": "4eaad070cc489b55", "seconds": 83.4, "versions": {"python": "3.11.7"},
            "finished": "2026-12-02T04:28:30+00:00",
            "summary": {"n_prompts": 300, "final_loss": 0.18026401996612548,
                        "judge_usage": {"judge_ids": ["rubric-v3"], "calls": 300, "batch_calls": 0,
                                        "input_tokens": 80603, "output_tokens": 64803, "cost_usd": 0.0}}}
    report = StageReport(line, tmp_path, sorted((tmp_path / "datasets").glob("*.jsonl")))
    assert report["params_hash"] == "f1e73e4f8c953be3" and dict(report) == line  # still the manifest line
    text = repr(report)
    assert len(text.splitlines()) <= 6 and "params_hash" not in text and "versions" not in text
    assert "datasets/: 2 files (dpo.jsonl, sft_gold.jsonl; 3.5 KB)" in text
    assert "n prompts 300 · final loss 0.18" in text and "0.18026" not in text
    assert "rubric-v3: 300 calls, 80,603 input + 64,803 output tokens, $0.00" in text
    assert "1 min 23 s" in text
    for name in ("dpo", "dpo_frac0.5"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "adapter_model.safetensors").write_bytes(b"x" * 500_000)
    for name in ("samples.jsonl", "gold.jsonl"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    top = StageReport(line, tmp_path, [tmp_path / "samples.jsonl", tmp_path / "gold.jsonl"])
    assert top.wrote() == "samples.jsonl, gold.jsonl (2 files, 2 KB)"
    adapters = StageReport(line, tmp_path, sorted((tmp_path / "adapters").glob("*/adapter_model.safetensors")))
    assert adapters.wrote() == "adapters/{dpo, dpo_frac0.5}/adapter_model.safetensors (2 files, 1 MB)"
    html = report._repr_html_()
    assert nbcheck.SUMMARY_CLASS in html and "dataframe" not in html
    nb = _notebook()
    nb["cells"][-1]["outputs"] = [new_output("execute_result", data={"text/html": html, "text/plain": text},
                                             execution_count=1)]
    assert nbcheck.problems(json.loads(nbformat.writes(nbformat.from_dict(nb))), {"summary": True}) == []


def test_training_curves_are_png_and_pdf_with_dpo_panels(tmp_path):
    from mmpref.train import plot_training

    history = [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.01 * s, "rewards/accuracies": 0.5 + 0.02 * s}
               for s in range(1, 6)]
    files = plot_training(history, tmp_path / "loss.png", title="dpo", rows=208)
    assert files["png"].stat().st_size > 5000 and files["pdf"].read_bytes().startswith(b"%PDF")
    from PIL import Image

    wide = Image.open(files["png"]).size
    sft = plot_training([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], tmp_path / "sft.png", title="sft")
    assert Image.open(sft["png"]).size[0] < wide[0] / 2  # one panel against DPO's three



def test_training_curves_leave_out_the_summary_and_mark_ln2_for_dpo():
    import math

    from mmpref.train import training_figure

    steps = [{"step": s, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.01 * s, "rewards/accuracies": 0.6}
             for s in range(1, 6)]
    summary = {"step": 5, "train_loss": 0.66, "rewards/margins": 10.0, "train_runtime": 7.0}  # not a step
    loss, margins, _ = training_figure([*steps, summary], "dpo").axes
    assert list(margins.lines[0].get_ydata()) == [0.01 * s for s in range(1, 6)]
    assert [list(line.get_ydata()) for line in loss.lines[1:]] == [[math.log(2)] * 2]  # the ln 2 line
    sft = training_figure([{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}], "sft").axes[0]
    assert len(sft.lines) == 1  # no ln 2 for SFT

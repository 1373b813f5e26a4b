"""The stage notebooks' teaching text: every "Try this" command is a valid run of a separate run directory, and the
paper's numbers the notebooks print come from params/paper_results.yaml."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import nbformat
import pytest

from mmpref import methods
from mmpref.analysis import is_repository_run
from mmpref import stages as stage_table
from mmpref.config import dotted_to_nested, load_params
from mmpref.figures import load_paper_results, paper_sentence
from mmpref.runner import parse_stage_range

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*_*.ipynb"))


def commands(path: Path) -> list[str]:
    """The `mmpref run ...` lines of a notebook's markdown cells (fenced code or inline)."""
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return [m.group(0).strip().rstrip("`") for m in re.finditer(r"mmpref run [^\n`]*", text)]


def test_every_stage_has_a_notebook_with_a_try_this_command():
    assert [p.stem for p in NOTEBOOKS] == stage_table.names()
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        assert "Try this" in text, f"{path.name} has no 'Try this'"
        assert any("--set" in c for c in commands(path)), f"{path.name}: no 'mmpref run ... --set' command"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_try_this_commands_are_valid_runs_of_their_own_run_directory(path):
    for command in commands(path):
        argv = shlex.split(command)
        assert argv[:2] == ["mmpref", "run"], command
        params_path, rest = argv[2], argv[3:]
        sets, stage_spec = [], None
        while rest:
            flag, value, rest = rest[0], rest[1], rest[2:]
            assert flag in ("--set", "--stages"), f"{path.name}: unexpected {flag!r} in {command!r}"
            if flag == "--set":
                sets.append(value)
            else:
                stage_spec = value
        if "--set" not in command:
            continue  # the plain `mmpref run params/tiny.yaml` of the headless note
        params = load_params(ROOT / params_path, dotted_to_nested(sets))  # an unknown key or bad value raises
        if stage_spec:
            assert parse_stage_range(stage_spec, stage_table.active(params))
        # a student's experiment never overwrites the repository's own run or its committed figures
        assert params.run.name != "tiny", f"{path.name}: {command!r} would write into runs/tiny"
        assert not is_repository_run(params, params.run_dir)


def test_paper_sentence_reads_the_paper_results_file(tmp_path):
    paper = load_paper_results(ROOT / "params" / "paper_results.yaml")
    in_paper = [m for m in methods.names() if paper.table2_for(m) is not None]  # MM-DPO is not the paper's
    assert {"sft_gold", "steerlm", "rejection_sampling", "dpo"} <= set(in_paper)
    for name in in_paper:
        row, policy = paper.table2_for(name), paper.table2_for(methods.POLICY)
        text = paper_sentence(paper, name)
        assert row.name in text and policy.name in text
        assert f"MT-bench {row.mt_bench:.2f} ({policy.mt_bench:.2f})" in text
        assert f"PoPe {row.pope:.3f} ({policy.pope:.3f})" in text
    ranked = sorted((paper.table2_for(m) for m in in_paper), key=lambda r: -r.mt_bench)
    assert f"ranks 1 of the {len(ranked)}" in paper_sentence(paper, ranked[0].run_model)
    assert f"ranks {len(ranked)} of the {len(ranked)}" in paper_sentence(paper, ranked[-1].run_model)

    # a changed paper number changes the sentence: nothing is written into the text by hand
    edited = (ROOT / "params" / "paper_results.yaml").read_text().replace("mt_bench: 6.73", "mt_bench: 4.44")
    (tmp_path / "paper.yaml").write_text(edited)
    changed = paper_sentence(load_paper_results(tmp_path / "paper.yaml"), "dpo")
    assert "MT-bench 4.44 (5.99)" in changed and f"ranks {len(ranked)} of the {len(ranked)}" in changed

    with pytest.raises(ValueError, match="no row for run model"):
        paper_sentence(paper.model_copy(update={"table2": []}), "dpo")


def test_paper_results_hold_the_text_claims_the_notebooks_cite():
    paper = load_paper_results(ROOT / "params" / "paper_results.yaml")
    assert sum(paper.dpo_data.pairs.values()) == 5084  # Table 4's total
    assert sum(paper.dpo_data.prompts.values()) == 6000  # section 3.1: 3,000 + 3,000
    assert paper.figure3.n == 500

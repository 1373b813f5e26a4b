import pytest

from mmpref.config import deep_merge, ParamsError, dotted_to_nested, load_params


def test_tiny_params_load_and_resolve(tmp_path):
    p = load_params("params/tiny.yaml")
    assert p.run.name == "tiny"
    assert p.run_dir.name == "tiny" and p.run_dir.is_absolute()
    assert p.model_ref(p.models.policy) == str(p.run_dir / "world" / "vit")
    # hub ids stay hub ids
    assert p.model_ref("liuhaotian/llava-v1.5-13b") == "liuhaotian/llava-v1.5-13b"


def test_unknown_key_names_key_place_and_allowed(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  dpo:\n    betta: 0.2\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    msg = str(err.value)
    assert "train.dpo.betta" in msg and "beta" in msg and "learning_rate" in msg


def test_unknown_top_level_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian: {}\n")
    with pytest.raises(ParamsError, match=r"unknown key 'trian'.*train"):
        load_params(bad)


def test_wrong_type_and_range(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling: {k: 1}\ntrain: {dpo: {fractions: [0.5, 1.0]}}\n")
    with pytest.raises(ParamsError) as err:
        load_params(bad)
    assert "sampling.k" in str(err.value) and "fractions" in str(err.value)


def test_unknown_benchmark(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("evaluate: {benchmarks: {mmmu: x}}\n")
    with pytest.raises(ParamsError, match="mmmu"):
        load_params(bad)


def test_not_a_mapping_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(bad)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_overrides_merge_and_dotted():
    over = dotted_to_nested(["train.dpo.beta=0.3", "run.name=x"])
    assert over == {"train": {"dpo": {"beta": 0.3}}, "run": {"name": "x"}}
    p = load_params("params/tiny.yaml", deep_merge(over, {"train": {"dpo": {"sweep": None}}}))
    assert p.train.dpo.beta == 0.3 and p.train.dpo.learning_rate == 0.0005 and p.run_dir.name == "x"
    with pytest.raises(ParamsError):
        dotted_to_nested(["novalue"])


def test_an_override_the_dpo_search_would_replace_is_an_error_naming_the_search():
    """tiny.yaml searches beta, the learning rate and log-prob averaging: an override of one of them would be
    silently replaced by the search's choice, so it is refused with the way to get what was meant."""
    for key, value, grid in (("beta", "0.2", "betas"), ("learning_rate", "0.001", "learning_rates"),
                             ("average_log_prob", "true", "average_log_prob")):
        with pytest.raises(ParamsError, match=rf"train.dpo.{key} is chosen by the DPO search "
                                              rf"\(train.dpo.sweep.{grid}\).*train.dpo.sweep=null"):
            load_params("params/tiny.yaml", dotted_to_nested([f"train.dpo.{key}={value}"]))
    p = load_params("params/tiny.yaml", dotted_to_nested(["train.dpo.sweep.betas=[0.2]", "train.dpo.epochs=1"]))
    assert p.train.dpo.sweep.betas == [0.2] and p.train.dpo.epochs == 1
    assert load_params("params/paper-13b.yaml", dotted_to_nested(["train.dpo.beta=0.2"])).train.dpo.beta == 0.2


def test_env_run_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MMPREF_RUN_DIR", str(tmp_path / "r"))
    assert load_params("params/tiny.yaml").run_dir == tmp_path / "r"


def test_section_hash_changes_only_with_section():
    a = load_params("params/tiny.yaml")
    b = load_params("params/tiny.yaml", {"train": {"dpo": {"epochs": 1}}})
    assert a.section_hash("sampling") == b.section_hash("sampling")
    assert a.section_hash("train") != b.section_hash("train")


@pytest.mark.parametrize("name", ["paper-13b.yaml", "paper-7b.yaml"])
def test_paper_params_load(name):
    p = load_params(f"params/{name}")
    assert p.world is None
    assert p.train.lora.r == 128 and p.train.lora.alpha == 256
    assert p.train.dpo.beta == 0.1 and p.train.dpo.learning_rate == 5e-5
    assert p.train.dpo.batch_size == 8 and p.train.dpo.grad_accum == 4 and p.train.dpo.epochs == 3
    assert p.train.sft.learning_rate == 4e-4 and p.train.sft.batch_size == 16 and p.train.sft.max_length == 2048
    assert p.sampling.k == 4 and p.sampling.temperature == 0.7


def test_dpo_sweep_params(tmp_path):
    p = load_params("params/tiny.yaml")
    assert p.train.dpo.sweep is not None and p.train.dpo.sweep.dev_path.endswith("llava_bench_dev")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  dpo:\n    sweep: {betas: [], dev_path: dev}\n")
    with pytest.raises(ParamsError, match="train.dpo.sweep.betas"):
        load_params(bad)
    bad.write_text("train:\n  dpo:\n    sweep: {betas: [0.1]}\n")
    with pytest.raises(ParamsError, match="dev_path"):
        load_params(bad)

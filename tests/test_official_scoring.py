"""Scoring and training that follow the official code (issue 19, "Scoring that departs from the official code").

- MMBench: a file that holds each question's circular copies as rows (index + k * 1e6, the official dev/test TSVs)
  is answered row by row and scored per question as VLMEvalKit groups the rows (index % 1e6); only a file without
  copies (the miniature world's) is rotated by mmpref itself, and the results say which applied.
- MM-Vet: the evaluator's temperatures (0.0, then 0.0, 0.5, 1.0, 1.5 for the retries) and max_tokens=3, honoured by
  the rubric, OpenAI and Gemini backends.
- AlpacaEval: alpaca_eval's order coin (RandomSwitchTwoColumnsProcessor, seed 0) and identical outputs = 1.5 with no
  judge call.
- LLaVA-1.5 pads pictures to square with the image mean (LLaVA's `image_aspect_ratio pad`), in sampling, evaluation
  and training; DPO keeps the authors' LoRA dropout (TRL's `disable_dropout` is a param, off by default).
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

import pytest
import torch
from PIL import Image

from test_benchmarks import FakeJudge, Recorder, fail_generate, make_alpaca, make_mmbench, metric, png_b64
from test_judges import ScriptedJudge

from mmpref.evaluate import alpaca_eval as ev_alpaca_eval, mmbench as ev_mmbench, mmvet as ev_mmvet
from mmpref.evaluate.protocol import run_benchmark
from mmpref.io import read_jsonl
from mmpref.judges import JudgeRequest, make_judge
from mmpref.judges.rubric import RubricJudge

ROOT = Path(__file__).resolve().parents[1]


# ---- MMBench: the official layout ---------------------------------------------------------------------------------

def write_tsv(path: Path, rows) -> Path:
    """rows: (index, question, options A..D, answer letter); the picture depends on index % 1e6 only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category",
                        "split", "image"])]
    for idx, q, opts, ans in rows:
        opts = list(opts) + [""] * (4 - len(opts))
        lines.append("\t".join([str(idx), q, "", *opts, ans, "cat", "l2", "dev", png_b64((idx % 1000000 * 40, 9, 9))]))
    path.write_text("\n".join(lines) + "\n")
    return path


# question 0 (three options, right answer "red") and question 1 (two options, "no"), each with its circular copies
# as rows, the way OpenCompass's dev/test TSVs hold them; the copies come after every main row, as in those files
OFFICIAL = [
    (0, "What color is the circle?", ["red", "blue", "green"], "A"),
    (1, "Is there a cat?", ["yes", "no"], "B"),
    (1000000, "What color is the circle?", ["blue", "green", "red"], "C"),
    (1000001, "Is there a cat?", ["no", "yes"], "A"),
    (2000000, "What color is the circle?", ["green", "red", "blue"], "B"),
]
TRUE = {"What color is the circle?": "red", "Is there a cat?": "no"}


def _options(prompt: str) -> dict[str, str]:
    import re

    return dict(re.findall(r"^([A-D])\. (.*)$", prompt, flags=re.M))


def test_mmbench_file_with_circular_copies_is_answered_once_per_row_and_grouped_like_vlmevalkit(tmp_path):
    path = write_tsv(tmp_path / "mmbench" / "mmbench_dev_20230712.tsv", OFFICIAL)

    def answer(req):
        prompt = req.turns[0]
        opts = _options(prompt)
        question = next(q for q in TRUE if q in prompt)
        right = next(k for k, v in opts.items() if v == TRUE[question])
        if question == "What color is the circle?" and opts["A"] == "green":
            return "A"  # wrong in the copy 2000000 only
        return right

    gen = Recorder(answer)
    out = tmp_path / "mmbench.jsonl"
    rows = run_benchmark("mmbench", path, gen, None, out, "vit")
    # LLaVA's model_vqa_mmbench.py (without --all-rounds) asks each row once, in the row's own option order
    assert len(gen.requests) == 5
    assert sorted(tuple(_options(r.turns[0]).values()) for r in gen.requests) == sorted(
        tuple(opts) for _, _, opts, _ in OFFICIAL)
    # VLMEvalKit: one question per index % 1e6; a hit only when every row of the group is right
    assert metric(rows, "circular_accuracy")["value"] == pytest.approx(50.0)
    assert metric(rows, "circular_accuracy")["n"] == 2
    assert metric(rows, "vanilla_accuracy")["value"] == pytest.approx(100.0)  # the rows with index < 1e6
    layout = metric(rows, "circular_from_file")  # the results say which layout applied: the file's own copies
    assert layout["value"] == 100.0 and layout["n"] == 2 and layout["judge"] == "rule"
    recs = read_jsonl(out)
    assert [r["question_id"] for r in recs] == [0, 1]
    assert recs[0]["rows"] == [0, 1000000, 2000000] and recs[0]["correct"] == ["A", "C", "B"]
    assert recs[0]["passes"] == [True, True, False] and recs[0]["circular"] == "file"
    assert run_benchmark("mmbench", path, fail_generate, None, out, "vit") == rows  # resumed


def test_mmbench_file_without_copies_is_rotated_and_says_so(tmp_path):
    """The miniature world's files (and the tests' make_mmbench) have no copy rows: mmpref rotates the options."""
    path = make_mmbench(tmp_path)
    gen = Recorder(lambda r: "A")
    out = tmp_path / "mmbench.jsonl"
    rows = run_benchmark("mmbench", path, gen, None, out, "vit")
    assert len(gen.requests) == 4 + 2 + 3
    assert metric(rows, "circular_from_file")["value"] == 0.0 and metric(rows, "circular_accuracy")["n"] == 3
    assert {r["circular"] for r in read_jsonl(out)} == {"rotated"}


def test_mmbench_limit_counts_questions_and_an_orphan_copy_is_named(tmp_path):
    path = write_tsv(tmp_path / "m" / "dev.tsv", OFFICIAL)
    rows = ev_mmbench.load_mmbench(path, limit=1, image_dir=tmp_path / "img")
    assert sorted(r.index for r in rows) == [0, 1000000, 2000000]  # question 0 with its copies
    assert [len(q.rounds) for q in ev_mmbench.mmbench_questions(rows)] == [3]
    orphan = write_tsv(tmp_path / "o" / "dev.tsv", OFFICIAL[:1] + OFFICIAL[2:])  # question 1's main row lost
    with pytest.raises(ValueError, match=r"dev\.tsv:\d+ \(index 1000001\): a circular copy of question 1"):
        ev_mmbench.load_mmbench(orphan, image_dir=tmp_path / "img")


# ---- MM-Vet: the evaluator's temperatures and max_tokens=3 --------------------------------------------------------

def test_mmvet_asks_at_the_evaluators_temperatures_with_three_tokens():
    """yuweihao/MM-Vet mm-vet_evaluator.py `runs`: the first call at 0.0; every unparsable reply is asked again with
    the retry suffix at the current temperature, which is raised by 0.5 after that call; max_tokens=3 every time."""
    j = ScriptedJudge(["x"] * 6)
    assert ev_mmvet.grade_mmvet(j, "q", "gt", "pred") == (None, "x")
    assert [c.temperature for c in j.calls] == [0.0, 0.0, 0.5, 1.0, 1.5]
    assert [c.max_tokens for c in j.calls] == [3] * 5
    j = ScriptedJudge(["nope", "0.4"])
    assert ev_mmvet.grade_mmvet(j, "q", "gt", "pred")[0] == 0.4
    assert [c.temperature for c in j.calls] == [0.0, 0.0]


def test_request_max_tokens_reaches_the_cache_key_only_when_set():
    j = ScriptedJudge()
    plain = JudgeRequest(task="answer", prompt="p")
    assert j.cache_key(plain) == j.cache_key(plain.model_copy(update={"max_tokens": None}))
    assert j.cache_key(plain) != j.cache_key(plain.model_copy(update={"max_tokens": 3}))


def test_rubric_judge_honours_max_tokens():
    req = JudgeRequest(task="grade_single", prompt="p", inputs={"answers": ["It is 8."], "question_turns": ["3+5?"]},
                       truth={"answer": "8"})
    full = RubricJudge()._call(req).text
    capped = RubricJudge()._call(req.model_copy(update={"max_tokens": 3}))
    assert len(full.split()) > 3 and capped.text == " ".join(full.split()[:3]) and capped.output_tokens == 3


def test_openai_and_gemini_backends_send_the_requests_cap(monkeypatch, no_network_but_loopback):
    from loopback import GeminiServer, OpenAIServer

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.setenv("GEMINI_API_KEY", "gm-test-0123456789")
    with OpenAIServer(responder=lambda body: "0.5") as o, GeminiServer(responder=lambda body: "0.5") as g:
        for backend, server in (("openai", o), ("gemini", g)):
            judge = make_judge(backend, "m", None, base_url=server.url)
            assert ev_mmvet.grade_mmvet(judge, "q", "gt", "pred")[0] == 0.5
        assert o.requests[0]["body"]["max_tokens"] == 3 and o.requests[0]["body"]["temperature"] == 0.0
        assert g.requests[0]["body"]["generationConfig"]["maxOutputTokens"] == 3
        # a Gemini model that thinks counts its thoughts against maxOutputTokens (python-genai#811): three tokens
        # would leave no reply, so the cap is not sent to it
        thinker = make_judge("gemini", "gemini-2.5-pro", None, base_url=g.url)
        assert ev_mmvet.grade_mmvet(thinker, "q2", "gt", "pred")[0] == 0.5
        assert "maxOutputTokens" not in g.requests[-1]["body"].get("generationConfig", {})


# ---- AlpacaEval: the order coin and identical outputs ------------------------------------------------------------

def official_switch(instruction: str, seed: int = 0) -> bool:
    """tatsu-lab/alpaca_eval (commit cd543a1) RandomSwitchTwoColumnsProcessor.preprocess with the pairwise annotator's
    `_switch_column="is_switched_outputs"`, random_seed_columns ["instruction"] and the annotator's default seed 0:
    utils.random_seeded_choice(seed="is_switched_outputs" + instruction + str(seed), choices=[False, True])."""
    return random.Random("is_switched_outputs" + "".join([instruction]) + str(seed)).choices([False, True], k=1)[0]


def test_alpaca_order_coin_is_alpaca_evals():
    instructions = [f"Task number {i}?" for i in range(200)] + ["Write a haiku.", "", "Résumé ünïcode ✓"]
    assert [ev_alpaca_eval.alpaca_switch(i) for i in instructions] == [official_switch(i) for i in instructions]
    assert [ev_alpaca_eval.alpaca_switch(i, seed=3) for i in instructions] == [official_switch(i, 3)
                                                                                 for i in instructions]


class NoCallJudge(FakeJudge):
    def complete(self, req, check=None):
        raise AssertionError(f"the judge was asked: {req.prompt[:80]}")


def test_alpaca_identical_outputs_score_one_and_a_half_without_a_judge_call(tmp_path):
    path = make_alpaca(tmp_path, 3)
    refs = {r["instruction"]: r["output"] for r in json.loads(path.read_text())}
    out = tmp_path / "alpaca.jsonl"
    rows = run_benchmark("alpaca_eval", path, Recorder(lambda r: refs[r.turns[0]]), NoCallJudge(), out, "vit")
    assert metric(rows, "win_rate")["value"] == pytest.approx(50.0) and metric(rows, "win_rate")["n"] == 3
    assert {r["preference"] for r in read_jsonl(out)} == {1.5}


# ---- LLaVA-1.5: pictures padded to square with the image mean ----------------------------------------------------

def expand2square(pil_img, background_color):
    """haotian-liu/LLaVA llava/mm_utils.py (commit c121f04), as the authors' llava/mm_utils.py has it."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    if width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    result = Image.new(pil_img.mode, (height, height), background_color)
    result.paste(pil_img, ((height - width) // 2, 0))
    return result


@pytest.fixture(scope="module")
def llava15(tmp_path_factory):
    from mmpref.shaped_checkpoints import build_llava15_shaped

    out = tmp_path_factory.mktemp("llava15") / "llava-1.5-shaped"
    build_llava15_shaped(out)
    return out


def paper_params(ckpt: Path, tmp: Path, **over):
    from mmpref.config import deep_merge, load_params

    base = {"run": {"run_dir": str(tmp / "run"), "data_dir": str(tmp / "data")},
            "models": {"policy": str(ckpt), "dtype": "float32", "device": "cpu"},
            "train": {"deepspeed": None, "bf16": False, "gradient_checkpointing": False, "lora": {"r": 4, "alpha": 8},
                      "dpo": {"batch_size": 2, "grad_accum": 1, "epochs": 1}}}
    return load_params(ROOT / "params" / "paper-13b.yaml", deep_merge(base, over))


def wide_picture(path: Path) -> Path:
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (200, 320, 3), generator=g, dtype=torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def llava_pixels(processor, image: Image.Image) -> torch.Tensor:
    """LLaVA's process_images under image_aspect_ratio 'pad': expand2square with the mean colour, then the CLIP
    preprocessing the checkpoint ships."""
    ip = processor.image_processor
    padded = expand2square(image, tuple(int(x * 255) for x in ip.image_mean))
    return ip(images=[padded], return_tensors="pt")["pixel_values"]


def test_paper_path_pads_pictures_as_llava_15_was_trained(llava15, tmp_path):
    from mmpref.models import load_processor
    from mmpref.sampling import Policy

    image = Image.open(wide_picture(tmp_path / "wide.png")).convert("RGB")
    plain = load_processor(str(llava15))
    unpadded = plain.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    reference = llava_pixels(plain, image)
    assert not torch.equal(unpadded, reference)  # the picture is not square: padding matters
    policy = Policy.from_params(paper_params(llava15, tmp_path), "vit")
    got = policy.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.allclose(got, reference, atol=1e-6)
    off = Policy.from_params(paper_params(llava15, tmp_path, models={"image_aspect_ratio": "processor"}), "vit")
    assert torch.equal(off.processor.image_processor(images=[image], return_tensors="pt")["pixel_values"], unpadded)


def test_padding_enters_the_processor_identity(llava15):
    from mmpref.families import processor_identity
    from mmpref.models import load_processor

    assert processor_identity(load_processor(str(llava15), pad_images=True)) != \
        processor_identity(load_processor(str(llava15), pad_images=False))


def _dpo_rows(run_dir: Path) -> list[dict]:
    rows = []
    for i in range(2):
        wide_picture(run_dir / "images" / f"p{i}.png")
        rows.append({"prompt_id": f"p{i}", "image": f"images/p{i}.png", "question": f"What is shown in {i}?",
                     "chosen": "A short clear answer.", "rejected": "Wrong."})
    return rows


def _lora_dropouts(model) -> list[float]:
    return [m.p for name, m in model.named_modules() if "lora_dropout" in name and isinstance(m, torch.nn.Dropout)]


@pytest.mark.parametrize("disable", [None, True])
def test_dpo_keeps_the_authors_lora_dropout_unless_told(llava15, tmp_path, disable):
    """The authors' DPO (findalexli/mllm-dpo llava/train/llava_trainer.py LLavaDPOTrainer, a plain transformers
    Trainer) trains LoRA with LLaVA's lora_dropout 0.05; TRL's DPOConfig(disable_dropout=True) would set it to 0.
    The training also pads its pictures."""
    from mmpref.train import dpo_trainer, settings_from_params

    over = {} if disable is None else {"train": {"dpo": {"disable_dropout": disable}}}
    params = paper_params(llava15, tmp_path, **over)
    settings = settings_from_params(params, "dpo")
    rows = _dpo_rows(tmp_path / "run")
    trainer, processor = dpo_trainer(str(llava15), rows, tmp_path / "run", tmp_path / "out", settings)
    dropouts = _lora_dropouts(trainer.model)
    assert dropouts and set(dropouts) == ({0.0} if disable else {0.05})
    image = Image.open(tmp_path / "run" / rows[0]["image"]).convert("RGB")
    got = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    assert torch.allclose(got, llava_pixels(processor, image), atol=1e-6)


def test_paper_params_note_sampling_length_and_temperature():
    from mmpref.config import load_params

    for name in ("paper-13b.yaml", "paper-7b.yaml"):
        text = (ROOT / "params" / name).read_text()
        params = load_params(ROOT / "params" / name)
        assert params.sampling.max_new_tokens == 1024  # the authors' llava_sampling*.sh --max_new_tokens 1024
        assert "1.2" in text and "llava_sampling" in text  # the scripts' temperature is named beside the choice
        assert params.train.dpo.disable_dropout is False and params.models.image_aspect_ratio == "family"

"""`mmpref check PARAMS`: before a real run, what data is missing, whether the environment can run it, and what the
judge will cost.

`DATASETS` lists every dataset and benchmark file a run reads: its official source and where params/paper-13b.yaml
expects it under `run.data_dir` (README "Get the data" is generated from it by `markdown_table()`); the prompt
datasets are named here, each benchmark's files by its registry entry (mmpref/evaluate/<name>.py). The layouts are the
ones mmpref's loaders read; `check_data` validates the configured files with those same loaders on a few items.

`estimate_cost` counts judge calls per job the way stages 02, 03 and 09 make them and estimates tokens: text at
CHARS_PER_TOKEN characters per token, every image at IMAGE_TOKENS, every response or benchmark answer at its
`max_new_tokens` (so answer-heavy calls are upper bounds), and judge replies at the OUTPUT_TOKENS assumptions below
(a benchmark's: its registry entry's `output_tokens`); with `evaluate.judge_runs` N every benchmark judging costs N
times.
Retries of unparsable replies are not counted. After a run, each judge stage's manifest line holds what it actually
spent (`judge_usage`, see `mmpref.runner.judge_spend`); `spent()` collects those.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from mmpref.config import Params
from mmpref.evaluate.benchmark import DataFile
from mmpref.judges import BACKENDS

# ---- token-count assumptions (documented; see the module docstring) ------------------------------------------------
CHARS_PER_TOKEN = 4.0          # rough English average for BPE tokenizers
IMAGE_TOKENS = 258             # Gemini's documented count for one image (<= 384 px a side; larger ones are tiled,
                               # 258 tokens per 768x768 tile, so this is a lower bound for big images)
THINKING_OUTPUT_TOKENS = 1000  # Gemini 2.5+ "thinking" tokens per call, billed as output (gemini.py counts them)
OUTPUT_TOKENS = {              # the judge's visible reply per call
    "answer": 60,              # gold answer: "one or two complete sentences"
    "annotate": 600,           # step-by-step reasoning, then JSON with 5 scores for each of the k responses
}                              # each judged benchmark's reply per call: its registry entry's `output_tokens`
# ---- text lengths used when a prompt file is absent (benchmarks: each module's `cost_inputs` defaults) -------------
DEFAULT_CHARS = {"question": 100}
N_CHECK = 3                    # records / items validated per file


# ------------------------------------------------------------------------------------------------------------------
# The table

DataItem = DataFile  # key, what, stage, param, path (in paper-13b.yaml), layout, source


PROMPT_DATASETS: list[DataItem] = [
    DataItem("scigraphqa", "SciGraphQA-295K (prompts)", "01_collect", "prompts.sources[scigraphqa].image_root",
             "scigraphqa/imgs",
             ("records: the hub id `alexshengzhili/SciGraphQA-295K-train` (fetched by `datasets` at run time)",
              "scigraphqa/imgs/<image_file> (img.zip unpacked flat)"),
             "hub dataset `alexshengzhili/SciGraphQA-295K-train` (parquet, split train) and `img.zip` in the same "
             "hub repository"),
    DataItem("lrv", "LRV-Instruction (prompts)", "01_collect", "prompts.sources[lrv].path", "lrv/filter_cap.json",
             ("lrv/filter_cap.json", "lrv/images/<image_id>.jpg (VG_100K and VG_100K_2 in one folder)"),
             "github FuxiaoLiu/LRV-Instruction `download.txt` (\"LRV Instruction\" link: `filter_cap.json`); "
             "Visual Genome v1.2 images `images.zip` + `images2.zip`"),
    DataItem("noise_images", "Noisy-image MT-Bench images", "09_evaluate", "evaluate.noise_images", "noise_images",
             ("noise_images/*.png (any .png/.jpg files)",),
             "no official file: non-informative images (blank and random-noise pictures, paper section 4.2)"),
]


def _datasets() -> list[DataItem]:
    """Prompt datasets, then every registered benchmark's data, the noise images, then the judge templates."""
    from mmpref.evaluate import registry

    benches = registry.benchmarks()
    noise = [d for d in PROMPT_DATASETS if d.key == "noise_images"]
    templates = list({b.template_data.key: b.template_data for b in benches if b.template_data}.values())
    return ([d for d in PROMPT_DATASETS if d.key != "noise_images"] + [b.data for b in benches] + noise
            + templates)


DATASETS: list[DataItem] = _datasets()
BY_KEY = {d.key: d for d in DATASETS}


def _md_path(text: str) -> str:
    if text.startswith("records:"):
        return text
    path, sep, comment = text.partition(" (")
    return f"`{path}`" + (f" ({comment}" if sep else "")


def markdown_table() -> str:
    """README "Get the data": every item, its official source and where it goes under run.data_dir."""
    lines = ["| what | official source | put it at (under `data/`) | read by |", "|---|---|---|---|"]
    for d in DATASETS:
        layout = "<br>".join(_md_path(p) for p in d.layout)
        lines.append(f"| {d.what} | {d.source} | {layout} | {d.stage} |")
    return "\n".join(lines)


def param_value(params: Params, param: str) -> str | None:
    """The raw (unexpanded) value of a DataItem.param in these params; None when it is not configured."""
    m = re.fullmatch(r"prompts\.sources\[(\w+)\]\.(\w+)", param)
    if m:
        src = next((s for s in params.prompts.sources if s.name == m.group(1)), None)
        return None if src is None else getattr(src, m.group(2))
    if param.startswith("evaluate.benchmarks."):
        return params.evaluate.benchmarks.get(param.rsplit(".", 1)[1])
    if param.startswith("evaluate.judge_templates."):
        return params.evaluate.judge_templates.get(param.rsplit(".", 1)[1])
    if param == "evaluate.noise_images":
        return params.evaluate.noise_images
    raise ValueError(f"unknown data param {param!r}")


# ------------------------------------------------------------------------------------------------------------------
# Data

def _show(params: Params, path: Path | str) -> str:
    path = Path(path)
    try:
        return str(path.relative_to(params._root.resolve()))
    except ValueError:
        return str(path)


def _made_by_world(params: Params, path: Path) -> bool:
    if params.world is None:
        return False
    try:
        path.resolve().relative_to((params.run_dir / "world").resolve())
        return True
    except ValueError:
        return False


def _row(params: Params, key: str, path: Any, *, ok: bool, problem: str | None = None, note: str | None = None,
         required: bool = True, missing: bool = False, what: str | None = None) -> dict:
    d = BY_KEY[key]
    status = "ok" if ok else ("warning" if not required else ("missing" if missing else "invalid"))
    return {"what": what or d.what, "key": key, "path": _show(params, path) if path is not None else "",
            "stage": d.stage, "ok": ok, "required": required, "status": status, "problem": problem, "note": note,
            "source": d.source}


def _err(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if isinstance(exc, (ValueError, FileNotFoundError)) else f"{type(exc).__name__}: {text}"


def _is_hub_id(value: str) -> bool:
    return ("{" not in value and value.count("/") == 1 and not value.startswith((".", "/", "~"))
            and Path(value).suffix.lower() not in (".json", ".jsonl", ".parquet"))


def _check_source(params: Params, src) -> dict:
    from mmpref import data

    key = src.name
    loader = {"scigraphqa": data.load_scigraphqa, "lrv": data.load_lrv_instruct}[src.name]
    what = BY_KEY[key].what
    ref = params.model_ref(src.path)
    image_root = params.path(src.image_root) if src.image_root else None
    if not Path(ref).exists():
        if _is_hub_id(src.path) and ref == src.path:
            note = f"hub dataset {src.path}: downloaded at run time (needs network); not checkable offline"
            if image_root is None:
                return _row(params, key, None, ok=True, what=what, note=note + "; no image_root (images must be "
                                                                                 "embedded in the records)")
            if not image_root.is_dir():
                return _row(params, key, image_root, ok=False, what=what,
                            problem=f"image folder not found (records: hub dataset {src.path})", missing=True)
            if next(image_root.iterdir(), None) is None:
                return _row(params, key, image_root, ok=False, what=what,
                            problem=f"image folder is empty (records: hub dataset {src.path})", missing=True)
            return _row(params, key, image_root, ok=True, what=what, note=note + "; image folder present")
        path = params.path(src.path)
        if _made_by_world(params, path):
            return _row(params, key, path, ok=True, what=what, note="made by 00_world")
        return _row(params, key, path, ok=False, what=what, problem="not found", missing=True)
    path = Path(ref)
    try:
        records = loader(path, image_root=image_root, limit=N_CHECK)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a problem to report, not a crash
        return _row(params, key, path, ok=False, what=what, problem=_err(exc))
    if not records:
        return _row(params, key, path, ok=False, what=what, problem="no records")
    absent = [r["image_path"] for r in records if r.get("image") is None
              and not (r.get("image_path") and Path(r["image_path"]).is_file())]
    if absent:
        return _row(params, key, path, ok=False, what=what, missing=True,
                    problem=f"image not found: {_show(params, absent[0])} ({len(absent)} of the first "
                            f"{len(records)} records' images missing; image_root "
                            f"{_show(params, image_root) if image_root else '(the file folder)'})")
    return _row(params, key, path, ok=True, what=what, note=f"first {len(records)} records and images read")


def _noise_check(path: Path) -> str:
    from mmpref.evaluate.mt_bench import noise_images

    return f"{len(noise_images(path))} images"


def _checkers(params: Params) -> dict[str, Callable[[Path], str]]:
    """Per data key the check of its file: each benchmark's own (`check`, `check_template`), the noise images."""
    from mmpref.evaluate import registry

    out: dict[str, Callable[[Path], str]] = {"noise_images": _noise_check}
    for b in registry.benchmarks():
        out[b.name] = lambda p, b=b: b.check(p, params)
        if b.judge_template and b.check_template:
            out[f"judge_{b.judge_template}"] = b.check_template
    return out


def _check_file(params: Params, key: str, raw: str, check: Callable[[Path], str], required: bool = True) -> dict:
    path = params.path(raw)
    if not path.exists():
        if _made_by_world(params, path):
            return _row(params, key, path, ok=True, note="made by 00_world", required=required)
        return _row(params, key, path, ok=False, problem="not found", required=required, missing=True)
    try:
        note = check(path)
    except Exception as exc:  # noqa: BLE001 - a corrupt file is a problem to report, not a crash
        return _row(params, key, path, ok=False, problem=_err(exc), required=required)
    return _row(params, key, path, ok=True, note=note, required=required)


def check_data(params: Params) -> list[dict]:
    """One row per configured dataset, benchmark, judge template and noise-image folder:
    {what, key, path, stage, ok, required, status, problem, note, source}. `ok` is False when the item is missing or
    its first few records do not load with mmpref's loaders (the problem says why). Hub datasets are not checkable
    offline (ok, with a note); the miniature world's files, when absent, are made by stage 00 (ok, with a note)."""
    rows = [_check_source(params, src) for src in params.prompts.sources]
    checks = _checkers(params)
    ev = params.evaluate
    for bench, raw in ev.benchmarks.items():
        rows.append(_check_file(params, bench, raw, checks[bench]))
    for name, raw in ev.judge_templates.items():
        rows.append(_check_file(params, f"judge_{name}", raw, checks[f"judge_{name}"]))
    if params.world is None:  # real runs: a judged benchmark without its official judge prompt is a deviation
        from mmpref.evaluate import registry

        wanted = {registry.get(b).judge_template for b in ev.benchmarks} - {None}
        for name in sorted(wanted - set(ev.judge_templates)):
            rows.append(_row(params, f"judge_{name}", None, ok=False, required=False,
                             problem=f"not set: evaluate.judge_templates.{name} (the judge uses mmpref's fallback "
                                     f"prompt, not the official one)"))
    from mmpref.evaluate import registry

    noisy = [b for b in ev.benchmarks if registry.get(b).uses_noise_images]
    if ev.noise_images:
        rows.append(_check_file(params, "noise_images", ev.noise_images, checks["noise_images"], required=noisy))
    elif noisy:
        rows.append(_row(params, "noise_images", None, ok=False,
                         problem=f"not set: evaluate.noise_images ({', '.join(noisy)} needs a folder of irrelevant "
                                 "images)", missing=True))
    return rows


# ------------------------------------------------------------------------------------------------------------------
# Environment

def _env_row(what: str, ok: bool, detail: str, required: bool = True, fix: str = "") -> dict:
    return {"what": what, "ok": ok, "required": required,
            "status": "ok" if ok else ("missing" if required else "warning"), "detail": detail, "fix": fix}


def _key_row(role: str, jp) -> dict:
    what = f"{role} judge ({jp.backend}{':' + jp.model if jp.model else ''})"
    backend = BACKENDS[jp.backend]
    if backend.free:
        return _env_row(what, True, f"local {jp.backend} judge: no key, no cost")
    if not jp.model:
        return _env_row(what, False, "no model pinned", fix=f"set the model id ({role} judge.model)")
    if not backend.needs_key(jp.base_url):
        return _env_row(what, True, f"local server {jp.base_url}: no key needed")
    names = backend.key_envs
    found = [n for n in names if os.environ.get(n)]
    if found:
        return _env_row(what, True, f"{found[0]} is set")
    return _env_row(what, False, f"{' or '.join(names)} not set",
                    fix=f"export {names[0]}=... (keys come from the environment only)")


def _checkpoint_row(params: Params, role: str, value: str) -> dict:
    ref = params.model_ref(value)
    what = f"{role} checkpoint"
    if Path(ref).exists():
        return _env_row(what, True, f"local: {_show(params, ref)}", required=False)
    if _made_by_world(params, Path(ref)):
        return _env_row(what, True, "made by 00_world", required=False)
    if ref != value or not _is_hub_id(value):
        return _env_row(what, False, f"missing local checkpoint {_show(params, ref)}")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(value, "config.json"), str)
    except Exception:  # noqa: BLE001 - the cache probe is advisory
        cached = False
    return _env_row(what, True, f"hub {value}: " + ("in the local HF cache" if cached else
                                                     "downloaded at first use (needs network)"), required=False)


def check_environment(params: Params) -> list[dict]:
    """{what, ok, required, status, detail, fix} rows: DeepSpeed and its config when train.deepspeed is set, CUDA for
    half-precision models (a warning), the judges' API keys (names only, never values), the checkpoints."""
    rows = []
    if params.train.deepspeed:
        have = importlib.util.find_spec("deepspeed") is not None
        rows.append(_env_row("deepspeed (train.deepspeed is set)", have, "importable" if have else "not installed",
                             fix="" if have else "pip install -e '.[gpu]'"))
        cfg = params.path(params.train.deepspeed)
        rows.append(_env_row("deepspeed config", cfg.is_file(), _show(params, cfg) +
                             ("" if cfg.is_file() else " not found"), fix="" if cfg.is_file() else
                             "fix train.deepspeed"))
    if params.models.dtype in ("bfloat16", "float16"):
        try:
            import torch

            cuda = torch.cuda.is_available()
            detail = f"{torch.cuda.device_count()} GPU(s)" if cuda else "no CUDA device"
        except ImportError:
            cuda, detail = False, "torch not installed"
        rows.append(_env_row(f"CUDA (models.dtype {params.models.dtype})", cuda, detail, required=False,
                             fix="" if cuda else "run on a GPU node (sampling and training need it)"))
    rows.append(_key_row("annotation", params.judge))
    from mmpref.evaluate import registry

    if any(registry.get(b).judged for b in params.evaluate.benchmarks):
        rows.append(_key_row("evaluation", params.evaluate.judge))
    rows.append(_checkpoint_row(params, "policy", params.models.policy))
    if params.models.base_lm:
        rows.append(_checkpoint_row(params, "base LM", params.models.base_lm))
    return rows


# ------------------------------------------------------------------------------------------------------------------
# Cost

def _tok(text: str | None) -> float:
    return len(text or "") / CHARS_PER_TOKEN


def _filler(tokens: int) -> str:
    return "x" * int(tokens * CHARS_PER_TOKEN)


def _thinking(jp) -> int:
    from mmpref.judges.gemini import thinks

    return THINKING_OUTPUT_TOKENS if jp.backend == "gemini" and thinks(jp.model) else 0


def _judge_label(jp) -> str:
    return f"{jp.backend}:{jp.model}" if BACKENDS[jp.backend].takes_model else jp.backend


def _usd(jp, section: str, tokens_in: float, tokens_out: float) -> tuple[float, str]:
    if BACKENDS[jp.backend].free:
        return 0.0, f"local {jp.backend} judge"
    if jp.price_input_per_mtok is None or jp.price_output_per_mtok is None:
        return math.nan, f"price unknown: set {section}.price_input_per_mtok and price_output_per_mtok"
    usd = (tokens_in * jp.price_input_per_mtok + tokens_out * jp.price_output_per_mtok) / 1e6
    if jp.batch:  # 02's gold answers, 03's annotations and 09's gradings go through the Batch API
        return usd, f"{section}.batch: batch jobs billed at {jp.batch_price_factor} of this"
    return usd, ""


def _prompt_questions(params: Params) -> tuple[list[str], str]:
    """The questions stage 02/03 will send: prompts.jsonl when stage 01 ran, else per source min(n, records) questions
    from local files, else n questions of DEFAULT_CHARS['question'] characters."""
    from mmpref import data
    from mmpref.io import read_jsonl

    done = params.run_dir / "prompts.jsonl"
    if done.is_file():
        try:
            return [str(p.get("question", "")) for p in read_jsonl(done)], "prompts.jsonl"
        except ValueError:
            pass
    out, basis = [], []
    for src in params.prompts.sources:
        ref = params.model_ref(src.path)
        questions = None
        if Path(ref).is_file():
            loader = {"scigraphqa": data.load_scigraphqa, "lrv": data.load_lrv_instruct}[src.name]
            try:
                root = params.path(src.image_root) if src.image_root else None
                questions = [r["question"] for r in loader(ref, image_root=root)]
            except Exception:  # noqa: BLE001 - estimate from defaults instead
                questions = None
        if questions:
            n = min(src.n, len(questions))
            mean = sum(map(len, questions[:1000])) / min(len(questions), 1000)
            basis.append(f"{src.name}: {n} from its file")
        else:
            n, mean = src.n, DEFAULT_CHARS["question"]
            basis.append(f"{src.name}: n={n}")
        out += ["x" * int(round(mean))] * n
    return out, "; ".join(basis)


def _eval_inputs(params: Params, bench: str) -> tuple[int, float, int, str]:
    """(items, input tokens, calls) of one model's judge calls on `bench`, rendered by the benchmark's own prompt
    builder with the configured official template (fallback prompts when it is absent), answers at max_new_tokens;
    and a note on what the estimate rests on. A benchmark scored by rule makes no calls."""
    from mmpref.evaluate import registry

    spec = registry.get(bench)
    if not spec.judged or spec.cost_inputs is None:
        return 0, 0.0, 0, "scored by rule: no judge calls"
    template = params.evaluate.judge_templates.get(spec.judge_template) if spec.judge_template else None
    items, texts, note = spec.cost_inputs(params.path(params.evaluate.benchmarks[bench]),
                                          _filler(params.evaluate.max_new_tokens),
                                          params.path(template) if template else None, params.evaluate.limit)
    return items, sum(_tok(t) for t in texts), len(texts), note or "from the file"


def estimate_cost(params: Params) -> pd.DataFrame:
    """Estimated judge calls, tokens and USD per job: gold answers (02_sample) and annotation (03_annotate), one call
    per prompt with its image; and per judged benchmark of 09_evaluate, for every model that suite.plan() evaluates
    on it (MT-Bench 2 calls per question, AlpacaEval, MM-Vet and LLaVA-Bench 1, POPE and MMBench none)."""
    from mmpref.evaluate import registry
    from mmpref.evaluate.suite import plan
    from mmpref.judges import prompts

    rows = []
    questions, basis = _prompt_questions(params)
    jp, k = params.judge, params.sampling.k
    response = _filler(params.sampling.max_new_tokens)
    for task, stage, job in (("answer", "02_sample", "gold answers"), ("annotate", "03_annotate", "annotation")):
        if task == "answer":
            tin = sum(_tok(prompts.GOLD_SYSTEM) + _tok(prompts.render_gold_prompt(q)) for q in questions)
        else:
            tin = sum(_tok(prompts.ANNOTATION_SYSTEM) + _tok(prompts.render_annotation_prompt(q, [response] * k))
                      for q in questions)
        calls = len(questions)
        tin += calls * IMAGE_TOKENS
        tout = calls * (OUTPUT_TOKENS[task] + _thinking(jp))
        usd, note = _usd(jp, "judge", tin, tout)
        rows.append({"job": job, "stage": stage, "judge": _judge_label(jp), "models": 1, "items": calls,
                     "calls": calls, "input_tokens": int(round(tin)), "output_tokens": int(round(tout)), "usd": usd,
                     "note": "; ".join(x for x in (basis, note) if x)})
    ej = params.evaluate.judge
    models_for: dict[str, list[str]] = {}
    for name, _adapter, benches in plan(params, params.run_dir):
        for b in benches:
            models_for.setdefault(b, []).append(name)
    for bench in params.evaluate.benchmarks:
        models = models_for.get(bench, [])
        items, tin_one, per_model_calls, note = _eval_inputs(params, bench)
        per_model_calls *= params.evaluate.judge_runs
        tin_one *= params.evaluate.judge_runs
        tout_one = per_model_calls * (registry.get(bench).output_tokens + _thinking(ej))
        tin, tout = tin_one * len(models), tout_one * len(models)
        usd, price_note = _usd(ej, "evaluate.judge", tin, tout) if per_model_calls else (0.0, "")
        rows.append({"job": f"judge {bench}", "stage": "09_evaluate", "judge": _judge_label(ej),
                     "models": len(models), "items": items, "calls": per_model_calls * len(models),
                     "input_tokens": int(round(tin)), "output_tokens": int(round(tout)), "usd": usd,
                     "note": "; ".join(x for x in (note, price_note) if x)})
    return pd.DataFrame(rows, columns=["job", "stage", "judge", "models", "items", "calls", "input_tokens",
                                       "output_tokens", "usd", "note"])


def spent(params: Params) -> pd.DataFrame:
    """What the judge stages recorded in the manifest (their latest ok line's summary.judge_usage)."""
    from mmpref.runner import last_lines

    rows = []
    for stage, line in last_lines(params).items():
        usage = (line.get("summary") or {}).get("judge_usage") if line.get("status") == "ok" else None
        if usage:
            rows.append({"stage": stage, "judge": ", ".join(usage.get("judge_ids") or []) or usage.get("judge_id", ""),
                         "calls": usage.get("calls"), "input_tokens": usage.get("input_tokens"),
                         "output_tokens": usage.get("output_tokens"),
                         "usd": math.nan if usage.get("cost_usd") is None else usage["cost_usd"]})
    return pd.DataFrame(rows, columns=["stage", "judge", "calls", "input_tokens", "output_tokens", "usd"])


# ------------------------------------------------------------------------------------------------------------------
# The report

def _table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "  (none)"
    cells = [[str("" if r.get(c) is None else r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _money(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"${x:,.2f}"


def report(params: Params) -> tuple[str, bool]:
    """The text `mmpref check` prints, and whether anything required is missing."""
    data_rows = check_data(params)
    env_rows = check_environment(params)
    cost = estimate_cost(params)
    out = [f"mmpref check: run {params.run.name} (data_dir {_show(params, params.data_dir)}, "
           f"run_dir {_show(params, params.run_dir)})", "", "Data"]
    out.append(_table([{**r, "detail": r["problem"] or r["note"] or ""} for r in data_rows],
                      ["status", "stage", "what", "path", "detail"]))
    bad = [r for r in data_rows if not r["ok"] and r["required"]]
    if bad:
        out += ["", "Get the missing data from (README \"Get the data\"):"]
        seen = set()
        for r in bad:
            if r["source"] not in seen:
                seen.add(r["source"])
                out.append(f"  - {r['what']}: {r['source']}")
    out += ["", "Environment", _table(env_rows, ["status", "what", "detail", "fix"])]
    out += ["", "Judge cost estimate (tokens: text chars/4, images 258, answers at max_new_tokens: an upper bound)"]
    shown = [{**r, "calls": f"{r['calls']:,}", "input_tokens": f"{r['input_tokens']:,}",
              "output_tokens": f"{r['output_tokens']:,}", "usd": _money(r["usd"])} for r in cost.to_dict("records")]
    out.append(_table(shown, ["stage", "job", "judge", "models", "items", "calls", "input_tokens", "output_tokens",
                              "usd", "note"]))
    total = cost["usd"].sum(min_count=1)
    unknown = cost["usd"].isna().any()
    out.append(f"  total: {int(cost['calls'].sum()):,} judge calls, {_money(total)}"
               + (" + jobs with unknown prices" if unknown else ""))
    done = spent(params)
    if len(done):
        out += ["", "Judge spend recorded in the manifest",
                _table([{**r, "usd": _money(r["usd"])} for r in done.to_dict("records")],
                       ["stage", "judge", "calls", "input_tokens", "output_tokens", "usd"]),
                f"  total spent: {_money(done['usd'].sum(min_count=1))}"]
    missing = bool(bad) or any(not r["ok"] and r["required"] for r in env_rows)
    out += ["", "Result: " + ("something required is missing (see above)" if missing else
                              "ready: every required item is present")]
    return "\n".join(out), missing

"""A knowledge probe independent of phrasing: does a model know an item's key fact, whatever it says when it answers?

For each text benchmark item whose reference answer carries its key answer (MT-Bench both turns, AlpacaEval; the
miniature world's generators, :mod:`mmpref.world.text_tasks`, write both), the reference sentence is scored against
copies of it with the key swapped for wrong keys of the same kind (:func:`mmpref.world.text_tasks.wrong_key`: a nearby
number, another capital, the other of yes/no, ...). The model's log-likelihood of each whole sentence as its answer
(the prompt in its own chat format, earlier turns answered by their references) ranks them; the item counts as known
when the reference ranks strictly first. Every candidate shares the reference's wording, so a model that answers in
another form (tersely, at length, not at all) still scores by what it knows. Accuracy is the share of known items,
with a percentile bootstrap interval over items (:func:`mmpref.world.anatomy.unit_interval`); chance is the mean of
1 / (number of candidates).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import pandas as pd
import torch

from mmpref.evaluate.alpaca_eval import load_alpaca_eval
from mmpref.evaluate.mt_bench import load_mt_bench
from mmpref.models import chat_messages
from mmpref.world.text_tasks import replace_last, wrong_key

N_WRONG = 3  # wrong copies per item at most (yes/no and two-number lists have one)
PROBE_COLUMNS = ["model", "benchmark", "unit", "turn", "category", "known", "n_candidates", "margin"]


def wrong_copies(reference: str, key: str, n: int = N_WRONG, seed: int = 0) -> list[str]:
    """Up to n distinct copies of `reference` with its key answer (its last occurrence, matched with the case it has
    there) swapped for wrong keys; [] when the reference does not carry the key."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    found = next((k for k in (key, key.capitalize(), key.lower()) if k and k in reference), None)
    if found is None:
        return []
    rng = random.Random(f"{seed}:{reference}:{key}")
    out: list[str] = []
    for _ in range(20 * n):
        wrong = wrong_key(key, rng)
        if key.lower() in ("yes", "no"):     # a membership answer: the opposite claim, as the world's wrong answers
            copy = (reference.replace("Yes, ", "No, ", 1).replace(" is in ", " is not in ", 1) if key.lower() == "yes"
                    else reference.replace("No, ", "Yes, ", 1).replace(" is not in ", " is in ", 1))
        else:
            wrong = wrong.capitalize() if found == key.capitalize() and found != key else wrong
            copy = replace_last(reference, found, wrong)
        if copy != reference and copy not in out:
            out.append(copy)
        if len(out) == n:
            break
    return out


def probe_items(mt_bench: str | Path | None = None, alpaca_eval: str | Path | None = None, n_wrong: int = N_WRONG,
                seed: int = 0) -> list[dict]:
    """The probe's items: {benchmark, unit (the benchmark's item id), turn, category, turns, history (the reference
    answers of earlier turns), candidates (the reference first, then its wrong copies)}; items whose reference does
    not carry the key are left out."""
    out = []
    if mt_bench is not None:
        for it in load_mt_bench(mt_bench):
            if not it.answer_keys or not it.references_all:
                continue
            for t, (key, ref) in enumerate(zip(it.answer_keys, it.references_all)):
                wrong = wrong_copies(ref, key, n_wrong, seed)
                if wrong:
                    out.append({"benchmark": "mt_bench", "unit": str(it.question_id), "turn": t + 1,
                                "category": it.category, "turns": it.turns[:t + 1],
                                "history": list(it.references_all[:t]), "candidates": [ref, *wrong]})
    if alpaca_eval is not None:
        for it in load_alpaca_eval(alpaca_eval):
            wrong = wrong_copies(it.reference, it.answer_key, n_wrong, seed) if it.answer_key and it.reference else []
            if wrong:
                out.append({"benchmark": "alpaca_eval", "unit": it.instruction, "turn": 1, "category": it.dataset,
                            "turns": [it.instruction], "history": [], "candidates": [it.reference, *wrong]})
    return out


def _answer_ids(policy, turns: list[str], history: list[str], answer: str) -> tuple[list[int], int]:
    """Token ids of the conversation with `answer` as the last turn's answer, and how many of them are the prompt;
    the questions as the policy answers them (its `question_transform`, e.g. SteerLM's condition, as stage 09)."""
    tok, proc = policy.tokenizer, policy.processor
    if policy.question_transform is not None:
        turns = [policy.question_transform(t) for t in turns]
    prompt = proc.apply_chat_template(chat_messages(turns, history, False), add_generation_prompt=True, tokenize=False)
    full = proc.apply_chat_template(chat_messages(turns, [*history, answer], False), tokenize=False)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = tok(full, add_special_tokens=False)["input_ids"]
    if ids[:len(p_ids)] != p_ids or len(ids) <= len(p_ids):
        raise ValueError(f"{policy.name}: the prompt's tokens are not a prefix of the answered prompt's "
                         f"({prompt!r}); cannot score the answer alone")
    return ids, len(p_ids)


@torch.no_grad()
def answer_logps(policy, requests: list[tuple[list[str], list[str], str]], batch_size: int = 64) -> list[float]:
    """For each (turns, history, answer): the sum of the token log-probabilities of `answer` as the model's answer to
    the last of `turns` (text only, in the policy's chat format, ended as the format ends an assistant turn; earlier
    turns answered by `history`). Sequences are scored in right-padded batches."""
    seqs = [_answer_ids(policy, *r) for r in requests]
    device = next(policy.model.parameters()).device
    pad = policy.tokenizer.pad_token_id or 0
    out = [0.0] * len(seqs)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(seqs[i][0]) for i in batch)
        x = torch.tensor([seqs[i][0] + [pad] * (width - len(seqs[i][0])) for i in batch], device=device)
        mask = torch.tensor([[1] * len(seqs[i][0]) + [0] * (width - len(seqs[i][0])) for i in batch], device=device)
        logits = policy.model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
        lp = torch.log_softmax(logits, -1).gather(2, x[:, 1:, None])[..., 0]
        for row, i in enumerate(batch):
            ids, n_prompt = seqs[i]
            out[i] = float(lp[row, n_prompt - 1:len(ids) - 1].sum())
    return out


def probe_model(policy, items: list[dict]) -> pd.DataFrame:
    """One row per item (PROBE_COLUMNS): known (the reference ranks strictly first), n_candidates, and margin (the
    reference's log-likelihood minus the best wrong copy's)."""
    flat = [(it["turns"], it["history"], c) for it in items for c in it["candidates"]]
    lps = iter(answer_logps(policy, flat))
    rows = []
    for it in items:
        lp = [next(lps) for _ in it["candidates"]]
        margin = lp[0] - max(lp[1:])
        rows.append({"model": policy.name, "benchmark": it["benchmark"], "unit": it["unit"], "turn": it["turn"],
                     "category": it["category"], "known": bool(margin > 0), "n_candidates": len(lp),
                     "margin": margin})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


def run_probe(params, run_dir: str | Path, models: list[str] | None = None) -> pd.DataFrame:
    """The probe on every text-benchmark model of stage 09's plan (:func:`mmpref.evaluate.suite.plan`: base LM,
    policy, one adapter per method; data-fraction adapters left out), each loaded as stage 09 loads it; the rows of
    all models, also written to ``<run_dir>/eval/knowledge_probe.csv``. Models whose adapter is missing are skipped.
    Each model's rows carry its `identity` (stage 09's answer identity of the model and a hash of the probe's items):
    rows saved under the same identity are reused, so a re-run of stage 10 loads no model that has not changed."""
    from mmpref import methods
    from mmpref.evaluate.suite import answer_identity, plan
    from mmpref.io import sha256_json
    from mmpref.sampling import Policy

    b = params.evaluate.benchmarks
    items = probe_items(params.path(b["mt_bench"]) if b.get("mt_bench") else None,
                        params.path(b["alpaca_eval"]) if b.get("alpaca_eval") else None, seed=params.run.seed)
    if not items:
        raise ValueError("no MT-Bench or AlpacaEval item whose reference carries its key answer: nothing to probe")
    wanted = models if models is not None else methods.model_order()
    path = Path(run_dir) / "eval" / "knowledge_probe.csv"
    saved = pd.read_csv(path, dtype={"unit": str, "identity": str}) if path.exists() else pd.DataFrame()
    items_hash = sha256_json(items)[:16]
    frames = []
    for name, adapter, _ in plan(params, Path(run_dir)):
        if name not in wanted or (adapter is not None and not Path(adapter, "adapter_config.json").exists()):
            continue
        identity = f"{answer_identity(params, name, adapter)}:{items_hash}"
        if "identity" in saved and (saved["identity"] == identity).any():
            frames.append(saved[saved["identity"] == identity])
            continue
        policy = Policy.from_params(params, name, adapter=adapter, base_lm=name == methods.BASE_LM,
                                    question_transform=methods.inference_question(params, name))
        policy.model.eval()
        frames.append(probe_model(policy, items).assign(identity=identity))
        del policy
    frame = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=[*PROBE_COLUMNS, "identity"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return frame


def chance(frame: pd.DataFrame) -> float:
    """The accuracy of ranking at random: the mean of 1 / n_candidates."""
    return float((1 / frame["n_candidates"]).mean()) if len(frame) else math.nan


def _units(frame: pd.DataFrame) -> pd.Series:
    """The resampled unit of each probe row: one benchmark item (both turns of an MT-Bench question together)."""
    return frame["benchmark"] + ":" + frame["unit"].astype(str)


def probe_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per model: probe accuracy (% of items whose reference ranks first) with its 95 % bootstrap interval over
    items, the accuracy at chance, and the number of probed answers."""
    from mmpref.world.anatomy import unit_interval

    rows = []
    for model, f in frame.groupby("model", sort=False):
        d = unit_interval(_units(f), f["known"].astype(float))
        rows.append({"model": model, "accuracy": 100 * d["value"], "lo": 100 * d["lo"], "hi": 100 * d["hi"],
                     "chance": 100 * chance(f), "items": len(f)})
    return pd.DataFrame(rows, columns=["model", "accuracy", "lo", "hi", "chance", "items"]).set_index("model")


def probe_change(frame: pd.DataFrame, a: str, b: str) -> dict:
    """Probe accuracy of model a minus model b on the same items, with its paired bootstrap interval:
    {value, lo, hi, n_units}; NaNs when either model was not probed."""
    on = ["benchmark", "unit", "turn"]
    p = frame[frame["model"] == a].merge(frame[frame["model"] == b], on=on, suffixes=("_a", "_b"))
    if p.empty:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan, "n_units": 0}
    from mmpref.world.anatomy import unit_interval

    return unit_interval(_units(p), p["known_a"].astype(float), p["known_b"].astype(float))


def probe_by(frame: pd.DataFrame, by: tuple[str, ...] = ("benchmark", "turn", "category")) -> pd.DataFrame:
    """Probe accuracy (%) per group of items (rows) and model (columns), with the number of items per group."""
    g = frame.groupby([*by, "model"], sort=False)["known"]
    table = (100 * g.mean()).unstack("model").round(1)
    return table.assign(items=frame[frame["model"] == frame["model"].iloc[0]].groupby(list(by)).size())

"""The critique-based reward model as a judge backend ("reward_model"): a LoRA adapter of the policy family trained
by stage 03b (mmpref.reward_model) answers stage 03's annotation requests, so the same stage, cache and resume run on
it (params: `judge: {backend: reward_model, model: <adapter folder>}`).

For each response of a request it writes a critique and a ratings line (greedy; a re-ask after an unparsable reply,
attempt > 0, samples at temperature 0.7 with the attempt as seed), and assembles them as a judge would reply:
"Response i: <critique>" lines, then the JSON the annotation parser reads. A response whose reply has no ratings
line leaves the JSON out, so the parser refuses the reply and the stage re-asks, then records the prompt as failed.
It runs locally: no key and no price; its judge id names the adapter's content, so a retrained model is a new judge
whose replies are not taken from the old one's cache (so is one that writes more or fewer tokens).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

from mmpref.judges.base import Judge, JudgeReply, JudgeRequest
from mmpref.ratings import attributes

RESAMPLE_TEMPERATURE = 0.7  # re-asks sample, as the paper's annotation sampling does


class RewardModelJudge(Judge):
    backend = "reward_model"
    free = True          # local: no key, no price
    takes_model = True   # judge.model: the adapter folder
    api = False
    writes_gold = False       # it annotates only: params refuse it where gold answers or gradings are asked
    grades_benchmarks = False

    def __init__(self, model: str | Path, cache_dir=None, max_new_tokens: int = 96, batch_size: int = 16,
                 dtype: str = "bfloat16", device: str = "auto", **limits):
        from mmpref.train import adapter_hashes

        limits.setdefault("max_concurrency", 1)  # one model in memory; a request's responses are one batch
        super().__init__(cache_dir=cache_dir, **limits)
        self.adapter = Path(model)
        config = self.adapter / "adapter_config.json"
        if not config.is_file():
            raise ValueError(f"judge backend reward_model: {self.adapter} holds no trained adapter (adapter_config.json); "
                             f"train it with stage 03b_reward_model")
        self.base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
        if not self.base or not Path(self.base).exists():
            raise ValueError(f"judge backend reward_model: the adapter's base checkpoint {self.base!r} "
                             f"(adapter_config.json) is not on this machine")
        self.model = str(self.adapter)
        # the adapter's content and how it generates: another of either is another judge (not its cached replies)
        self.judge_id = f"reward-model-{_content_id({**adapter_hashes(self.adapter), 'max_new_tokens': max_new_tokens})}"
        self.max_new_tokens, self.batch_size, self.dtype, self.device = max_new_tokens, batch_size, dtype, device
        self._policy = None
        self._load_lock = threading.Lock()
        self.generation_seconds = 0.0  # wall time spent generating (its cost on this machine)

    def policy(self):
        """The base checkpoint with the adapter merged, loaded on first use."""
        with self._load_lock:
            if self._policy is None:
                from mmpref.sampling import Policy

                self._policy = Policy.load(self.base, self.judge_id, adapter=self.adapter, dtype=self.dtype,
                                           device=self.device)
            return self._policy

    def _call(self, req: JudgeRequest) -> JudgeReply:
        from mmpref.reward_model import parse_reply, rm_question  # lazy: reward_model -> stats -> evaluate -> judges
        from mmpref.sampling import ChatRequest

        if req.task != "annotate":
            raise ValueError(f"judge backend reward_model answers annotation requests only, not {req.task!r}")
        question, responses = req.inputs.get("question"), req.inputs.get("responses")
        if not question or not responses:
            raise ValueError("judge backend reward_model: the request's inputs lack the question or the responses")
        image = req.images[0] if req.images else None
        policy = self.policy()
        asks = [ChatRequest(turns=[rm_question(question, r)], image=image) for r in responses]
        start = time.time()
        replies = [r[0] for r in policy.generate(
            asks, temperature=RESAMPLE_TEMPERATURE if req.attempt else 0.0, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, seed=req.attempt, desc=False)]
        with self._totals_lock:
            self.generation_seconds += time.time() - start
        lines, scores = [], []
        for i, reply in enumerate(replies, 1):
            try:
                critique, rated = parse_reply(reply)
                scores.append(attributes(rated))
            except ValueError:
                critique = reply.strip()
            lines.append(f"Response {i}: {critique}")
        text = "\n".join(lines)
        if len(scores) == len(responses):
            text += "\n\n```json\n" + json.dumps({"responses": scores}) + "\n```"
        tok = policy.tokenizer
        n_in = sum(len(tok(a.turns[0], add_special_tokens=False)["input_ids"]) for a in asks)
        n_out = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in replies)
        return JudgeReply(text=text, input_tokens=n_in, output_tokens=n_out, judge_id=self.judge_id)


def _content_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]

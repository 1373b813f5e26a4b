"""Run under `torchrun --nproc_per_node N`: build mmpref's DPO trainer (which precomputes the reference log-probs)
and record how many pairs each rank scored. Used by tests/test_paper_path.py."""

import json
import sys
from pathlib import Path

import torch.distributed as dist
from trl import DPOTrainer

from mmpref.train import TrainSettings, dpo_trainer

policy, run_dir, rows_file, cache, out_dir, settings_file = sys.argv[1:7]
seen = {"pairs": 0}
real = DPOTrainer.compute_ref_log_probs


def counting(self, model, inputs):
    seen["pairs"] += inputs["input_ids"].shape[0] // 2  # each batch is [chosen; rejected]
    return real(self, model, inputs)


DPOTrainer.compute_ref_log_probs = counting
settings = TrainSettings.from_record(json.loads(Path(settings_file).read_text()))
rows = json.loads(Path(rows_file).read_text())
trainer, _ = dpo_trainer(policy, rows, Path(run_dir), Path(out_dir), settings, ref_cache=Path(cache))
rank = trainer.accelerator.process_index
Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
    "pairs_scored": seen["pairs"], "processes": trainer.accelerator.num_processes,
    "ref_chosen": list(trainer.train_dataset["ref_chosen_logps"])}))
if dist.is_initialized():
    dist.barrier()
    dist.destroy_process_group()

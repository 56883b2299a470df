"""One rank of a DDP test run: ``dialsum train`` through the real CLI, plus test hooks.

Launched by tests/e2e/test_ddp.py as ``torchrun --nproc_per_node 2 ddp_worker.py OUT -- ARGS``.
The hooks only observe (and, when asked, inject an OOM); training is the CLI's own:

- ``DIALSUM_TEST_OOM_RANK`` / ``DIALSUM_TEST_OOM_ABOVE``: on that rank only, every training
  micro-batch with more rows than ABOVE raises the real ``torch.OutOfMemoryError``;
- at the end of training each rank writes ``OUT/rank{N}.pt`` (its final weights) and
  ``OUT/rank{N}.json`` (micro-batch attempts and recovery events), so the test can compare
  the ranks with each other and with a single-process run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import dialsum.train
from dialsum.cli import main


def oom_injector(rank: int):
    target = os.environ.get("DIALSUM_TEST_OOM_RANK")
    if target is None or int(target) != rank:
        return None
    above = int(os.environ.get("DIALSUM_TEST_OOM_ABOVE", "0"))

    def inject(phase: str, rows: int) -> None:
        if phase == "train" and rows > above:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (rank {rank}, test injection)"
            )

    return inject


class DumpAtEnd(TrainerCallback):
    def __init__(self, trainer, out: Path, rank: int) -> None:
        self.trainer, self.out, self.rank = trainer, out, rank

    def on_train_end(self, args, state, control, model=None, **kwargs):
        weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(weights, self.out / f"rank{self.rank}.pt")
        guard = self.trainer.guard
        record = {
            "step_attempts": self.trainer.step_attempts,
            "micro_batch_size": guard.micro_batch_size,
            "events": [[e.step, e.old_batch, e.new_batch] for e in guard.events],
            "world_size": self.trainer.accelerator.num_processes,
            "per_device_train_batch_size": args.per_device_train_batch_size,
        }
        (self.out / f"rank{self.rank}.json").write_text(json.dumps(record))


def install_hooks(out: Path) -> None:
    rank = int(os.environ.get("RANK", "0"))
    original = dialsum.train.build_trainer

    def build_trainer(*args, **kwargs):
        kwargs["fault_injector"] = oom_injector(rank)
        trainer = original(*args, **kwargs)
        trainer.add_callback(DumpAtEnd(trainer, out, rank))
        return trainer

    dialsum.train.build_trainer = build_trainer


if __name__ == "__main__":
    out_dir = Path(sys.argv[1])
    argv = sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:]
    install_hooks(out_dir)
    sys.exit(main(argv))

"""One rank of a DDP test run: ``dialsum train`` through the real CLI, plus test hooks.

Launched by tests/e2e/test_ddp.py as ``torchrun --nproc_per_node 2 ddp_worker.py SPEC``
where SPEC is a JSON file ``{"out": DIR, "runs": [{"name", "argv", "oom_rank"?,
"oom_above"?}, ...]}``. The runs go one after another in the same processes (one launch:
interpreter start-up dominates a tiny run). The hooks only observe, or inject an OOM:

- ``oom_rank`` / ``oom_above`` / ``oom_phase`` (default ``train``): on that rank only,
  every micro-batch of that phase (``train`` or ``eval``) with more rows than
  ``oom_above`` raises the real ``torch.OutOfMemoryError``;
- at the end of training each rank writes ``DIR/NAME/rank{N}.pt`` (its final weights) and
  ``DIR/NAME/rank{N}.json`` (micro-batch attempts, recovery events), so the test can
  compare the ranks with each other and with a single-process run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

import dialsum.training.recipe
from dialsum.cli.app import main


def oom_injector(rank: int, target: int | None, above: int, oom_phase: str = "train"):
    if target != rank:
        return None

    def inject(phase: str, rows: int) -> None:
        if phase == oom_phase and rows > above:
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
            "eval_batch_size": guard.eval_batch_size,
            "events": [[e.step, e.old_batch, e.new_batch] for e in guard.events],
            "world_size": self.trainer.accelerator.num_processes,
            "per_device_train_batch_size": args.per_device_train_batch_size,
        }
        (self.out / f"rank{self.rank}.json").write_text(json.dumps(record))


ORIGINAL_BUILD_TRAINER = dialsum.training.recipe.build_trainer


def install_hooks(out: Path, run: dict) -> None:
    rank = int(os.environ.get("RANK", "0"))
    inject = oom_injector(
        rank, run.get("oom_rank"), int(run.get("oom_above", 0)), run.get("oom_phase", "train")
    )

    def build_trainer(*args, **kwargs):
        kwargs["fault_injector"] = inject
        trainer = ORIGINAL_BUILD_TRAINER(*args, **kwargs)
        trainer.add_callback(DumpAtEnd(trainer, out, rank))
        return trainer

    dialsum.training.recipe.build_trainer = build_trainer


def run_all(spec: dict) -> int:
    for run in spec["runs"]:
        out = Path(spec["out"]) / run["name"]
        out.mkdir(parents=True, exist_ok=True)
        install_hooks(out, run)
        code = main(run["argv"])
        if code != 0:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run_all(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))

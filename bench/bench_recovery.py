"""Cost of one OOM recovery, in redone work, against a run without OOM (same process).

    uv run python bench/bench_recovery.py [--steps 6] [--oom-at 3]

An OOM (the real ``torch.OutOfMemoryError``) is injected once, in the middle of optimizer
step ``--oom-at``, on its third micro-batch. The guard drops the micro-batch and redoes
that step only. Printed: micro-batches run with and without the OOM, steps redone (target:
only the failed one), the wall-time ratio, and whether the final weights agree.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from dialsum.core.config_load import load_section
from dialsum.training.recipe import run_training

ROOT = Path(__file__).resolve().parents[1]


class Counter:
    """Counts micro-batches per optimizer step; raises one OOM at (step, chunk)."""

    def __init__(self, oom_at: tuple[int, int] | None) -> None:
        self.oom_at = oom_at
        self.calls: list[int] = []  # rows per micro-batch, in order
        self.trainer = None

    def __call__(self, phase: str, rows: int) -> None:
        if phase != "train":
            return
        self.calls.append(rows)
        if self.oom_at and len(self.calls) == self.oom_at[0] * 4 + self.oom_at[1]:
            self.oom_at = None
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")


def run(steps: int, oom_at: tuple[int, int] | None, out: Path):
    cfg = load_section(
        ROOT / "config.yaml",
        "tiny",
        [
            f"training.max_steps={steps}",
            "training.effective_batch_size=16",
            "training.micro_batch_size=4",
            "training.eval_strategy=no",
            "training.save_strategy=no",
            "training.report_to=[none]",
            "training.group_by_length=false",
            "data.max_train_samples=96",
            "model.dropout=0.0",
            f"training.output_dir={out}",
        ],
    )
    counter = Counter(oom_at)
    started = time.perf_counter()
    result = run_training(cfg, echo=lambda *_: None, fault_injector=counter)
    seconds = time.perf_counter() - started
    return result, counter.calls, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--oom-at", type=int, default=3, help="1-based step that hits the OOM")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, base_calls, base_s = run(args.steps, None, Path(tmp) / "base")
        oom, oom_calls, oom_s = run(args.steps, (args.oom_at - 1, 3), Path(tmp) / "oom")
        rows_base, rows_oom = sum(base_calls), sum(oom_calls)
        redone_rows = rows_oom - rows_base
        wa = load_file(str(base.run.best / "model.safetensors"))
        wb = load_file(str(oom.run.best / "model.safetensors"))
        max_diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"micro-batches: {len(base_calls)} without OOM, {len(oom_calls)} with one OOM")
    print(f"rows processed: {rows_base} vs {rows_oom}: {redone_rows} rows redone")
    print(f"steps redone: {redone_rows / 16:.2f} (target: 1.00 at most, only the failed step)")
    print(f"wall time ratio (with OOM / without): {oom_s / base_s:.2f}")
    print(f"micro-batch after recovery: {oom.metrics['micro_batch_size_final']}")
    print(f"max |weight difference| vs the run without OOM: {max_diff:.2e}")


if __name__ == "__main__":
    main()

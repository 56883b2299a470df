"""Shared by tests: the tiny section set up for fast, deterministic CPU runs."""

from __future__ import annotations

from pathlib import Path

from dialsum.config import SectionConfig, load_section

ROOT = Path(__file__).resolve().parents[1]


def tiny_section(output_dir: Path, *extra: str) -> SectionConfig:
    """16 training rows, 8 per step (one micro-batch of 8), 3 steps, no eval or saving,
    dropout off, runs under ``output_dir``; ``extra`` overrides come last."""
    overrides = [
        "data.max_train_samples=16",
        "data.max_eval_samples=6",
        "training.effective_batch_size=8",
        "training.micro_batch_size=8",
        "training.eval_batch_size=6",
        "training.max_steps=3",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.group_by_length=false",
        "training.report_to=[none]",
        "training.logging_steps=1",
        "model.dropout=0.0",
        f"training.output_dir={output_dir}",
        *extra,
    ]
    return load_section(ROOT / "config.yaml", "tiny", overrides)

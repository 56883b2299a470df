"""Command-line flags as config overrides, and the section config they give.

Flags such as ``--max-steps`` or ``--train-data`` are spelled as the ``--set`` overrides
they stand for (``training.max_steps=N``), so a flag and its ``--set`` take one code path
and a resumed run records them the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dialsum.core.config_schema import SectionConfig


def flag_overrides(
    sets: list[str] | None,
    *,
    max_steps: int | None = None,
    save_steps: int | None = None,
    train_data: Path | None = None,
    val_data: Path | None = None,
    test_data: Path | None = None,
    output_dir: Path | None = None,
) -> list[str]:
    """Command-line flags expressed as ``--set`` overrides (one code path for both)."""
    out = list(sets or [])
    if max_steps is not None:
        out.append(f"training.max_steps={max_steps}")
    if save_steps is not None:
        # Saving every N steps: evaluation (if on) moves to the same rhythm so the best
        # checkpoint can be picked among the saved ones.
        out += ["training.save_strategy=steps", f"training.save_steps={save_steps}"]
        out.append(f"training.eval_steps={save_steps}")
    for key, value in (
        ("data.train", train_data),
        ("data.dev", val_data),
        ("data.test", test_data),
        ("training.output_dir", output_dir),
    ):
        if value is not None:
            out.append(f"{key}={value}")
    return out


def load_with_overrides(config: Path, section: str, overrides: list[str]) -> SectionConfig:
    """The section with ``overrides`` applied; saving by steps also evaluates by steps."""
    from dialsum.core.config_load import load_section

    cfg = load_section(config, section, overrides)
    saving_by_steps = any(o.startswith("training.save_strategy=steps") for o in overrides)
    if saving_by_steps and cfg.training.eval_strategy == "epoch":
        cfg.training.eval_strategy = "steps"
    return cfg

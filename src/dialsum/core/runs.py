"""Run folders: one folder per training run, laid out the same way every time.

``<output_dir>/<section>/<YYYYmmdd-HHMMSS>/``::

    config.yaml        resolved section (what really ran)
    plan.json          the memory plan (or why planning was skipped)
    guard.json         run-time state: current micro-batch, OOM recoveries (for --resume)
    ds_config.json     the DeepSpeed config (only with hardware.zero_stage > 0)
    logs/              TensorBoard events (and W&B offline files when configured)
    checkpoints/       checkpoint-N folders written by the Trainer
    best/              the best model (by the configured metric) + tokenizer
    metrics.json       final metrics
    submission.csv     predictions written by `dialsum predict` (default location)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dialsum.core.atomic import atomic_open
from dialsum.core.errors import UserError


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def guard(self) -> Path:
        return self.path / "guard.json"

    @property
    def deepspeed_config(self) -> Path:
        return self.path / "ds_config.json"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.path / "best"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def submission(self) -> Path:
        return self.path / "submission.csv"

    def checkpoint_folders(self) -> list[tuple[int, Path]]:
        """``(step, folder)`` of every ``checkpoint-N`` folder, complete or not, by step."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for child in self.checkpoints.iterdir():
            step = child.name.removeprefix("checkpoint-")
            if step.isdigit() and child.is_dir():
                found.append((int(step), child))
        return sorted(found)

    def last_checkpoint(self) -> Path | None:
        """Highest-numbered complete ``checkpoint-N`` folder (see ``checkpoint_complete``)."""
        complete = [
            folder for _, folder in self.checkpoint_folders() if checkpoint_complete(folder)
        ]
        return complete[-1] if complete else None


def checkpoint_complete(folder: Path) -> bool:
    """The Trainer writes ``trainer_state.json`` last, and not atomically: a checkpoint is
    complete when that file exists and parses (a process killed while saving leaves a
    folder without it, or with a truncated one)."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def remove_unfinished_files(run: RunDir, echo=print) -> None:
    """Before resuming: drop checkpoint folders a killed process left half-written, and the
    temp files of atomic writes it never renamed (nothing that was complete is touched)."""
    import shutil

    for _, folder in run.checkpoint_folders():
        if not checkpoint_complete(folder):
            echo(f"removing the unfinished checkpoint {folder} (the process stopped while saving)")
            shutil.rmtree(folder, ignore_errors=True)
    for temp in run.path.rglob(".*.tmp"):
        if temp.is_file():
            temp.unlink(missing_ok=True)


def new_run(output_dir: str | Path, section: str) -> RunDir:
    """Create a fresh run folder (a suffix keeps two runs in the same second apart)."""
    base = Path(output_dir) / section
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(100):
        path = base / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            path.mkdir(parents=True, exist_ok=False)
            return RunDir(path)
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run folder under {base}")


def list_runs(output_dir: str | Path, section: str) -> list[RunDir]:
    base = Path(output_dir) / section
    if not base.is_dir():
        return []
    return [
        RunDir(p) for p in sorted(base.iterdir()) if p.is_dir() and (p / "config.yaml").exists()
    ]


def latest_run(output_dir: str | Path, section: str) -> RunDir | None:
    runs = list_runs(output_dir, section)
    return runs[-1] if runs else None


def find_best_model(output_dir: str | Path, section: str) -> Path:
    """The best model of the latest run that has one; a clear error when none exists."""
    for run in reversed(list_runs(output_dir, section)):
        # A whole model (config.json), or a causal LoRA/QLoRA run's adapters.
        if any((run.best / name).is_file() for name in ("config.json", "adapter_config.json")):
            return run.best
        last = run.last_checkpoint()
        if last is not None:
            return last
    raise UserError(
        f"no trained model found under {Path(output_dir) / section}. Train first "
        f"(dialsum train -s {section}) or pass --checkpoint DIR."
    )


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def write_yaml_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers never see half a file."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)

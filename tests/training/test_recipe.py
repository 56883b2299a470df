"""Where a run writes: an output folder that cannot take files is refused before the run
folder exists; a checkpoint the disk refuses is one message, and --resume continues
(issue 18, point 8)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from transformers import Seq2SeqTrainer

import dialsum.core.atomic
from dialsum.core.errors import OutputError
from dialsum.core.runs import latest_run
from dialsum.training.recipe import run_training
from helpers import tiny_section

quiet = lambda *_: None  # noqa: E731


def test_an_output_dir_that_is_a_file_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("a file", encoding="utf-8")
    with pytest.raises(OutputError, match=f"{blocker} is a file"):
        run_training(tiny_section(blocker), echo=quiet)
    assert sorted(tmp_path.iterdir()) == [blocker]


def test_a_read_only_output_dir_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):  # root ignores permission bits
        if Path(path).parent == locked and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(dialsum.core.atomic.os, "open", read_only)
    with pytest.raises(OutputError, match="Permission denied"):
        run_training(tiny_section(locked), echo=quiet)
    assert list(locked.iterdir()) == []


def test_a_full_disk_while_saving_is_one_message_and_resume_continues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saving = ("training.save_strategy=steps", "training.save_steps=1", "training.max_steps=2")
    real = Seq2SeqTrainer._save_checkpoint

    def full_at_step_2(self, model, trial):
        if self.state.global_step < 2:
            return real(self, model, trial)
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True)  # half-written, as a full disk leaves it
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.safetensors"))

    monkeypatch.setattr(Seq2SeqTrainer, "_save_checkpoint", full_at_step_2)
    with pytest.raises(OutputError) as err:
        run_training(tiny_section(tmp_path, *saving), echo=quiet)
    message = str(err.value)
    assert "training stopped at step 2" in message and "No space left on device" in message
    run = latest_run(tmp_path, "tiny")
    assert f"the last complete checkpoint is {run.checkpoints / 'checkpoint-1'}" in message
    assert not (run.path / "run.lock").exists()
    monkeypatch.setattr(Seq2SeqTrainer, "_save_checkpoint", real)
    resumed = run_training(tiny_section(tmp_path, *saving), resume=True, echo=quiet)
    assert resumed.run.path == run.path and (run.best / "model.safetensors").is_file()

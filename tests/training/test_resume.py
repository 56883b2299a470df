"""--resume continues a run exactly as saved; one process per run folder; whole-run loss."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from dialsum.core.errors import UserError
from dialsum.core.run_lock import LOCK_NAME, RunLock
from dialsum.core.runs import latest_run, new_run
from dialsum.training.recipe import run_training
from helpers import tiny_section

quiet = lambda *_: None  # noqa: E731
SAVING = ("training.save_strategy=steps", "training.save_steps=2")


def test_resume_without_flags_continues_as_saved(tmp_path: Path) -> None:
    first = run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    # The current command line says 5 steps and no saving: the saved run says 2 and saving.
    cli = tiny_section(tmp_path, "training.max_steps=2")
    cli.training.max_steps, cli.training.save_strategy = 5, "no"
    resumed = run_training(cli, resume=True, echo=quiet)
    assert resumed.run.path == first.run.path
    assert resumed.metrics["train_loss_steps"] == "1-2"  # nothing left to train


def test_changed_flags_on_resume_are_refused_then_recorded(tmp_path: Path) -> None:
    run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    cfg = tiny_section(tmp_path, *SAVING)
    with pytest.raises(UserError, match=r"training.max_steps: 2 \(saved\) -> 4"):
        run_training(cfg, resume=True, resume_overrides=["training.max_steps=4"], echo=quiet)
    result = run_training(
        cfg, resume=True, resume_overrides=["training.max_steps=4"], override_on_resume=True,
        echo=quiet,
    )  # fmt: skip
    assert result.metrics["train_loss_steps"] == "1-4"
    saved = yaml.safe_load((result.run.path / "config.yaml").read_text())
    assert saved["training"]["max_steps"] == 4
    history = yaml.safe_load((result.run.path / "resume_overrides.yaml").read_text())
    assert history[0]["changes"] == {"training.max_steps": {"saved": 2, "given": 4}}


def test_train_loss_after_resume_is_the_whole_runs_mean(tmp_path: Path) -> None:
    whole = run_training(tiny_section(tmp_path / "a", *SAVING, "training.max_steps=4"), echo=quiet)
    run_training(tiny_section(tmp_path / "b", *SAVING, "training.max_steps=2"), echo=quiet)
    resumed = run_training(
        tiny_section(tmp_path / "b"), resume=True, resume_overrides=["training.max_steps=4"],
        override_on_resume=True, echo=quiet,
    )  # fmt: skip
    assert resumed.metrics["train_loss_steps"] == "1-4"
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-5)


def test_resume_skips_a_newer_run_without_checkpoint_and_takes_a_path(tmp_path: Path) -> None:
    older = run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    newer = new_run(tmp_path, "tiny")  # e.g. interrupted before its first checkpoint
    (newer.path / "config.yaml").write_text(older.run.config.read_text())
    assert latest_run(tmp_path, "tiny").path == newer.path
    result = run_training(tiny_section(tmp_path), resume=True, echo=quiet)
    assert result.run.path == older.run.path
    by_path = run_training(tiny_section(tmp_path), resume=str(older.run.path), echo=quiet)
    assert by_path.run.path == older.run.path
    with pytest.raises(UserError, match="not a run folder"):
        run_training(tiny_section(tmp_path), resume=str(tmp_path), echo=quiet)


def test_a_live_lock_refuses_and_a_stale_one_is_taken_over(tmp_path: Path) -> None:
    messages: list[str] = []
    live = pytest.raises(UserError, match=f"in use by process {os.getpid()}")
    with RunLock(tmp_path, echo=messages.append), live:
        RunLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()  # released
    import socket

    dead_pid = 2**22 + 12345  # above any pid_max in use: no such process
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname()}))
    with RunLock(tmp_path, echo=messages.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert messages == [f"taking over a stale run lock of process {dead_pid} (no longer running)"]


def test_resume_while_the_run_is_alive_is_refused(tmp_path: Path) -> None:
    first = run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    with RunLock(first.run.path), pytest.raises(UserError, match="in use by process"):
        run_training(tiny_section(tmp_path), resume=True, echo=quiet)


class StopAt(TrainerCallback):
    """Ends training after ``step`` (a clean interruption right after a checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_with_length_grouped_batches_and_dropout_is_bit_identical(tmp_path: Path) -> None:
    # The length-grouped order must depend on (seed, epoch) only: transformers' sampler
    # drew it from the global RNG, which a resumed run reaches in another state.
    common = (*SAVING, "training.max_steps=6", "training.group_by_length=true",
              "model.dropout=0.1", "data.max_train_samples=48")  # fmt: skip
    whole = run_training(tiny_section(tmp_path / "a", *common), echo=quiet)
    run_training(tiny_section(tmp_path / "b", *common), echo=quiet, callbacks=[StopAt(2)])
    resumed = run_training(tiny_section(tmp_path / "b", *common), resume=True, echo=quiet)
    wa = load_file(str(whole.run.best / "model.safetensors"))
    wb = load_file(str(resumed.run.best / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed.metrics["train_loss"] == whole.metrics["train_loss"]


def test_resuming_a_finished_run_trains_nothing_more(tmp_path: Path) -> None:
    # 3 steps of 8 rows over 16 rows: the run ends mid-epoch, where the Trainer resumed
    # from its last checkpoint would run a 4th step.
    saving = ("training.save_strategy=steps", "training.save_steps=3", "training.max_steps=3")
    done = run_training(tiny_section(tmp_path, *saving), echo=quiet)
    before = load_file(str(done.run.best / "model.safetensors"))
    again = run_training(tiny_section(tmp_path, *saving), resume=True, echo=quiet)
    assert again.metrics["train_loss_steps"] == "1-3"
    assert again.metrics["train_loss"] == pytest.approx(done.metrics["train_loss"])
    after = load_file(str(again.run.best / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not (again.run.checkpoints / "checkpoint-4").exists()


def _copy_of_train_csv(tmp_path: Path, rows: int, reverse: bool = False) -> Path:
    """The first ``rows`` data rows of the bundled training CSV (in reverse order: the same
    rows, so the tiny model's vocabulary stays), as its own file."""
    import csv

    from helpers import ROOT

    with open(ROOT / "data/sample/train.csv", encoding="utf-8-sig", newline="") as handle:
        records = list(csv.reader(handle))
    path = tmp_path / "train.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        body = records[1 : rows + 1]
        csv.writer(handle).writerows([records[0], *(body[::-1] if reverse else body)])
    return path


def test_resume_after_the_training_data_changed_is_refused_before_anything_is_written(
    tmp_path: Path,
) -> None:
    """Issue 18, point 6: the resumed run would continue on other rows."""
    data = _copy_of_train_csv(tmp_path, 16)
    first = run_training(
        tiny_section(tmp_path, *SAVING, "training.max_steps=2", f"data.train={data}"), echo=quiet
    )
    before = {p: p.read_bytes() for p in first.run.path.glob("*.*") if p.is_file()}
    _copy_of_train_csv(tmp_path, 16, reverse=True)  # the same path, rows in another order
    cfg = tiny_section(tmp_path, *SAVING)
    with pytest.raises(UserError, match=r"data.train .*changed since the run started"):
        run_training(cfg, resume=True, echo=quiet)
    after = {p: p.read_bytes() for p in first.run.path.glob("*.*") if p.is_file()}
    assert after == before  # no resume_overrides.yaml, config.yaml as it was, no lock
    # Asked for on purpose, it continues on the new data and records that.
    result = run_training(
        cfg, resume=True, resume_overrides=["training.max_steps=4"], override_on_resume=True,
        echo=quiet,
    )  # fmt: skip
    history = yaml.safe_load((result.run.path / "resume_overrides.yaml").read_text())
    assert "data files" in history[0]["changes"]


def test_resume_with_a_changed_flag_that_fails_writes_nothing(tmp_path: Path) -> None:
    first = run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    before = sorted(p.name for p in first.run.path.iterdir())
    with pytest.raises(UserError):
        run_training(
            tiny_section(tmp_path, *SAVING), resume=True, override_on_resume=True, echo=quiet,
            resume_overrides=["data.train=/nonexistent/train.csv", "training.max_steps=4"],
        )  # fmt: skip
    assert sorted(p.name for p in first.run.path.iterdir()) == before


def test_resuming_a_run_folder_of_another_section_is_refused(tmp_path: Path) -> None:
    first = run_training(tiny_section(tmp_path, *SAVING, "training.max_steps=2"), echo=quiet)
    cfg = tiny_section(tmp_path)
    with pytest.raises(UserError, match="started with section 'tiny', not 'kobart'"):
        run_training(cfg, resume=str(first.run.path), section="kobart", echo=quiet)
    # Without -s, or with the run's own section, the folder's saved config is used.
    again = run_training(cfg, resume=str(first.run.path), section="tiny", echo=quiet)
    assert again.run.path == first.run.path

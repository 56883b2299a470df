"""``predict --output`` that cannot be written (issue 10, item 8): a bad path is refused
before the model loads and generates; a write that fails after generation saves the
summaries elsewhere and says where - generated summaries are never lost."""

from __future__ import annotations

import csv
import errno
import os
from pathlib import Path

import pytest

import dialsum.core.atomic
import dialsum.inference.predict as predict_mod
from dialsum.cli.app import main
from dialsum.core.config_load import load_section
from dialsum.core.errors import UserError
from dialsum.models.loading import save_pretrained
from dialsum.models.setup import setup_model

ROOT = Path(__file__).resolve().parents[2]
TEST_ROWS = "fname,dialogue\nt_0,#Person1#: 안녕하세요.\nt_1,#Person1#: 내일 봐요.\n"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with a tiny model in best/ (untrained: only the plumbing matters)."""
    run = tmp_path_factory.mktemp("runs") / "tiny" / "20260101-000000"
    model, tokenizer = setup_model(load_section(ROOT / "config.yaml", "tiny"))
    save_pretrained(model, tokenizer, run / "best")
    (run / "config.yaml").write_text("section: tiny\n", encoding="utf-8")
    return run


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts generation passes (the expensive part a bad --output must not waste)."""
    calls: list[int] = []
    real = predict_mod.predict_table

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_table", spy)
    return calls


def predict(run: Path, tmp_path: Path, output: Path) -> int:
    test_csv = tmp_path / "test.csv"
    test_csv.write_text(TEST_ROWS, encoding="utf-8")
    argv = ["predict", "-c", str(ROOT / "config.yaml"), "-s", "tiny"]
    argv += ["--checkpoint", str(run / "best"), "--test-data", str(test_csv)]
    argv += ["--output", str(output), "--set", "inference.max_new_tokens=4"]
    return main(argv)


def test_output_onto_a_directory_is_refused_before_generating(
    run_dir: Path, tmp_path: Path, generations: list[int], capsys
) -> None:
    assert predict(run_dir, tmp_path, tmp_path) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is a directory" in err and "--output" in err
    assert generations == []


def test_output_under_a_file_is_refused_before_generating(
    run_dir: Path, tmp_path: Path, generations: list[int], capsys
) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("not a folder", encoding="utf-8")
    assert predict(run_dir, tmp_path, blocker / "sub" / "submission.csv") == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert f"{blocker} is a file" in err
    assert generations == []


def test_output_in_a_read_only_folder_is_refused_before_generating(
    run_dir: Path, tmp_path: Path, generations: list[int], monkeypatch, capsys
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:
        # root ignores folder permissions: refuse creating files there the way the kernel
        # would for a user in a read-only folder.
        real_open = os.open

        def read_only(path, flags, *args, **kwargs):
            if Path(path).parent == locked and flags & os.O_CREAT:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(dialsum.core.atomic.os, "open", read_only)
    else:
        locked.chmod(0o555)
    assert predict(run_dir, tmp_path, locked / "submission.csv") == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "Permission denied" in err and str(locked) in err
    assert generations == []


def test_a_late_write_failure_saves_the_summaries_next_to_the_run(
    run_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    output = tmp_path / "out" / "submission.csv"
    real = predict_mod.predict_table

    def generate_then_block(*args, **kwargs):
        summaries = real(*args, **kwargs)
        output.mkdir(parents=True)  # the path became a folder while we generated
        return summaries

    monkeypatch.setattr(predict_mod, "predict_table", generate_then_block)
    assert predict(run_dir, tmp_path, output) == 2
    err = capsys.readouterr().err.replace("\n", "")
    rescued = sorted(run_dir.glob("submission.rescued-*.csv"))
    assert len(rescued) == 1 and str(rescued[0]) in err
    assert f"could not write {output}" in err
    with rescued[0].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert [r[0] for r in rows] == ["fname", "t_0", "t_1"]
    rescued[0].unlink()


def test_rescue_falls_back_to_the_outputs_folder_then_cwd(tmp_path: Path) -> None:
    from dialsum.core.outputs import write_or_rescue

    written: list[Path] = []

    def write(path: Path) -> None:
        if path.parent.name != "cwd":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        written.append(path)

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    with pytest.raises(UserError) as info:
        write_or_rescue(tmp_path / "o" / "s.csv", write, [tmp_path / "run", cwd], "summaries")
    assert written and written[0].parent == cwd
    assert str(written[0]) in str(info.value)

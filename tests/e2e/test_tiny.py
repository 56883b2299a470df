"""End to end: the tiny section trains, predicts and evaluates through the real CLI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from dialsum.cli.app import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "config.yaml"
FAST = [
    "--set",
    "data.max_train_samples=48",
    "--set",
    "data.max_eval_samples=8",
    "--set",
    "training.eval_strategy=no",
]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    code = main(
        ["train", "-c", str(CONFIG), "-s", "tiny", "--max-steps", "3", "--output-dir", str(out)]
        + FAST
    )
    assert code == 0
    return out


def test_train_writes_a_complete_run_folder(trained: Path) -> None:
    (run,) = list((trained / "tiny").iterdir())
    for name in ("config.yaml", "plan.json", "guard.json", "metrics.json", "best/config.json"):
        assert (run / name).is_file(), name
    assert any((run / "logs").rglob("events.out.tfevents.*"))


def test_predict_then_evaluate(trained: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "sub.csv"
    code = main(
        ["predict", "-c", str(CONFIG), "-s", "tiny", "--output", str(out_csv)]
        + ["--set", f"training.output_dir={trained}"]
    )
    assert code == 0
    rows = read_rows(out_csv)
    test_rows = read_rows(ROOT / "data/sample/test.csv")
    assert [r["fname"] for r in rows] == [r["fname"] for r in test_rows]
    assert list(rows[0]) == ["fname", "summary"]

    # evaluate a prediction file against the dev references (dev predictions = references)
    dev = read_rows(ROOT / "data/sample/dev.csv")
    pred = tmp_path / "dev_pred.csv"
    with pred.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fname", "summary"])
        writer.writerows([r["fname"], r["summary"]] for r in dev)
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ROOT / "data/sample/dev.csv")]) == 0


def test_bad_config_key_exits_2_without_output(tmp_path: Path, capsys) -> None:
    code = main(
        ["train", "-c", str(CONFIG), "-s", "tiny", "--output-dir", str(tmp_path / "o")]
        + ["--set", "training.learnin_rate=1"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "training.learnin_rate: unknown key (did you mean learning_rate?)" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_bad_csv_exits_2_naming_the_row(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "train.csv"
    bad.write_text("fname,dialogue,summary\nt1,#Person1#: 안녕,요약\nt1,,요약\n", encoding="utf-8")
    code = main(
        ["train", "-c", str(CONFIG), "-s", "tiny", "--train-data", str(bad)]
        + ["--output-dir", str(tmp_path / "o")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "line 3" in err
    assert not (tmp_path / "o").exists()  # nothing written, not even a run folder


def test_predict_bad_test_csv_leaves_existing_output(trained: Path, tmp_path: Path) -> None:
    out_csv = tmp_path / "sub.csv"
    out_csv.write_text("keep me\n", encoding="utf-8")
    bad = tmp_path / "test.csv"
    bad.write_text("fname,text\na,b\n", encoding="utf-8")
    code = main(
        ["predict", "-c", str(CONFIG), "-s", "tiny", "--test-data", str(bad)]
        + ["--output", str(out_csv), "--set", f"training.output_dir={trained}"]
    )
    assert code == 2
    assert out_csv.read_text(encoding="utf-8") == "keep me\n"


def test_seed_command_runs(tmp_path: Path) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "code/trainer.py"),
        "--config",
        str(CONFIG),
        "--config-section",
        "tiny",
        # Enough steps that the tiny model writes something: an untrained one ends every
        # summary at once, and predict refuses a submission of empty summaries (issue 18).
        "--max_steps",
        "20",
        "--save_steps",
        "1000",
        "--output-dir",
        str(tmp_path),
        "--set",
        "data.max_train_samples=32",
        "--set",
        "data.max_eval_samples=4",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = list((tmp_path / "tiny").iterdir())
    assert (run / "submission.csv").is_file()


def test_lora_run_saves_a_merged_model_that_predict_loads(tmp_path: Path) -> None:
    args = ["-c", str(CONFIG), "-s", "tiny", "--set", f"training.output_dir={tmp_path}"]
    code = main(
        ["train", *args, "--max-steps", "2", "--set", "model.lora.enabled=true"]
        + ["--set", "data.max_train_samples=16", "--set", "training.report_to=[none]"]
        + FAST[-2:]
    )
    assert code == 0
    out_csv = tmp_path / "sub.csv"
    assert main(["predict", *args, "--output", str(out_csv)]) == 0
    assert len(read_rows(out_csv)) == len(read_rows(ROOT / "data/sample/test.csv"))


def test_unreachable_hub_model_exits_2_without_a_run_folder(tmp_path: Path, capsys) -> None:
    # Tests run offline: a hub id cannot be fetched, and the error says what to do.
    code = main(
        ["train", "-c", str(CONFIG), "-s", "eenzeenee", "--output-dir", str(tmp_path / "o")]
        + ["--set", "data.max_train_samples=4"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "could not load model 'eenzeenee/t5-base-korean-summarization'" in err
    assert "--local-dir" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_wandb_without_the_extra_is_a_clear_error(tmp_path: Path, capsys) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    code = main(
        ["train", "-c", str(CONFIG), "-s", "tiny", "--output-dir", str(tmp_path / "o")]
        + ["--set", "training.report_to=[tensorboard, wandb]"]
    )
    assert code == 2
    assert "uv sync --extra wandb" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_seed_command_checks_the_test_file_before_training(tmp_path: Path) -> None:
    cmd = [
        sys.executable, str(ROOT / "code/trainer.py"), "--config", str(CONFIG),
        "--config-section", "tiny", "--max_steps", "2", "--output-dir", str(tmp_path),
        "--test-data", str(tmp_path / "missing.csv"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "missing.csv" in done.stderr
    assert not (tmp_path / "tiny").exists()  # nothing trained, no run folder

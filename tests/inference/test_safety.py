"""``predict`` never exits 0 with a wrong result and never replaces an input (issue 18,
points 1, 3, 6 and 9): an output equal to an input, a checkpoint of another section, a
damaged or NaN model and a submission of empty summaries are refused with exit 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import dialsum.inference.predict as predict_mod
from dialsum.cli.app import main
from dialsum.core.config_load import load_section
from dialsum.models.loading import save_pretrained
from dialsum.models.setup import setup_model

ROOT = Path(__file__).resolve().parents[2]
TEST_ROWS = "fname,dialogue\nt_0,#Person1#: 안녕하세요.\nt_1,#Person1#: 내일 봐요.\n"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as train leaves it: the resolved config.yaml and a tiny model in best/."""
    run = tmp_path_factory.mktemp("runs") / "tiny" / "20260101-000000"
    cfg = load_section(ROOT / "config.yaml", "tiny", ["inference.max_new_tokens=4"])
    model, tokenizer = setup_model(cfg)
    save_pretrained(model, tokenizer, run / "best")
    (run / "config.yaml").write_text(
        yaml.safe_dump(cfg.to_dict() | {"section": "tiny"}, allow_unicode=True), encoding="utf-8"
    )
    return run


@pytest.fixture
def run(saved_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "tiny" / saved_run.name
    shutil.copytree(saved_run, copy)
    return copy


@pytest.fixture
def generations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = predict_mod.predict_table

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_mod, "predict_table", spy)
    return calls


def _test_csv(tmp_path: Path) -> Path:
    path = tmp_path / "test.csv"
    path.write_text(TEST_ROWS, encoding="utf-8")
    return path


def predict(run: Path, tmp_path: Path, *extra: str, section: str | None = "tiny") -> int:
    argv = ["predict", "-c", str(ROOT / "config.yaml")] + (["-s", section] if section else [])
    argv += ["--checkpoint", str(run / "best"), "--test-data", str(_test_csv(tmp_path))]
    return main(argv + ["--set", "inference.max_new_tokens=4", *extra])


def test_output_equal_to_the_test_csv_is_refused_and_the_input_kept(
    run: Path, tmp_path: Path, generations: list[int], capsys
) -> None:
    test_csv = _test_csv(tmp_path)
    assert predict(run, tmp_path, "--output", str(test_csv)) == 2
    assert test_csv.read_text(encoding="utf-8") == TEST_ROWS
    assert "is the test CSV (data.test)" in capsys.readouterr().err.replace("\n", "")
    assert generations == []


def test_a_checkpoint_of_another_section_is_refused_without_s_its_config_is_used(
    run: Path, tmp_path: Path, capsys
) -> None:
    assert predict(run, tmp_path, section="eenzeenee") == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "was trained with section 'tiny'" in err and "not 'eenzeenee'" in err
    # No -s: the run's own config.yaml (the default section would be eenzeenee).
    assert predict(run, tmp_path, "--output", str(tmp_path / "s.csv"), section=None) == 0
    assert f"{run / 'config.yaml'} (section tiny" in capsys.readouterr().out.replace("\n", "")


def test_a_truncated_safetensors_file_is_named_not_a_traceback(
    run: Path, tmp_path: Path, generations: list[int], capsys
) -> None:
    weights = run / "best" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert predict(run, tmp_path, "--output", str(tmp_path / "s.csv")) == 2
    err = capsys.readouterr().err.replace("\n", "")
    assert "damaged weights (model.safetensors:" in err and "Traceback" not in err
    assert generations == [] and not (tmp_path / "s.csv").exists()


def test_a_model_with_nan_weights_is_refused_before_generating(
    run: Path, tmp_path: Path, generations: list[int], capsys
) -> None:
    path = run / "best" / "model.safetensors"
    weights = load_file(str(path))
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, str(path), metadata={"format": "pt"})
    assert predict(run, tmp_path, "--output", str(tmp_path / "s.csv")) == 2
    assert "non-finite (NaN/inf) weights" in capsys.readouterr().err.replace("\n", "")
    assert generations == [] and not (tmp_path / "s.csv").exists()


def test_a_submission_of_empty_summaries_is_not_written(
    run: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(predict_mod, "predict_table", lambda cfg, m, t, table, *a, **k: [""] * 2)
    assert predict(run, tmp_path, "--output", str(tmp_path / "s.csv")) == 2
    assert "every one of the 2 summaries" in capsys.readouterr().err.replace("\n", "")
    assert not (tmp_path / "s.csv").exists()

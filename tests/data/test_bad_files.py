"""Files a user (or a crash) can break: each gives one clear exit-2 error naming the file,
the line where it can, and what to do - never a traceback (issue 10, item 10)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialsum.cli.app import main
from dialsum.core.config_load import load_section, read_yaml
from dialsum.core.errors import ConfigError, UserError
from dialsum.training.oom_guard import GuardState

KOREAN_YAML = """\
sections:
  tiny:
    model:
      name: tiny:t5
    tokenizer:
      prefix: "요약: "
"""


def test_cp949_yaml_names_the_file_the_line_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(KOREAN_YAML.encode("cp949"))
    with pytest.raises(ConfigError) as info:
        load_section(path, "tiny")
    message = str(info.value)
    assert str(path) in message
    assert "line 6" in message  # the prefix with Korean text
    assert "UTF-8" in message and "CP949" in message


def test_sections_written_as_a_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("defaults: {}\nsections:\n  - tiny:\n      model: {name: tiny:t5}\n")
    for call in (lambda: load_section(path, "tiny"), lambda: read_yaml(path)):
        with pytest.raises(ConfigError) as info:
            call()
        message = str(info.value)
        assert f"{path}: line 2" in message
        assert "'sections' must be a mapping" in message and "a list" in message
        assert "tiny:" in message  # shows the shape to write instead


def test_defaults_written_as_a_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("sections:\n  tiny: {}\ndefaults:\n  - training\n")
    with pytest.raises(ConfigError, match=r"line 3: 'defaults' must be a mapping"):
        load_section(path, "tiny")


def test_cli_exits_2_for_a_cp949_yaml(tmp_path: Path, capsys) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(KOREAN_YAML.encode("cp949"))
    assert main(["plan", "-c", str(path), "-s", "tiny", "--gpu", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(path) in err.replace("\n", "")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"version": 1, "micro_batch_size": 4,\n  "eval_', "line 2"),  # cut mid-write
        ("", "line 1"),
        ('{"version": 1, "micro_batch_size": 4}', "eval_batch_size"),
        ("[1, 2]", "a JSON object"),
    ],
)
def test_truncated_guard_json_is_a_user_error(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "guard.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as info:
        GuardState.load(path)
    message = str(info.value)
    assert str(path) in message and where in message
    assert "delete" in message  # what to do: the plan's sizes are used again

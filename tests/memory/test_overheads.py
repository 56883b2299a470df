"""Usable and required bytes, and reading a calibration file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialsum.core.errors import ConfigError
from dialsum.memory.overheads import (
    ALLOCATOR_FRAGMENTATION,
    CALIBRATION_ENV,
    Overheads,
    default_calibration_path,
    default_overheads,
    load_calibration,
    margin_bytes,
    overheads_for_allocator,
    required_bytes,
    usable_bytes,
)
from dialsum.speed.gpus import GPU, resolve_gpu

MIB = 2**20


def test_defaults() -> None:
    overheads = Overheads()
    assert overheads.cuda_context_bytes == 805_306_368  # 768 MiB
    assert overheads.library_workspace_bytes == 67_108_864  # 64 MiB
    assert overheads.fragmentation_fraction == 0.08
    assert overheads.margin_fraction == 0.05
    assert overheads.source == "defaults"


def test_usable_bytes_on_v100_with_defaults() -> None:
    v100 = resolve_gpu("v100-16gb")
    # 5% of 16,945,709,056 is 847,285,452.8, rounded up.
    assert margin_bytes(v100, Overheads()) == 847_285_453
    # 16,945,709,056 - 805,306,368 - 847,285,453
    assert usable_bytes(v100, Overheads()) == 15_293_117_235


def test_usable_bytes_is_never_negative() -> None:
    tiny = GPU("tiny", "tiny", 100 * MIB, bf16=True)
    assert usable_bytes(tiny, Overheads()) == 0


def test_required_bytes_is_exact_decimal_arithmetic() -> None:
    no_workspace = Overheads(library_workspace_bytes=0)
    # 1000 * 1.08 is 1080.0000000000002 in floats; the ceiling must still be 1080.
    assert required_bytes(1000, no_workspace) == 1080
    assert required_bytes(1001, no_workspace) == 1082  # 1081.08 rounds up
    # ceil(1,000,000,001 * 1.08) + 64 MiB = 1,080,000,002 + 67,108,864
    assert required_bytes(1_000_000_001, Overheads()) == 1_147_108_866
    zero = Overheads(0, 0, 0.0, 0.0)
    assert required_bytes(123, zero) == 123


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_calibration_reads_all_keys(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            "cuda_context_bytes": 536_870_912,
            "library_workspace_bytes": 33_554_432,
            "fragmentation_fraction": 0.06,
            "margin_fraction": 0,
            "gpu": "NVIDIA A100-SXM4-40GB",
            "measured_at": "2025-01-31T12:00:00Z",
            "torch_version": "2.6.0",  # newer probes may add keys
        },
    )
    assert load_calibration(path) == Overheads(
        cuda_context_bytes=536_870_912,
        library_workspace_bytes=33_554_432,
        fragmentation_fraction=0.06,
        margin_fraction=0.0,
        source=str(path),
        gpu="NVIDIA A100-SXM4-40GB",
        measured_at="2025-01-31T12:00:00Z",
    )


def test_load_calibration_missing_keys_keep_defaults(tmp_path: Path) -> None:
    overheads = load_calibration(_write(tmp_path, {"cuda_context_bytes": 0}))
    assert overheads.cuda_context_bytes == 0
    assert overheads.fragmentation_fraction == Overheads().fragmentation_fraction


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"cuda_context_bytes": -1}, "key 'cuda_context_bytes' must be a non-negative integer"),
        ({"cuda_context_bytes": 1.5}, "key 'cuda_context_bytes' must be a non-negative integer"),
        ({"library_workspace_bytes": True}, "key 'library_workspace_bytes'"),
        ({"fragmentation_fraction": 1.0}, "key 'fragmentation_fraction' must be a number"),
        ({"margin_fraction": "5%"}, "key 'margin_fraction' must be a number"),
        ({"gpu": 3}, "key 'gpu' must be text"),
        ({"fragmentation_fracton": 0.1}, "did you mean 'fragmentation_fraction'"),
        ({"allocator": "async"}, "key 'allocator' must be one of"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_load_calibration_rejects_bad_values(tmp_path: Path, data: object, message: str) -> None:
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=message) as caught:
        load_calibration(path)
    assert str(path) in str(caught.value)


def test_load_calibration_bad_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text('{\n  "cuda_context_bytes": ,\n}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid JSON \\(line 2"):
        load_calibration(path)


def test_load_calibration_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; run the calibration probe"):
        load_calibration(tmp_path / "absent.json")


def test_default_calibration_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_calibration_path() == tmp_path / ".cache" / "dialsum" / "calibration.json"
    monkeypatch.setenv(CALIBRATION_ENV, str(tmp_path / "mine.json"))
    assert default_calibration_path() == tmp_path / "mine.json"


def _no_allocator_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "DIALSUM_SET_ALLOC_CONF"):
        monkeypatch.setenv(name, "")  # recorded, so the test's deletion is undone after it
        monkeypatch.delenv(name)


def test_default_overheads_without_file_are_the_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    _no_allocator_setting(monkeypatch)
    # dialsum runs set expandable segments: its allowance, everything else the defaults.
    assert default_overheads() == Overheads(
        fragmentation_fraction=0.03, allocator="expandable_segments"
    )
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")  # the user's choice
    assert default_overheads() == Overheads()
    assert Overheads().fragmentation_fraction == ALLOCATOR_FRAGMENTATION["default"] == 0.08


def test_overheads_for_allocator() -> None:
    assert overheads_for_allocator("expandable_segments").fragmentation_fraction == 0.03
    assert overheads_for_allocator("default") == Overheads()
    with pytest.raises(ValueError, match="unknown allocator mode 'async'"):
        overheads_for_allocator("async")


@pytest.mark.parametrize(
    ("user_setting", "file_allocator", "expected"),
    [
        (None, "expandable_segments", 0.05),  # measured under the mode runs use: applies
        (None, "default", 0.03),  # measured under the other mode: the mode's allowance
        ("expandable_segments:False", "default", 0.05),
        (None, None, 0.05),  # an older file without the mode applies as it is
    ],
)
def test_calibrated_fragmentation_applies_to_its_allocator_mode(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    user_setting: str | None,
    file_allocator: str | None,
    expected: float,
) -> None:
    _no_allocator_setting(monkeypatch)
    if user_setting:
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", user_setting)
    data: dict = {"fragmentation_fraction": 0.05, "cuda_context_bytes": 512 * MIB}
    if file_allocator:
        data["allocator"] = file_allocator
    monkeypatch.setenv(CALIBRATION_ENV, str(_write(tmp_path, data)))
    overheads = default_overheads()
    assert overheads.fragmentation_fraction == expected
    assert overheads.cuda_context_bytes == 512 * MIB  # the rest of the file always applies


def test_default_overheads_reads_default_location(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / ".cache" / "dialsum"
    folder.mkdir(parents=True)
    (folder / "calibration.json").write_text('{"margin_fraction": 0.1}', encoding="utf-8")
    assert default_overheads().margin_fraction == 0.1


def test_default_overheads_env_file_must_exist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(CALIBRATION_ENV, str(tmp_path / "absent.json"))
    with pytest.raises(ConfigError, match=CALIBRATION_ENV):
        default_overheads()

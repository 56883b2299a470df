"""``bench/gpu_validate.py --smoke``: the GPU check's code path on the CPU, no CUDA call.

The smoke mode runs dialsum's real ``train`` (3 steps, evaluation) and ``predict`` on a
random-initialised tiny T5 folder, then plans for three emulated devices (live-bytes caps)
and searches the largest micro-batch that trains. On a GPU the same code measures; here
the JSON must say that nothing was measured and carry every planned number.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_validate", ROOT / "bench/gpu_validate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_the_real_code_path_without_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def no_cuda(*_args, **_kwargs):
        raise AssertionError("the smoke mode must not call CUDA")

    for name in ("set_per_process_memory_fraction", "empty_cache", "reset_peak_memory_stats",
                 "max_memory_allocated", "max_memory_reserved", "get_device_name"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, no_cuda)
    out = tmp_path / "smoke.json"
    result = _load_script().main(["--smoke", "--out", str(out)])

    data = json.loads(out.read_text(encoding="utf-8"))
    assert data == json.loads(json.dumps(result))
    assert (data["format"], data["smoke"], data["device"]) == ("gpu_validate/1", True, "cpu")
    assert data["skipped"] == []
    run = data["runs"]["tiny"]
    assert run["measured"] is False
    assert list(run["phases"]) == ["train", "eval", "predict"]
    for phase in run["phases"].values():
        assert phase["predicted_peak_bytes"] > 0 and phase["planned_required_bytes"] > 0
        assert phase["max_allocated_bytes"] is None and phase["allocated_ratio"] is None
    assert run["oom_recoveries"] == 0 and run["predict_oom_splits"] == 0
    assert run["settings"]["micro_batch_size"] >= 1

    rows = data["emulated"]["tiny"]
    assert [r["gpu"] for r in rows] == ["3MiB", "4.5MiB", "7.5MiB"]
    for row in rows:
        assert row["planned_fits"] and row["planned_micro_batch"] >= 1
        assert set(row["ooms_at_planned"]) == {"train", "eval", "predict"}
        assert row["ooms_at_planned"]["train"] == 0  # the planned micro-batch trains
        assert row["planned_micro_batch"] <= row["true_largest_micro_batch"]
        assert row["true_largest_micro_batch"] <= row["searched_up_to"]
    # A larger device never plans a smaller micro-batch.
    planned = [r["planned_micro_batch"] for r in rows]
    assert planned == sorted(planned)

    printed = capsys.readouterr().out
    assert "plan vs run" in printed and "emulated 7.5MiB" in printed and "not measured" in printed

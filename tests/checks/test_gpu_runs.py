"""The building blocks of the GPU check that need no device: inputs, emulation settings,
the search for the largest micro-batch (trials faked), and the rows of a CPU run."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest

import dialsum.training.settings as settings_mod
from dialsum.checks import gpu_runs
from dialsum.checks.gpu_runs import Emulation, phase_rows, write_long_csvs
from dialsum.speed.gpus import GPU
from dialsum.step.geometry import BatchGeometry
from dialsum.training.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
GIB, MIB = 2**30, 2**20


def test_long_csvs_join_bundled_dialogues(tmp_path: Path) -> None:
    paths = write_long_csvs(ROOT / "data/sample", tmp_path, {"train": 3, "test": 2}, repeat=4)
    with paths["train"].open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with (ROOT / "data/sample/train.csv").open(encoding="utf-8", newline="") as handle:
        source = list(csv.DictReader(handle))
    assert [r["fname"] for r in rows] == ["train_0", "train_1", "train_2"]
    assert rows[1]["dialogue"] == "\n".join(r["dialogue"] for r in source[4:8])
    with paths["test"].open(encoding="utf-8", newline="") as handle:
        assert next(csv.reader(handle)) == ["fname", "dialogue"]


def test_emulation_overrides_and_memory_fraction(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Emulation(16 * GIB, "16GB", cuda=True).overrides() == ["hardware.gpu=16GB"]
    assert Emulation(3 * MIB, "3MiB", cuda=False).overrides() == [
        "hardware.memory_cap_gib=0.0029296875"
    ]
    h200 = GPU("h200-141gb", "NVIDIA H200", 150_109_945_856, bf16=True)
    monkeypatch.setattr("dialsum.speed.gpus.detect_gpu", lambda: h200)
    monkeypatch.setattr("dialsum.checks.probe.default_overheads", lambda: SimpleNamespace(
        cuda_context_bytes=768 * MIB))  # fmt: skip
    # (16 GiB - 768 MiB of CUDA context) / the H200's bytes = 16,374,562,816 / 150,109,945,856
    assert Emulation(16 * GIB, "16GB", cuda=True).fraction() == pytest.approx(0.109083797)


def test_phase_rows_keep_planned_phases_when_nothing_was_measured() -> None:
    memory = {"measured": False, "phases": {},
              "planned": {"train": {"peak_bytes": 10, "required_bytes": 12}}}  # fmt: skip
    assert phase_rows(memory)["train"]["predicted_peak_bytes"] == 10
    assert phase_rows(memory)["train"]["max_allocated_bytes"] is None


def _settings(micro: int, rows: int, plan: dict) -> Settings:
    return Settings(device="cpu", geometry=BatchGeometry.build(rows, 1, micro),
                    eval_batch_size=4, generation_batch_size=4, generation_token_budget=100,
                    generation_row_cap=4, precision="fp32", optimizer="adamw",
                    gradient_checkpointing=False, source_len=32, plan=plan)  # fmt: skip


def test_search_starts_above_a_planned_micro_batch_that_trained(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plan = {"micro_batch_size": 4, "fits": True, "precision": "fp32",
            "gradient_checkpointing": False, "target_len": 8,
            "gradient_accumulation_steps": 4, "per_rank_rows": 16}  # fmt: skip
    monkeypatch.setattr(settings_mod, "resolve_settings", lambda *a, **k: _settings(4, 16, plan))
    monkeypatch.setattr(gpu_runs, "ooms_at_planned", lambda *a: {"train": 0, "eval": 0,
                                                                  "predict": 0})  # fmt: skip
    tried: list[tuple[int, int]] = []

    def trains(model, tokenizer, cfg, settings, emulation, out, target_len) -> bool:
        tried.append((settings.micro_batch_size, settings.gradient_accumulation_steps))
        return settings.micro_batch_size <= 11

    monkeypatch.setattr(gpu_runs, "trains_without_oom", trains)
    model = SimpleNamespace(config=None)
    row = gpu_runs.emulated(model, None, lambda extra: None, None,
                             Emulation(6 * MIB, "6MiB", cuda=False), tmp_path)  # fmt: skip
    # Up to 4 x 4 = 16, above the planned 4 (which trained); accumulation kept (2 chunks).
    assert tried[0] == (16, 2) and all(micro > 4 for micro, _ in tried)
    assert (row["planned_micro_batch"], row["true_largest_micro_batch"]) == (4, 11)
    assert (row["searched_up_to"], row["largest_divisor_that_runs"]) == (16, 8)
    assert row["ooms_at_planned"] == {"train": 0, "eval": 0, "predict": 0}


def test_a_plan_that_does_not_fit_is_still_searched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dialsum.core.errors import UserError

    def refuse(*_a, **_k):
        raise UserError("does not fit")

    unfit = SimpleNamespace(
        to_json_dict=lambda: {"micro_batch_size": 1, "fits": False, "precision": "fp32",
                              "gradient_checkpointing": True, "target_len": 8,
                              "gradient_accumulation_steps": 8, "per_rank_rows": 8},
        geometry=BatchGeometry.build(8, 1, 1), eval_batch_size=1, generation_batch_size=1,
        generation_token_budget=10, generation_row_cap=1, precision="fp32", optimizer="adamw",
        gradient_checkpointing=True, source_len=32, predict_precision="fp32", method="full",
    )  # fmt: skip
    monkeypatch.setattr(settings_mod, "resolve_settings", refuse)
    monkeypatch.setattr("dialsum.memory.section.plan_for_section", lambda *a, **k: unfit)
    monkeypatch.setattr(gpu_runs, "trains_without_oom", lambda *a: False)
    cfg = SimpleNamespace(hardware=SimpleNamespace(memory_cap_gib=0.001))
    row = gpu_runs.emulated(SimpleNamespace(config=None), None, lambda extra: cfg, None,
                             Emulation(MIB, "1MiB", cuda=False), tmp_path)  # fmt: skip
    assert row["planned_fits"] is False and row["ooms_at_planned"] is None
    assert row["true_largest_micro_batch"] is None and row["largest_divisor_that_runs"] is None

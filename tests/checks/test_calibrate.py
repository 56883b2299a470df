"""Calibration: fragmentation measured over variable-length batches, written by the probe
and read back by the planner. The GPU parts are faked; the step code runs on the CPU."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import T5Config

import dialsum.checks.probe as probe
from dialsum.checks.calibrate import (
    FragmentationMeasurement,
    fragmentation_fraction,
    measure_fragmentation,
    variable_lengths,
)
from dialsum.core.config_load import load_section
from dialsum.memory.overheads import CALIBRATION_ENV, default_overheads
from dialsum.models.architectures import model_from_config
from dialsum.speed.gpus import resolve_gpu
from dialsum.trace.profile import TrainOptions, TrainShape

ROOT = Path(__file__).resolve().parents[2]
GIB = 2**30


@pytest.mark.parametrize(
    ("allocated", "reserved", "fraction"),
    [(10 * GIB, 12 * GIB, 0.2), (1000, 1033, 0.033), (0, 5, 0.0), (10, 9, 0.0), (1, 100, 0.99)],
)
def test_fragmentation_fraction(allocated: int, reserved: int, fraction: float) -> None:
    assert fragmentation_fraction(allocated, reserved) == fraction


def test_variable_lengths_cover_a_quarter_to_the_longest() -> None:
    lengths = variable_lengths(8, 512, seed=0)
    assert lengths == variable_lengths(8, 512, seed=0)  # deterministic
    assert len(lengths) == 8 and max(lengths) == 512 and min(lengths) >= 128
    assert len(set(lengths)) > 4  # ever new sizes


def test_measure_fragmentation_runs_the_training_step_on_variable_batches() -> None:
    config = T5Config(vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      decoder_start_token_id=0, tie_word_embeddings=False)  # fmt: skip
    model = model_from_config(config)
    before = [p.detach().clone() for p in model.parameters()]
    frag = measure_fragmentation(model, TrainShape(2, 12, 6), TrainOptions(), torch.device("cpu"),
                                 steps=3)  # fmt: skip
    assert not frag.oom and len(frag.source_lengths) == 3 and max(frag.source_lengths) == 12
    assert max(frag.target_lengths) == 6
    # CPU: no allocator peaks; the optimizer really stepped.
    assert (frag.max_allocated_bytes, frag.max_reserved_bytes, frag.fraction) == (0, 0, 0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_probe_writes_the_measured_fragmentation_that_plans_then_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "DIALSUM_SET_ALLOC_CONF"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CALIBRATION_ENV, raising=False)
    cfg = load_section(ROOT / "config.yaml", "kobart")
    h100 = resolve_gpu("h100-80gb")
    seen = {}

    def fake_measure(model, shape, options, device):
        seen["shape"] = shape
        return FragmentationMeasurement(10 * GIB, 10 * GIB + GIB // 2, [200, 512], [40, 100])

    plan = SimpleNamespace(precision="bf16", optimizer="adamw", gradient_checkpointing=False,
                           micro_batch_size=8, source_len=512, target_len=100)  # fmt: skip
    monkeypatch.setattr(probe, "plan_for_section", lambda cfg, config, gpu: plan)
    monkeypatch.setattr(probe, "_require_cuda", lambda: h100)
    monkeypatch.setattr(probe, "model_from_config", lambda config, device: model_from_config(
        config, device="meta"))  # fmt: skip
    monkeypatch.setattr(probe, "context_bytes", lambda: 600 * 2**20)
    monkeypatch.setattr(probe, "probe_one", lambda *a, **k: {"gpu": "h100-80gb"})
    monkeypatch.setattr(probe.probe_fragmentation, "__kwdefaults__", {"measure": fake_measure})
    monkeypatch.setattr(
        "dialsum.checks.step_probe.probe_step_time", lambda *a, **k: None
    )  # time model
    path = tmp_path / "calibration.json"
    lines: list[str] = []
    probe.run_probe(cfg, search=False, calibration=path, echo=lines.append)

    data = json.loads(path.read_text())
    assert data["fragmentation_fraction"] == 0.05
    assert data["allocator"] == "expandable_segments"
    assert data["cuda_context_bytes"] == 600 * 2**20
    assert data["measurements"]["fragmentation"]["source_lengths"] == [200, 512]
    assert seen["shape"] == TrainShape(8, 512, 100)  # the plan's micro-batch and lengths
    assert any("fragmentation over 2 steps" in line and "(5.0%)" in line for line in lines)
    # The planner reads it back (same allocator mode as the runs use).
    monkeypatch.setenv(CALIBRATION_ENV, str(path))
    overheads = default_overheads()
    assert (overheads.fragmentation_fraction, overheads.allocator) == (0.05, "expandable_segments")
    assert overheads.cuda_context_bytes == 600 * 2**20

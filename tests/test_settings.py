"""`auto` settings: CPU defaults, and the GPU path through the planner (fake simulator)."""

from __future__ import annotations

from pathlib import Path

import pytest

import dialsum.planning as planning
import dialsum.settings as settings_mod
from dialsum.architectures import known_config
from dialsum.config import load_section
from dialsum.errors import ConfigError
from dialsum.geometry import BatchGeometry
from dialsum.memory.guard import GuardState
from dialsum.memory.plan import Simulator
from dialsum.memory.profile import MemoryProfile
from dialsum.settings import resolve_settings

ROOT = Path(__file__).resolve().parents[1]
quiet = lambda *_: None  # noqa: E731
GIB = 1024**3


def fake_profile(weights: int, per_row: int, rows: int) -> MemoryProfile:
    parts = {"weights": weights, "activations": per_row * rows}
    return MemoryProfile(1, 1, sum(parts.values()), "backward", parts)


# Training: 4 GiB of model states + 1 GiB per row; generation: 1 GiB + 0.25 GiB per row.
FAKE = Simulator(
    train=lambda config, shape, options: fake_profile(4 * GIB, GIB, shape.batch),
    generate=lambda config, shape, precision: fake_profile(GIB, GIB // 4, shape.batch),
)


def test_cpu_auto_micro_batch_is_a_divisor() -> None:
    cfg = load_section(ROOT / "config.yaml", "tiny", ["training.micro_batch_size=auto"])
    s = resolve_settings(cfg, None, echo=quiet)
    assert (s.device, s.micro_batch_size, s.gradient_accumulation_steps) == ("cpu", 16, 1)
    assert BatchGeometry(24, 1, 1).largest_micro_batch_at_most(16) == 12
    assert BatchGeometry(7, 1, 1).largest_micro_batch_at_most(4) == 1


def test_gpu_auto_settings_come_from_the_plan(monkeypatch) -> None:
    real_plan = planning.plan_for_section

    def plan_with_fake(cfg, model_config, **kwargs):
        return real_plan(cfg, model_config, simulator=FAKE, **kwargs)

    monkeypatch.setattr(settings_mod, "use_cuda", lambda cfg: True)
    monkeypatch.setattr(planning, "plan_for_section", plan_with_fake)
    cfg = load_section(ROOT / "config.yaml", "eenzeenee", ["hardware.gpu=v100-16gb"])
    s = resolve_settings(cfg, known_config(cfg.model.name), echo=quiet)
    assert s.device == "cuda" and s.gpu == "v100-16gb"
    assert s.precision == "fp32"  # T5 on V100: never fp16
    assert s.micro_batch_size * s.gradient_accumulation_steps == 16
    # 14.24 GiB usable, need = (4 + m) GiB x 1.08 + 64 MiB: m = 8 fits, 16 does not
    assert s.micro_batch_size == 8
    assert s.plan["effective_batch_size"] == 16
    assert any("fp16" in r for r in s.reasons)

    # --resume after an OOM recovery keeps the smaller micro-batch
    guard = GuardState(micro_batch_size=1, eval_batch_size=2)
    resumed = resolve_settings(cfg, known_config(cfg.model.name), guard=guard, echo=quiet)
    assert (resumed.micro_batch_size, resumed.gradient_accumulation_steps) == (1, 16)


def test_effective_batch_must_split_over_processes(monkeypatch) -> None:
    monkeypatch.setattr(settings_mod, "world_size", lambda: 3)
    cfg = load_section(ROOT / "config.yaml", "tiny")
    with pytest.raises(ConfigError, match="not a multiple of the 3 GPU"):
        resolve_settings(cfg, None, echo=quiet)

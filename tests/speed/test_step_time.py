"""Time model: exact numbers on a synthetic device, monotone, calibration round trip."""

from __future__ import annotations

import json

import pytest

from dialsum.memory.overheads import load_calibration
from dialsum.speed.device_specs import DeviceSpec, known_slugs
from dialsum.speed.epoch_time import epoch_time, length_scale, step_micro_batches
from dialsum.speed.gpus import catalog
from dialsum.speed.step_time import (
    DEFAULT_EFFICIENCY,
    StepCost,
    achieved_efficiency,
    achieved_step_efficiency,
    efficiency_for,
    format_duration,
    predict_step,
    predict_time,
    read_efficiencies,
    record_efficiency,
    step_time_of,
    train_step_cost,
)
from dialsum.trace.profile import MemoryProfile

# 1 TFLOP/s fp32, 4 TFLOP/s bf16, 100 GB/s, 10 us per kernel.
GPU = DeviceSpec("synthetic", {"fp32": 1e12, "bf16": 4e12}, 1e11, kernel_issue_s=1e-5)
CPU = DeviceSpec("synthetic-cpu", {"fp32": 1e12}, 1e11, kernel_issue_s=1e-5, overlapped=False)
COST = StepCost(flops=600_000_000_000, bytes_moved=30_000_000_000, kernels=1000)


def test_every_catalog_gpu_has_a_spec() -> None:
    assert {g.slug for g in catalog()} == set(known_slugs())


def test_step_time_exact_on_a_synthetic_gpu() -> None:
    bf16 = predict_time(COST, GPU, "bf16", efficiency=0.3)
    # compute 6e11 / (4e12 x 0.3) = 0.5 s; memory 3e10 / 1e11 = 0.3 s; issue 1000 x 10 us.
    assert (bf16.compute_s, bf16.memory_s, bf16.issue_s) == pytest.approx((0.5, 0.3, 0.01))
    assert bf16.seconds == pytest.approx(0.5) and bf16.bound == "compute"
    fp32 = predict_time(COST, GPU, "fp32", efficiency=0.6)
    assert fp32.seconds == pytest.approx(1.0)
    # Memory-bound: few FLOPs, many bytes.
    light = predict_time(StepCost(10**9, 3 * 10**10, 10), GPU, "bf16", 0.3)
    assert light.seconds == pytest.approx(0.3) and light.bound == "memory"
    # Issue-bound: tiny kernels, many of them.
    tiny = predict_time(StepCost(10**6, 10**6, 100_000), GPU, "bf16", 0.3)
    assert tiny.seconds == pytest.approx(1.0) and tiny.bound == "kernel issue"
    # A CPU runs everything on the issuing thread: the three terms add.
    cpu = predict_time(COST, CPU, "fp32", efficiency=0.6)
    assert cpu.seconds == pytest.approx(1.0 + 0.3 + 0.01) and cpu.bound == "compute"
    # Default efficiency per precision; a missing precision falls back to the fp32 peak.
    assert predict_time(COST, GPU, "bf16").efficiency == DEFAULT_EFFICIENCY["bf16"]
    assert predict_time(COST, GPU, "fp16", 0.3).seconds == pytest.approx(2.0)


@pytest.mark.parametrize("field", ["flops", "bytes_moved", "kernels"])
def test_step_time_is_monotone(field: str) -> None:
    for spec, precision in ((GPU, "bf16"), (CPU, "fp32")):
        times = []
        for factor in (1, 2, 4, 8, 100, 1000):
            values = {"flops": COST.flops, "bytes_moved": COST.bytes_moved, "kernels": COST.kernels}
            values[field] *= factor
            times.append(predict_time(StepCost(**values), spec, precision).seconds)
        assert times == sorted(times)
        steps = [predict_step(COST, a, COST, spec, precision).seconds for a in (1, 2, 4, 16)]
        assert steps == sorted(steps)
    by_efficiency = [predict_time(COST, GPU, "bf16", e).seconds for e in (0.1, 0.2, 0.5, 1.0)]
    assert by_efficiency == sorted(by_efficiency, reverse=True)


def test_step_adds_micro_batches_and_the_optimizer() -> None:
    # 4 micro-batches of 0.5 s (compute-bound) + an optimizer that only moves 2e10 bytes
    # (0.2 s at 100 GB/s): 2.2 s; a global max over the summed cost would hide the update.
    optimizer = StepCost(flops=0, bytes_moved=20_000_000_000, kernels=4)
    step = predict_step(COST, 4, optimizer, GPU, "bf16", efficiency=0.3)
    assert step.seconds == pytest.approx(4 * 0.5 + 0.2)
    assert step.bound == "compute" and step.compute_s == pytest.approx(2.0)
    assert step.memory_s == pytest.approx(4 * 0.3 + 0.2)
    profile = _profile(COST.flops // 3, 2 * COST.flops // 3, 0, kernels=COST.kernels // 2)
    profile.bytes_moved = {"forward": 10**10, "backward": 2 * 10**10, "optimizer": 2 * 10**10}
    assert step_time_of(profile, 4, GPU, "bf16", 0.3).seconds == pytest.approx(2.2)
    # Calibration inverts it: the optimizer's time off, the rest is compute.
    efficiency = achieved_step_efficiency(profile, 4, GPU, "bf16", measured_s=4.2)
    assert efficiency == pytest.approx(0.15)
    assert step_time_of(profile, 4, GPU, "bf16", efficiency).seconds == pytest.approx(4.2)


def test_achieved_efficiency_reproduces_the_measurement() -> None:
    assert achieved_efficiency(COST, GPU, "bf16", measured_s=1.0) == pytest.approx(0.15)
    again = predict_time(COST, GPU, "bf16", achieved_efficiency(COST, GPU, "bf16", 1.0))
    assert again.seconds == pytest.approx(1.0)
    # CPU: the memory (0.3 s) and issue (0.01 s) times are taken off before dividing.
    assert achieved_efficiency(COST, CPU, "fp32", 1.31) == pytest.approx(0.6)


def test_calibration_file_round_trip(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"gpu": "a100-40gb", "cuda_context_bytes": 600 * 2**20}))
    assert efficiency_for("a100-40gb", "bf16", path) == (DEFAULT_EFFICIENCY["bf16"], False)
    record_efficiency(path, "a100-40gb", "bf16", 0.412345)
    assert read_efficiencies(path) == {"a100-40gb": {"bf16": 0.4123}}  # 4 significant digits
    assert efficiency_for("a100-40gb", "bf16", path) == (0.4123, True)
    assert efficiency_for("a100-40gb", "fp32", path)[1] is False
    assert efficiency_for("t4-16gb", "bf16", path)[1] is False
    # The memory side of the same file still loads, its own keys intact.
    assert load_calibration(path).cuda_context_bytes == 600 * 2**20
    assert read_efficiencies(tmp_path / "missing.json") == {}


def _profile(forward: int, backward: int, optimizer: int, kernels: int = 0) -> MemoryProfile:
    return MemoryProfile(
        params=1,
        trainable_params=1,
        peak_bytes=1,
        peak_phase="backward",
        flops={"forward": forward, "backward": backward, "optimizer": optimizer},
        bytes_moved={"forward": 0, "backward": 0, "optimizer": 0},
        kernels={"forward": kernels, "backward": kernels, "optimizer": 0},
    )


def test_train_step_cost_adds_micro_batches_and_the_optimizer() -> None:
    cost = train_step_cost(_profile(10, 20, 5, kernels=3), accumulation=4)
    assert cost == StepCost(flops=4 * 30 + 5, bytes_moved=0, kernels=4 * 6)


def test_micro_batches_are_padded_to_their_own_longest_row() -> None:
    lengths = [(10, 3), (4, 1), (8, 2), (6, 5), (2, 2)]
    steps = step_micro_batches(lengths, [0, 2, 3, 1, 4], per_step_rows=4, micro=2)
    assert steps == [[(2, 10, 3), (2, 6, 5)], [(1, 2, 2)]]
    # All rows alike (no data: the config limits): the same, without per-row work.
    uniform = step_micro_batches([(10, 2)] * 10, list(range(10)), per_step_rows=4, micro=3)
    assert uniform == [[(3, 10, 2), (1, 10, 2)]] * 2 + [[(2, 10, 2)]]


def test_length_scale_weighs_source_and_target_tokens() -> None:
    # 1 FLOP per source token, 3 per target token; planned 10 + 2: 16 per row.
    assert length_scale(5, 2, (10, 2), (1.0, 3.0)) == pytest.approx(11 / 16)
    assert length_scale(10, 2, (10, 2), (1.0, 3.0)) == 1.0


def test_epoch_time_exact_at_the_config_limits() -> None:
    # 10 rows, 4 per step, micro-batch 2: steps of 4, 4, 2 rows -> 5 micro-batches.
    # Each micro-batch 3e11 FLOPs at 0.6 x 1e12 fp32 = 0.5 s; the optimizer adds nothing.
    profile = _profile(10**11, 2 * 10**11, 0)
    epoch = epoch_time(
        profile,
        lengths=[(10, 2)] * 10,
        planned=(10, 2),
        micro=2,
        per_step_rows=4,
        spec=GPU,
        precision="fp32",
        efficiency=0.6,
        lengths_from="config limits",
    )
    assert (epoch.steps, epoch.records, epoch.padded_tokens) == (3, 10, 120)
    assert epoch.seconds == pytest.approx(2.5)
    # Shorter rows cost less, never more; length grouping pads less than a shuffle.
    mixed = [(10, 2), (2, 2)] * 5
    kwargs = dict(planned=(10, 2), micro=2, per_step_rows=4, spec=GPU, precision="fp32")
    grouped = epoch_time(profile, lengths=mixed, group_by_length=True, **kwargs)
    shuffled = epoch_time(profile, lengths=mixed, group_by_length=False, **kwargs)
    assert (
        grouped.seconds
        <= shuffled.seconds
        < epoch.seconds * DEFAULT_EFFICIENCY["fp32"] / 0.6 + 1e-9
    )


def test_format_duration() -> None:
    assert [format_duration(s) for s in (0.1234, 1.234, 12.34, 245, 7380, None)] == [
        "123 ms",
        "1.23 s",
        "12.3 s",
        "4 min 05 s",
        "2 h 03 min",
        "-",
    ]

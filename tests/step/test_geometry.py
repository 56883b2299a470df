"""BatchGeometry: the one place the effective batch is split over GPUs and micro-batches."""

from __future__ import annotations

import pytest

from dialsum.core.errors import ConfigError
from dialsum.step.geometry import BatchGeometry, divisors, per_rank_rows


def test_build_two_gpus_exact_numbers() -> None:
    g = BatchGeometry.build(16, 2, 4)
    assert (g.effective_batch_size, g.world_size, g.micro_batch_size) == (16, 2, 4)
    assert g.per_rank_rows == 8
    assert g.gradient_accumulation_steps == 2
    # micro x accumulation x world is exactly the effective batch
    assert g.micro_batch_size * g.gradient_accumulation_steps * g.world_size == 16
    assert per_rank_rows(16, 2) == 8
    assert g.describe() == ("effective batch 16 = micro-batch 4 x 2 accumulation steps x 2 GPU(s)")


def test_single_gpu_and_whole_batch() -> None:
    assert BatchGeometry.build(16, 1, 16).gradient_accumulation_steps == 1
    assert BatchGeometry.build(16, 1, 1).gradient_accumulation_steps == 16
    assert BatchGeometry.build(48, 4, 3).to_json()["gradient_accumulation_steps"] == 4


def test_effective_not_divisible_by_world_names_nearest_multiples() -> None:
    with pytest.raises(ConfigError) as info:
        BatchGeometry.build(15, 2, 1)
    message = str(info.value)
    assert "training.effective_batch_size 15 is not a multiple of the 2 GPU(s)" in message
    assert message.endswith("use 14 or 16")
    with pytest.raises(ConfigError, match=r"use 18 or 21$"):
        per_rank_rows(20, 3)
    # the lower multiple would be 0: only the upper one is offered
    with pytest.raises(ConfigError, match=r"use 4$"):
        per_rank_rows(3, 4)


@pytest.mark.parametrize(("effective", "world"), [(0, 1), (16, 0), (-4, 2)])
def test_non_positive_numbers_are_rejected(effective: int, world: int) -> None:
    with pytest.raises(ConfigError, match="must be >= 1"):
        BatchGeometry.build(effective, world, 1)


def test_micro_not_dividing_per_rank_rows_lists_the_divisors() -> None:
    with pytest.raises(ConfigError) as info:
        BatchGeometry.build(16, 2, 3)
    message = str(info.value)
    assert "training.micro_batch_size 3 does not divide the 8 rows each GPU gets" in message
    assert "(effective batch 16 / 2 GPU(s))" in message
    assert "use one of [1, 2, 4, 8] or auto" in message
    # larger than the per-rank rows (it divides the effective batch, not the per-GPU rows)
    with pytest.raises(ConfigError, match=r"micro_batch_size 16 does not divide the 8 rows"):
        BatchGeometry.build(16, 2, 16)
    with pytest.raises(ConfigError, match="micro_batch_size 0"):
        BatchGeometry.build(16, 1, 0)
    # with_micro_batch validates too
    with pytest.raises(ConfigError, match="micro_batch_size 3"):
        BatchGeometry.build(16, 2, 4).with_micro_batch(3)
    assert BatchGeometry.build(16, 2, 4).with_micro_batch(8).gradient_accumulation_steps == 1


def test_asserted_accumulation_is_checked_for_this_world_size() -> None:
    # 16 rows on 2 GPUs, micro-batch 4: each GPU accumulates 8 / 4 = 2 micro-batches.
    ok = BatchGeometry.build(16, 2, 4, asserted_accumulation=2)
    assert ok.gradient_accumulation_steps == 2
    # 4 is the single-GPU value (16 / 4): wrong on two GPUs.
    with pytest.raises(ConfigError) as info:
        BatchGeometry.build(16, 2, 4, asserted_accumulation=4)
    message = str(info.value)
    assert "training.gradient_accumulation_steps 4 does not match micro-batch 4 on 2 GPU(s)" in (
        message
    )
    assert "effective batch 16 = 4 x 2 x 2" in message
    assert message.endswith("set it to 2")
    # On one GPU it is the other way round.
    assert BatchGeometry.build(16, 1, 4, asserted_accumulation=4).gradient_accumulation_steps == 4
    with pytest.raises(ConfigError, match="set it to 4"):
        BatchGeometry.build(16, 1, 4, asserted_accumulation=2)


def test_largest_micro_batch_at_most() -> None:
    g = BatchGeometry.build(16, 2, 1)  # 8 rows per GPU: divisors 1, 2, 4, 8
    assert [g.largest_micro_batch_at_most(c) for c in (0, 1, 2, 3, 5, 7, 8, 100)] == [
        1,
        1,
        2,
        2,
        4,
        4,
        8,
        8,
    ]
    assert BatchGeometry(24, 1, 1).largest_micro_batch_at_most(16) == 12
    assert BatchGeometry(7, 1, 1).largest_micro_batch_at_most(6) == 1


def test_divisors() -> None:
    assert divisors(1) == [1]
    assert divisors(12) == [1, 2, 3, 4, 6, 12]
    assert divisors(16) == [1, 2, 4, 8, 16]
    assert divisors(49) == [1, 7, 49]


def test_to_json_keys_and_values() -> None:
    assert BatchGeometry.build(16, 2, 4).to_json() == {
        "effective_batch_size": 16,
        "world_size": 2,
        "per_rank_rows": 8,
        "micro_batch_size": 4,
        "gradient_accumulation_steps": 2,
    }

"""Token-budget generation batches and putting outputs back in input order."""

from __future__ import annotations

import random

import pytest

from dialsum.step.token_budget import (
    generation_cost,
    generation_token_budget,
    restore_order,
    split_batch,
    token_budget_batches,
)


def test_token_budget_batches_exact() -> None:
    lengths = [5, 10, 3, 10, 7, 1]
    # Longest first, ties by index: rows 1, 3 (10), 4 (7), 0 (5), 2 (3), 5 (1).
    # [1, 3] costs 2 * 10 = 20; adding row 4 would cost 30. [4, 0] costs 14; [2, 5] costs 6.
    assert token_budget_batches(lengths, token_budget=20) == [[1, 3], [4, 0], [2, 5]]
    assert token_budget_batches(lengths, token_budget=20, max_batch_size=1) == [
        [1],
        [3],
        [4],
        [0],
        [2],
        [5],
    ]
    assert token_budget_batches(lengths, token_budget=1000, max_batch_size=4) == [
        [1, 3, 4, 0],
        [2, 5],
    ]


def test_row_longer_than_budget_gets_its_own_batch() -> None:
    assert token_budget_batches([50, 4, 4, 4, 4], token_budget=16) == [[0], [1, 2, 3, 4]]
    assert token_budget_batches([4, 50, 60], token_budget=16) == [[2], [1], [0]]


def test_zero_length_rows_cost_one_token() -> None:
    assert token_budget_batches([0, 0, 0], token_budget=2) == [[0, 1], [2]]


def test_token_budget_batches_empty_and_invalid() -> None:
    assert token_budget_batches([], token_budget=10) == []
    with pytest.raises(ValueError, match="token_budget"):
        token_budget_batches([1], token_budget=0)
    with pytest.raises(ValueError, match="max_batch_size"):
        token_budget_batches([1], token_budget=5, max_batch_size=0)
    with pytest.raises(ValueError, match="row 1 has negative length -3"):
        token_budget_batches([1, -3], token_budget=5)


@pytest.mark.parametrize("seed", range(50))
def test_token_budget_batches_properties(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(0, 40)
    lengths = [rng.randint(0, 100) for _ in range(n)]
    budget = rng.randint(1, 300)
    cap = rng.choice([None, 1, 2, 3, 8])
    batches = token_budget_batches(lengths, budget, cap)

    # Every row exactly once, longest first with ties by index.
    flat = [index for batch in batches for index in batch]
    assert flat == sorted(range(n), key=lambda i: (-lengths[i], i))
    for number, batch in enumerate(batches):
        assert batch
        cost = len(batch) * max(max(lengths[i] for i in batch), 1)
        assert len(batch) == 1 or cost <= budget
        assert cap is None or len(batch) <= cap
        # Greedy: a batch closes only when the next row would not fit.
        if number + 1 < len(batches):
            widest = max(lengths[batch[0]], 1)
            assert (len(batch) + 1) * widest > budget or len(batch) == cap

    # Outputs come back in input order whatever the batching.
    outputs = [[f"summary of row {i}" for i in batch] for batch in batches]
    assert restore_order(batches, outputs, n) == [f"summary of row {i}" for i in range(n)]


def test_restore_order_keeps_none_outputs() -> None:
    assert restore_order([[1], [0]], [[None], ["a"]], 2) == ["a", None]


@pytest.mark.parametrize(
    ("batches", "outputs", "n", "message"),
    [
        ([[0, 1]], [["a", "b"]], 3, "rows missing from the batches: 2"),
        ([[0, 1], [1]], [["a", "b"], ["c"]], 2, "row 1 appears in more than one batch"),
        ([[0, 2]], [["a", "b"]], 2, "batch 0 holds row 2, outside 0..1"),
        ([[0, 1]], [["a"]], 2, "batch 0 has 2 rows but 1 outputs"),
        ([[0], [1]], [["a"]], 2, "2 batches but 1 output lists"),
    ],
)
def test_restore_order_rejects_inconsistent_batches(
    batches: list[list[int]], outputs: list[list[str]], n: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        restore_order(batches, outputs, n)


def test_split_batch_keeps_order_larger_pieces_first() -> None:
    assert split_batch([9, 4, 7, 1, 3]) == [[9, 4, 7], [1, 3]]
    assert split_batch([9, 4, 7, 1]) == [[9, 4], [7, 1]]
    assert split_batch(list(range(7)), parts=3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_batch([5, 6], parts=4) == [[5], [6]]
    # One row cannot be split: one piece back tells the caller to give up on splitting.
    assert split_batch([8]) == [[8]]
    assert split_batch([]) == []
    with pytest.raises(ValueError, match="parts"):
        split_batch([1, 2], parts=0)


def test_generation_cost_and_budget() -> None:
    assert generation_cost(100, 20, 4) == 480
    assert generation_cost(512, 64, 4) == 2304
    assert generation_cost(0, 20, 4) == 84  # an empty source costs as one token
    assert generation_cost(100, 20, 1) == 120
    assert generation_token_budget(8, 512, 64, 4) == 8 * 576 * 4 == 18432
    assert generation_token_budget(1, 0, 10, 2) == 22

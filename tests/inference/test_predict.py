"""dialsum.inference.predict generation: token-budget batches, OOM splitting, input order,
atomic submission. (The verb's output handling: test_predict_output.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dialsum.core.config_load import load_section
from dialsum.data.dataset import read_dialogue_csv
from dialsum.data.tokenize import tokenize_records
from dialsum.inference.predict import GenerationStats, generate_summaries, write_submission
from dialsum.models.setup import setup_model
from dialsum.training.run_data import generation_kwargs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_section(ROOT / "config.yaml", "tiny", ["inference.max_new_tokens=6"])
    model, tokenizer = setup_model(cfg)
    table = read_dialogue_csv(ROOT / "data/sample/dev.csv", "dev")
    table.records = table.records[:12]
    rows = tokenize_records(
        table.records, tokenizer, prefix="", max_source_len=256, max_target_len=64,
        with_labels=False,
    )  # fmt: skip
    return cfg, model, tokenizer, table, rows


def test_token_budget_output_matches_one_by_one_in_input_order(tiny) -> None:
    cfg, model, tokenizer, _, rows = tiny
    gen = generation_kwargs(cfg)
    batched = generate_summaries(model, tokenizer, rows, gen, token_budget=600, progress=False)
    single = [
        generate_summaries(model, tokenizer, [r], gen, token_budget=10_000, progress=False)[0]
        for r in rows
    ]
    assert batched == single


def test_predict_oom_splits_the_batch_and_keeps_order(tiny) -> None:
    cfg, model, tokenizer, _, rows = tiny
    gen = generation_kwargs(cfg)
    seen: list[int] = []

    def inject(phase: str, n: int) -> None:
        seen.append(n)
        if n > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    stats = GenerationStats()
    out = generate_summaries(
        model, tokenizer, rows, gen, token_budget=100_000, progress=False,
        fault_injector=inject, stats=stats,
    )  # fmt: skip
    assert seen[:3] == [12, 6, 3]  # one batch of 12 -> halves -> quarters
    assert stats.oom_splits == 3  # 12 and both 6s split
    assert out == generate_summaries(
        model, tokenizer, rows, gen, token_budget=100_000, progress=False
    )


def test_single_row_oom_is_raised(tiny) -> None:
    cfg, model, tokenizer, _, rows = tiny

    def inject(phase: str, n: int) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory.")

    with pytest.raises(torch.OutOfMemoryError):
        generate_summaries(
            model, tokenizer, rows[:1], generation_kwargs(cfg), token_budget=10,
            progress=False, fault_injector=inject,
        )  # fmt: skip


def test_write_submission_is_in_input_order(tiny, tmp_path: Path) -> None:
    *_, table, _ = tiny
    out = tmp_path / "sub.csv"
    write_submission(out, table, [f"s{i}" for i in range(len(table.records))])
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "fname,summary"
    assert lines[1] == f"{table.records[0].fname},s0"
    with pytest.raises(RuntimeError):
        write_submission(out, table, ["only one"])
    assert len(out.read_text(encoding="utf-8").splitlines()) == len(table.records) + 1


def test_batches_count_source_plus_new_tokens_times_beams_and_keep_a_row_cap(tiny) -> None:
    cfg, model, tokenizer, _, _ = tiny
    gen = generation_kwargs(cfg) | {"num_beams": 2, "max_new_tokens": 6, "early_stopping": True}
    rows = [{"input_ids": [5] * 10, "attention_mask": [1] * 10} for _ in range(8)]
    sizes: list[int] = []

    def record(phase: str, n: int) -> None:
        sizes.append(n)

    # One row holds (10 source + 6 new tokens) x 2 beams = 32 tokens: 3 rows fit in 100.
    generate_summaries(
        model, tokenizer, rows, gen, token_budget=100, progress=False, fault_injector=record
    )
    assert sizes == [3, 3, 2]
    sizes.clear()
    generate_summaries(
        model, tokenizer, rows, gen, token_budget=100, max_batch_size=2, progress=False,
        fault_injector=record,
    )  # fmt: skip
    assert sizes == [2, 2, 2, 2]

"""Generation throughput: token-budget batches vs fixed batches, sorted and unsorted.

    uv run python bench/bench_generation.py [--rows 160] [--budget 40000]

Three runs use the same tiny model, the same dialogues and the same generation options, in
the same process; the ratios of summaries/s are what matter:

- the honest baseline: length-sorted fixed batches of the same mean size as the token-budget
  batches (sorting alone removes most padding; what is left is the budget's own gain:
  big batches of short dialogues, small batches of long ones);
- the naive baseline: unsorted fixed batches of 8 (target >= 2x on CPU).

The budget counts ``batching.generation_cost`` tokens, ``(source + new tokens) x beams``
per row, as ``predict`` does.
The dialogues are the bundled dev and test sets with a mix of lengths (some repeated
2-4x, as real dialogue lengths vary), because equal lengths leave nothing to sort.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from dialsum.core.config_load import load_section
from dialsum.data import dataset as data_mod
from dialsum.inference.predict import _generate_rows, generate_summaries
from dialsum.models.setup import setup_model
from dialsum.step.token_budget import generation_cost, restore_order, token_budget_batches
from dialsum.training.run_data import generation_kwargs

ROOT = Path(__file__).resolve().parents[1]


def varied_rows(cfg, tokenizer, n: int) -> list[dict[str, list[int]]]:
    records = []
    for split in ("dev", "test"):
        records += data_mod.read_dialogue_csv(ROOT / f"data/sample/{split}.csv", split).records
    rng = random.Random(0)
    rows = []
    for i in range(n):
        rec = records[i % len(records)]
        # Lengths from ~60 to ~500 tokens: one to four dialogues back to back.
        text = "\n".join([rec.dialogue] * rng.choice([1, 1, 1, 2, 3, 4]))
        enc = tokenizer(cfg.tokenizer.prefix + text, truncation=True, max_length=512)
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return rows


def run_batches(model, tokenizer, rows, gen, batches: list[list[int]]) -> list[str]:
    outputs = [_generate_rows(model, tokenizer, [rows[i] for i in b], gen) for b in batches]
    return restore_order(batches, outputs, len(rows))


def fixed_batches(n: int, batch_size: int) -> list[list[int]]:
    """Indices ``0..n-1`` in input order, ``batch_size`` per batch (the naive baseline)."""
    return [list(range(start, min(start + batch_size, n))) for start in range(0, n, batch_size)]


def sorted_fixed_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Fixed-size batches of rows sorted longest first (the honest baseline)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def timed(fn) -> tuple[list[str], float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument(
        "--budget", type=int, default=40000, help="(source + new tokens) x beams per batch"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_section(ROOT / "config.yaml", "tiny", ["tokenizer.max_source_length=512"])
    model, tokenizer = setup_model(cfg)
    model.eval()
    gen = generation_kwargs(cfg) | {"max_new_tokens": 32, "min_new_tokens": 32}
    rows = varied_rows(cfg, tokenizer, args.rows)
    lengths = [len(r["input_ids"]) for r in rows]
    costs = [generation_cost(n, gen["max_new_tokens"], gen["num_beams"]) for n in lengths]
    budget_batches = token_budget_batches(costs, args.budget)
    mean_size = max(1, round(len(rows) / len(budget_batches)))
    print(
        f"{len(rows)} dialogues, source tokens min {min(lengths)} max {max(lengths)}; "
        f"{len(budget_batches)} budget batches (mean {mean_size} rows)"
    )

    run_batches(model, tokenizer, rows[:8], gen, [list(range(8))])  # warm-up
    unsorted, unsorted_s = timed(
        lambda: run_batches(model, tokenizer, rows, gen, fixed_batches(len(rows), 8))
    )
    fixed, fixed_s = timed(
        lambda: run_batches(model, tokenizer, rows, gen, sorted_fixed_batches(lengths, mean_size))
    )
    ours, ours_s = timed(
        lambda: generate_summaries(
            model, tokenizer, rows, gen, token_budget=args.budget, progress=False
        )
    )
    n = len(rows)
    for label, seconds in (
        ("fixed batch 8, unsorted", unsorted_s),
        (f"fixed batch {mean_size}, length-sorted", fixed_s),
        (f"token budget {args.budget}, sorted", ours_s),
    ):
        print(f"{label:34s} {n / seconds:7.2f} summaries/s ({seconds:.1f}s)")
    same = sum(a == b for a, b in zip(unsorted, ours, strict=True))
    same_sorted = sum(a == b for a, b in zip(fixed, ours, strict=True))
    print(
        f"speed-up vs length-sorted fixed batches: {fixed_s / ours_s:.2f}x; vs unsorted batch 8: "
        f"{unsorted_s / ours_s:.2f}x (target >= 2x); identical outputs: {same}/{n} and "
        f"{same_sorted}/{n}"
    )


if __name__ == "__main__":
    main()

"""Generation throughput: token-budget length-sorted batches vs fixed batch 8 unsorted.

    uv run python bench/bench_generation.py [--rows 160] [--budget 4096]

Both runs use the same tiny model, the same dialogues and the same generation options, in
the same process; the ratio of summaries/s is what matters (target >= 2x on CPU).
The dialogues are the bundled dev and test sets with a mix of lengths (some repeated
2-4x, as real dialogue lengths vary), because equal lengths leave nothing to sort.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from dialsum import data as data_mod
from dialsum.batching import fixed_batches, restore_order
from dialsum.config import load_section
from dialsum.infer import _generate_rows, generate_summaries
from dialsum.train import generation_kwargs, setup_model

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


def fixed_unsorted(model, tokenizer, rows, gen, batch_size: int) -> list[str]:
    batches = fixed_batches(len(rows), batch_size)
    outputs = [_generate_rows(model, tokenizer, [rows[i] for i in b], gen) for b in batches]
    return restore_order(batches, outputs, len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--budget", type=int, default=8192, help="source tokens per batch")
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = load_section(ROOT / "config.yaml", "tiny", ["tokenizer.max_source_length=512"])
    model, tokenizer = setup_model(cfg)
    model.eval()
    gen = generation_kwargs(cfg) | {"max_new_tokens": 32, "min_new_tokens": 32}
    rows = varied_rows(cfg, tokenizer, args.rows)
    lengths = [len(r["input_ids"]) for r in rows]
    print(f"{len(rows)} dialogues, source tokens min {min(lengths)} max {max(lengths)}")

    fixed_unsorted(model, tokenizer, rows[:8], gen, 8)  # warm-up
    started = time.perf_counter()
    base = fixed_unsorted(model, tokenizer, rows, gen, 8)
    base_s = time.perf_counter() - started

    started = time.perf_counter()
    ours = generate_summaries(model, tokenizer, rows, gen, token_budget=args.budget, progress=False)
    ours_s = time.perf_counter() - started

    same = sum(a == b for a, b in zip(base, ours, strict=True))
    print(f"fixed batch 8, unsorted:     {len(rows) / base_s:7.2f} summaries/s ({base_s:.1f}s)")
    print(
        f"token budget {args.budget}, sorted: {len(rows) / ours_s:7.2f} summaries/s ({ours_s:.1f}s)"
    )
    print(f"speed-up: {base_s / ours_s:.2f}x (target >= 2x); identical outputs: {same}/{len(rows)}")


if __name__ == "__main__":
    main()

"""Prediction: length-sorted, token-budget batches; OOM-safe generation; submission CSV.

Rows are sorted by source length (longest first, so an OOM shows up at once rather than
at the end) and grouped so that ``rows x generation_cost(longest source)`` - that is
``rows x (source + new tokens) x beams``, what the decoder caches hold - stays within the
planner's token budget, and no batch exceeds the planner's row cap (the per-row logits and
beam bookkeeping do not shrink with the source): short dialogues travel in big batches,
long ones in small batches, and little compute is spent on padding. Outputs are put back
in input order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dialsum.core.config import SectionConfig
from dialsum.data import dataset as data_mod
from dialsum.inference.batching import (
    generation_cost,
    restore_order,
    split_batch,
    token_budget_batches,
)
from dialsum.metrics import decode_keep_special
from dialsum.training.oom_guard import free_device_memory, is_oom

log = logging.getLogger(__name__)


@dataclass
class GenerationStats:
    batches: int = 0
    oom_splits: int = 0


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


def _generate_rows(model, tokenizer, rows: list[dict[str, list[int]]], gen: dict[str, Any]):
    features = [{"input_ids": r["input_ids"], "attention_mask": r["attention_mask"]} for r in rows]
    batch = tokenizer.pad(features, return_tensors="pt")
    device = _device_of(model)
    with torch.inference_mode():
        out = model.generate(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
            **gen,
        )
    return decode_keep_special(tokenizer, out.cpu().tolist())


def generate_summaries(
    model,
    tokenizer,
    rows: Sequence[dict[str, list[int]]],
    gen: dict[str, Any],
    *,
    token_budget: int,
    max_batch_size: int | None = None,
    progress: bool = True,
    fault_injector=None,
    stats: GenerationStats | None = None,
) -> list[str]:
    """Summaries for tokenized ``rows`` in input order.

    ``token_budget`` counts ``batching.generation_cost`` tokens (the ``num_beams`` and
    ``max_new_tokens`` of ``gen``); ``max_batch_size`` caps the rows of a batch.
    On an OOM the failing batch is split in halves and retried; a single row that still
    does not fit raises (nothing smaller is possible).
    """
    stats = stats if stats is not None else GenerationStats()
    model.eval()
    beams, new_tokens = int(gen.get("num_beams", 1) or 1), int(gen.get("max_new_tokens") or 0)
    lengths = [generation_cost(len(r["input_ids"]), new_tokens, beams) for r in rows]
    batches = token_budget_batches(lengths, token_budget, max_batch_size)
    pending = list(batches)
    done_batches: list[list[int]] = []
    outputs: list[list[str]] = []
    bar = tqdm(total=len(rows), desc="generate", unit="dlg", disable=not progress, leave=False)
    while pending:
        indices = pending.pop(0)
        texts = None
        try:
            if fault_injector is not None:
                fault_injector("predict", len(indices))
            texts = _generate_rows(model, tokenizer, [rows[i] for i in indices], gen)
        except Exception as exc:  # noqa: BLE001 - only OOMs are handled
            if not is_oom(exc) or len(indices) == 1:
                raise
        if texts is None:
            # Recover outside the except block so the failed call's tensors can be freed.
            free_device_memory()
            stats.oom_splits += 1
            log.warning("OOM while generating %d rows: splitting the batch", len(indices))
            pending[:0] = split_batch(indices, 2)
            continue
        stats.batches += 1
        done_batches.append(indices)
        outputs.append(texts)
        bar.update(len(indices))
    bar.close()
    return restore_order(done_batches, outputs, len(rows))


def predict_table(
    cfg: SectionConfig, model, tokenizer, table: data_mod.DialogueTable, settings, **kwargs
) -> list[str]:
    rows = data_mod.tokenize_records(
        table.records,
        tokenizer,
        prefix=cfg.tokenizer.prefix,
        max_source_len=cfg.tokenizer.max_source_length,
        max_target_len=cfg.tokenizer.max_target_length,
        with_labels=False,
    )
    from dialsum.training.recipe import generation_kwargs

    return generate_summaries(
        model,
        tokenizer,
        rows,
        generation_kwargs(cfg),
        token_budget=settings.generation_token_budget,
        max_batch_size=settings.generation_row_cap,
        **kwargs,
    )


def write_submission(path: Path, table: data_mod.DialogueTable, summaries: list[str]) -> None:
    """``fname,summary`` in input order, written atomically (temp file + rename)."""
    if len(summaries) != len(table.records):
        raise RuntimeError("internal error: one summary per dialogue expected")
    data_mod.write_csv_atomic(
        path,
        ["fname", "summary"],
        ([r.fname, s] for r, s in zip(table.records, summaries, strict=True)),
    )

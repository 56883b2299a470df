"""Setting up a run from its section: data tables, datasets, generation settings, memory cap.

Shared by every verb that loads a model (``train``, ``predict``, ``plan``, the checks), so
they all read the same model, the same rows and the same token lengths: a tiny model is
built offline from the training CSV, a checkpoint or hub id is loaded, the section's
sample limits apply, the run's settings give the source length tokenized at,
and a CPU run emulating a smaller device runs under its memory cap.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dialsum.core.config_schema import SectionConfig
from dialsum.data import dataset as data_mod
from dialsum.data import prompt as data_prompt
from dialsum.data import tokenize as data_tok
from dialsum.models.architectures import is_causal
from dialsum.training.settings import Settings


class ListDataset(Dataset):
    """Tokenized rows (dicts of int lists) for the Trainer; no `datasets` dependency needed."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


def read_tables(cfg: SectionConfig, *, train: bool = True, dev: bool = True, echo=print):
    out = {}
    for split, wanted, path in (("train", train, cfg.data.train), ("dev", dev, cfg.data.dev)):
        if not wanted:
            continue
        table = data_mod.read_dialogue_csv(Path(path), split)
        if table.encoding not in ("utf-8", "utf-8-sig"):
            echo(f"note: decoded {path} as {table.encoding}")
        limit = cfg.data.max_train_samples if split == "train" else cfg.data.max_eval_samples
        if limit is not None:
            table.records = table.records[:limit]
        out[split] = table
    return out.get("train"), out.get("dev")


def prompt_format(cfg: SectionConfig, model, tokenizer) -> data_prompt.PromptFormat | None:
    """The prompt of a causal LM (``data.prompt``); ``None`` for a seq2seq model."""
    if not is_causal(model):
        return None
    return data_prompt.PromptFormat.build(tokenizer, cfg.tokenizer)


def tokenize_table(
    cfg: SectionConfig,
    table,
    tokenizer,
    *,
    source_len: int,
    with_labels: bool = True,
    prompt: data_prompt.PromptFormat | None = None,
):
    """``table``'s records tokenized with the section's prefix and target limit, sources cut
    at ``source_len``: the run's ``Settings.source_len`` (the planner's, when it shortened
    the source), so train, eval and predict tokenize at the length the plan simulated.
    With ``prompt`` (a causal LM) a source is the whole prompt, and a row with labels is
    prompt + summary + EOS (``data.prompt.tokenize_causal``)."""
    if prompt is not None:
        return ListDataset(
            data_prompt.tokenize_causal(
                table.records,
                tokenizer,
                prompt,
                source_len=source_len,
                max_target_len=cfg.tokenizer.max_target_length,
                with_labels=with_labels,
            )
        )
    return ListDataset(
        data_tok.tokenize_records(
            table.records,
            tokenizer,
            prefix=cfg.tokenizer.prefix,
            max_source_len=source_len,
            max_target_len=cfg.tokenizer.max_target_length,
            with_labels=with_labels,
        )
    )


def length_report(
    cfg: SectionConfig, table, tokenizer, prompt: data_prompt.PromptFormat | None = None
) -> data_tok.LengthReport:
    """Source and target lengths of ``table``; for a causal LM (``prompt``) the prompt and
    the summary + EOS."""
    tok = cfg.tokenizer
    if prompt is not None:
        return data_tok.report_from_lengths(
            data_prompt.prompt_lengths(table.records, tokenizer, prompt),
            data_prompt.target_lengths(table.records, tokenizer),
            tok.max_source_length,
            tok.max_target_length,
            source_what="prompt: instruction + dialogue",
        )
    return data_tok.length_report(
        table.records,
        tokenizer,
        prefix=cfg.tokenizer.prefix,
        max_source_len=cfg.tokenizer.max_source_length,
        max_target_len=cfg.tokenizer.max_target_length,
    )


def generation_kwargs(cfg: SectionConfig) -> dict[str, Any]:
    inf = cfg.inference
    kwargs: dict[str, Any] = {
        "num_beams": inf.num_beams,
        "max_new_tokens": cfg.max_new_tokens,
        "min_new_tokens": inf.min_new_tokens,
        "length_penalty": inf.length_penalty,
        "early_stopping": inf.early_stopping if inf.num_beams > 1 else False,
    }
    if inf.no_repeat_ngram_size:
        kwargs["no_repeat_ngram_size"] = inf.no_repeat_ngram_size
    return kwargs


def memory_cap(settings: Settings, model):
    """A CPU run emulating a smaller device: live tensor bytes beyond the cap raise
    ``torch.OutOfMemoryError`` (the guard recovers from it as from a CUDA OOM)."""
    if settings.memory_cap_bytes is None:
        return contextlib.nullcontext()
    from dialsum.trace.live_cap import LiveBytesCap

    cap = LiveBytesCap(settings.memory_cap_bytes)
    cap.track_all(model.parameters())
    cap.track_all(model.buffers())
    return cap

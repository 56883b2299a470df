"""Setting up a run from its section: model and tokenizer, data tables, datasets.

Shared by every verb that loads a model (``train``, ``predict``, ``plan``, the checks), so
they all read the same model, the same rows and the same token lengths: a tiny model is
built offline from the training CSV, a checkpoint or hub id is loaded, the section's
sample limits apply, the planner's source length (when it cut it) is the one tokenized at,
and a CPU run emulating a smaller device runs under its memory cap.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from dialsum.core.config import SectionConfig
from dialsum.core.errors import UserError, first_line
from dialsum.data import dataset as data_mod
from dialsum.data import tokenize as data_tok
from dialsum.models.architectures import set_dropout
from dialsum.models.loading import load_model, load_tokenizer, resolve_model
from dialsum.training.settings import Settings


class ListDataset(Dataset):
    """Tokenized rows (dicts of int lists) for the Trainer; no `datasets` dependency needed."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self.rows[index]


def tiny_texts_from(cfg: SectionConfig):
    """Texts a tiny tokenizer is trained on: the training dialogues and summaries."""

    def texts() -> list[str]:
        table = data_mod.read_dialogue_csv(Path(cfg.data.train), "train")
        out: list[str] = []
        for rec in table.records:
            out.append(cfg.tokenizer.prefix + rec.dialogue)
            out.extend(rec.references)
        return out

    return texts


def tiny_cache_dir() -> Path:
    root = os.environ.get("DIALSUM_CACHE_DIR")
    return Path(root) / "tiny" if root else Path.home() / ".cache" / "dialsum" / "tiny"


def setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None):
    """(model, tokenizer): a checkpoint folder, a hub id / local folder, or a tiny model."""
    try:
        return _setup_model(cfg, checkpoint)
    except OSError as exc:
        # transformers raises OSError for unreachable hubs, unknown repos and missing files.
        name = checkpoint or cfg.model.name
        first = first_line(exc)
        raise UserError(
            f"could not load model '{name}' (model.name): {first} "
            "Without network access, download it where there is network (e.g. "
            f"`hf download {name} --local-dir DIR`), copy DIR here and set model.name to DIR; "
            "or use tiny:t5 to try the pipeline."
        ) from None


def _setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None):
    remote = cfg.model.trust_remote_code
    if checkpoint is not None:
        tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=remote)
        model = load_model(str(checkpoint), tokenizer, trust_remote_code=remote)
    elif cfg.tokenizer.name and not cfg.model.name.startswith("tiny:"):
        tokenizer = load_tokenizer(cfg.tokenizer.name, trust_remote_code=remote)
        model = load_model(cfg.model.name, tokenizer, trust_remote_code=remote)
    else:
        model, tokenizer = resolve_model(
            cfg.model.name,
            tiny_texts=tiny_texts_from(cfg),
            cache_dir=tiny_cache_dir(),
            trust_remote_code=remote,
        )
    if cfg.model.dropout is not None:
        set_dropout(model, cfg.model.dropout)
    return model, tokenizer


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


def tokenize_table(cfg: SectionConfig, table, tokenizer, *, with_labels: bool = True):
    """``table``'s records tokenized at the section's limits (train, eval and predict alike)."""
    return ListDataset(
        data_tok.tokenize_records(
            table.records,
            tokenizer,
            prefix=cfg.tokenizer.prefix,
            max_source_len=cfg.tokenizer.max_source_length,
            max_target_len=cfg.tokenizer.max_target_length,
            with_labels=with_labels,
        )
    )


def length_report(cfg: SectionConfig, table, tokenizer) -> data_tok.LengthReport:
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


def apply_source_len(cfg: SectionConfig, settings: Settings) -> SectionConfig:
    """The section as the run tokenizes it: the planner's source length when it cut it."""
    if settings.source_len >= cfg.tokenizer.max_source_length:
        return cfg
    tokenizer = dataclasses.replace(cfg.tokenizer, max_source_length=settings.source_len)
    return dataclasses.replace(cfg, tokenizer=tokenizer)


def memory_cap(settings: Settings, model):
    """A CPU run emulating a smaller device: live tensor bytes beyond the cap raise
    ``torch.OutOfMemoryError`` (the guard recovers from it as from a CUDA OOM)."""
    if settings.memory_cap_bytes is None:
        return contextlib.nullcontext()
    from dialsum.memory.live_cap import LiveBytesCap

    cap = LiveBytesCap(settings.memory_cap_bytes)
    cap.track_all(model.parameters())
    cap.track_all(model.buffers())
    return cap

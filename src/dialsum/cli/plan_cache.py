"""`dialsum plan`'s answers cached by the question asked: a warm plan without torch.

A plan whose traces are all cached still imports torch and transformers (seconds on two
cores) and rebuilds meta models to count parameters and linear FLOPs. Asked again, the
same question has the same answer, so the whole printed result is kept
(``trace.answer_cache``), keyed by everything it depends on, all read without torch: the
resolved section (every field, overrides applied) and the command's options; the device,
when one is named (a detected GPU is never cached: detecting needs torch); the bytes of the
model's ``config.json`` (shipped or in a local folder; a bare hub id is not cached, the hub
may change), of the section's training CSV and of ``--data``; and what every answer key
holds (calibration file, allocator environment, library versions, dialsum source).

Tokenized lengths of a ``--data`` file are kept on their own (``lengths_key``), keyed by
the file's content: a plan for another GPU over the same data skips tokenizing it again.
The epoch estimate needs every row's lengths in file order (the Trainer's length-grouped
sampler orders rows by index), so the per-row list is kept, not a histogram.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from dialsum.core.config_schema import SectionConfig
from dialsum.speed.gpus import named_device
from dialsum.trace.answer_cache import (
    answer_key,
    file_digest,
    load,
    model_source,
    optional_file_digest,
    plain_dict,
    store,
)

__all__ = ["lengths_key", "load", "plan_key", "store"]


def plan_key(
    cfg: SectionConfig, *, gpu: str | None, num_gpus: int, data: Path | None, buckets: bool
) -> str | None:
    """The key of ``dialsum plan``'s answer, or None when it cannot be cached (a detected
    GPU, a model only the hub knows)."""
    device = named_device(gpu or cfg.hardware.gpu, cfg.hardware.memory_cap_gib)
    model = model_source(cfg.model.name, with_tokenizer=data is not None)
    if device is None or model is None:
        return None
    if data is not None and not Path(data).is_file():
        return None
    return answer_key(
        {
            "kind": "plan",
            "section": plain_dict(cfg),
            "device": asdict(device),
            "num_gpus": num_gpus,
            "buckets": buckets,
            "model": model,
            "data": [str(data), optional_file_digest(data)] if data is not None else None,
            "train_file": optional_file_digest(cfg.data.train),
        }
    )


def lengths_key(cfg: SectionConfig, data: Path) -> str | None:
    """Key of ``data``'s tokenized lengths under ``cfg``'s tokenizer settings."""
    model = model_source(cfg.model.name, with_tokenizer=True)
    if model is None:
        return None
    return answer_key(
        {
            "kind": "lengths",
            "data": file_digest(Path(data)),
            "model": [cfg.model.name, model],
            "section": plain_dict(cfg),
        }
    )

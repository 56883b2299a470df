"""Records to token ids: truncated examples, the length report, the padding collator.

Examples are tokenized unpadded (each ``input_ids`` / ``attention_mask`` / ``labels`` a list
of ints of its own length) and padded per batch by the collator, so a batch of short
dialogues is not padded to the longest dialogue of the file. The length report measures
what truncation at the configured limits throws away and gives the planner the real
(truncated) shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dialsum.core.csv_files import listing
from dialsum.data.dataset import Record

if TYPE_CHECKING:  # importing this module must not wait for transformers
    from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase


# --------------------------------------------------------------------------- tokenization


def _sources(records: Sequence[Record], prefix: str) -> list[str]:
    return [prefix + record.dialogue for record in records]


def _targets(records: Sequence[Record]) -> list[str]:
    missing = [record.fname for record in records if record.summary is None]
    if missing:
        raise ValueError(f"records without a summary cannot have labels: {listing(missing)}")
    return [record.summary or "" for record in records]


def tokenize_records(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prefix: str,
    max_source_len: int,
    max_target_len: int,
    with_labels: bool,
) -> list[dict[str, list[int]]]:
    """Tokenize to unpadded, truncated examples; padding happens per batch in the collator."""
    if not records:
        return []
    sources = tokenizer(
        _sources(records, prefix),
        max_length=max_source_len,
        truncation=True,
        return_attention_mask=True,
    )
    examples = [
        {"input_ids": list(ids), "attention_mask": list(mask)}
        for ids, mask in zip(sources["input_ids"], sources["attention_mask"], strict=True)
    ]
    if with_labels:
        # text_target routes through the target tokenizer (matters for mBART-style models);
        # truncation keeps the eos the post-processor appends.
        targets = tokenizer(
            text_target=_targets(records), max_length=max_target_len, truncation=True
        )
        for example, labels in zip(examples, targets["input_ids"], strict=True):
            example["labels"] = list(labels)
    return examples


@dataclass
class LengthReport:
    """Token lengths of sources (prefix + dialogue) and targets (summary).

    Percentiles and ``*_over`` use untruncated lengths (what truncation throws away);
    ``longest_*`` are lengths after truncation: the real tensor shapes for memory planning.
    """

    n_records: int
    n_targets: int
    max_source_len: int
    max_target_len: int
    source_over: int
    source_over_pct: float
    target_over: int
    target_over_pct: float
    source_p50: int
    source_p95: int
    source_max: int
    target_p50: int
    target_p95: int
    target_max: int
    longest_source: int
    longest_target: int
    source_what: str = "prefix + dialogue"  # a causal LM's source is its whole prompt

    def format(self) -> str:
        lines = [
            f"source ({self.source_what}), {self.n_records} records: p50 {self.source_p50}, "
            f"p95 {self.source_p95}, max {self.source_max} tokens; {self.source_over} "
            f"({self.source_over_pct:.1f}%) longer than max_source_len {self.max_source_len}",
        ]
        if self.n_targets:
            lines.append(
                f"target (summary), {self.n_targets} records: p50 {self.target_p50}, "
                f"p95 {self.target_p95}, max {self.target_max} tokens; {self.target_over} "
                f"({self.target_over_pct:.1f}%) longer than max_target_len {self.max_target_len}"
            )
        lines.append(
            f"after truncation: longest source {self.longest_source}, "
            f"longest target {self.longest_target} tokens"
        )
        return "\n".join(lines)


def _percentile(sorted_values: Sequence[int], pct: float) -> int:
    """Nearest-rank percentile: always an observed length, never an interpolated one."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def _untruncated_lengths(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], target: bool
) -> list[int]:
    if not texts:
        return []
    # verbose=False: lengths above model_max_length are exactly what we are measuring.
    kwargs: dict[str, Any] = {"truncation": False, "verbose": False}
    encoded = tokenizer(text_target=texts, **kwargs) if target else tokenizer(texts, **kwargs)
    return sorted(len(ids) for ids in encoded["input_ids"])


def _pct(count: int, total: int) -> float:
    return 100.0 * count / total if total else 0.0


def length_report(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    *,
    prefix: str,
    max_source_len: int,
    max_target_len: int,
) -> LengthReport:
    """Measure how much truncation at these limits loses; records without summary skip targets."""
    sources = _untruncated_lengths(tokenizer, _sources(records, prefix), target=False)
    with_summary = [record for record in records if record.summary is not None]
    targets = _untruncated_lengths(tokenizer, _targets(with_summary), target=True)
    return report_from_lengths(sources, targets, max_source_len, max_target_len)


def report_from_lengths(
    sources: Sequence[int],
    targets: Sequence[int],
    max_source_len: int,
    max_target_len: int,
    source_what: str = "prefix + dialogue",
) -> LengthReport:
    """The report of untruncated ``sources`` / ``targets`` lengths (any order) at these
    limits; causal LMs measure prompt and summary + EOS lengths (``data.prompt``)."""
    sources, targets = sorted(sources), sorted(targets)
    source_over = sum(n > max_source_len for n in sources)
    target_over = sum(n > max_target_len for n in targets)
    source_max = sources[-1] if sources else 0
    target_max = targets[-1] if targets else 0
    return LengthReport(
        n_records=len(sources),
        n_targets=len(targets),
        max_source_len=max_source_len,
        max_target_len=max_target_len,
        source_over=source_over,
        source_over_pct=_pct(source_over, len(sources)),
        target_over=target_over,
        target_over_pct=_pct(target_over, len(targets)),
        source_p50=_percentile(sources, 50),
        source_p95=_percentile(sources, 95),
        source_max=source_max,
        target_p50=_percentile(targets, 50),
        target_p95=_percentile(targets, 95),
        target_max=target_max,
        longest_source=min(source_max, max_source_len),
        longest_target=min(target_max, max_target_len),
        source_what=source_what,
    )


# --------------------------------------------------------------------------- batching


def make_collator(
    tokenizer: PreTrainedTokenizerBase,
    model: Any = None,
    pad_to_multiple_of: int | None = None,
) -> DataCollatorForSeq2Seq:
    """Pad a batch dynamically; labels pad with -100 so the loss ignores them.

    With ``model`` the collator also builds ``decoder_input_ids`` (shifted labels), which
    the model would otherwise derive itself; passing it keeps shapes explicit for tracing.
    """
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(
        tokenizer,
        model=model,
        padding=True,
        pad_to_multiple_of=pad_to_multiple_of,
        label_pad_token_id=-100,
        return_tensors="pt",
    )

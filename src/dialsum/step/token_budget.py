"""Batches of row indices for generation, and the token cost the planner sizes them by.

Generation memory grows with ``rows x padded length``, so a fixed batch size either wastes
the GPU on short dialogues or OOMs on long ones. Token-budget batches bound the padded
token count instead; they are built from indices only, so any dataset can use them and
``restore_order`` puts the outputs back in input order for the submission file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def generation_cost(source_len: int, new_tokens: int, num_beams: int) -> int:
    """Tokens one row holds in a generation batch: ``(source + new tokens) x beams``.

    Every beam's decoder caches grow to ``new_tokens`` (self-attention) and hold the
    ``source`` (cross-attention), and the encoder output is expanded to every beam. The
    planner (its budget and row cap) and ``inference.predict.generate_summaries`` both batch
    by this one formula. ``source_len`` counts a source as the encoder gets it: prefix +
    dialogue, with the special tokens the tokenizer adds (T5's ``</s>``), truncated at
    ``max_source_length`` - the unit of ``max_source_length`` and of the planner's source
    length. ``new_tokens`` is ``max_new_tokens``. A causal LM has one cache per beam that
    holds the prompt and grows by the new tokens, so the same formula holds with the
    prompt (instruction + dialogue, ``data.prompt``) as the source.
    """
    return (max(source_len, 1) + new_tokens) * num_beams


def generation_token_budget(batch: int, source_len: int, new_tokens: int, num_beams: int) -> int:
    """Budget of ``generation_cost`` tokens that ``batch`` rows of ``source_len`` use."""
    return batch * generation_cost(source_len, new_tokens, num_beams)


def token_budget_batches(
    lengths: Sequence[int], token_budget: int, max_batch_size: int | None = None
) -> list[list[int]]:
    """Group row indices so that ``len(batch) * max_len_in_batch <= token_budget``.

    ``lengths`` are per-row costs in the budget's unit. Generation passes
    ``generation_cost(len(input_ids), max_new_tokens, num_beams)`` for each row, with
    ``input_ids`` as tokenized (special tokens included, unpadded), and a budget from
    ``generation_token_budget``; as the cost grows with the source, the longest row of a
    batch prices the whole batch padded to it.

    Rows are sorted longest first (ties by index, so the result is deterministic): the
    most expensive batch runs first, and an OOM shows up in seconds, not at the end of a
    long prediction run. A row longer than the budget gets a batch of its own (a batch
    always holds at least one row). A zero length costs as one token, so a batch never
    grows past ``token_budget`` rows.
    """
    if token_budget < 1:
        raise ValueError(f"token_budget ({token_budget}) must be >= 1")
    if max_batch_size is not None and max_batch_size < 1:
        raise ValueError(f"max_batch_size ({max_batch_size}) must be >= 1 or None")
    for index, length in enumerate(lengths):
        if length < 0:
            raise ValueError(f"row {index} has negative length {length}")

    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    batch: list[int] = []
    batch_len = 0  # the first row of a batch is its longest: rows arrive longest first
    for index in order:
        if batch:
            fits_budget = (len(batch) + 1) * batch_len <= token_budget
            fits_cap = max_batch_size is None or len(batch) < max_batch_size
            if fits_budget and fits_cap:
                batch.append(index)
                continue
            batches.append(batch)
        batch = [index]
        batch_len = max(lengths[index], 1)
    if batch:
        batches.append(batch)
    return batches


def split_batch(indices: Sequence[int], parts: int = 2) -> list[list[int]]:
    """Split a batch that OOMed into ``parts`` consecutive pieces, in order.

    Pieces differ in size by at most one, larger first (5 rows -> 3 + 2), and none is
    empty: a batch of fewer rows than ``parts`` gives one piece per row. A one-row batch
    comes back as one piece, which tells the caller it cannot be split further.
    """
    if parts < 1:
        raise ValueError(f"parts ({parts}) must be >= 1")
    rows = list(indices)
    count = min(parts, len(rows))
    if count == 0:
        return []
    base, extra = divmod(len(rows), count)
    pieces: list[list[int]] = []
    start = 0
    for piece in range(count):
        size = base + (1 if piece < extra else 0)
        pieces.append(rows[start : start + size])
        start += size
    return pieces


def restore_order(batches: list[list[int]], outputs_per_batch: list[list[T]], n: int) -> list[T]:
    """Outputs in input order: ``result[i]`` is the output of row ``i``.

    Raises ``ValueError`` when a row is missing, duplicated or out of range, or when a
    batch and its outputs differ in length: a silent mismatch would pair summaries with
    the wrong dialogue ids in the submission.
    """
    if len(batches) != len(outputs_per_batch):
        raise ValueError(f"{len(batches)} batches but {len(outputs_per_batch)} output lists")
    slots: list[T | None] = [None] * n
    filled = [False] * n
    for number, (batch, outputs) in enumerate(zip(batches, outputs_per_batch, strict=True)):
        if len(batch) != len(outputs):
            raise ValueError(f"batch {number} has {len(batch)} rows but {len(outputs)} outputs")
        for index, output in zip(batch, outputs, strict=True):
            if not 0 <= index < n:
                raise ValueError(f"batch {number} holds row {index}, outside 0..{n - 1}")
            if filled[index]:
                raise ValueError(f"row {index} appears in more than one batch")
            slots[index] = output
            filled[index] = True
    missing = [index for index, done in enumerate(filled) if not done]
    if missing:
        shown = ", ".join(str(index) for index in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise ValueError(f"rows missing from the batches: {shown}{more}")
    return slots  # type: ignore[return-value]  # every slot is filled (checked above)

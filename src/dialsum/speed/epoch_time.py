"""How long one epoch takes: the rows in the order the Trainer draws them, in micro-batches.

The epoch's rows (their tokenized source and target lengths) are ordered as the Trainer's
sampler orders them (length-grouped or shuffled), cut into optimizer steps and
micro-batches, each micro-batch padded to its own longest row; each is priced as the
traced micro-batch scaled by its rows and lengths (``length_scale``) and timed by
``speed.step_time.predict_time``, plus the optimizer once per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dialsum.speed.device_specs import DeviceSpec
from dialsum.speed.step_time import micro_batch_cost, optimizer_cost, predict_time
from dialsum.trace.profile import MemoryProfile


@dataclass(frozen=True)
class EpochTime:
    """Predicted time of one pass over the training rows."""

    seconds: float
    steps: int
    records: int
    padded_tokens: int
    lengths_from: str  # "data" or "config limits"

    def to_json(self) -> dict:
        return {
            "seconds": self.seconds,
            "steps": self.steps,
            "records": self.records,
            "padded_tokens": self.padded_tokens,
            "lengths_from": self.lengths_from,
        }


def epoch_order(
    lengths: Sequence[tuple[int, int]], per_step_rows: int, group_by_length: bool, seed: int = 0
) -> list[int]:
    """Row order of one epoch as the Trainer's sampler draws it: length-grouped
    (transformers' ``get_length_grouped_indices``, by source length) or shuffled."""
    if len({pair for pair in lengths}) <= 1:
        return list(range(len(lengths)))  # all alike: the order changes nothing
    import torch  # here: a guide's epochs (all rows alike) never need it

    generator = torch.Generator().manual_seed(seed)
    if group_by_length:
        from transformers.trainer_pt_utils import get_length_grouped_indices

        sources = [s for s, _ in lengths]
        return list(get_length_grouped_indices(sources, per_step_rows, generator=generator))
    return torch.randperm(len(lengths), generator=generator).tolist()


def step_micro_batches(
    lengths: Sequence[tuple[int, int]], order: Sequence[int], per_step_rows: int, micro: int
) -> list[list[tuple[int, int, int]]]:
    """Per optimizer step, its micro-batches as (rows, padded source, padded target):
    consecutive rows of the order, each micro-batch padded to its own longest row (the
    guarded trainer trims padding per micro-batch)."""
    if len(set(lengths)) == 1:
        return _uniform_steps(len(order), lengths[0], per_step_rows, micro)
    steps = []
    for start in range(0, len(order), per_step_rows):
        rows = order[start : start + per_step_rows]
        chunks = []
        for i in range(0, len(rows), micro):
            chunk = [lengths[r] for r in rows[i : i + micro]]
            chunks.append((len(chunk), max(s for s, _ in chunk), max(t for _, t in chunk)))
        steps.append(chunks)
    return steps


def _uniform_steps(
    n_rows: int, lengths: tuple[int, int], per_step_rows: int, micro: int
) -> list[list[tuple[int, int, int]]]:
    """``step_micro_batches`` when every row has the same lengths (no per-row work)."""

    def chunks(rows: int) -> list[tuple[int, int, int]]:
        out = [(micro, *lengths)] * (rows // micro)
        return out + ([(rows % micro, *lengths)] if rows % micro else [])

    full, last = divmod(n_rows, per_step_rows)
    return [chunks(per_step_rows)] * full + ([chunks(last)] if last else [])


def length_scale(
    source: int, target: int, planned: tuple[int, int], weights: tuple[float, float]
) -> float:
    """Cost of a row at (source, target) tokens relative to one at the planned lengths:
    linear-layer FLOPs per source and per target token (``token_costs.linear_flops_per_token``)
    weigh the two sides. Attention grows faster than linearly, so shorter rows are a bit
    cheaper than this says (an upper bound)."""
    w_source, w_target = weights
    full = w_source * planned[0] + w_target * planned[1]
    return (w_source * source + w_target * target) / full if full else 1.0


def epoch_time(
    profile: MemoryProfile,
    *,
    lengths: Sequence[tuple[int, int]],
    planned: tuple[int, int],
    micro: int,
    per_step_rows: int,
    spec: DeviceSpec,
    precision: str,
    efficiency: float | None = None,
    weights: tuple[float, float] = (1.0, 1.0),
    group_by_length: bool = True,
    lengths_from: str = "data",
) -> EpochTime:
    """Seconds for one epoch over rows of ``lengths`` (source, target tokens, truncated),
    with ``profile`` traced at micro-batch ``micro`` and the ``planned`` lengths."""
    per_micro = micro_batch_cost(profile)
    optimizer = optimizer_cost(profile)
    order = epoch_order(lengths, per_step_rows, group_by_length)
    seconds, padded, steps = 0.0, 0, step_micro_batches(lengths, order, per_step_rows, micro)
    optimizer_s = predict_time(optimizer, spec, precision, efficiency).seconds
    chunk_s: dict[tuple[int, int, int], float] = {}  # rows at the same lengths cost the same
    for chunks in steps:
        seconds += optimizer_s
        for chunk in chunks:
            rows, source, target = chunk
            if chunk not in chunk_s:
                scale = rows / micro * length_scale(source, target, planned, weights)
                cost = per_micro.scaled(scale)
                chunk_s[chunk] = predict_time(cost, spec, precision, efficiency).seconds
            seconds += chunk_s[chunk]
            padded += rows * (source + target)
    return EpochTime(seconds, len(steps), len(lengths), padded, lengths_from)


def uniform_lengths(records: int, source: int, target: int) -> list[tuple[int, int]]:
    """``records`` rows all at the config limits (no tokenizer at hand: the worst case)."""
    return [(source, target)] * records

"""A plan's speed for people: step time, tokens/s and time per epoch of the given data.

``speed.step_time`` predicts the time of a step from its traced cost; this module turns a
``Plan`` plus the training rows (their count and token lengths) into an epoch time and
the lines ``dialsum plan`` prints. Without a tokenizer at hand the rows are counted from
the section's training CSV and every row is taken at the config limits (padded: the
worst case, said so in the output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialsum.speed.epoch_time import EpochTime, epoch_time, uniform_lengths
from dialsum.speed.step_time import format_duration

_T = 1e12


@dataclass(frozen=True)
class EpochData:
    """The rows an epoch runs over: (source, target) tokens per row, and where from."""

    lengths: list[tuple[int, int]]
    origin: str  # e.g. "data/sample/train.csv, tokenized" or "..., lengths at config limits"

    @property
    def at_limits(self) -> bool:
        return self.origin.endswith("config limits")


def epoch_data_for(records: int, source_len: int, target_len: int, origin: str) -> EpochData:
    """``records`` rows at the config limits (no tokenizer: the padded worst case)."""
    return EpochData(
        uniform_lengths(records, source_len, target_len), f"{origin}, lengths at config limits"
    )


def epoch_for_plan(
    plan, model_config, data: EpochData, group_by_length: bool = True
) -> EpochTime | None:
    """Predicted epoch of ``plan`` over ``data``'s rows (each GPU gets every
    ``world_size``-th row); None when the plan has no step time."""
    from dialsum.speed.device_specs import spec_for
    from dialsum.speed.step_time import matmul_precision
    from dialsum.trace.token_costs import linear_flops_per_token

    timing = plan.timing
    spec = spec_for(plan.gpu)
    if timing is None or timing.step is None or spec is None or not data.lengths:
        return None
    # Rows are cut to the planned lengths, as the tokenizer truncates them.
    lengths = [
        (min(s, plan.source_len), min(t, plan.target_len))
        for s, t in data.lengths[:: plan.world_size]
    ]
    return epoch_time(
        plan.train_profile,
        lengths=lengths,
        planned=(plan.source_len, plan.target_len),
        micro=plan.micro_batch_size,
        per_step_rows=plan.geometry.per_rank_rows,
        spec=spec,
        precision=matmul_precision(plan.precision),
        efficiency=timing.step.efficiency,
        weights=linear_flops_per_token(model_config),
        group_by_length=group_by_length,
        lengths_from="config limits" if data.at_limits else "data",
    )


def _tflop(flops: float) -> str:
    return f"{flops / _T:.2f} TFLOP"


def estimated_label(plan) -> str:
    step = plan.timing.step if plan.timing else None
    return "calibrated" if step is not None and step.calibrated else "estimated"


def time_lines(plan, epoch: EpochTime | None, data: EpochData | None) -> list[str]:
    """What ``dialsum plan`` prints about speed (empty without traced costs)."""
    timing = plan.timing
    if timing is None:
        return []
    phases = timing.flops_by_phase
    lines = [
        f"compute per step (per GPU): {_tflop(timing.flops_per_step)} (forward "
        f"{_tflop(phases['forward'])}, backward {_tflop(phases['backward'])}, optimizer "
        f"{_tflop(phases['optimizer'])}); {timing.flops_per_token / 1e6:,.0f} MFLOP per "
        f"token; {timing.bytes_per_step / 1e9:,.1f} GB moved, {timing.kernels_per_step:,} "
        "kernels",
        f"generation: {_tflop(timing.generate_flops.get('total', 0))} per batch of "
        f"{plan.generation_batch_size} (encoder {_tflop(timing.generate_flops.get('encoder', 0))},"
        f" every decoder step x beams {_tflop(timing.generate_flops.get('decode', 0))}), "
        f"{timing.generate_flops_per_token / 1e9:,.1f} GFLOP per summary token",
    ]
    step = timing.step
    if step is None:
        lines.append(f"step time: unknown for {plan.gpu.name} (no data sheet numbers)")
        return lines
    label = estimated_label(plan)
    lines.append(
        f"step time ({label}): {format_duration(step.seconds)} per optimizer step, "
        f"{timing.tokens_per_s:,.0f} tokens/s; bound by {step.bound} (compute "
        f"{format_duration(step.compute_s)} at {step.efficiency:.0%} of the {step.precision} "
        f"peak, memory {format_duration(step.memory_s)}, kernel issue "
        f"{format_duration(step.issue_s)})"
    )
    if epoch is not None and data is not None:
        lines.append(
            f"epoch time ({label}): {format_duration(epoch.seconds)} for {epoch.records:,} "
            f"dialogues ({data.origin}), {epoch.steps:,} optimizer steps"
        )
    if plan.world_size > 1:
        lines.append(
            f"  (per GPU; {plan.world_size} GPUs share each epoch; gradient communication "
            "between them is not in the model)"
        )
    if label == "estimated":
        lines.append(
            "  (estimated: data-sheet peaks and a default efficiency; `dialsum probe` on "
            "this GPU measures a step and calibrates it)"
        )
    return lines


def epoch_json(epoch: EpochTime | None, data: EpochData | None) -> dict[str, Any] | None:
    if epoch is None:
        return None
    return {**epoch.to_json(), "data": data.origin if data else None}


# -- --compare ------------------------------------------------------------------------------


@dataclass
class CompareRow:
    """One GPU of ``dialsum plan --compare``."""

    gpu: str
    plan: Any = None
    epoch: EpochTime | None = None
    error: str | None = None

    @property
    def sort_key(self) -> tuple[int, float]:
        # Plans that fit first, fastest epoch first; unknown times and errors last.
        if self.error is not None or self.plan is None:
            return (3, 0.0)
        if not self.plan.fits:
            return (2, self.epoch.seconds if self.epoch else 0.0)
        return (0, self.epoch.seconds) if self.epoch else (1, 0.0)


def ranked(rows: Sequence[CompareRow]) -> list[CompareRow]:
    """Fitting plans by epoch time (fastest first), then the rest."""
    return sorted(rows, key=lambda r: r.sort_key)


def compare_cells(row: CompareRow) -> list[str]:
    """Cells after the rank: GPU, settings, memory fit, step time, tokens/s, epoch time."""
    plan = row.plan
    if plan is None:
        return [row.gpu, "-", f"cannot run: {row.error}", "-", "-", "-"]
    timing = plan.timing
    step = timing.step if timing else None
    settings = f"{plan.precision} {plan.micro_batch_size}x{plan.gradient_accumulation_steps}"
    if plan.gradient_checkpointing:
        settings += " ckpt"
    fit = f"{plan.required_bytes / 2**30:.1f}/{plan.usable_bytes / 2**30:.1f} " + (
        "fits" if plan.fits else "NO FIT"
    )
    tokens = f"{timing.tokens_per_s:,.0f}" if timing and timing.tokens_per_s else "-"
    return [
        plan.gpu.slug,
        settings,
        fit,
        format_duration(step.seconds) if step else "-",
        tokens,
        format_duration(row.epoch.seconds) if row.epoch else "-",
    ]


COMPARE_COLUMNS = (
    "GPU",
    "setting",  # precision micro-batch x accumulation (+ ckpt: gradient checkpointing)
    "GiB need/usable",
    "step time",
    "tokens/s",
    "epoch",
)


def compare_json(rows: Sequence[CompareRow], data: EpochData | None) -> dict[str, Any]:
    out = []
    for rank, row in enumerate(ranked(rows), start=1):
        entry: dict[str, Any] = {"rank": rank, "gpu": row.gpu}
        if row.plan is None:
            entry["error"] = row.error
        else:
            entry.update(
                fits=row.plan.fits,
                required_bytes=row.plan.required_bytes,
                usable_bytes=row.plan.usable_bytes,
                micro_batch_size=row.plan.micro_batch_size,
                gradient_accumulation_steps=row.plan.gradient_accumulation_steps,
                precision=row.plan.precision,
                gradient_checkpointing=row.plan.gradient_checkpointing,
                step_time_s=row.plan.timing.step.seconds
                if row.plan.timing and row.plan.timing.step
                else None,
                tokens_per_s=row.plan.timing.tokens_per_s if row.plan.timing else None,
                epoch=epoch_json(row.epoch, data),
                time_estimated=estimated_label(row.plan) == "estimated",
            )
        out.append(entry)
    return {"ranked_by": "epoch time (fitting plans first)", "gpus": out}


def train_file_data(cfg) -> EpochData | None:
    """Rows of the section's training CSV, counted without a tokenizer (None if absent)."""
    from dialsum.core.errors import UserError
    from dialsum.data import dataset as data_mod

    path = Path(cfg.data.train) if cfg.data.train else None
    if path is None or not path.is_file():
        return None
    try:
        table = data_mod.read_dialogue_csv(path, "train")
    except UserError:
        return None
    records = len(table.records)
    if cfg.data.max_train_samples is not None:
        records = min(records, cfg.data.max_train_samples)
    tok = cfg.tokenizer
    return epoch_data_for(records, tok.max_source_length, tok.max_target_length, str(path))


def plan_speed(
    plan, cfg, model_config, lengths: list[tuple[int, int]] | None, data: Path | None
) -> tuple[EpochTime | None, EpochData | None]:
    """Epoch of ``plan`` over ``--data``'s tokenized rows, else the section's train file
    counted at the config limits."""
    if lengths is not None:
        epoch_data = EpochData(list(lengths), f"{data}, tokenized")
    else:
        epoch_data = train_file_data(cfg)
    if epoch_data is None:
        return None, None
    epoch = epoch_for_plan(plan, model_config, epoch_data, cfg.training.group_by_length)
    return epoch, epoch_data

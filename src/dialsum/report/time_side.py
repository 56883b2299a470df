"""The guide's time side, computed: step and epoch time per GPU, epoch time vs
micro-batch (for the time plot), and the old hand-written guide's settings next to the
plan's. The guide's Markdown and plots (``report.markdown``, ``report.plots``) show them.

An epoch here is ``GUIDE_EPOCH_DIALOGUES`` rows (the competition's training set) at the
section's config limits: the guide knows no data, so every row is padded to the longest
(a worst case, said in the guide). Times come from ``speed.step_time`` and
``speed.epoch_time`` and are *estimated* (data-sheet peaks, default efficiency) unless
``dialsum probe`` calibrated that GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from dialsum.memory.overheads import Overheads, required_bytes, usable_bytes
from dialsum.report.published import PublishedSetting, published_for
from dialsum.report.seed_guide import seed_settings
from dialsum.speed.device_specs import spec_for
from dialsum.speed.epoch_time import EpochTime, epoch_time, uniform_lengths
from dialsum.speed.gpus import GPU
from dialsum.speed.step_time import efficiency_for, has_costs, matmul_precision
from dialsum.step.geometry import divisors
from dialsum.trace.profile import MemoryProfile, TrainOptions, TrainShape

GUIDE_EPOCH_DIALOGUES = 12_457
"""Rows of the competition's training set: what "an epoch" means in the guide."""

TrainFn = Callable[[Any, TrainShape, TrainOptions], MemoryProfile]


def _epoch_at(
    profile: MemoryProfile,
    gpu: GPU,
    precision: str,
    micro: int,
    per_step_rows: int,
    lengths: tuple[int, int],
    records: int = GUIDE_EPOCH_DIALOGUES,
) -> EpochTime | None:
    """Epoch of ``records`` rows at ``lengths`` with ``profile``'s micro-batch cost."""
    spec = spec_for(gpu)
    if spec is None or not has_costs(profile):
        return None
    mp = matmul_precision(precision)
    efficiency, _ = efficiency_for(spec.slug, mp)
    return epoch_time(
        profile,
        lengths=uniform_lengths(records, *lengths),
        planned=lengths,
        micro=micro,
        per_step_rows=per_step_rows,
        spec=spec,
        precision=mp,
        efficiency=efficiency,
        lengths_from="config limits",
    )


def plan_epoch(plan, records: int = GUIDE_EPOCH_DIALOGUES) -> EpochTime | None:
    """``plan``'s epoch over ``records`` rows at its own lengths (one GPU's share)."""
    return _epoch_at(
        plan.train_profile,
        plan.gpu,
        plan.precision,
        plan.micro_batch_size,
        plan.geometry.per_rank_rows,
        (plan.source_len, plan.target_len),
        -(-records // plan.world_size),
    )


# -- time vs micro-batch -------------------------------------------------------------------


@dataclass
class TimeCurve:
    """Epoch time per micro-batch for one GPU and checkpointing setting (fitting ones)."""

    gpu: str
    checkpointing: bool
    points: list[tuple[int, float]] = field(default_factory=list)


OptionsFn = Callable[[Any], TrainOptions]
"""A plan -> the training options its step runs with (``memory.fit.plan_train_options``:
precision, optimizer, checkpointing and method - LoRA/QLoRA for an LLM)."""


def _options(options: TrainOptions, checkpointing: bool, micro: int, per_rank: int):
    # As the planner runs the step: a second micro-batch when accumulating.
    accumulating = per_rank // micro > 1
    return replace(
        options, gradient_checkpointing=checkpointing, micro_batches=2 if accumulating else 1
    )


def time_curves(
    model_config,
    plans: dict[str, Any],
    train: TrainFn,
    overheads: Overheads,
    options_of: OptionsFn,
) -> list[TimeCurve]:
    """Per GPU (its planned precision, optimizer and method), checkpointing off and on:
    the epoch time at every micro-batch that divides the per-GPU batch and fits."""
    curves = []
    for slug, plan in plans.items():
        if spec_for(plan.gpu) is None or plan.timing is None or plan.world_size != 1:
            continue
        usable = usable_bytes(plan.gpu, overheads)
        lengths = (plan.source_len, plan.target_len)
        for checkpointing in (False, True):
            curve = TimeCurve(slug, checkpointing)
            for micro in divisors(plan.geometry.per_rank_rows):
                shape = TrainShape(micro, *lengths)
                options = _options(
                    options_of(plan), checkpointing, micro, plan.geometry.per_rank_rows
                )
                profile = train(model_config, shape, options)
                if required_bytes(profile.peak_bytes, overheads) > usable:
                    break  # memory grows with the micro-batch: larger ones do not fit either
                epoch = _epoch_at(
                    profile, plan.gpu, plan.precision, micro, plan.geometry.per_rank_rows, lengths
                )
                if epoch is not None:
                    curve.points.append((micro, epoch.seconds))
            curves.append(curve)
    return curves


# -- the old guide's settings ----------------------------------------------------------------


@dataclass(frozen=True)
class SeedRow:
    """One row of the old guide next to the plan on the same GPU."""

    gpu_label: str
    slug: str
    micro: int
    accumulation: int
    fits: bool
    seed_epoch: EpochTime | None
    plan_micro: int
    plan_accumulation: int
    plan_epoch: EpochTime | None

    @property
    def speedup(self) -> float | None:
        if self.seed_epoch is None or self.plan_epoch is None or not self.plan_epoch.seconds:
            return None
        return self.seed_epoch.seconds / self.plan_epoch.seconds


def _side_row(
    label: str,
    plan,
    micro: int,
    accumulation: int,
    options: TrainOptions,
    model_config,
    train: TrainFn,
    overheads: Overheads,
) -> SeedRow:
    """A hand-set ``micro`` x ``accumulation`` traced with ``options`` on ``plan``'s GPU
    and lengths: whether it fits and its epoch, next to the plan's."""
    lengths = (plan.source_len, plan.target_len)
    profile = train(model_config, TrainShape(micro, *lengths), options)
    fits = required_bytes(profile.peak_bytes, overheads) <= usable_bytes(plan.gpu, overheads)
    epoch = _epoch_at(profile, plan.gpu, plan.precision, micro, micro * accumulation, lengths)
    return SeedRow(
        label,
        plan.gpu.slug,
        micro,
        accumulation,
        fits,
        epoch,
        plan.micro_batch_size,
        plan.gradient_accumulation_steps,
        plan_epoch(plan),
    )


def seed_rows(
    model_id: str,
    model_config,
    plans: dict[str, Any],
    train: TrainFn,
    overheads: Overheads,
    options_of: OptionsFn,
) -> list[SeedRow]:
    """The old guide's settings for ``model_id`` on each of its GPUs that has a plan: the
    same precision and optimizer as the plan there, its micro-batch and accumulation."""
    rows = []
    for setting in seed_settings():
        if setting.model != model_id:
            continue
        for slug in setting.slugs:
            plan = plans.get(slug)
            if plan is None or plan.world_size != 1:
                continue
            options = replace(
                options_of(plan),
                gradient_checkpointing=False,
                micro_batches=2 if setting.accumulation > 1 else 1,
            )
            rows.append(
                _side_row(
                    setting.gpu_label,
                    plan,
                    setting.micro,
                    setting.accumulation,
                    options,
                    model_config,
                    train,
                    overheads,
                )
            )
    return rows


# -- settings teams published ----------------------------------------------------------------


@dataclass(frozen=True)
class PublishedRow:
    """A published hand-set micro-batch on one GPU, at the section's effective batch,
    next to the plan there."""

    setting: PublishedSetting
    row: SeedRow


def published_rows(
    model_id: str,
    model_config,
    plans: dict[str, Any],
    train: TrainFn,
    overheads: Overheads,
    options_of: OptionsFn,
) -> list[PublishedRow]:
    """Each published setting for ``model_id`` on every single-GPU plan: the plan's
    options (method, precision, checkpointing) with the published micro-batch and the
    accumulation that keeps the plan's effective batch (they did not all say theirs)."""
    rows = []
    for setting in published_for(model_id):
        for plan in plans.values():
            per_rank = plan.geometry.per_rank_rows
            if plan.world_size != 1 or per_rank % setting.micro:
                continue
            accumulation = per_rank // setting.micro
            options = replace(options_of(plan), micro_batches=2 if accumulation > 1 else 1)
            row = _side_row(
                plan.gpu.name,
                plan,
                setting.micro,
                accumulation,
                options,
                model_config,
                train,
                overheads,
            )
            rows.append(PublishedRow(setting, row))
    return rows


# -- what a section carries ---------------------------------------------------------------


@dataclass
class SectionTimes:
    curves: list[TimeCurve]
    seeds: list[SeedRow]
    published: list[PublishedRow] = field(default_factory=list)


def section_times(
    model_id: str,
    model_config,
    plans: dict[str, Any],
    train: TrainFn,
    overheads: Overheads,
    options_of: OptionsFn,
) -> SectionTimes:
    return SectionTimes(
        time_curves(model_config, plans, train, overheads, options_of),
        seed_rows(model_id, model_config, plans, train, overheads, options_of),
        published_rows(model_id, model_config, plans, train, overheads, options_of),
    )

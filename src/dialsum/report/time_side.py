"""The guide's time side: step and epoch time per GPU, a time-vs-micro-batch plot, and the
old hand-written guide's settings side by side with the plan's.

An epoch here is ``GUIDE_EPOCH_DIALOGUES`` rows (the competition's training set) at the
section's config limits: the guide knows no data, so every row is padded to the longest
(a worst case, said in the guide). Times come from ``memory.timing`` and are *estimated*
(data-sheet peaks, default efficiency) unless ``dialsum probe`` calibrated that GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dialsum.memory.gpu_specs import spec_for
from dialsum.memory.gpus import GPU
from dialsum.memory.overheads import Overheads, required_bytes, usable_bytes
from dialsum.memory.profile import MemoryProfile, TrainOptions, TrainShape
from dialsum.memory.timing import (
    EpochTime,
    efficiency_for,
    epoch_time,
    format_duration,
    has_costs,
    matmul_precision,
    uniform_lengths,
)
from dialsum.training.geometry import divisors

GUIDE_EPOCH_DIALOGUES = 12_457
"""Rows of the competition's training set: what "an epoch" means in the guide."""

# The users' old hand-written guide, "Recommended batch size per GPU memory": its per-GPU
# settings as (GPU as they wrote it, catalog slugs, model, train batch, gradient
# accumulation; "-" there is 1). Kept as data so the guide can show what those settings
# cost next to the planned ones; never read from anywhere at run time.
SEED_SETTINGS: tuple[tuple[str, tuple[str, ...], str, int, int], ...] = (
    ("V100 16GB", ("v100-16gb",), "csebuetnlp/mT5_multilingual_XLSum", 1, 4),
    ("V100 16GB", ("v100-16gb",), "eenzeenee/t5-base-korean-summarization", 4, 2),
    ("A100 40GB", ("a100-40gb",), "csebuetnlp/mT5_multilingual_XLSum", 4, 2),
    ("A100 40GB", ("a100-40gb",), "eenzeenee/t5-base-korean-summarization", 8, 2),
    (
        "RTX 3080/4090",
        ("rtx3080-10gb", "rtx4090-24gb"),
        "csebuetnlp/mT5_multilingual_XLSum",
        1,
        8,
    ),
    (
        "RTX 3080/4090",
        ("rtx3080-10gb", "rtx4090-24gb"),
        "eenzeenee/t5-base-korean-summarization",
        2,
        1,
    ),
)

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


def time_cells(plan) -> list[str]:
    """The guide table's "step time" and "epoch time" cells for ``plan``."""
    step = plan.timing.step if plan.timing else None
    epoch = plan_epoch(plan)
    mark = "" if step is None or step.calibrated else "~"
    return [
        f"{mark}{format_duration(step.seconds)}" if step else "-",
        f"{mark}{format_duration(epoch.seconds)}" if epoch else "-",
    ]


# -- time vs micro-batch -------------------------------------------------------------------


@dataclass
class TimeCurve:
    """Epoch time per micro-batch for one GPU and checkpointing setting (fitting ones)."""

    gpu: str
    checkpointing: bool
    points: list[tuple[int, float]] = field(default_factory=list)


def _options(plan, checkpointing: bool, micro: int) -> TrainOptions:
    # As the planner runs the step: a second micro-batch when accumulating.
    options = TrainOptions(
        precision=plan.precision,
        optimizer=plan.optimizer,
        gradient_checkpointing=checkpointing,
    )
    accumulating = plan.geometry.per_rank_rows // micro > 1
    return replace(options, micro_batches=2 if accumulating else 1)


def time_curves(
    model_config, plans: dict[str, Any], train: TrainFn, overheads: Overheads
) -> list[TimeCurve]:
    """Per GPU (its planned precision and optimizer), checkpointing off and on: the epoch
    time at every micro-batch that divides the per-GPU batch and fits in memory."""
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
                profile = train(model_config, shape, _options(plan, checkpointing, micro))
                if required_bytes(profile.peak_bytes, overheads) > usable:
                    break  # memory grows with the micro-batch: larger ones do not fit either
                epoch = _epoch_at(
                    profile, plan.gpu, plan.precision, micro, plan.geometry.per_rank_rows, lengths
                )
                if epoch is not None:
                    curve.points.append((micro, epoch.seconds))
            curves.append(curve)
    return curves


def time_plot_path(memory_plot: Path) -> Path:
    return memory_plot.with_name(memory_plot.stem + "-time.png")


def render_time_plot(title: str, curves: Sequence[TimeCurve], path: Path) -> None:
    """Two panels (checkpointing off / on): epoch time vs micro-batch, one line per GPU."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(11, 5.5), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    slugs = list(dict.fromkeys(c.gpu for c in curves))
    colors = {slug: f"C{i % 10}" for i, slug in enumerate(slugs)}
    for ax, checkpointing in zip(axes, (False, True), strict=True):
        for curve in (c for c in curves if c.checkpointing == checkpointing and c.points):
            xs = [m for m, _ in curve.points]
            ys = [s / 60 for _, s in curve.points]
            ax.plot(xs, ys, marker="o", color=colors[curve.gpu], label=curve.gpu)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ticks = sorted({m for c in curves for m, _ in c.points}) or [1]
        ax.set_xticks(ticks, [str(m) for m in ticks])
        ax.minorticks_off()
        # Minutes at 1-2-5 steps: a log axis with one decade would show a single label.
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("micro-batch (rows); only settings that fit are drawn")
        ax.set_title(f"gradient checkpointing {'on' if checkpointing else 'off'}")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel(f"estimated epoch time (minutes, {GUIDE_EPOCH_DIALOGUES:,} dialogues)")
    handles, labels = axes[0].get_legend_handles_labels()
    for handle, label in zip(*axes[1].get_legend_handles_labels(), strict=True):
        if label not in labels:
            handles.append(handle)
            labels.append(label)
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.suptitle(title)
    fig.subplots_adjust(right=0.84, wspace=0.08)
    fig.savefig(path, format="png")


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


def seed_rows(
    model_id: str, model_config, plans: dict[str, Any], train: TrainFn, overheads: Overheads
) -> list[SeedRow]:
    """The old guide's settings for ``model_id`` on each of its GPUs that has a plan: the
    same precision and optimizer as the plan there, its micro-batch and accumulation."""
    rows = []
    for label, slugs, model, micro, accumulation in SEED_SETTINGS:
        if model != model_id:
            continue
        for slug in slugs:
            plan = plans.get(slug)
            if plan is None or plan.world_size != 1:
                continue
            lengths = (plan.source_len, plan.target_len)
            options = TrainOptions(
                precision=plan.precision,
                optimizer=plan.optimizer,
                micro_batches=2 if accumulation > 1 else 1,
            )
            profile = train(model_config, TrainShape(micro, *lengths), options)
            fits = required_bytes(profile.peak_bytes, overheads) <= usable_bytes(
                plan.gpu, overheads
            )
            seed = _epoch_at(
                profile, plan.gpu, plan.precision, micro, micro * accumulation, lengths
            )
            rows.append(
                SeedRow(
                    label,
                    slug,
                    micro,
                    accumulation,
                    fits,
                    seed,
                    plan.micro_batch_size,
                    plan.gradient_accumulation_steps,
                    plan_epoch(plan),
                )
            )
    return rows


def seed_markdown(rows: Sequence[SeedRow]) -> list[str]:
    """The side-by-side table (empty when the model was not in the old guide)."""
    if not rows:
        return []
    lines = [
        f"The old hand-written guide's settings on the same GPUs, estimated epoch time for "
        f"{GUIDE_EPOCH_DIALOGUES:,} dialogues (same precision and optimizer as the plan, so "
        "only micro-batch and accumulation differ; its effective batch also differed):",
        "",
        "| GPU | old micro-batch x accum. (effective) | old fits | old epoch "
        "| planned micro-batch x accum. (effective) | planned epoch | speed-up (estimated) |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r.speedup:.2f}x" if r.speedup is not None else "-"
        lines.append(
            f"| {r.slug} ({r.gpu_label}) | {r.micro} x {r.accumulation} "
            f"({r.micro * r.accumulation}) | {'yes' if r.fits else 'no'} "
            f"| ~{format_duration(r.seed_epoch.seconds if r.seed_epoch else None)} "
            f"| {r.plan_micro} x {r.plan_accumulation} ({r.plan_micro * r.plan_accumulation}) "
            f"| ~{format_duration(r.plan_epoch.seconds if r.plan_epoch else None)} "
            f"| {speedup} |"
        )
    return lines


# -- what a section carries ---------------------------------------------------------------


@dataclass
class SectionTimes:
    curves: list[TimeCurve]
    seeds: list[SeedRow]


def section_times(
    model_id: str, model_config, plans: dict[str, Any], train: TrainFn, overheads: Overheads
) -> SectionTimes:
    return SectionTimes(
        time_curves(model_config, plans, train, overheads),
        seed_rows(model_id, model_config, plans, train, overheads),
    )


def time_markdown(times: SectionTimes | None, memory_plot_name: str) -> list[str]:
    """The time plot and the old guide's settings, for the section's part of the guide."""
    if times is None:
        return []
    lines = []
    if any(c.points for c in times.curves):
        name = time_plot_path(Path(memory_plot_name)).name
        lines += [f"![estimated epoch time vs micro-batch]({name})", ""]
    lines += seed_markdown(times.seeds)
    return lines + ([""] if times.seeds else [])


TIME_METHOD = (
    "- Time (columns *step time* and *epoch time*, `~` = estimated): FLOPs, bytes moved and "
    "kernels of the traced step (`torch.utils.flop_counter` on the same fake tensors), "
    "step time = max(FLOPs / (dense peak x efficiency), bytes / memory bandwidth, kernels x "
    "10 us issue time) with data-sheet peaks and efficiency 0.3 (bf16/fp16), 0.6 (fp32) "
    "until `dialsum probe` measures it on the GPU; an epoch is "
    f"{GUIDE_EPOCH_DIALOGUES:,} dialogues padded to the config limits (an upper bound)."
)


def time_yaml(plan) -> dict[str, Any]:
    """Predicted times for the guide's YAML (None when unknown)."""
    step = plan.timing.step if plan.timing else None
    epoch = plan_epoch(plan)
    return {
        "flops_per_step": plan.timing.flops_per_step if plan.timing else None,
        "step_time_s": round(step.seconds, 4) if step else None,
        "epoch_time_s": round(epoch.seconds, 1) if epoch else None,
        "epoch_dialogues": GUIDE_EPOCH_DIALOGUES,
        "time_estimated": not step.calibrated if step else True,
    }

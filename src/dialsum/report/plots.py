"""The guide's plots (PNG): predicted training memory vs micro-batch against each GPU's
usable memory, and estimated epoch time vs micro-batch per GPU, and where they are written.

Drawn on a bare matplotlib ``Figure`` with the Agg canvas: no pyplot global state, no
display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dialsum.memory.overheads import usable_bytes
from dialsum.memory.request import resolve_optimizer
from dialsum.report.formats import PRECISION_LABELS, gib
from dialsum.report.time_side import GUIDE_EPOCH_DIALOGUES, TimeCurve

if TYPE_CHECKING:
    from dialsum.report.section_guide import SectionGuide


def plot_path(out: Path, section: str) -> Path:
    """A section's memory plot: next to the guide ``out``, named after it."""
    return out.parent / f"{out.stem}-{section}.png"


def time_plot_path(memory_plot: Path) -> Path:
    """A section's time plot, next to its memory plot."""
    return memory_plot.with_name(memory_plot.stem + "-time.png")


def gpu_line_labels(usable: dict[str, int], min_gap_bytes: int) -> list[tuple[int, str]]:
    """One (bytes, label) per group of GPUs whose usable memory is within ``min_gap_bytes``.

    Labels of lines closer than about a text line's height overlap (A100 80GB and H100
    80GB differ by a few MiB; V100 and T4 by 1 GiB on a 130 GiB axis): join them instead.
    """
    groups: list[tuple[int, list[str]]] = []
    for slug, n_bytes in sorted(usable.items(), key=lambda item: item[1]):
        if groups and n_bytes - groups[-1][0] < min_gap_bytes:
            groups[-1][1].append(slug)
        else:
            groups.append((n_bytes, [slug]))
    return [(n_bytes, ", ".join(slugs)) for n_bytes, slugs in groups]


def render_plot(section: SectionGuide, path: Path) -> None:
    """Training need (incl. overheads) vs micro-batch, with each GPU's usable memory."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot global state, no display needed.
    fig = Figure(figsize=(9, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for precision, points in section.curves.items():
        xs = [m for m, _ in points]
        ax.plot(xs, [gib(b) for _, b in points], marker="o", label=PRECISION_LABELS[precision])
    usable = {gpu.slug: usable_bytes(gpu, section.overheads) for gpu in section.gpus}
    top_bytes = max([*usable.values(), *(b for pts in section.curves.values() for _, b in pts)])
    # 3% of the axis is about one line of 7-point text on a 6-inch-high figure.
    for n_bytes in usable.values():
        ax.axhline(gib(n_bytes), color="grey", linewidth=0.7, linestyle="--")
    for n_bytes, label in gpu_line_labels(usable, min_gap_bytes=int(0.03 * top_bytes)):
        ax.annotate(
            label,
            (1.0, gib(n_bytes)),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color="dimgrey",
        )
    ax.set_xscale("log", base=2)
    micro_batches = sorted({m for points in section.curves.values() for m, _ in points})
    ax.set_xticks(micro_batches, [str(m) for m in micro_batches])
    ax.minorticks_off()
    ax.set_xlabel("micro-batch (rows)")
    ax.set_ylabel("predicted training need (GiB, incl. overheads)")
    ax.set_title(
        f"{section.name}: {section.facts.model_id}, "
        f"{section.cfg.tokenizer.max_source_length}/{section.cfg.tokenizer.max_target_length} "
        f"tokens, {resolve_optimizer(section.cfg.training.optimizer)}"
    )
    ax.legend(loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
    fig.subplots_adjust(right=0.78)
    fig.savefig(path, format="png")


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

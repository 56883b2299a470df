"""How the command line prints: the two consoles, plain lines, JSON, a run's metrics, and
a plan (``format_plan``, ``breakdown_table``, ``plan_json``) for ``dialsum plan``.

Kept apart from the verbs so every verb prints the same way, and away from torch: none of
this imports it, so a config error is reported before the heavy imports.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from dialsum.report.formats import PRECISION_LABELS, TRAIN_CATEGORIES, gib_text, percent, yes_no

if TYPE_CHECKING:
    from dialsum.memory.plan import Plan
    from dialsum.trace.profile import MemoryProfile

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def echo(message: str) -> None:
    # soft_wrap: long paths and commands stay on one line (copy-pastable).
    console.print(message, markup=False, soft_wrap=True)


def print_json(data: object) -> None:
    """Plain stdout, never wrapped or styled, so the output parses when piped."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        text = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key, text)
    console.print(table)


# --------------------------------------------------------------------------------------
# A plan


def breakdown_table(profile: MemoryProfile, title: str | None = None) -> Table:
    """The profile's peak split into categories, in GiB and as a share of the peak."""
    table = Table(title=title or f"memory at the peak ({profile.peak_phase})")
    table.add_column("category")
    table.add_column("GiB", justify="right")
    table.add_column("share", justify="right")
    known = [c for c in TRAIN_CATEGORIES if c in profile.breakdown]
    # Generation profiles have other categories (kv_cache, logits): keep them, after ours.
    names = known + [c for c in profile.breakdown if c not in known]
    for name in names:
        value = profile.breakdown[name]
        table.add_row(name.replace("_", " "), gib_text(value), percent(value, profile.peak_bytes))
    table.add_section()
    table.add_row("peak", gib_text(profile.peak_bytes), "100.0%" if profile.peak_bytes else "-")
    return table


def format_plan(plan: Plan) -> str:
    """A plan as a few lines of plain text: settings, memory, reasons, warnings."""
    gpu = plan.gpu
    lines = [
        f"GPU: {gpu.name} ({gpu.slug}), {gib_text(plan.usable_bytes)} GiB usable of "
        f"{gpu.total_gib:.2f} GiB",
        f"precision: {PRECISION_LABELS.get(plan.precision, plan.precision)}, optimizer: "
        f"{plan.optimizer}, gradient checkpointing: {yes_no(plan.gradient_checkpointing)}",
        f"micro-batch {plan.micro_batch_size} x {plan.gradient_accumulation_steps} accumulation"
        f" x {plan.world_size} GPU(s) = effective batch {plan.effective_batch_size}",
        f"eval batch {plan.eval_batch_size}, generation batch {plan.generation_batch_size}",
        f"lengths: source {plan.source_len}, target {plan.target_len} tokens",
        f"predicted training peak {gib_text(plan.predicted_peak_bytes)} GiB "
        f"({plan.train_profile.peak_phase}); with overheads {gib_text(plan.required_bytes)} "
        f"GiB of {gib_text(plan.usable_bytes)} GiB usable -> "
        + ("fits" if plan.fits else "DOES NOT FIT"),
    ]
    if plan.reasons:
        lines.append("why:")
        lines += [f"  - {reason}" for reason in plan.reasons]
    if plan.warnings:
        lines.append("warnings:")
        lines += [f"  - {warning}" for warning in plan.warnings]
    if not plan.fits and plan.next_ladder_step:
        lines.append(f"next fallback step: {plan.next_ladder_step}")
    return "\n".join(lines)


def plan_json(plan: Plan, params: int | None = None) -> dict[str, Any]:
    """``Plan.to_json_dict`` with ``params`` replaced by the exact count when given.

    The simulator's count comes from its own model build; the caller may know the exact
    count of the checkpoint (``count_params`` on the real or meta model).
    """
    data = plan.to_json_dict()
    if params is not None:
        data["params"] = params
    return data

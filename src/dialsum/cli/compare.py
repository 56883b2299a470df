"""`dialsum plan --compare`: one section planned on several GPUs, ranked by epoch time.

Each GPU gets its own plan (precision, micro-batch, accumulation, checkpointing) from
``cli.plan.plan_command``; the table shows, per GPU, the settings, whether they fit
(need vs usable memory), the predicted step time, tokens/s and time per epoch of the
data (``--data`` or the section's train file), fastest fitting GPU first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dialsum.cli.epoch_estimate import (
    COMPARE_COLUMNS,
    CompareRow,
    EpochData,
    compare_cells,
    compare_json,
    estimated_label,
    ranked,
)
from dialsum.core.errors import ConfigError


@dataclass
class CompareResult:
    rows: list[CompareRow]
    data: EpochData | None
    json: dict[str, Any] = field(default_factory=dict)

    def print(self, console) -> None:
        from rich.table import Table

        where = self.data.origin if self.data else "no training data found"
        records = f"{len(self.data.lengths):,} dialogues, " if self.data else ""
        estimated = any(
            r.plan is not None and estimated_label(r.plan) == "estimated" for r in self.rows
        )
        title = f"ranked by epoch time ({records}{where})"
        if estimated:
            title += "; times estimated"
        table = Table(title=title)
        table.add_column("#", justify="right")
        for name in COMPARE_COLUMNS:
            table.add_column(name, justify="left" if name == "GPU" else "right")
        for rank, row in enumerate(ranked(self.rows), start=1):
            table.add_row(str(rank), *compare_cells(row))
        console.print(table)
        console.print(
            "setting: precision micro-batch x accumulation (ckpt: gradient checkpointing); "
            "GiB: training need with overheads / usable memory",
            markup=False,
        )
        if estimated:
            console.print(
                "estimated: data-sheet peaks and a default efficiency per precision; "
                "`dialsum probe` on a GPU measures a step and calibrates its times",
                markup=False,
            )


def compare_command(*, gpus: list[str], **plan_kwargs: Any) -> CompareResult:
    """Plan on every GPU of ``gpus`` (``plan_command``'s other arguments as given)."""
    from dialsum.cli.plan import plan_command

    if len(gpus) < 2:
        raise ConfigError("plan --compare: name two or more GPUs, e.g. --gpu t4 --gpu a100-40gb")
    plan_kwargs = {**plan_kwargs, "buckets": False}
    rows: list[CompareRow] = []
    data: EpochData | None = None
    for spec in gpus:
        try:
            result = plan_command(gpu=spec, **plan_kwargs)
        except ConfigError as exc:
            # One GPU that cannot run the request (e.g. bf16 asked on a V100) is a row.
            rows.append(CompareRow(spec, error=" ".join(str(exc).split())))
            continue
        rows.append(CompareRow(result.plan.gpu.slug, result.plan, result.epoch))
        data = data or result.epoch_data
    out = CompareResult(rows, data)
    out.json = compare_json(rows, data)
    return out

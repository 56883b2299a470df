"""The batch geometry of a run: effective batch, GPUs, micro-batch, accumulation.

One optimizer step sees ``effective_batch_size`` rows: each of ``world_size`` ranks
processes ``per_rank_rows = effective / world`` of them, in micro-batches of
``micro_batch_size`` rows, ``gradient_accumulation_steps = per_rank / micro`` times.
Both divisions must be exact, or the effective batch the user asked for silently
changes. ``BatchGeometry.build`` is the one place that checks it; everything else (the
planner, the settings, the guarded trainer, the DeepSpeed config, the reports) reads the
numbers from a ``BatchGeometry`` instead of recomputing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dialsum.core.errors import ConfigError


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in increasing order."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _nearest_multiples(value: int, step: int) -> str:
    lower, upper = (value // step) * step, (value // step + 1) * step
    return " or ".join(str(v) for v in (lower, upper) if v >= 1)


def per_rank_rows(effective_batch_size: int, world_size: int) -> int:
    """Rows each rank processes per optimizer step; ``ConfigError`` unless exact."""
    if effective_batch_size < 1 or world_size < 1:
        raise ConfigError(
            f"effective batch ({effective_batch_size}) and GPU count ({world_size}) must be >= 1"
        )
    if effective_batch_size % world_size:
        raise ConfigError(
            f"training.effective_batch_size {effective_batch_size} is not a multiple of the "
            f"{world_size} GPU(s)/processes: every GPU must get the same number of rows per "
            f"optimizer step; use {_nearest_multiples(effective_batch_size, world_size)}"
        )
    return effective_batch_size // world_size


@dataclass(frozen=True)
class BatchGeometry:
    """``micro_batch_size x gradient_accumulation_steps x world_size = effective_batch_size``,
    exactly (validated by ``build``)."""

    effective_batch_size: int
    world_size: int
    micro_batch_size: int

    @classmethod
    def build(
        cls,
        effective_batch_size: int,
        world_size: int,
        micro_batch_size: int,
        *,
        asserted_accumulation: int | None = None,
    ) -> BatchGeometry:
        """The geometry, or a ``ConfigError`` that says which numbers to use instead.

        ``asserted_accumulation`` is ``training.gradient_accumulation_steps`` when the user
        set it: it must equal the derived value for this number of GPUs.
        """
        rows = per_rank_rows(effective_batch_size, world_size)
        if micro_batch_size < 1 or rows % micro_batch_size:
            raise ConfigError(
                f"training.micro_batch_size {micro_batch_size} does not divide the {rows} rows "
                f"each GPU gets per step (effective batch {effective_batch_size} / "
                f"{world_size} GPU(s)); use one of {divisors(rows)} or auto"
            )
        geometry = cls(effective_batch_size, world_size, micro_batch_size)
        if (
            asserted_accumulation is not None
            and asserted_accumulation != geometry.gradient_accumulation_steps
        ):
            raise ConfigError(
                f"training.gradient_accumulation_steps {asserted_accumulation} does not match "
                f"micro-batch {micro_batch_size} on {world_size} GPU(s): effective batch "
                f"{effective_batch_size} = {micro_batch_size} x "
                f"{geometry.gradient_accumulation_steps} x {world_size}; remove "
                "gradient_accumulation_steps (it is derived) or set it to "
                f"{geometry.gradient_accumulation_steps}"
            )
        return geometry

    @property
    def per_rank_rows(self) -> int:
        """Rows one rank processes per optimizer step."""
        return self.effective_batch_size // self.world_size

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.per_rank_rows // self.micro_batch_size

    def with_micro_batch(self, micro_batch_size: int) -> BatchGeometry:
        """The same step with another micro-batch (validated)."""
        return BatchGeometry.build(self.effective_batch_size, self.world_size, micro_batch_size)

    def largest_micro_batch_at_most(self, cap: int) -> int:
        """Largest divisor of the per-rank rows that is at most ``cap`` (at least 1)."""
        return max(d for d in divisors(self.per_rank_rows) if d <= max(cap, 1))

    def describe(self) -> str:
        return (
            f"effective batch {self.effective_batch_size} = micro-batch "
            f"{self.micro_batch_size} x {self.gradient_accumulation_steps} accumulation steps "
            f"x {self.world_size} GPU(s)"
        )

    def to_json(self) -> dict[str, int]:
        return {
            "effective_batch_size": self.effective_batch_size,
            "world_size": self.world_size,
            "per_rank_rows": self.per_rank_rows,
            "micro_batch_size": self.micro_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


class GeometryView:
    """The batch numbers of an object that holds a ``geometry`` (a plan, run settings)."""

    geometry: BatchGeometry

    @property
    def world_size(self) -> int:
        return self.geometry.world_size

    @property
    def per_step_rows(self) -> int:
        """Rows one rank processes per optimizer step."""
        return self.geometry.per_rank_rows

    @property
    def micro_batch_size(self) -> int:
        return self.geometry.micro_batch_size

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.geometry.gradient_accumulation_steps

    @property
    def effective_batch_size(self) -> int:
        return self.geometry.effective_batch_size

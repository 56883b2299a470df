"""The FLOPs and predicted speed of a plan, as ``plan.json`` reports them.

``plan_timing`` sums the planned step's traced costs (``accumulation`` micro-batches and
one optimizer update) and times the step with ``speed.step_time``; the generation FLOPs
are those of one prediction batch over all its new tokens (``token_costs.generation_totals``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dialsum.speed.device_specs import DeviceSpec
from dialsum.speed.step_time import (
    StepTime,
    has_costs,
    matmul_precision,
    step_time_of,
    train_step_cost,
)
from dialsum.trace.profile import MemoryProfile


@dataclass(frozen=True)
class PlanTiming:
    """FLOPs and predicted speed of a plan's training step (per GPU) and generation.

    ``flops_per_token`` divides the step's FLOPs by its padded tokens (rows x (source +
    target)); generation's divides one prediction batch's FLOPs (encoder, every decoder
    step with its beams) by the summary tokens it produces (batch x new tokens).
    ``step`` is None when the device's speeds are unknown (a GPU given by memory size).
    """

    flops_per_step: int
    bytes_per_step: int
    kernels_per_step: int
    tokens_per_step: int
    flops_by_phase: dict[str, int]
    step: StepTime | None
    generate_flops: dict[str, int]
    generate_tokens: int

    @property
    def flops_per_token(self) -> float:
        return self.flops_per_step / self.tokens_per_step if self.tokens_per_step else 0.0

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens_per_step / self.step.seconds if self.step and self.step.seconds else None

    @property
    def generate_flops_per_token(self) -> float:
        total = self.generate_flops.get("total", 0)
        return total / self.generate_tokens if self.generate_tokens else 0.0

    def to_json(self) -> dict:
        return {
            "flops_per_step": self.flops_per_step,
            "flops_per_token": self.flops_per_token,
            "bytes_moved_per_step": self.bytes_per_step,
            "kernels_per_step": self.kernels_per_step,
            "tokens_per_step": self.tokens_per_step,
            "flops_by_phase": dict(self.flops_by_phase),
            "step_time": self.step.to_json() if self.step else None,
            "tokens_per_s": self.tokens_per_s,
            "generate_flops": dict(self.generate_flops),
            "generate_flops_per_token": self.generate_flops_per_token,
        }


def plan_timing(
    train: MemoryProfile,
    generate: MemoryProfile | None,
    *,
    micro: int,
    accumulation: int,
    source_len: int,
    target_len: int,
    generate_batch: int,
    new_tokens: int,
    spec: DeviceSpec | None,
    precision: str,
    efficiency: float | None = None,
    calibrated: bool = False,
) -> PlanTiming | None:
    """The plan's ``PlanTiming`` (None when the profiles carry no costs)."""
    from dialsum.trace.token_costs import generation_totals

    if not has_costs(train):
        return None
    cost = train_step_cost(train, accumulation)
    step = None
    if spec is not None:
        mp = matmul_precision(precision)
        step = step_time_of(train, accumulation, spec, mp, efficiency, calibrated)
    generated: dict[str, int] = {}
    if has_costs(generate):
        assert generate is not None
        generated = generation_totals({"flops": generate.flops}, new_tokens)["flops"]
    by_phase = {
        "forward": train.flops.get("forward", 0) * accumulation,
        "backward": train.flops.get("backward", 0) * accumulation,
        "optimizer": train.flops.get("optimizer", 0),
    }
    return PlanTiming(
        flops_per_step=cost.flops,
        bytes_per_step=cost.bytes_moved,
        kernels_per_step=cost.kernels,
        tokens_per_step=micro * accumulation * (source_len + target_len),
        flops_by_phase=by_phase,
        step=step,
        generate_flops=generated,
        generate_tokens=generate_batch * new_tokens,
    )

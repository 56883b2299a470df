"""How long a training step and an epoch take, predicted from the traced step's cost.

A step's cost comes from the same trace as its memory (``flops.CostMeter``): FLOPs,
bytes moved and kernels. A device has peak speeds (``gpu_specs``). The predicted time is
a roofline with a floor for issuing kernels::

    compute_s = FLOPs / (peak FLOP/s of the matmul precision x efficiency)
    memory_s  = bytes moved / bandwidth
    issue_s   = kernels x host time per kernel
    phase_s   = max(compute_s, memory_s, issue_s)     (GPU: the host runs ahead)
              = compute_s + memory_s + issue_s         (CPU: one thread runs it all)
    step_s    = accumulation x micro-batch_s + optimizer_s

The micro-batches' forward/backward (compute-bound unless tiny) and the optimizer's
update (memory-bound: it reads and writes every parameter and its state) run one after
the other, so each gets its own max and the step adds them up. On a CPU nothing overlaps:
the calling thread issues each op and runs its matmul or element-wise loop itself, so
the three terms add (``bench/bench_time_model.py`` measures it: the max under-predicted
the ~60M model's steps by up to 2x, the sum stays within about 15%).

``efficiency`` is the share of the peak a whole step achieves on its FLOPs (model FLOPs
utilisation: it absorbs the element-wise kernels, launch gaps and the GEMMs' own
efficiency). The defaults are one per matmul precision (``DEFAULT_EFFICIENCY``); once
``dialsum probe`` has measured a step on this GPU, the achieved value replaces it
(``achieved_efficiency``; stored in the calibration file under ``time_efficiency``).

Everything here is a pure function of numbers, except reading/writing that file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dialsum.memory.gpu_specs import DeviceSpec
from dialsum.memory.profile import MemoryProfile

DEFAULT_EFFICIENCY: dict[str, float] = {"fp32": 0.6, "tf32": 0.35, "bf16": 0.3, "fp16": 0.3}
"""Share of the dense peak a whole training step achieves, per matmul precision, until
``dialsum probe`` measures it (model FLOPs utilisation: it absorbs the element-wise
kernels, launch gaps and the GEMMs' own efficiency).

- ``fp32`` 0.6: fp32 matmuls run on CUDA cores, where cuBLAS SGEMM reaches 80-90% of the
  peak, and the step's element-wise kernels are cheap next to such slow matmuls.
- ``bf16``/``fp16`` 0.3, ``tf32`` 0.35: tensor cores make the matmuls 8-16x faster, so
  the unfused element-wise kernels, softmax and layer norms of eager PyTorch take a large
  share of the step. Published model-FLOPs utilisation of large, tuned training runs is
  21-46% (PaLM paper, Chowdhery et al. 2022, table 3: GPT-3 21.3%, Gopher 32.5%,
  Megatron-Turing NLG 30.2%, PaLM 46.2%); a base-size seq2seq in eager mode, with
  smaller matmuls, sits in the lower part of that range.
"""

_MATMUL_PRECISION = {"fp32": "fp32", "bf16": "bf16", "pure_bf16": "bf16", "fp16": "fp16"}


def matmul_precision(precision: str) -> str:
    """The precision a training precision's matmuls run in (AMP runs them in the low one;
    fp32 training keeps TF32 off, PyTorch's default for matmuls)."""
    return _MATMUL_PRECISION[precision]


# -- cost ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCost:
    """What a piece of work asks of the device."""

    flops: int = 0
    bytes_moved: int = 0
    kernels: int = 0

    def __add__(self, other: StepCost) -> StepCost:
        return StepCost(
            self.flops + other.flops,
            self.bytes_moved + other.bytes_moved,
            self.kernels + other.kernels,
        )

    def scaled(self, factor: float) -> StepCost:
        """FLOPs and bytes scaled (fewer or shorter rows); the kernels stay the same."""
        return StepCost(round(self.flops * factor), round(self.bytes_moved * factor), self.kernels)


def phase_cost(profile: MemoryProfile, phases: Sequence[str]) -> StepCost:
    return StepCost(
        sum(profile.flops.get(p, 0) for p in phases),
        sum(profile.bytes_moved.get(p, 0) for p in phases),
        sum(profile.kernels.get(p, 0) for p in phases),
    )


def micro_batch_cost(profile: MemoryProfile) -> StepCost:
    """Forward + backward of one micro-batch (recompute included with checkpointing)."""
    return phase_cost(profile, ("forward", "backward"))


def optimizer_cost(profile: MemoryProfile) -> StepCost:
    return phase_cost(profile, ("optimizer",))


def train_step_cost(profile: MemoryProfile, accumulation: int) -> StepCost:
    """One optimizer step: ``accumulation`` micro-batches, then the optimizer."""
    micro = micro_batch_cost(profile)
    return StepCost(
        micro.flops * accumulation,
        micro.bytes_moved * accumulation,
        micro.kernels * accumulation,
    ) + optimizer_cost(profile)


def has_costs(profile: MemoryProfile | None) -> bool:
    return profile is not None and bool(profile.flops)


# -- time -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTime:
    """A predicted time and what bounds it (``compute``, ``memory`` or ``kernel issue``)."""

    seconds: float
    compute_s: float
    memory_s: float
    issue_s: float
    bound: str
    precision: str
    efficiency: float
    calibrated: bool

    def to_json(self) -> dict:
        return {
            "seconds": self.seconds,
            "compute_s": self.compute_s,
            "memory_s": self.memory_s,
            "issue_s": self.issue_s,
            "bound": self.bound,
            "matmul_precision": self.precision,
            "efficiency": self.efficiency,
            "estimated": not self.calibrated,
        }


def peak_flops(spec: DeviceSpec, precision: str) -> float:
    """Peak FLOP/s of ``spec`` in matmul ``precision``; fp32's when the card lacks it."""
    return spec.peak_flops.get(precision) or spec.peak_flops["fp32"]


def predict_time(
    cost: StepCost,
    spec: DeviceSpec,
    precision: str,
    efficiency: float | None = None,
    calibrated: bool = False,
) -> StepTime:
    """Seconds for ``cost`` on ``spec`` (see module docstring); ``precision`` is a matmul
    precision; ``efficiency`` defaults to ``DEFAULT_EFFICIENCY[precision]``."""
    eff = efficiency if efficiency is not None else DEFAULT_EFFICIENCY[precision]
    if eff <= 0:
        raise ValueError(f"efficiency must be > 0, got {eff}")
    compute = cost.flops / (peak_flops(spec, precision) * eff)
    memory = cost.bytes_moved / spec.bandwidth_bytes_per_s
    issue = cost.kernels * spec.kernel_issue_s
    terms = {"compute": compute, "memory": memory, "kernel issue": issue}
    bound = max(terms, key=lambda k: terms[k])
    seconds = terms[bound] if spec.overlapped else compute + memory + issue
    return StepTime(seconds, compute, memory, issue, bound, precision, eff, calibrated)


def predict_step(
    micro: StepCost,
    accumulation: int,
    optimizer: StepCost,
    spec: DeviceSpec,
    precision: str,
    efficiency: float | None = None,
    calibrated: bool = False,
) -> StepTime:
    """One optimizer step: ``accumulation`` micro-batches, then the optimizer (each phase
    timed by ``predict_time``, their times added); ``bound`` is the micro-batches'."""
    m = predict_time(micro, spec, precision, efficiency, calibrated)
    o = predict_time(optimizer, spec, precision, efficiency, calibrated)
    return StepTime(
        accumulation * m.seconds + o.seconds,
        accumulation * m.compute_s + o.compute_s,
        accumulation * m.memory_s + o.memory_s,
        accumulation * m.issue_s + o.issue_s,
        m.bound,
        precision,
        m.efficiency,
        calibrated,
    )


def step_time_of(
    profile: MemoryProfile,
    accumulation: int,
    spec: DeviceSpec,
    precision: str,
    efficiency: float | None = None,
    calibrated: bool = False,
) -> StepTime:
    """``predict_step`` for a traced training profile."""
    return predict_step(
        micro_batch_cost(profile),
        accumulation,
        optimizer_cost(profile),
        spec,
        precision,
        efficiency,
        calibrated,
    )


def achieved_step_efficiency(
    profile: MemoryProfile,
    accumulation: int,
    spec: DeviceSpec,
    precision: str,
    measured_s: float,
) -> float:
    """The efficiency at which ``step_time_of`` gives ``measured_s``: the optimizer's
    predicted time (memory-bound, hardly any FLOPs) is taken off, the rest is the
    micro-batches' (``achieved_efficiency``)."""
    optimizer = predict_time(optimizer_cost(profile), spec, precision).seconds
    left = max(measured_s - optimizer, 0.1 * measured_s)
    return achieved_efficiency(micro_batch_cost(profile), spec, precision, left / accumulation)


def achieved_efficiency(
    cost: StepCost, spec: DeviceSpec, precision: str, measured_s: float
) -> float:
    """The efficiency at which ``predict_time`` gives ``measured_s`` for ``cost``.

    On a GPU the compute term must reach the measurement: ``FLOPs / (measured x peak)``.
    On a CPU the memory and issue terms are taken off first (they add there; at least a
    tenth of the measurement is left to compute). Never above 1.
    """
    if measured_s <= 0:
        raise ValueError(f"measured step time must be > 0, got {measured_s}")
    busy = measured_s
    if not spec.overlapped:
        other = cost.bytes_moved / spec.bandwidth_bytes_per_s + cost.kernels * spec.kernel_issue_s
        busy = max(measured_s - other, 0.1 * measured_s)
    return min(1.0, cost.flops / (busy * peak_flops(spec, precision)))


# -- calibration file -------------------------------------------------------------------

CALIBRATION_KEY = "time_efficiency"
"""Key of the calibration file that holds ``{device slug: {matmul precision: efficiency}}``."""


def read_efficiencies(path: Path) -> dict[str, dict[str, float]]:
    """Calibrated efficiencies from the calibration file (empty when absent or unreadable:
    the memory side of the same file reports its own errors)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    table = data.get(CALIBRATION_KEY) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        return {}
    out: dict[str, dict[str, float]] = {}
    for slug, by_precision in table.items():
        if isinstance(by_precision, dict):
            out[slug] = {
                p: float(v)
                for p, v in by_precision.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1
            }
    return out


def record_efficiency(path: Path, slug: str, precision: str, efficiency: float) -> None:
    """Add one measured efficiency to the calibration file, keeping everything else."""
    from dialsum.core.runs import write_json_atomic

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    table = data.get(CALIBRATION_KEY)
    table = table if isinstance(table, dict) else {}
    table.setdefault(slug, {})[precision] = float(f"{efficiency:.4g}")  # 4 significant digits
    data[CALIBRATION_KEY] = table
    write_json_atomic(path, data)


def efficiency_for(
    slug: str, precision: str, calibration_path: Path | None = None
) -> tuple[float, bool]:
    """(efficiency, calibrated) for matmul ``precision`` on device ``slug``."""
    if calibration_path is None:
        from dialsum.memory.overheads import default_calibration_path

        calibration_path = default_calibration_path()
    measured = read_efficiencies(calibration_path).get(slug, {}).get(precision)
    if measured is not None:
        return measured, True
    return DEFAULT_EFFICIENCY[precision], False


# -- epochs -------------------------------------------------------------------------------


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
    import torch

    if len({pair for pair in lengths}) <= 1:
        return list(range(len(lengths)))  # all alike: the order changes nothing
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
    linear-layer FLOPs per source and per target token (``flops.linear_flops_per_token``)
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


def format_duration(seconds: float | None) -> str:
    """``37 ms``, ``1.23 s``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``; ``-`` for None."""
    if seconds is None or math.isnan(seconds):
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.001 else f"{seconds * 1000:.2f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# -- a plan's numbers ---------------------------------------------------------------------


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
    from dialsum.memory.flops import generation_totals

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

"""How long a training step takes, predicted from the traced step's cost.

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

An epoch's time (``speed.epoch_time``) and a plan's speed (``speed.plan_cost``) are
built on ``predict_time``. Everything here is a pure function of numbers, except
reading/writing that file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dialsum.core.calibration_file import default_calibration_path
from dialsum.speed.device_specs import DeviceSpec
from dialsum.trace.profile import MemoryProfile

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
        calibration_path = default_calibration_path()
    measured = read_efficiencies(calibration_path).get(slug, {}).get(precision)
    if measured is not None:
        return measured, True
    return DEFAULT_EFFICIENCY[precision], False


# -- display ------------------------------------------------------------------------------


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

"""Plain data types shared by the simulator, the planner and the reports.

Units are in the names: ``*_bytes`` are bytes as the CUDA caching allocator would
reserve them for tensors (block-rounded), before CUDA context and fragmentation overheads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16", "pure_bf16"]
Optimizer = Literal["adamw", "adafactor", "adamw8bit", "sgd"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "pure_bf16")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adafactor", "adamw8bit", "sgd")


@dataclass(frozen=True)
class TrainOptions:
    """How a training step is run (everything that changes its memory, except shapes)."""

    precision: Precision = "fp32"
    optimizer: Optimizer = "adamw"
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_rank: int = 8


@dataclass(frozen=True)
class TrainShape:
    """One micro-batch: ``batch`` rows, ``source_len`` encoder tokens, ``target_len`` labels."""

    batch: int
    source_len: int
    target_len: int


@dataclass(frozen=True)
class GenerateShape:
    """One generation call: ``batch`` inputs, ``num_beams`` beams, up to ``max_new_tokens``."""

    batch: int
    source_len: int
    max_new_tokens: int
    num_beams: int = 1


@dataclass
class MemoryProfile:
    """Result of one simulation.

    ``peak_bytes`` is the maximum over phases of live tensor bytes; ``peak_phase`` names
    the phase it falls in (``forward``, ``backward``, ``optimizer``, ``encoder``,
    ``decode_step``, ``logits``); ``breakdown`` splits the peak into categories
    (``weights``, ``gradients``, ``optimizer_state``, ``activations``, ``temporaries``)
    and sums to ``peak_bytes``. ``phase_peaks`` holds each phase's own peak.
    """

    params: int
    trainable_params: int
    peak_bytes: int
    peak_phase: str
    breakdown: dict[str, int] = field(default_factory=dict)
    phase_peaks: dict[str, int] = field(default_factory=dict)
    # Each phase's peak split by category (training only; sums to phase_peaks[phase]).
    phase_breakdowns: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

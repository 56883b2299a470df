"""Plain data types shared by the simulator, the planner and the reports.

Units are in the names: ``*_bytes`` are bytes as the CUDA caching allocator would
reserve them for tensors (block-rounded), before CUDA context and fragmentation overheads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Precision = Literal["fp32", "bf16", "fp16", "pure_bf16"]
Optimizer = Literal["adamw", "adamw_foreach", "adafactor", "adamw8bit", "paged_adamw8bit", "sgd"]
Device = Literal["cuda", "cpu"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16", "pure_bf16")
OPTIMIZERS: tuple[str, ...] = (
    "adamw",
    "adamw_foreach",
    "adafactor",
    "adamw8bit",
    "paged_adamw8bit",
    "sgd",
)
DEVICES: tuple[str, ...] = ("cuda", "cpu")


@dataclass(frozen=True)
class TrainOptions:
    """How a training step is run (everything that changes its memory, except shapes).

    ``micro_batches`` is how many micro-batches one traced step runs: 1 without gradient
    accumulation, 2 with any accumulation (the second micro-batch runs forward/backward
    with the first one's gradients alive; the third and later repeat the second).
    ``device`` is where the step runs: ``cuda`` emulates CUDA's kernels and autocast on
    the CPU trace, ``cpu`` traces the CPU kernels themselves (to check against a CPU run).
    ``quantization`` (QLoRA) stores the base model's linear layers in 4 bit
    (``trace.quantized``), computing in the precision's low dtype.
    """

    precision: Precision = "fp32"
    optimizer: Optimizer = "adamw"
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_rank: int = 8
    micro_batches: int = 1
    device: Device = "cuda"
    quantization: str | None = None  # QLoRA: "nf4" | "fp4" base weights (with ``lora``)
    double_quant: bool = True


@dataclass(frozen=True)
class TrainShape:
    """One micro-batch: ``batch`` rows, ``source_len`` encoder tokens, ``target_len`` labels."""

    batch: int
    source_len: int
    target_len: int


@dataclass(frozen=True)
class GenerateShape:
    """One generation call: ``batch`` inputs, ``num_beams`` beams, up to ``max_new_tokens``.

    ``label_len`` > 0 adds the evaluation loss forward that the Trainer runs after
    ``generate()`` when the batch has labels (``[batch, label_len]``).
    """

    batch: int
    source_len: int
    max_new_tokens: int
    num_beams: int = 1
    label_len: int = 0


@dataclass(frozen=True)
class GenerateOptions:
    """How generation runs.

    ``precision``: the dtype the weights are cast to (``predict``), or, with ``amp``, the
    autocast dtype over fp32 master weights (evaluation inside bf16/fp16 training, where
    accelerate wraps ``model.forward`` in autocast: decoder steps run under it, the encoder
    pass - which ``generate()`` calls directly - does not). ``device`` as in TrainOptions.
    """

    precision: Precision = "fp32"
    amp: bool = False
    device: Device = "cuda"
    quantization: str | None = None  # QLoRA's 4-bit base ("nf4" | "fp4"), as predict loads it
    double_quant: bool = True
    lora: bool = False  # a causal LM's adapters stay on the base (not merged) when it generates
    lora_rank: int = 8


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
    # Compute cost of the traced step per phase (``dialsum.trace.flops``): FLOPs, bytes
    # moved and kernels. Training: ``forward``/``backward`` of one micro-batch of ``batch``
    # rows, ``optimizer`` once per step. Generation: ``encoder``, one token at the longest
    # cache (``decode_step``, ``logits``, ``reorder``), one at a shorter cache
    # (``decode_short``) and ``eval_loss``. Empty for profiles that did not trace costs.
    flops: dict[str, int] = field(default_factory=dict)
    bytes_moved: dict[str, int] = field(default_factory=dict)
    kernels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

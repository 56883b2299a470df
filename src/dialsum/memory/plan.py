"""Plan batch settings for one GPU from simulated memory, keeping the user's effective batch.

The planner asks the simulator (injected, so tests can use an exact analytic fake) how
much a training step needs, adds the overheads a real GPU has (``overheads.py``) and picks:

- precision: bf16 mixed precision where the GPU has bf16; else fp32 for T5/mT5 (they
  overflow in fp16) and fp16 mixed precision for BART;
- micro-batch: the largest *divisor* of the per-GPU batch that fits, so that
  ``micro x accumulation x world_size`` is exactly the effective batch asked for;
- when even micro-batch 1 does not fit, the fallback ladder: gradient checkpointing,
  Adafactor, 8-bit AdamW, then halving the source length (down to 128 tokens);
- eval and generation batch sizes from simulated generation.

Memory is assumed monotone in batch size and sequence length, so searches bisect.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from dialsum.core.errors import ConfigError
from dialsum.inference.batching import generation_cost, generation_token_budget
from dialsum.memory.gpus import GPU, catalog
from dialsum.memory.overheads import Overheads, required_bytes, usable_bytes
from dialsum.memory.profile import (
    OPTIMIZERS,
    PRECISIONS,
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    TrainOptions,
    TrainShape,
)
from dialsum.memory.timing import PlanTiming
from dialsum.memory.zero import (
    ZERO_STAGES,
    ZeroStateBytes,
    communication_bytes,
    deepspeed_layout,
    largest_layer_params,
    sharded_profile_peak_bytes,
    zero_state_bytes,
)
from dialsum.training.geometry import BatchGeometry, GeometryView, divisors

if TYPE_CHECKING:
    from transformers import PretrainedConfig

_GIB = 2**30

FAMILIES: tuple[str, ...] = ("t5", "mt5", "bart", "other")
FALLBACKS: tuple[str, ...] = ("gradient_checkpointing", "adafactor", "adamw8bit", "source_len")
"""The fallback ladder, in the order it is tried (least change to training first)."""

SOURCE_LEN_FLOOR = 128
"""Shortest source length the ladder goes down to: a dialogue cut below this loses its gist."""

EVAL_BATCH_CAP = 64
"""Largest eval batch planned: past it generation gains little and padding waste grows."""

GENERATION_BATCH_CAP = 256
"""Largest prediction batch planned (same reason; length-sorted batches pad little)."""

# Bytes of optimizer state per trainable parameter; orders the optimizer ladder steps.
# Adafactor's factored second moment is O(rows + cols) per matrix, close to nothing.
_OPTIMIZER_STATE_BYTES_PER_PARAM: dict[str, float] = {
    "adamw": 8.0,
    "adamw_foreach": 8.0,
    "adamw8bit": 2.0,
    "adafactor": 0.01,
    "sgd": 0.0,
}

_T5_FAMILIES = ("t5", "mt5")

_CUT_WARNING = "source text is cut shorter"

_OPTIMIZER_LABELS = {
    "adamw": "AdamW",
    "adamw_foreach": "AdamW (foreach)",
    "adamw8bit": "8-bit AdamW",
    "adafactor": "Adafactor",
    "sgd": "SGD",
}


# --------------------------------------------------------------------------------------
# The simulator, injectable


def _real_train(
    config: PretrainedConfig, shape: TrainShape, options: TrainOptions
) -> MemoryProfile:
    # Imported late: the simulator traces real model code and pulls in torch/transformers.
    from dialsum.memory.simulate import simulate_train

    return simulate_train(config, shape, options)


def _real_generate(
    config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions
) -> MemoryProfile:
    from dialsum.memory.simulate import simulate_generate

    return simulate_generate(config, shape, options)


TrainSimulation = Callable[["PretrainedConfig", TrainShape, TrainOptions], MemoryProfile]
GenerateSimulation = Callable[["PretrainedConfig", GenerateShape, GenerateOptions], MemoryProfile]


@dataclass(frozen=True)
class Simulator:
    """The two memory simulations the planner needs; defaults are the real (tracing) ones."""

    train: TrainSimulation = _real_train
    generate: GenerateSimulation = _real_generate


class _Memo:
    """Caches simulations within one planning call: bisection revisits shapes, traces are slow."""

    def __init__(self, simulator: Simulator, config: PretrainedConfig) -> None:
        self._simulator = simulator
        self._config = config
        self._train: dict[tuple[TrainShape, TrainOptions], MemoryProfile] = {}
        self._generate: dict[tuple[GenerateShape, GenerateOptions], MemoryProfile] = {}

    def train(self, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
        key = (shape, options)
        if key not in self._train:
            self._train[key] = self._simulator.train(self._config, shape, options)
        return self._train[key]

    def generate(self, shape: GenerateShape, options: GenerateOptions) -> MemoryProfile:
        key = (shape, options)
        if key not in self._generate:
            self._generate[key] = self._simulator.generate(self._config, shape, options)
        return self._generate[key]


# --------------------------------------------------------------------------------------
# Request


@dataclass
class PlanRequest:
    """What the user wants trained; everything the planner may choose can be left "auto".

    ``data_lengths`` are the tokenized (source, target) lengths of the training rows after
    truncation; they turn "shorten the source" into "this fraction of dialogues loses tokens".
    ``fallbacks`` lists the ladder steps the planner may take (see ``FALLBACKS``).
    """

    model_config: PretrainedConfig
    source_len: int
    target_len: int
    effective_batch_size: int
    family: str = "auto"
    world_size: int = 1
    precision: str = "auto"
    optimizer: str = "auto"  # auto = fused AdamW, and the ladder may switch optimizers
    gradient_checkpointing: bool | str = "auto"
    num_beams: int = 4
    max_new_tokens: int | None = None
    eval_batch_size: int | str = "auto"
    micro_batch_size: int | str = "auto"
    allow_fp16_for_t5: bool = False
    data_lengths: Sequence[tuple[int, int]] | None = None
    lora: bool = False
    lora_rank: int = 8
    fallbacks: tuple[str, ...] = FALLBACKS
    zero_stage: int = 0
    offload: bool = False
    largest_layer_params: int | None = None  # ZeRO-3; None = measured from model_config

    @property
    def new_tokens(self) -> int:
        """Tokens generated per summary: ``max_new_tokens``, else the target length."""
        return self.max_new_tokens if self.max_new_tokens is not None else self.target_len

    @property
    def per_rank_batch(self) -> int:
        """Rows each GPU sees per optimizer step."""
        return self.effective_batch_size // self.world_size

    def geometry(self, micro_batch_size: int) -> BatchGeometry:
        return BatchGeometry.build(self.effective_batch_size, self.world_size, micro_batch_size)


def model_family(config: PretrainedConfig) -> str:
    """``t5``, ``mt5``, ``bart`` or ``other`` from ``config.model_type``."""
    model_type = getattr(config, "model_type", "")
    if model_type in ("t5", "longt5"):
        return "t5"
    if model_type in ("mt5", "umt5"):
        return "mt5"
    if model_type in ("bart", "mbart"):
        return "bart"
    return "other"


def max_source_positions(config: PretrainedConfig) -> int | None:
    """Longest sequence the position embeddings allow; None for relative positions (T5)."""
    if model_family(config) in _T5_FAMILIES:
        return None
    return getattr(config, "max_position_embeddings", None)


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def validate_request(request: PlanRequest) -> None:
    """Raise one ``ConfigError`` listing every problem of the request (not just the first)."""
    problems: list[str] = []
    for name in ("source_len", "target_len", "effective_batch_size", "world_size", "num_beams"):
        if not _is_positive_int(getattr(request, name)):
            problems.append(f"{name} must be a positive integer, got {getattr(request, name)!r}")
    if request.max_new_tokens is not None and not _is_positive_int(request.max_new_tokens):
        problems.append(
            f"max_new_tokens must be a positive integer, got {request.max_new_tokens!r}"
        )
    if request.family not in FAMILIES + ("auto",):
        problems.append(
            f"family must be one of auto, {', '.join(FAMILIES)}; got {request.family!r}"
        )
    if request.precision not in PRECISIONS + ("auto",):
        problems.append(
            f"precision must be one of auto, {', '.join(PRECISIONS)}; got {request.precision!r}"
        )
    if request.optimizer not in OPTIMIZERS + ("auto",):
        problems.append(
            f"optimizer must be one of auto, {', '.join(OPTIMIZERS)}; got {request.optimizer!r}"
        )
    if request.gradient_checkpointing not in (True, False, "auto"):
        problems.append(
            "gradient_checkpointing must be true, false or auto; "
            f"got {request.gradient_checkpointing!r}"
        )
    for name in ("eval_batch_size", "micro_batch_size"):
        value = getattr(request, name)
        if value != "auto" and not _is_positive_int(value):
            problems.append(f"{name} must be auto or a positive integer, got {value!r}")
    if request.zero_stage not in ZERO_STAGES:
        problems.append(f"zero_stage must be one of 0, 1, 2, 3; got {request.zero_stage!r}")
    elif request.offload and request.zero_stage == 0:
        problems.append("offload needs DeepSpeed ZeRO: set zero_stage to 1, 2 or 3")
    unknown = [step for step in request.fallbacks if step not in FALLBACKS]
    if unknown:
        problems.append(f"fallbacks {unknown} unknown; choose from {', '.join(FALLBACKS)}")
    if request.data_lengths is not None:
        for row, pair in enumerate(request.data_lengths):
            ok = isinstance(pair, (tuple, list)) and len(pair) == 2
            if not ok or not all(isinstance(n, int) and n >= 0 for n in pair):
                problems.append(
                    f"data_lengths[{row}] must be a (source_len, target_len) pair of "
                    f"non-negative integers, got {pair!r}"
                )
                break
    if _is_positive_int(request.effective_batch_size) and _is_positive_int(request.world_size):
        # The one batch-arithmetic check (geometry.BatchGeometry); "auto" checks the step.
        micro = request.micro_batch_size if _is_positive_int(request.micro_batch_size) else 1
        try:
            BatchGeometry.build(request.effective_batch_size, request.world_size, micro)
        except ConfigError as exc:
            problems.append(str(exc))
    limit = max_source_positions(request.model_config)
    for name in ("source_len", "target_len"):
        value = getattr(request, name)
        if limit is not None and _is_positive_int(value) and value > limit:
            problems.append(
                f"{name} {value} is longer than the model's {limit} position embeddings; "
                f"use at most {limit}"
            )
    if problems:
        raise ConfigError("invalid plan request:\n  - " + "\n  - ".join(problems))


def truncated_fraction(
    data_lengths: Sequence[tuple[int, int]] | None,
    source_len: int,
    target_len: int | None = None,
) -> float | None:
    """Fraction of rows longer than ``source_len`` (or ``target_len``); None without data."""
    if not data_lengths:
        return None
    cut = sum(
        1
        for source, target in data_lengths
        if source > source_len or (target_len is not None and target > target_len)
    )
    return cut / len(data_lengths)


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / _GIB:.2f} GiB"


def _family_label(family: str) -> str:
    return {"t5": "T5", "mt5": "mT5", "bart": "BART"}.get(family, "this model")


# --------------------------------------------------------------------------------------
# Precision


def choose_precision(
    request: PlanRequest, gpu: GPU, family: str
) -> tuple[str, list[str], list[str]]:
    """(precision, reasons, warnings). Raises ``ConfigError`` for a request the GPU can't run."""
    if gpu.is_cpu:
        if request.precision not in ("auto", "fp32"):
            raise ConfigError(
                f"precision {request.precision!r} on the CPU: a CPU run trains in fp32; "
                "use precision auto or fp32"
            )
        return "fp32", ["precision fp32: a CPU run trains in fp32"], []
    cc = "{}.{}".format(*gpu.compute_capability)
    t5_like = family in _T5_FAMILIES
    fp16_risk = (
        f"{_family_label(family)} overflows in fp16 (NaN losses): its activations exceed "
        "fp16's range of 65504; watch the loss and switch to fp32 if it turns NaN"
    )
    if request.precision != "auto":
        precision = request.precision
        where = f"precision {precision!r} in the plan request"
        if precision in ("bf16", "pure_bf16") and not gpu.bf16:
            raise ConfigError(
                f"{where}: {gpu.name} (compute capability {cc}) has no bf16; "
                "use precision auto, fp32, or fp16 (BART only)"
            )
        if precision == "fp16" and not gpu.fp16:
            raise ConfigError(f"{where}: {gpu.name} has no fast fp16; use fp32")
        if precision == "fp16" and t5_like and not request.allow_fp16_for_t5:
            raise ConfigError(
                f"{where}: {_family_label(family)} overflows in fp16 (NaN losses); use "
                "bf16 on Ampere or newer, fp32 otherwise, or set allow_fp16_for_t5 to insist"
            )
        warnings = [fp16_risk] if precision == "fp16" and t5_like else []
        return precision, [f"precision {precision}: as requested"], warnings
    if gpu.bf16:
        why = (
            f"{_family_label(family)} overflows in fp16"
            if t5_like
            else "bf16 keeps fp32's range, so no loss scaling is needed"
        )
        reason = (
            f"precision bf16 (mixed): {gpu.name} supports bf16 (compute capability {cc}); {why}"
        )
        return "bf16", [reason], []
    no_bf16 = f"{gpu.name} has no bf16 (compute capability {cc})"
    if t5_like and request.allow_fp16_for_t5 and gpu.fp16:
        reason = f"precision fp16 (mixed): {no_bf16} and allow_fp16_for_t5 is set"
        return "fp16", [reason], [fp16_risk]
    if t5_like:
        reason = (
            f"precision fp32: {no_bf16} and {_family_label(family)} overflows in fp16 "
            "(NaN losses); set allow_fp16_for_t5 to use fp16 anyway"
        )
        return "fp32", [reason], []
    if family == "bart" and gpu.fp16:
        reason = (
            f"precision fp16 (mixed): {no_bf16}; BART trains stably in fp16 mixed precision "
            "with loss scaling"
        )
        return "fp16", [reason], []
    reason = (
        f"precision fp32: {no_bf16} and fp16 has not been checked for this architecture; "
        "set precision fp16 to opt in"
    )
    return "fp32", [reason], []


# --------------------------------------------------------------------------------------
# The fallback ladder


@dataclass(frozen=True)
class LadderStep:
    """One fallback step: ``name`` is stable ("gradient_checkpointing", "optimizer=adafactor",
    "source_len=256"), ``description`` is a sentence for people, ``options`` and
    ``source_len`` are the training settings once the step is taken."""

    name: str
    description: str
    options: TrainOptions
    source_len: int


def _ladder_optimizers(request: PlanRequest, gpu: GPU | None) -> list[str]:
    """Optimizers the ladder may switch to: only when the user left it ``auto``, and only
    ones that can run here (8-bit AdamW needs bitsandbytes and a GPU)."""
    if request.optimizer != "auto":
        return []
    found = [name for name in ("adafactor", "adamw8bit") if name in request.fallbacks]
    from dialsum.training.step import optimizer_available  # late: imports torch

    on_gpu = gpu is None or not gpu.is_cpu
    return [n for n in found if n != "adamw8bit" or (on_gpu and optimizer_available(n))]


def ladder_steps(
    request: PlanRequest, options: TrainOptions, source_len: int, gpu: GPU | None = None
) -> list[LadderStep]:
    """The fallback steps still open from ``options``/``source_len``, in the order to try.

    Each step starts from the given settings (not from the previous step): take the first,
    then call again from its settings. The guard uses the first one to say what to do when
    micro-batch 1 still runs out of memory.
    """
    steps: list[LadderStep] = []
    allowed = request.fallbacks
    if (
        "gradient_checkpointing" in allowed
        and not options.gradient_checkpointing
        and request.gradient_checkpointing is not False  # "auto" may switch it on
    ):
        steps.append(
            LadderStep(
                "gradient_checkpointing",
                "gradient checkpointing on (recomputes activations in backward, ~30% slower)",
                replace(options, gradient_checkpointing=True),
                source_len,
            )
        )
    current_state = _OPTIMIZER_STATE_BYTES_PER_PARAM[options.optimizer]
    current = _OPTIMIZER_LABELS[options.optimizer]
    descriptions = {
        "adafactor": f"Adafactor instead of {current} (factored second moments, almost no "
        "state; T5 was pre-trained with it)",
        "adamw8bit": "8-bit AdamW states (bitsandbytes)",
    }
    for optimizer in _ladder_optimizers(request, gpu):
        if _OPTIMIZER_STATE_BYTES_PER_PARAM[optimizer] < current_state:
            steps.append(
                LadderStep(
                    f"optimizer={optimizer}",
                    descriptions[optimizer],
                    replace(options, optimizer=optimizer),
                    source_len,
                )
            )
    if "source_len" in allowed and source_len > SOURCE_LEN_FLOOR:
        shorter = max(SOURCE_LEN_FLOOR, source_len // 2)
        steps.append(
            LadderStep(
                f"source_len={shorter}",
                f"max source length {source_len} -> {shorter}"
                + _truncation_note(request.data_lengths, shorter),
                options,
                shorter,
            )
        )
    return steps


def _truncation_note(data_lengths: Sequence[tuple[int, int]] | None, source_len: int) -> str:
    cut = truncated_fraction(data_lengths, source_len)
    if cut is None:
        return ""
    total = len(data_lengths or ())
    return f" (truncates {cut:.1%} of dialogues: {round(cut * total)} of {total})"


# --------------------------------------------------------------------------------------
# Plan

PREDICT_PRECISION = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "pure_bf16": "bf16"}
"""Weights dtype ``predict`` casts to for a training precision (what it simulates too)."""


def eval_generate_options(precision: str, device: str = "cuda") -> GenerateOptions:
    """How evaluation inside training generates: AMP keeps fp32 masters under autocast."""
    if precision in ("bf16", "fp16"):
        return GenerateOptions(precision=precision, amp=True, device=device)  # type: ignore[arg-type]
    return GenerateOptions(precision=PREDICT_PRECISION[precision], device=device)  # type: ignore[arg-type]


def predict_generate_options(precision: str, device: str = "cuda") -> GenerateOptions:
    """How ``predict`` generates after training: weights cast to the training's low dtype."""
    return GenerateOptions(precision=PREDICT_PRECISION[precision], device=device)  # type: ignore[arg-type]


@dataclass
class Plan(GeometryView):
    """Batch settings for one GPU, with the numbers and the reasons behind them.

    ``generation_token_budget`` counts ``step.generation_cost`` tokens ((source + new) x
    beams per row) and ``generation_row_cap`` bounds the rows of a batch of short dialogues
    (their logits and beam bookkeeping do not shrink with the source).
    """

    gpu: GPU
    geometry: BatchGeometry
    eval_batch_size: int
    generation_batch_size: int
    generation_token_budget: int
    generation_row_cap: int
    precision: str
    optimizer: str
    gradient_checkpointing: bool
    source_len: int
    target_len: int
    predicted_peak_bytes: int
    required_bytes: int
    usable_bytes: int
    train_profile: MemoryProfile
    generate_profile: MemoryProfile
    fits: bool
    family: str = "other"
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    next_ladder_step: str | None = None
    zero_stage: int = 0
    offload: bool = False
    zero_states: ZeroStateBytes | None = None  # per-rank model states under ZeRO
    requested_source_len: int = 0  # before the ladder (0: same as source_len)
    eval_profile: MemoryProfile | None = None
    eval_required_bytes: int = 0
    generate_required_bytes: int = 0
    alternatives: list[str] = field(default_factory=list)
    architecture: dict[str, Any] = field(default_factory=dict)
    timing: PlanTiming | None = None  # FLOPs and predicted step time (``memory.timing``)

    @property
    def source_len_cut(self) -> bool:
        """Whether the ladder shortened the source (the run must tokenize at ``source_len``)."""
        return bool(self.requested_source_len) and self.source_len < self.requested_source_len

    @property
    def eval_generate_options(self) -> GenerateOptions:
        return eval_generate_options(self.precision, "cpu" if self.gpu.is_cpu else "cuda")

    @property
    def predict_precision(self) -> str:
        return PREDICT_PRECISION[self.precision]

    def to_json_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict (what the run folder's ``plan.json`` holds)."""
        eval_options = self.eval_generate_options
        return {
            "gpu": {
                "slug": self.gpu.slug,
                "name": self.gpu.name,
                "total_bytes": self.gpu.total_bytes,
            },
            "device": "cpu" if self.gpu.is_cpu else "cuda",
            "family": self.family,
            "architecture": dict(self.architecture),
            "params": self.train_profile.params,
            "trainable_params": self.train_profile.trainable_params,
            **self.geometry.to_json(),
            "eval_batch_size": self.eval_batch_size,
            "eval_precision": (
                f"{eval_options.precision} autocast, fp32 weights"
                if eval_options.amp
                else eval_options.precision
            ),
            "generation_batch_size": self.generation_batch_size,
            "generation_token_budget": self.generation_token_budget,
            "generation_row_cap": self.generation_row_cap,
            "predict_precision": self.predict_precision,
            "precision": self.precision,
            "optimizer": self.optimizer,
            "gradient_checkpointing": self.gradient_checkpointing,
            "source_len": self.source_len,
            "requested_source_len": self.requested_source_len or self.source_len,
            "target_len": self.target_len,
            "predicted_peak_bytes": self.predicted_peak_bytes,
            "peak_phase": self.train_profile.peak_phase,
            "required_bytes": self.required_bytes,
            "usable_bytes": self.usable_bytes,
            "breakdown": dict(self.train_profile.breakdown),
            "phase_peaks": dict(self.train_profile.phase_peaks),
            "eval_peak_bytes": self.eval_profile.peak_bytes if self.eval_profile else None,
            "eval_phase_peaks": dict(self.eval_profile.phase_peaks) if self.eval_profile else {},
            "eval_required_bytes": self.eval_required_bytes,
            "generate_peak_bytes": self.generate_profile.peak_bytes,
            "generate_phase_peaks": dict(self.generate_profile.phase_peaks),
            "generate_breakdown": dict(self.generate_profile.breakdown),
            "generate_required_bytes": self.generate_required_bytes,
            "fits": self.fits,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "alternatives": list(self.alternatives),
            "next_ladder_step": self.next_ladder_step,
            "zero_stage": self.zero_stage,
            "offload": self.offload,
            "zero_states_per_rank": zero_states_json(self.zero_states),
            **_timing_json(self.timing),
        }


def _timing_json(timing: PlanTiming | None) -> dict[str, Any]:
    """Speed keys of ``plan.json``: per GPU, one optimizer step; ``time_estimated`` is
    False only when the step time uses an efficiency measured by ``dialsum probe``."""
    step = timing.step if timing else None
    return {
        "flops_per_step": timing.flops_per_step if timing else None,
        "flops_per_token": timing.flops_per_token if timing else None,
        "step_time_s": step.seconds if step else None,
        "tokens_per_s": timing.tokens_per_s if timing else None,
        "time_estimated": not step.calibrated if step else True,
        "timing": timing.to_json() if timing else None,
    }


def zero_states_json(states: ZeroStateBytes | None) -> dict[str, int] | None:
    if states is None:
        return None
    return {
        "weights": states.weights_bytes,
        "gradients": states.gradients_bytes,
        "optimizer_state": states.optimizer_state_bytes,
        "gathered_layer": states.gathered_layer_bytes,
        "gpu": states.gpu_bytes,
        "cpu": states.cpu_bytes,
    }


@dataclass(frozen=True)
class _Need:
    profile: MemoryProfile
    required_bytes: int
    fits: bool
    peak_bytes: int  # per rank: the simulated peak, with ZeRO's sharded model states
    zero_states: ZeroStateBytes | None = None


class _Planner:
    """The state of one planning call: request, GPU, overheads, memoized simulator."""

    def __init__(
        self,
        request: PlanRequest,
        gpu: GPU,
        overheads: Overheads,
        simulator: Simulator,
    ) -> None:
        self.request = request
        self.gpu = gpu
        self.device = "cpu" if gpu.is_cpu else "cuda"
        self.overheads = overheads
        self.sim = _Memo(simulator, request.model_config)
        self.usable = usable_bytes(gpu, overheads)
        self._largest_layer: int | None = request.largest_layer_params

    def largest_layer(self) -> int:
        if self._largest_layer is None:
            from dialsum.models.architectures import model_from_config

            meta = model_from_config(self.request.model_config, device="meta")
            self._largest_layer = largest_layer_params(meta)
        return self._largest_layer

    def zero_states(self, profile: MemoryProfile, options: TrainOptions) -> ZeroStateBytes:
        request = self.request
        return zero_state_bytes(
            profile.params,
            deepspeed_layout(options.precision, options.optimizer),
            stage=request.zero_stage,
            world=request.world_size,
            offload=request.offload,
            trainable_params=profile.trainable_params,
            largest_layer_params=self.largest_layer() if request.zero_stage == 3 else 0,
        )

    def step_options(self, micro: int, options: TrainOptions) -> TrainOptions:
        """``options`` as the step at ``micro`` runs: with accumulation, a second micro-batch
        runs with the first one's gradients alive (DeepSpeed accumulates in its engine)."""
        accumulates = self.request.per_rank_batch // micro > 1 and self.request.zero_stage == 0
        return replace(options, micro_batches=2 if accumulates else 1, device=self.device)

    def train_need(
        self, micro: int, options: TrainOptions, source_len: int, target_len: int | None = None
    ) -> _Need:
        target = target_len if target_len is not None else self.request.target_len
        options = self.step_options(micro, options)
        profile = self.sim.train(TrainShape(micro, source_len, target), options)
        if self.request.zero_stage > 0:
            # DeepSpeed holds the model states itself (sharded); activations stay per rank.
            states = self.zero_states(profile, options)
            comm = communication_bytes(
                self.request.zero_stage,
                _hidden_size(self.request.model_config),
                deepspeed_layout(options.precision, options.optimizer).grad_bytes,
            )
            peak = sharded_profile_peak_bytes(profile, states, comm)
            need = required_bytes(peak, self.overheads)
            return _Need(profile, need, need <= self.usable, peak, states)
        # DDP: the guarded trainer averages gradients in flat buckets of 25 MiB; gradients
        # are counted once more (as DDP's own buckets would take: conservative).
        ddp_bytes = profile.breakdown.get("gradients", 0) if self.request.world_size > 1 else 0
        need = required_bytes(profile.peak_bytes + ddp_bytes, self.overheads)
        return _Need(profile, need, need <= self.usable, profile.peak_bytes)

    def generate_need(
        self,
        batch: int,
        source_len: int,
        options: GenerateOptions,
        resident_bytes: int,
        label_len: int = 0,
    ) -> _Need:
        shape = GenerateShape(
            batch, source_len, self.request.new_tokens, self.request.num_beams, label_len
        )
        profile = self.sim.generate(shape, replace(options, device=self.device))
        need = required_bytes(profile.peak_bytes + resident_bytes, self.overheads)
        return _Need(profile, need, need <= self.usable, profile.peak_bytes + resident_bytes)


def _hidden_size(config: PretrainedConfig) -> int:
    return int(getattr(config, "d_model", None) or getattr(config, "hidden_size", 0) or 0)


def largest_fitting(candidates: Sequence[int], fits: Callable[[int], bool]) -> int | None:
    """Largest candidate for which ``fits`` holds, by bisection (``fits`` is monotone).

    The largest candidate is tried first: on a big GPU it often fits, and one trace then
    replaces the whole bisection (each real trace takes seconds).
    """
    if not candidates:
        return None
    if fits(candidates[-1]):
        return candidates[-1]
    lo, hi, best = 0, len(candidates) - 2, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            best, lo = candidates[mid], mid + 1
        else:
            hi = mid - 1
    return best


def _nice_batch_sizes(cap: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, ... up to ``cap``: powers of two and 1.5x powers of two."""
    sizes = {1}
    power = 1
    while power <= cap:
        sizes.update(n for n in (power, power * 3 // 2) if n <= cap)
        power *= 2
    return sorted(sizes)


# --------------------------------------------------------------------------------------
# make_plan: a pipeline of named steps over one mutable state


@dataclass
class _State:
    """What the planning steps decide, in order."""

    options: TrainOptions
    source_len: int
    reasons: list[str]
    warnings: list[str]
    need: _Need | None = None  # training need at the chosen (or smallest) micro-batch
    micro: int = 1
    rejected: set[str] = field(default_factory=set)


def resolve_optimizer(name: str) -> str:
    """``auto`` starts as fused AdamW (the ladder may switch it); a named one stays."""
    return "adamw" if name == "auto" else name


def _initial_options(request: PlanRequest, precision: str) -> TrainOptions:
    return TrainOptions(
        precision=precision,  # type: ignore[arg-type]
        optimizer=resolve_optimizer(request.optimizer),  # type: ignore[arg-type]
        gradient_checkpointing=request.gradient_checkpointing is True,
        lora=request.lora,
        lora_rank=request.lora_rank,
    )


def _climb_ladder(planner: _Planner, state: _State, smallest: int) -> None:
    """Take fallback steps while the smallest allowed micro-batch does not fit."""
    need = planner.train_need(smallest, state.options, state.source_len)
    tried: set[str] = set()
    while not need.fits:
        open_steps = [
            s
            for s in ladder_steps(planner.request, state.options, state.source_len, planner.gpu)
            if s.name not in tried
        ]
        if not open_steps:
            break
        step = open_steps[0]
        tried.add(step.name)
        trial = planner.train_need(smallest, step.options, step.source_len)
        before = f"micro-batch {smallest} needs {_gib(need.required_bytes)}"
        if trial.required_bytes < need.required_bytes:
            state.reasons.append(
                f"{step.description}: {before} > {_gib(planner.usable)} usable; "
                f"with it {_gib(trial.required_bytes)}"
            )
            if step.name.startswith("source_len="):
                # Only the final length matters to the user: replace an earlier halving.
                state.warnings[:] = [w for w in state.warnings if not w.startswith(_CUT_WARNING)]
                state.warnings.append(f"{_CUT_WARNING}: {step.description}")
            state.options, state.source_len, need = step.options, step.source_len, trial
        else:
            state.rejected.add(step.name)
            state.reasons.append(
                f"{step.description}: skipped, it does not lower the need "
                f"({_gib(trial.required_bytes)} vs {_gib(need.required_bytes)})"
            )
    state.need = need


def _choose_micro_batch(planner: _Planner, state: _State, fixed_micro: int | None) -> None:
    """The largest divisor of the per-GPU batch that fits (or the requested one)."""
    assert state.need is not None
    usable = _gib(planner.usable)
    if not state.need.fits:
        state.micro = fixed_micro or 1
        state.reasons.append(
            f"does not fit: micro-batch {state.micro} at source length {state.source_len} "
            f"needs {_gib(state.need.required_bytes)} but {planner.gpu.name} leaves {usable} "
            "usable after every fallback"
        )
        return
    if fixed_micro is not None:
        state.micro = fixed_micro
        state.reasons.append(
            f"micro-batch {fixed_micro}: as requested; needs "
            f"{_gib(state.need.required_bytes)} of {usable} usable"
        )
        return
    per_rank = planner.request.per_rank_batch
    candidates = divisors(per_rank)

    def fits(m: int) -> bool:
        return planner.train_need(m, state.options, state.source_len).fits

    state.micro = largest_fitting(candidates, fits) or 1
    state.need = planner.train_need(state.micro, state.options, state.source_len)
    larger = [d for d in candidates if d > state.micro]
    why = f"the largest divisor of {per_rank} that fits"
    if larger:
        above = planner.train_need(larger[0], state.options, state.source_len)
        why += f" ({larger[0]} would need {_gib(above.required_bytes)})"
    state.reasons.append(
        f"micro-batch {state.micro}: {why}; needs {_gib(state.need.required_bytes)} of "
        f"{usable} usable on {planner.gpu.name}"
    )


def _explain_engine(planner: _Planner, state: _State, geometry: BatchGeometry) -> None:
    request = planner.request
    state.reasons.append(geometry.describe())
    if request.gradient_checkpointing == "auto" and not state.options.gradient_checkpointing:
        state.reasons.append(
            "gradient checkpointing off: not needed, it would cost ~30% more compute"
        )
    if state.options.optimizer == "adamw":
        state.reasons.append(
            "optimizer: fused AdamW (updates in place, no parameter-sized temporaries)"
        )
    assert state.need is not None
    if request.zero_stage > 0:
        where = "CPU" if request.offload else "the GPUs"
        sharded = {1: "optimizer state", 2: "optimizer state and gradients"}.get(
            request.zero_stage, "optimizer state, gradients and parameters"
        )
        states = state.need.zero_states
        state.reasons.append(
            f"DeepSpeed ZeRO-{request.zero_stage}: {sharded} sharded over "
            f"{request.world_size} GPU(s), optimizer state on {where}; per-rank model states "
            f"{_gib(states.gpu_bytes if states else 0)} on the GPU"
        )
    elif request.world_size > 1:
        state.reasons.append(
            "counted one extra gradient copy per GPU for DDP's communication buckets"
        )


def _resident_bytes(need: _Need) -> int:
    """Optimizer state that stays on the GPU while evaluation generates."""
    if need.zero_states is not None:
        return need.zero_states.optimizer_state_bytes
    return need.profile.breakdown.get("optimizer_state", 0)


def _choose_eval_batch(planner: _Planner, state: _State) -> tuple[int, _Need]:
    """Eval batch: generation (AMP state as in training) and the eval-loss forward, next
    to the resident optimizer state."""
    request = planner.request
    assert state.need is not None
    resident = _resident_bytes(state.need)
    options = eval_generate_options(state.options.precision)

    def need_at(batch: int) -> _Need:
        return planner.generate_need(
            batch, state.source_len, options, resident, label_len=request.target_len
        )

    if request.eval_batch_size != "auto":
        batch = int(request.eval_batch_size)
    else:
        batch = largest_fitting(range(1, EVAL_BATCH_CAP + 1), lambda b: need_at(b).fits) or 1
        state.reasons.append(
            f"eval batch {batch}: largest (up to {EVAL_BATCH_CAP}) whose generation with "
            f"{request.num_beams} beams and eval-loss forward fit next to the resident "
            f"optimizer state ({_gib(resident)})"
        )
    need = need_at(batch)
    if not need.fits:
        state.warnings.append(
            f"evaluation at batch {batch} is predicted not to fit ({request.num_beams} beams, "
            "optimizer state resident)"
        )
    return batch, need


@dataclass(frozen=True)
class _Generation:
    batch: int
    token_budget: int
    row_cap: int
    need: _Need


def _choose_generation(planner: _Planner, state: _State) -> _Generation:
    """Prediction batch at the longest source, its token budget, and a row cap checked at
    the worst point of the budget (many short rows)."""
    request = planner.request
    beams, new = request.num_beams, request.new_tokens
    options = predict_generate_options(state.options.precision)

    def need_at(batch: int, source_len: int) -> _Need:
        return planner.generate_need(batch, source_len, options, 0)

    batch = largest_fitting(
        _nice_batch_sizes(GENERATION_BATCH_CAP), lambda b: need_at(b, state.source_len).fits
    )
    if batch is None:
        batch = 1
        state.warnings.append("prediction at batch 1 is predicted not to fit")
    budget = generation_token_budget(batch, state.source_len, new, beams)

    def source_at(rows: int) -> int:
        # The longest source ``rows`` rows may have within the budget.
        return max(1, min(state.source_len, budget // (rows * beams) - new))

    most_rows = max(batch, budget // generation_cost(1, new, beams))
    candidates = [r for r in _nice_batch_sizes(GENERATION_BATCH_CAP) if batch <= r <= most_rows]
    row_cap = largest_fitting(candidates, lambda r: need_at(r, source_at(r)).fits) or batch
    need = need_at(batch, state.source_len)
    state.reasons.append(
        f"generation batch {batch} at source length {state.source_len} ({beams} beams, "
        f"{new} new tokens, weights in {PREDICT_PRECISION[state.options.precision]}): needs "
        f"{_gib(need.required_bytes)}; token budget {budget} = {batch} x ({state.source_len} "
        f"+ {new}) x {beams}, at most {row_cap} rows per batch"
    )
    return _Generation(batch, budget, row_cap, need)


def _alternatives(planner: _Planner, state: _State, fixed_micro: int | None) -> list[str]:
    """What would fit when nothing on the ladder does (each checked with the simulator)."""
    request = planner.request
    options = state.options
    micro = fixed_micro or 1
    out: list[str] = []
    if fixed_micro is not None and fixed_micro > 1:
        smaller = largest_fitting(
            [d for d in divisors(request.per_rank_batch) if d < fixed_micro],
            lambda m: planner.train_need(m, options, state.source_len).fits,
        )
        if smaller is not None:
            out.append(
                f"a smaller micro-batch: training.micro_batch_size=auto (micro-batch {smaller} "
                "fits, the effective batch stays the same)"
            )
    lengths = list(range(32, state.source_len, 32))
    shorter = largest_fitting(lengths, lambda n: planner.train_need(micro, options, n).fits)
    if shorter is not None:
        out.append(
            f"a shorter source: tokenizer.max_source_length={shorter}"
            + _truncation_note(request.data_lengths, shorter)
        )
    need = planner.train_need(micro, options, state.source_len)
    if planner.gpu.is_cpu:
        margin = planner.overheads.margin_fraction
        cap_gib = need.required_bytes / (1 - margin) / 2**30
        out.append(f"a larger device: hardware.memory_cap_gib={cap_gib:.3f} or more")
        return out
    larger = [
        g
        for g in catalog()
        if g.total_bytes > planner.gpu.total_bytes
        and need.required_bytes <= usable_bytes(g, planner.overheads)
    ]
    if larger:
        best = min(larger, key=lambda g: g.total_bytes)
        out.append(f"a larger GPU: {best.slug} ({best.total_gib:.0f} GiB) or more")
    if request.zero_stage == 0:
        for world in (2, 4, 8):
            if request.effective_batch_size % world:
                continue
            sharded = replace(request, zero_stage=3, offload=True, world_size=world)
            trial = _Planner(sharded, planner.gpu, planner.overheads, planner.sim._simulator)
            if trial.train_need(micro, options, state.source_len).fits:
                out.append(
                    f"{world} GPUs with DeepSpeed ZeRO-3 and CPU offload "
                    "(hardware.zero_stage=3, hardware.offload=true)"
                )
                break
    if not request.lora:
        lora = replace(options, lora=True, lora_rank=request.lora_rank)
        if planner.train_need(micro, lora, state.source_len).fits:
            out.append("LoRA adapters instead of full fine-tuning (model.lora.enabled=true)")
    return out


def make_plan(
    request: PlanRequest,
    gpu: GPU,
    overheads: Overheads | None = None,
    simulator: Simulator | None = None,
) -> Plan:
    """Plan micro-batch, accumulation, precision and eval/generation batches for ``gpu``.

    ``overheads`` defaults to ``Overheads()`` (pass ``default_overheads()`` to use a
    calibration file); ``simulator`` defaults to the real tracing simulator.
    Raises ``ConfigError`` for an invalid request or one the GPU cannot run.
    """
    validate_request(request)
    planner = _Planner(request, gpu, overheads or Overheads(), simulator or Simulator())
    family = request.family if request.family != "auto" else model_family(request.model_config)
    precision, reasons, warnings = choose_precision(request, gpu, family)
    if gpu.warning:
        warnings.append(gpu.warning)
    state = _State(_initial_options(request, precision), request.source_len, reasons, warnings)
    fixed_micro = request.micro_batch_size if request.micro_batch_size != "auto" else None

    _climb_ladder(planner, state, smallest=fixed_micro or 1)
    fits = state.need is not None and state.need.fits
    _choose_micro_batch(planner, state, fixed_micro)
    geometry = request.geometry(state.micro)
    _explain_engine(planner, state, geometry)
    eval_batch, eval_need = _choose_eval_batch(planner, state)
    generation = _choose_generation(planner, state)
    alternatives = [] if fits else _alternatives(planner, state, fixed_micro)
    open_steps = [
        s
        for s in ladder_steps(request, state.options, state.source_len, gpu)
        if s.name not in state.rejected
    ]
    need = state.need
    assert need is not None
    return Plan(
        gpu=gpu,
        geometry=geometry,
        eval_batch_size=eval_batch,
        generation_batch_size=generation.batch,
        generation_token_budget=generation.token_budget,
        generation_row_cap=generation.row_cap,
        precision=precision,
        optimizer=state.options.optimizer,
        gradient_checkpointing=state.options.gradient_checkpointing,
        source_len=state.source_len,
        target_len=request.target_len,
        predicted_peak_bytes=need.peak_bytes,
        required_bytes=need.required_bytes,
        usable_bytes=planner.usable,
        train_profile=need.profile,
        generate_profile=generation.need.profile,
        fits=fits,
        family=family,
        reasons=state.reasons,
        warnings=state.warnings,
        next_ladder_step=open_steps[0].name if open_steps else None,
        zero_stage=request.zero_stage,
        offload=request.offload,
        zero_states=need.zero_states,
        requested_source_len=request.source_len,
        eval_profile=eval_need.profile,
        eval_required_bytes=eval_need.required_bytes,
        generate_required_bytes=generation.need.required_bytes,
        alternatives=alternatives,
        architecture=_architecture(request.model_config),
        timing=_estimate_time(planner, state, geometry, generation),
    )


def _estimate_time(
    planner: _Planner, state: _State, geometry: BatchGeometry, generation: _Generation
) -> PlanTiming | None:
    """FLOPs of the planned step and generation (from their traces), and the step's
    predicted time on this GPU (``memory.timing``)."""
    from dialsum.memory.gpu_specs import spec_for
    from dialsum.memory.timing import efficiency_for, matmul_precision, plan_timing

    assert state.need is not None
    spec = spec_for(planner.gpu)
    efficiency, calibrated = (None, False)
    if spec is not None:
        precision = matmul_precision(state.options.precision)
        efficiency, calibrated = efficiency_for(spec.slug, precision)
    return plan_timing(
        state.need.profile,
        generation.need.profile,
        micro=geometry.micro_batch_size,
        accumulation=geometry.gradient_accumulation_steps,
        source_len=state.source_len,
        target_len=planner.request.target_len,
        generate_batch=generation.batch,
        new_tokens=planner.request.new_tokens,
        spec=spec,
        precision=state.options.precision,
        efficiency=efficiency,
        calibrated=calibrated,
    )


def _architecture(config: PretrainedConfig) -> dict[str, Any]:
    from dialsum.models.architectures import architecture_facts

    return architecture_facts(config)


# --------------------------------------------------------------------------------------
# Bucketed table


def bucket_table(
    request: PlanRequest,
    gpu: GPU,
    overheads: Overheads | None = None,
    simulator: Simulator | None = None,
    source_lens: Sequence[int] = (128, 256, 512, 1024),
    target_lens: Sequence[int] = (64, 128, 256),
) -> list[dict[str, Any]]:
    """Largest micro-batch per (source_len, target_len) bucket, for length-bucketed batching.

    Uses the request's precision/optimizer/checkpointing (no fallback ladder). Lengths above
    the model's position limit are dropped. ``micro_batch_size`` is the largest divisor of
    the per-GPU batch that fits, 0 when none does; ``truncated_fraction`` is the share of
    ``data_lengths`` rows longer than the bucket (None without data).
    """
    validate_request(request)
    planner = _Planner(request, gpu, overheads or Overheads(), simulator or Simulator())
    family = request.family if request.family != "auto" else model_family(request.model_config)
    precision, _, _ = choose_precision(request, gpu, family)
    options = _initial_options(request, precision)
    limit = max_source_positions(request.model_config)
    sources = sorted({n for n in source_lens if limit is None or n <= limit})
    targets = sorted({n for n in target_lens if limit is None or n <= limit})
    candidates = divisors(request.per_rank_batch)
    # Memory grows with length, so a bucket's micro-batch is at most its shorter neighbours'.
    best: dict[tuple[int, int], int] = {}
    rows: list[dict[str, Any]] = []
    for source_len in sources:
        for target_len in targets:
            bounds = [
                value
                for (shorter_source, shorter_target), value in best.items()
                if shorter_source <= source_len and shorter_target <= target_len
            ]
            upper = min(bounds) if bounds else candidates[-1]
            open_candidates = [m for m in candidates if m <= upper]

            def fits(m: int, s: int = source_len, t: int = target_len) -> bool:
                return planner.train_need(m, options, s, t).fits

            micro = largest_fitting(open_candidates, fits) or 0
            best[(source_len, target_len)] = micro
            need = planner.train_need(max(micro, 1), options, source_len, target_len)
            rows.append(
                {
                    "source_len": source_len,
                    "target_len": target_len,
                    "micro_batch_size": micro,
                    "gradient_accumulation_steps": (
                        request.per_rank_batch // micro if micro else None
                    ),
                    "predicted_peak_bytes": need.peak_bytes,
                    "required_bytes": need.required_bytes,
                    "usable_bytes": planner.usable,
                    "fits": micro > 0,
                    "truncated_fraction": truncated_fraction(
                        request.data_lengths, source_len, target_len
                    ),
                }
            )
    return rows

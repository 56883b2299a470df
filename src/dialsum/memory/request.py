"""What the planner is asked: ``PlanRequest``, its validation, and its length facts.

A request says what the user wants trained; everything the planner may choose can be
left ``"auto"``. ``validate_request`` reports every problem of a request at once (one
``ConfigError``), so a user fixes a config in one go instead of one error per run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dialsum.core.errors import ConfigError
from dialsum.memory.zero import ZERO_STAGES
from dialsum.models.kinds import is_causal, is_t5_like, model_family
from dialsum.step.geometry import BatchGeometry
from dialsum.trace.profile import OPTIMIZERS, PRECISIONS

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FAMILIES: tuple[str, ...] = ("t5", "mt5", "bart", "llama", "gemma", "other")
METHODS: tuple[str, ...] = ("full", "lora", "qlora")
"""How a causal LM is fine-tuned: all weights, LoRA adapters on a 16-bit base, or LoRA
adapters on a 4-bit base (QLoRA). ``auto``: full when it fits, else the ladder's steps."""
QUANT_TYPES: tuple[str, ...] = ("nf4", "fp4")
FALLBACKS: tuple[str, ...] = (
    "gradient_checkpointing",
    "lora",
    "qlora",
    "adafactor",
    "adamw8bit",
    "source_len",
)
"""The fallback ladder, in the order it is tried (least change to training first)."""


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
    # Causal LMs: "auto" lets the ladder go full -> LoRA -> QLoRA (see ``METHODS``).
    method: str = "auto"
    quant_type: str = "nf4"
    double_quant: bool = True
    # (source, target) of the longest evaluation rows, as the run tokenizes them; None =
    # the training lengths. The eval file is another file than the training one.
    eval_lengths: tuple[int, int] | None = None

    @property
    def resolved_method(self) -> str:
        """The method training starts from: ``lora``/``qlora`` as named; otherwise full
        fine-tuning, or LoRA when ``lora`` is set (the seq2seq switch)."""
        if self.method in ("lora", "qlora"):
            return self.method
        return "lora" if self.lora else "full"

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


def resolve_optimizer(name: str) -> str:
    """``auto`` starts as fused AdamW (the ladder may switch it); a named one stays."""
    return "adamw" if name == "auto" else name


def request_family(request: PlanRequest) -> str:
    """The request's model family: as given, or read from the model config when ``auto``."""
    return request.family if request.family != "auto" else model_family(request.model_config)


def max_source_positions(config: PretrainedConfig) -> int | None:
    """Longest sequence the position embeddings allow; None for relative positions (T5)."""
    if is_t5_like(model_family(config)):
        return None
    return getattr(config, "max_position_embeddings", None)


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


def truncation_note(data_lengths: Sequence[tuple[int, int]] | None, source_len: int) -> str:
    """`` (truncates 50.0% of dialogues: 2 of 4)`` for a source cut to ``source_len``; ""
    without data."""
    cut = truncated_fraction(data_lengths, source_len)
    if cut is None:
        return ""
    total = len(data_lengths or ())
    return f" (truncates {cut:.1%} of dialogues: {round(cut * total)} of {total})"


# --------------------------------------------------------------------------------------
# Validation: one check per group of fields, in the order their problems are listed


def _is_positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _count_problems(request: PlanRequest) -> list[str]:
    problems = [
        f"{name} must be a positive integer, got {getattr(request, name)!r}"
        for name in ("source_len", "target_len", "effective_batch_size", "world_size", "num_beams")
        if not _is_positive_int(getattr(request, name))
    ]
    if request.max_new_tokens is not None and not _is_positive_int(request.max_new_tokens):
        problems.append(
            f"max_new_tokens must be a positive integer, got {request.max_new_tokens!r}"
        )
    return problems


def _choice_problems(request: PlanRequest) -> list[str]:
    choices = (("family", FAMILIES), ("precision", PRECISIONS), ("optimizer", OPTIMIZERS))
    problems = [
        f"{name} must be one of auto, {', '.join(allowed)}; got {getattr(request, name)!r}"
        for name, allowed in choices
        if getattr(request, name) not in allowed + ("auto",)
    ]
    if request.gradient_checkpointing not in (True, False, "auto"):
        problems.append(
            "gradient_checkpointing must be true, false or auto; "
            f"got {request.gradient_checkpointing!r}"
        )
    return problems


def _auto_count_problems(request: PlanRequest) -> list[str]:
    return [
        f"{name} must be auto or a positive integer, got {getattr(request, name)!r}"
        for name in ("eval_batch_size", "micro_batch_size")
        if getattr(request, name) != "auto" and not _is_positive_int(getattr(request, name))
    ]


def _method_problems(request: PlanRequest) -> list[str]:
    problems = []
    if request.method not in METHODS + ("auto",):
        problems.append(f"method must be one of auto, {', '.join(METHODS)}; got {request.method!r}")
    if request.quant_type not in QUANT_TYPES:
        problems.append(
            f"quant_type must be one of {', '.join(QUANT_TYPES)}; got {request.quant_type!r}"
        )
    if request.method == "qlora" and not is_causal(request.model_config):
        problems.append(
            "method qlora: 4-bit QLoRA is supported for decoder-only LLMs (Llama, Mistral, "
            "Qwen, Gemma); for a seq2seq model use method full or lora"
        )
    return problems


def _engine_problems(request: PlanRequest) -> list[str]:
    problems = []
    if request.zero_stage not in ZERO_STAGES:
        problems.append(f"zero_stage must be one of 0, 1, 2, 3; got {request.zero_stage!r}")
    elif request.offload and request.zero_stage == 0:
        problems.append("offload needs DeepSpeed ZeRO: set zero_stage to 1, 2 or 3")
    unknown = [step for step in request.fallbacks if step not in FALLBACKS]
    if unknown:
        problems.append(f"fallbacks {unknown} unknown; choose from {', '.join(FALLBACKS)}")
    return problems


def _data_length_problems(request: PlanRequest) -> list[str]:
    if request.data_lengths is None:
        return []
    for row, pair in enumerate(request.data_lengths):
        ok = isinstance(pair, (tuple, list)) and len(pair) == 2
        if not ok or not all(isinstance(n, int) and n >= 0 for n in pair):
            return [
                f"data_lengths[{row}] must be a (source_len, target_len) pair of "
                f"non-negative integers, got {pair!r}"
            ]
    return []


def _geometry_problems(request: PlanRequest) -> list[str]:
    batch, world = request.effective_batch_size, request.world_size
    if not (_is_positive_int(batch) and _is_positive_int(world)):
        return []
    # The one batch-arithmetic check (geometry.BatchGeometry); "auto" checks the step.
    micro = request.micro_batch_size if _is_positive_int(request.micro_batch_size) else 1
    try:
        BatchGeometry.build(batch, world, micro)
    except ConfigError as exc:
        return [str(exc)]
    return []


def _position_problems(request: PlanRequest) -> list[str]:
    limit = max_source_positions(request.model_config)
    if limit is not None and is_causal(request.model_config):
        # One sequence holds prompt and summary: their sum must fit the positions.
        lengths = (request.source_len, request.target_len)
        if all(_is_positive_int(n) for n in lengths) and sum(lengths) > limit:
            return [
                f"source_len + target_len = {sum(lengths)} is longer than the model's "
                f"{limit} positions; use at most {limit} in all"
            ]
        return []
    return [
        f"{name} {getattr(request, name)} is longer than the model's {limit} position "
        f"embeddings; use at most {limit}"
        for name in ("source_len", "target_len")
        if limit is not None
        and _is_positive_int(getattr(request, name))
        and getattr(request, name) > limit
    ]


_CHECKS: tuple[Callable[[PlanRequest], list[str]], ...] = (
    _count_problems,
    _choice_problems,
    _auto_count_problems,
    _method_problems,
    _engine_problems,
    _data_length_problems,
    _geometry_problems,
    _position_problems,
)


def validate_request(request: PlanRequest) -> None:
    """Raise one ``ConfigError`` listing every problem of the request (not just the first)."""
    problems = [problem for check in _CHECKS for problem in check(request)]
    if problems:
        raise ConfigError("invalid plan request:\n  - " + "\n  - ".join(problems))

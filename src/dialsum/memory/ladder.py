"""The fallback ladder: what to change, in order, when micro-batch 1 does not fit.

Least change to training first: gradient checkpointing (~30% slower, same result), then,
for a decoder-only LLM whose method is ``auto``, LoRA adapters on the frozen base (no
gradients or optimizer state for the base) and QLoRA (the frozen base in 4 bit), then an
optimizer with less state (Adafactor, 8-bit AdamW; only when the user left the optimizer
``auto``), then halving the source length down to ``SOURCE_LEN_FLOOR`` (the only step
that changes what the model sees). ``fit.climb_ladder`` takes the steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dialsum.memory.request import PlanRequest, truncation_note
from dialsum.models.kinds import is_causal
from dialsum.speed.gpus import GPU
from dialsum.trace.profile import TrainOptions

SOURCE_LEN_FLOOR = 128
"""Shortest source length the ladder goes down to: a dialogue cut below this loses its gist."""

# Bytes of optimizer state per trainable parameter; orders the optimizer ladder steps.
# Adafactor's factored second moment is O(rows + cols) per matrix, close to nothing.
_OPTIMIZER_STATE_BYTES_PER_PARAM: dict[str, float] = {
    "adamw": 8.0,
    "adamw_foreach": 8.0,
    "adamw8bit": 2.0,
    "paged_adamw8bit": 2.0,
    "adafactor": 0.01,
    "sgd": 0.0,
}

_OPTIMIZER_LABELS = {
    "adamw": "AdamW",
    "adamw_foreach": "AdamW (foreach)",
    "adamw8bit": "8-bit AdamW",
    "paged_adamw8bit": "paged 8-bit AdamW",
    "adafactor": "Adafactor",
    "sgd": "SGD",
}


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
    from dialsum.step.train_step import optimizer_available  # late: imports torch

    on_gpu = gpu is None or not gpu.is_cpu
    return [n for n in found if n != "adamw8bit" or (on_gpu and optimizer_available(n))]


def method_of(options: TrainOptions) -> str:
    """``full``, ``lora`` or ``qlora``: what a training step with ``options`` trains."""
    if options.quantization is not None:
        return "qlora"
    return "lora" if options.lora else "full"


def _method_steps(request: PlanRequest, options: TrainOptions, source_len: int) -> list:
    """LoRA, then QLoRA: only for a decoder-only LLM whose method the user left ``auto``."""
    if request.method != "auto" or not is_causal(request.model_config):
        return []
    steps = []
    rank = request.lora_rank
    if not options.lora and "lora" in request.fallbacks:
        steps.append(
            LadderStep(
                "method=lora",
                f"LoRA adapters (r {rank}) on the frozen base: no gradients or optimizer "
                "state for the base weights",
                replace(options, lora=True),
                source_len,
            )
        )
    if options.quantization is None and "qlora" in request.fallbacks:
        double = ", double quant" if request.double_quant else ""
        steps.append(
            LadderStep(
                "method=qlora",
                f"QLoRA: the frozen base in 4 bit ({request.quant_type.upper()}{double}) "
                f"with LoRA adapters (r {rank})",
                replace(options, lora=True, quantization=request.quant_type),
                source_len,
            )
        )
    return steps


def ladder_steps(
    request: PlanRequest, options: TrainOptions, source_len: int, gpu: GPU | None = None
) -> list[LadderStep]:
    """The fallback steps still open from ``options``/``source_len``, in the order to try.

    Each step starts from the given settings (not from the previous step): take the first,
    then call again from its settings. The first one left after planning is the plan's
    ``next_ladder_step``: the guarded trainer names it when micro-batch 1 still runs out of
    memory.
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
    steps += _method_steps(request, options, source_len)
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
                + truncation_note(request.data_lengths, shorter),
                options,
                shorter,
            )
        )
    return steps

"""The training precision of a plan, and how evaluation and prediction generate under it.

Policy: bf16 mixed precision where the GPU has bf16; else fp32 for T5/mT5 (their
activations overflow fp16's range of 65504: NaN losses) unless ``allow_fp16_for_t5`` is
set, and fp16 mixed precision for BART (stable with loss scaling). A precision the user
names is checked against the GPU; a CPU run trains in fp32.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from dialsum.core.errors import ConfigError
from dialsum.models.kinds import is_t5_like
from dialsum.speed.gpus import GPU
from dialsum.trace.profile import GenerateOptions, TrainOptions

if TYPE_CHECKING:
    from dialsum.memory.request import PlanRequest

Choice = tuple[str, list[str], list[str]]
"""(precision, reasons, warnings)."""

PREDICT_PRECISION = {"fp32": "fp32", "bf16": "bf16", "fp16": "fp16", "pure_bf16": "bf16"}
"""Weights dtype ``predict`` casts to for a training precision (what it simulates too)."""


def eval_generate_options(
    precision: str, device: str = "cuda", train: TrainOptions | None = None
) -> GenerateOptions:
    """How evaluation inside training generates: AMP keeps fp32 masters under autocast; the
    model is the one training (``train``: QLoRA's 4-bit base, LoRA adapters)."""
    options = predict_generate_options(precision, device, train)
    if precision in ("bf16", "fp16"):
        return replace(options, precision=precision, amp=True)  # type: ignore[arg-type]
    return options


def predict_generate_options(
    precision: str, device: str = "cuda", train: TrainOptions | None = None
) -> GenerateOptions:
    """How ``predict`` generates after training: weights cast to the training's low dtype;
    with ``train``'s method: QLoRA's base loaded in 4 bit again, a causal LM's adapters
    on the base (a seq2seq run merges them; its trace ignores them)."""
    method = {}
    if train is not None:
        method = {
            "quantization": train.quantization,
            "double_quant": train.double_quant,
            "lora": train.lora,
            "lora_rank": train.lora_rank,
        }
    return GenerateOptions(
        precision=PREDICT_PRECISION[precision],  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        **method,
    )


def _family_label(family: str) -> str:
    return {"t5": "T5", "mt5": "mT5", "bart": "BART", "llama": "This LLM", "gemma": "Gemma"}.get(
        family, "this model"
    )


def _compute_capability(gpu: GPU) -> str:
    return "{}.{}".format(*gpu.compute_capability)


def _fp16_risk(family: str) -> str:
    return (
        f"{_family_label(family)} overflows in fp16 (NaN losses): its activations exceed "
        "fp16's range of 65504; watch the loss and switch to fp32 if it turns NaN"
    )


def choose_precision(request: PlanRequest, gpu: GPU, family: str) -> Choice:
    """(precision, reasons, warnings). Raises ``ConfigError`` for a request the GPU can't run."""
    if gpu.is_cpu:
        return _cpu_precision(request)
    if request.precision != "auto":
        return _requested_precision(request, gpu, family)
    if gpu.bf16:
        return _bf16_precision(gpu, family)
    return _precision_without_bf16(request, gpu, family)


def _cpu_precision(request: PlanRequest) -> Choice:
    if request.precision not in ("auto", "fp32"):
        raise ConfigError(
            f"precision {request.precision!r} on the CPU: a CPU run trains in fp32; "
            "use precision auto or fp32"
        )
    return "fp32", ["precision fp32: a CPU run trains in fp32"], []


def _requested_precision(request: PlanRequest, gpu: GPU, family: str) -> Choice:
    """The precision the user named, if this GPU can run it for this family."""
    precision = request.precision
    t5_like = is_t5_like(family)  # type: ignore[arg-type]
    where = f"precision {precision!r} in the plan request"
    if precision in ("bf16", "pure_bf16") and not gpu.bf16:
        raise ConfigError(
            f"{where}: {gpu.name} (compute capability {_compute_capability(gpu)}) has no bf16; "
            "use precision auto, fp32, or fp16 (BART only)"
        )
    if precision == "fp16" and not gpu.fp16:
        raise ConfigError(f"{where}: {gpu.name} has no fast fp16; use fp32")
    if precision == "fp16" and t5_like and not request.allow_fp16_for_t5:
        raise ConfigError(
            f"{where}: {_family_label(family)} overflows in fp16 (NaN losses); use "
            "bf16 on Ampere or newer, fp32 otherwise, or set allow_fp16_for_t5 to insist"
        )
    warnings = [_fp16_risk(family)] if precision == "fp16" and t5_like else []
    return precision, [f"precision {precision}: as requested"], warnings


def _bf16_precision(gpu: GPU, family: str) -> Choice:
    why = (
        f"{_family_label(family)} overflows in fp16"
        if is_t5_like(family)  # type: ignore[arg-type]
        else "bf16 keeps fp32's range, so no loss scaling is needed"
    )
    reason = (
        f"precision bf16 (mixed): {gpu.name} supports bf16 "
        f"(compute capability {_compute_capability(gpu)}); {why}"
    )
    return "bf16", [reason], []


def _precision_without_bf16(request: PlanRequest, gpu: GPU, family: str) -> Choice:
    """fp32 for T5/mT5 (fp16 only when allowed), fp16 for BART, fp32 for the unknown."""
    no_bf16 = f"{gpu.name} has no bf16 (compute capability {_compute_capability(gpu)})"
    t5_like = is_t5_like(family)  # type: ignore[arg-type]
    if t5_like and request.allow_fp16_for_t5 and gpu.fp16:
        reason = f"precision fp16 (mixed): {no_bf16} and allow_fp16_for_t5 is set"
        return "fp16", [reason], [_fp16_risk(family)]
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
    if family == "llama" and gpu.fp16:
        # Llama-layout LLMs (Llama, Mistral, Qwen) fine-tune in fp16 AMP with loss scaling;
        # it is the QLoRA recipes' compute dtype on T4/V100. Gemma is not among them.
        reason = (
            f"precision fp16 (mixed): {no_bf16}; Llama-layout LLMs fine-tune in fp16 mixed "
            "precision with loss scaling (QLoRA computes in fp16 here)"
        )
        return "fp16", [reason], []
    if family == "gemma":
        reason = (
            f"precision fp32: {no_bf16} and Gemma's activations overflow fp16 (it was "
            "trained in bf16); set precision fp16 to insist"
        )
        return "fp32", [reason], []
    reason = (
        f"precision fp32: {no_bf16} and fp16 has not been checked for this architecture; "
        "set precision fp16 to opt in"
    )
    return "fp32", [reason], []

"""Running the real model code inside a trace: what a training and a generation trace share.

The dtypes a precision stores tensors in, the model as accelerate prepares it for AMP
(``prepared_model``), CUDA's kernel choices switched on for a ``cuda`` trace
(``emulation_on``), the weights counted as ``weights``, fake token ids and labelled
batches as the tokenizer and collator give them, and the breakdown of a peak by category.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from transformers import PretrainedConfig

from dialsum.models.architectures import is_causal
from dialsum.trace.cuda_emulation import CpuGemm4bitMode, CudaEmulationMode
from dialsum.trace.quantized import Quantization, quant_states
from dialsum.trace.tracer import LiveStorageTracker, PeakRecord

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "pure_bf16": torch.bfloat16,
}


def dtype_of(precision: str) -> torch.dtype:
    """Storage dtype of low-precision tensors for ``precision`` (fp32 for ``fp32``)."""
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[precision]


def amp_dtype(precision: str) -> torch.dtype | None:
    # bf16/fp16 are AMP (fp32 master weights + autocast); pure_bf16 casts the model instead.
    return _DTYPES[precision] if precision in ("bf16", "fp16") else None


def weights_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "pure_bf16" else None


def full_breakdown(record: PeakRecord, categories: tuple[str, ...]) -> dict[str, int]:
    breakdown = {name: record.by_category.get(name, 0) for name in categories}
    for name, nbytes in record.by_category.items():
        if name not in breakdown:
            breakdown[name] = nbytes
    return breakdown


def random_ids(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # Values never matter on fake tensors; dtype/shape do (int64 like a tokenizer's output).
    return torch.randint(0, vocab_size, (batch, length), dtype=torch.long)


def labelled_batch(
    config: PretrainedConfig, rows: int, source_len: int, target_len: int
) -> dict[str, torch.Tensor]:
    if is_causal(config):
        # A causal row is prompt + summary in one sequence: ids, mask and labels (-100 on
        # the prompt) all [rows, source_len + target_len].
        length = source_len + target_len
        return {
            "input_ids": random_ids(rows, length, config.vocab_size),
            "attention_mask": torch.ones(rows, length, dtype=torch.long),
            "labels": random_ids(rows, length, config.vocab_size),
        }
    # What the collator hands the trainer: source ids/mask [rows, source_len], labels and
    # the shifted ``decoder_input_ids`` [rows, target_len] (int64, like a tokenizer's).
    return {
        "input_ids": random_ids(rows, source_len, config.vocab_size),
        "attention_mask": torch.ones(rows, source_len, dtype=torch.long),
        "labels": random_ids(rows, target_len, config.vocab_size),
        "decoder_input_ids": random_ids(rows, target_len, config.vocab_size),
    }


class _AmpForward:
    """The model as accelerate prepares it for AMP: ``forward`` under autocast, then the
    outputs converted to fp32 (``convert_outputs_to_fp32``: a fp32 copy of the logits).

    On ``cuda`` the emulation applies CUDA's autocast lists and drops its weight cast cache
    when the region exits; on ``cpu`` the real CPU autocast runs.
    """

    def __init__(
        self, model: nn.Module, emulation: CudaEmulationMode, amp: torch.dtype, device: str
    ) -> None:
        self.model, self.emulation, self.amp, self.device = model, emulation, amp, device

    def __call__(self, **inputs):
        if self.device == "cpu":
            with torch.autocast("cpu", dtype=self.amp):
                outputs = self.model(**inputs)
        else:
            self.emulation.autocast_dtype = self.amp
            try:
                outputs = self.model(**inputs)
            finally:
                self.emulation.clear_cache()  # autocast exit
                self.emulation.autocast_dtype = None
        if outputs.logits.dtype != torch.float32:
            outputs.logits = outputs.logits.float()
        return outputs


def prepared_model(
    model: nn.Module, emulation: CudaEmulationMode, precision: str, device: str
) -> Callable:
    amp = amp_dtype(precision)
    return model if amp is None else _AmpForward(model, emulation, amp, device)


def emulation_on(emulation: CudaEmulationMode, device: str) -> contextlib.AbstractContextManager:
    """CUDA's kernel choices for a ``cuda`` trace; for ``cpu`` the real CPU kernels, except
    bitsandbytes' 4-bit matmul, whose fake op would skip the CPU kernel's dequantized
    weight (``CpuGemm4bitMode``)."""
    return emulation if device == "cuda" else CpuGemm4bitMode()


def quantization_of(options) -> Quantization | None:
    """The 4-bit storage of ``TrainOptions``/``GenerateOptions`` (None: not QLoRA); the
    compute dtype is the precision's low dtype (fp32 for an fp32 run)."""
    if options.quantization is None:
        return None
    return Quantization(options.quantization, options.double_quant, dtype_of(options.precision))


def track_model(tracker: LiveStorageTracker, model: nn.Module) -> None:
    """Count the model's memory: ``weights`` (parameters, buffers), split out for QLoRA and
    LoRA into ``weights_4bit`` (packed 4-bit values and their quantization state) and
    ``adapters`` (LoRA A/B and the trainable marker rows)."""
    seen: set[int] = set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        if "lora_" in name or "trainable_tokens" in name:
            tracker.track(param, "adapters")
        elif param.dtype == torch.uint8:
            tracker.track(param, "weights_4bit")
        else:
            tracker.track(param, "weights")
    tracker.track_all(model.buffers(), "weights")
    # 4-bit layers: absmax (and the nested state) are weight memory outside parameters.
    tracker.track_all(quant_states(model), "weights_4bit")

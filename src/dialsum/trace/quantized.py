"""QLoRA's 4-bit base model on fake tensors, built and run as bitsandbytes builds and runs it.

What a run does (``from_pretrained(..., quantization_config=BitsAndBytesConfig(
load_in_4bit=True, ...))``, then ``prepare_model_for_kbit_training``, then peft LoRA), and
what the trace reproduces:

- transformers' own bitsandbytes quantizer swaps every ``nn.Linear`` for a
  ``bnb.nn.Linear4bit`` except the modules it keeps (the output head, tied weights, the
  last module): ``quantize_meta_model`` calls that quantizer on the meta model, so the
  trace keeps exactly what the run keeps (embeddings, ``lm_head``, norms unquantized).
- A 4-bit weight of ``n = out x in`` values is stored packed, two values per byte:
  ``uint8 [(n + 1) // 2, 1]``, plus its quantization state: one absmax per block of 64
  values, fp32 ``[ceil(n / 64)]``; with double quantization (``bnb_4bit_use_double_quant``)
  those absmax values are themselves quantized to ``uint8 [ceil(n / 64)]`` with an fp32
  absmax per 256 of them, a 256-entry fp32 code book and an fp32 offset. Plus the 16-entry
  fp32 NF4/FP4 code. ``fake_4bit_weight`` builds these tensors (bitsandbytes' own
  ``quantize_4bit`` reads values to build its code book, which fake tensors cannot give;
  the test checks shapes and dtypes against a real ``quantize_4bit``).
- ``prepare_model_for_kbit_training`` freezes every parameter and casts every fp16/bf16
  parameter that is not 4-bit to fp32: the unquantized parts cost 4 bytes per value.

Running it: ``Linear4bit.forward`` casts its input to the compute dtype and calls
``bnb.matmul_4bit``: forward is the op ``bitsandbytes::gemm_4bit`` (on CUDA past a few rows,
``_dequant_linear_fallback``: the whole weight dequantized to the compute dtype,
``[out, in]``, then ``F.linear``), backward dequantizes the whole weight again for
``grad_input`` (``F.dequantize_4bit``, traced as it runs). Under gradient checkpointing the
recompute runs forward, and so the dequantization, once more. The CUDA choice of forward
kernel is emulated in ``trace.cuda_emulation`` (``cuda_gemm_4bit``).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

BLOCKSIZE = 64
"""Values per absmax block of a 4-bit weight (transformers' default ``bnb_4bit_blocksize``)."""

NESTED_BLOCKSIZE = 256
"""Absmax values per block of the second quantization (double quant; fixed in bitsandbytes)."""


@dataclass(frozen=True)
class Quantization:
    """How the base model's linear layers are stored: ``quant_type`` nf4 | fp4, with or
    without double quantization, computing in ``compute_dtype``."""

    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: torch.dtype = torch.bfloat16


def packed_4bit_bytes(numel: int, double_quant: bool) -> int:
    """Bytes of one 4-bit weight of ``numel`` values with its quantization state (before
    allocator rounding): packed values, absmax, and with double quant the second state."""
    blocks = math.ceil(numel / BLOCKSIZE)
    code = 16 * 4
    if not double_quant:
        return (numel + 1) // 2 + blocks * 4 + code
    nested = math.ceil(blocks / NESTED_BLOCKSIZE)
    return (numel + 1) // 2 + blocks + nested * 4 + 256 * 4 + 4 + code


def bnb_config(quantization: Quantization):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization.quant_type,
        bnb_4bit_use_double_quant=quantization.double_quant,
        bnb_4bit_compute_dtype=quantization.compute_dtype,
    )


def quantize_meta_model(model: nn.Module, quantization: Quantization) -> nn.Module:
    """Swap the linear layers of a meta ``model`` for ``Linear4bit`` as ``from_pretrained``
    does (transformers' bitsandbytes quantizer, its own list of modules it keeps), and mark
    the model as loaded in 4 bit (what peft's ``prepare_model_for_kbit_training`` reads)."""
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(bnb_config(quantization), pre_quantized=False)
    quantizer.preprocess_model(model, device_map={"": "cpu"}, dtype=torch.float32)
    model.is_loaded_in_4bit = True
    return model


def fake_4bit_weight(
    out_features: int, in_features: int, quantization: Quantization
) -> tuple[torch.Tensor, object]:
    """(packed weight ``uint8 [(n+1)//2, 1]``, its ``QuantState``), as fake tensors when
    called under a ``FakeTensorMode`` (see the module docstring for the layout)."""
    from bitsandbytes.functional import QuantState

    n = out_features * in_features
    blocks = math.ceil(n / BLOCKSIZE)
    packed = torch.empty((n + 1) // 2, 1, dtype=torch.uint8)
    code = torch.empty(16, dtype=torch.float32)
    shape = torch.Size([out_features, in_features])
    if not quantization.double_quant:
        absmax = torch.empty(blocks, dtype=torch.float32)
        state = QuantState(
            absmax=absmax,
            shape=shape,
            code=code,
            blocksize=BLOCKSIZE,
            quant_type=quantization.quant_type,
            dtype=quantization.compute_dtype,
        )
        return packed, state
    state2 = QuantState(
        absmax=torch.empty(math.ceil(blocks / NESTED_BLOCKSIZE), dtype=torch.float32),
        code=torch.empty(256, dtype=torch.float32),
        blocksize=NESTED_BLOCKSIZE,
        dtype=torch.float32,
    )
    state = QuantState(
        absmax=torch.empty(blocks, dtype=torch.uint8),
        shape=shape,
        code=code,
        blocksize=BLOCKSIZE,
        quant_type=quantization.quant_type,
        dtype=quantization.compute_dtype,
        offset=torch.empty((), dtype=torch.float32),
        state2=state2,
    )
    return packed, state


def is_4bit_linear(module: nn.Module) -> bool:
    # A model holds 4-bit layers only if bitsandbytes built them, i.e. was imported:
    # importing it just to ask costs seconds (its ops compile through torch.compile).
    bnb = sys.modules.get("bitsandbytes")
    return bnb is not None and isinstance(module, bnb.nn.Linear4bit)


def quant_state_tensors(state) -> list[torch.Tensor]:
    """Every tensor a ``QuantState`` holds (absmax, code, offset, the nested state's)."""
    tensors = [state.absmax, state.code]
    if getattr(state, "offset", None) is not None:
        tensors.append(state.offset)
    if getattr(state, "state2", None) is not None:
        tensors += [state.state2.absmax, state.state2.code]
    return [t for t in tensors if isinstance(t, torch.Tensor)]


def fake_4bit_linears(
    model: nn.Module, mode: FakeTensorMode, quantization: Quantization, device: str = "cuda"
) -> None:
    """Give every ``Linear4bit`` of ``model`` a fake packed weight and quantization state.

    The weight becomes a frozen fake parameter carrying the attributes bitsandbytes and
    peft read off a ``Params4bit`` (``quant_state``, ``quant_type``, ...). The CPU-only
    inference repacking (``support_avx512bf16_for_cpu``: no-grad forwards on a CPU with
    AVX-512 BF16 repack each weight once and run a fused kernel) is kept for a ``cpu``
    trace, as the real CPU run does it, and switched off for ``cuda``.
    """
    for module in model.modules():
        if not is_4bit_linear(module):
            continue
        with mode:
            packed, state = fake_4bit_weight(module.out_features, module.in_features, quantization)
        weight = nn.Parameter(packed, requires_grad=False)
        weight.quant_state = state
        weight.quant_type = quantization.quant_type
        weight.blocksize = BLOCKSIZE
        weight.compress_statistics = quantization.double_quant
        weight.quant_storage = torch.uint8
        weight.bnb_quantized = True
        weight.module = module
        module._parameters["weight"] = weight
        module.quant_state = state
        if device == "cuda":
            module.support_avx512bf16_for_cpu = False


def quant_states(model: nn.Module) -> list[torch.Tensor]:
    """The quantization-state tensors of every 4-bit layer (they are weights' memory too)."""
    out: list[torch.Tensor] = []
    for module in model.modules():
        state = getattr(module, "quant_state", None)
        if is_4bit_linear(module) and state is not None:
            out += quant_state_tensors(state)
    return out

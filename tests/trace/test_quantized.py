"""QLoRA's 4-bit weights on fake tensors: the same layout as bitsandbytes, counted exactly."""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import LlamaConfig

from dialsum.trace.allocator import exact_bytes
from dialsum.trace.cuda_emulation import CudaEmulationMode
from dialsum.trace.fake_model import fake_model_from_config, unique_params
from dialsum.trace.model_run import track_model
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.quantized import (
    Quantization,
    fake_4bit_weight,
    packed_4bit_bytes,
    quant_state_tensors,
)
from dialsum.trace.step_trace import simulate_train
from dialsum.trace.tracer import LiveStorageTracker

bnb = pytest.importorskip("bitsandbytes", reason="QLoRA needs the bnb extra")

TINY_LLAMA = LlamaConfig(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    tie_word_embeddings=False,
)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.parametrize("double_quant", [True, False])
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_fake_layout_is_bitsandbytes_layout(quant_type: str, double_quant: bool) -> None:
    # A real quantize_4bit on CPU is the reference: same tensors, shapes and dtypes.
    real, real_state = bnb.functional.quantize_4bit(
        torch.randn(384, 320, dtype=torch.bfloat16),
        blocksize=64,
        compress_statistics=double_quant,
        quant_type=quant_type,
        quant_storage=torch.uint8,
    )
    with FakeTensorMode():
        packed, state = fake_4bit_weight(384, 320, Quantization(quant_type, double_quant))
        fake = [(t.shape, t.dtype) for t in [packed, *quant_state_tensors(state)]]
    assert fake == [(t.shape, t.dtype) for t in [real, *quant_state_tensors(real_state)]]
    assert state.nested is double_quant and state.quant_type == quant_type
    assert state.shape == real_state.shape
    # The byte count the docstring gives: 61,440 packed + 1,920 absmax (+ nested state).
    expected = 61_440 + 64 + (1_920 + 8 * 4 + 1024 + 4 if double_quant else 1_920 * 4)
    assert _nbytes([packed, *quant_state_tensors(state)]) == expected
    assert packed_4bit_bytes(384 * 320, double_quant) == expected


def test_packed_bytes_of_a_solar_projection() -> None:
    # SOLAR's gate_proj: 14,336 x 4,096 values -> 29,360,128 packed bytes, 917,504 blocks
    # of 64 (uint8 absmax with double quant), 3,584 nested fp32 absmax, code books, offset.
    n = 14_336 * 4_096
    assert packed_4bit_bytes(n, True) == 29_360_128 + 917_504 + 3_584 * 4 + 1024 + 4 + 64
    assert packed_4bit_bytes(n, False) == 29_360_128 + 917_504 * 4 + 64
    assert math.ceil(n / 64) == 917_504


def test_qlora_model_keeps_head_embeddings_and_norms_unquantized_in_fp32() -> None:
    mode = FakeTensorMode()
    model = fake_model_from_config(TINY_LLAMA, mode, lora_rank=8, quantization=Quantization())
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # 7 projections per layer (q, k, v, o, gate, up, down) x 2 layers; lm_head stays.
    assert len(quantized) == 14
    assert not isinstance(model.get_output_embeddings(), bnb.nn.Linear4bit)
    for name, param in model.named_parameters():
        if "lora_" in name or "trainable_tokens" in name:  # adapters, marker rows
            assert param.requires_grad and param.dtype == torch.float32
        elif param.dtype == torch.uint8:
            assert not param.requires_grad  # packed 4-bit values
        else:
            # prepare_model_for_kbit_training: frozen, upcast to fp32.
            assert not param.requires_grad and param.dtype == torch.float32, name
    lora = sum(p.numel() for p in unique_params(model) if p.requires_grad)
    # r 8 on every projection: r x (in + out) each; 15 marker rows of the embedding.
    d, ff, kv = 128, 256, 64
    per_layer = 8 * ((d + d) * 2 + (d + kv) * 2 + (d + ff) * 2 + (ff + d))
    assert lora == 2 * per_layer + 15 * d


def test_cuda_forward_dequantizes_the_whole_weight_past_four_rows() -> None:
    mode = FakeTensorMode()
    model = fake_model_from_config(
        TINY_LLAMA, mode, quantization=Quantization(), kbit_training=False
    )
    layer = model.model.layers[0].mlp.down_proj  # 256 -> 128
    # Past 4 rows: the fp32 absmax [512] (double quant) and the bf16 [128, 256] weight,
    # alive together with the output; up to 4 rows the fused kernel makes the output only.
    for rows, temp in ((4, 0), (5, 512 * 4 + 128 * 256 * 2)):
        tracker = LiveStorageTracker(exact_bytes)
        with mode, tracker, CudaEmulationMode(), torch.no_grad():
            track_model(tracker, model)  # the packed weights are not new storage
            x = torch.empty(rows, 256, dtype=torch.bfloat16)
            tracker.reset_peaks()
            base = tracker.current_bytes
            y = layer(x)
            assert tracker.peak.total_bytes - base == temp + y.numel() * 2


def test_qlora_step_counts_params_and_trains_adapters_only() -> None:
    options = TrainOptions(precision="bf16", lora=True, quantization="nf4", device="cuda")
    qlora = simulate_train(
        TINY_LLAMA, TrainShape(2, 32, 16), options, use_cache=False, replay_batches=False
    )
    full = simulate_train(
        TINY_LLAMA,
        TrainShape(2, 32, 16),
        TrainOptions(precision="bf16"),
        use_cache=False,
        replay_batches=False,
    )
    assert qlora.params == full.params  # 4-bit values counted as parameters
    assert qlora.trainable_params < full.trainable_params / 10
    assert qlora.breakdown["gradients"] == 0 or qlora.peak_phase != "optimizer"
    assert qlora.breakdown["weights"] < full.breakdown["weights"]

"""Depth extrapolation must equal a full-depth trace byte for byte."""

from __future__ import annotations

import pytest
from transformers import BartConfig, T5Config

from dialsum.memory.depth import layer_counts, with_layers, worth_extrapolating
from dialsum.memory.profile import TrainOptions, TrainShape
from dialsum.memory.simulate import simulate_train

T5 = T5Config(
    vocab_size=3000, d_model=64, d_ff=256, d_kv=16, num_layers=5, num_decoder_layers=4,
    num_heads=4, tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
)  # fmt: skip
BART = BartConfig(
    vocab_size=3000, d_model=64, encoder_layers=4, decoder_layers=4, encoder_ffn_dim=128,
    decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    max_position_embeddings=256,
)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "shape", "options"),
    [
        (T5, TrainShape(1, 32, 8), TrainOptions()),  # optimizer-bound
        (T5, TrainShape(8, 128, 32), TrainOptions()),  # backward-bound
        (T5, TrainShape(8, 128, 32), TrainOptions(precision="bf16", gradient_checkpointing=True)),
        (BART, TrainShape(4, 64, 16), TrainOptions(optimizer="adafactor")),
        (BART, TrainShape(4, 64, 16), TrainOptions(lora=True)),
    ],
    ids=["t5-optimizer", "t5-backward", "t5-bf16-checkpointing", "bart-adafactor", "bart-lora"],
)
def test_extrapolated_equals_full_trace(config, shape, options) -> None:
    full = simulate_train(config, shape, options, use_cache=False, extrapolate_depth=False)
    fast = simulate_train(config, shape, options, use_cache=False)
    assert fast.peak_bytes == full.peak_bytes
    assert fast.peak_phase == full.peak_phase
    assert fast.breakdown == full.breakdown
    assert fast.phase_peaks == full.phase_peaks
    assert (fast.params, fast.trainable_params) == (full.params, full.trainable_params)


def test_layer_helpers() -> None:
    assert layer_counts(T5) == (5, 4)
    shallow = with_layers(T5, 1, 2)
    assert layer_counts(shallow) == (1, 2)
    assert layer_counts(T5) == (5, 4)  # the original is not modified
    assert worth_extrapolating(T5)
    assert not worth_extrapolating(with_layers(T5, 2, 2))
    assert not worth_extrapolating(with_layers(T5, 3, 3), gradient_checkpointing=True)

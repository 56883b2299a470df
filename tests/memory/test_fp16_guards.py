"""BART's fp16 overflow guard reads values; the trace must assume healthy values."""

from __future__ import annotations

from transformers import BartConfig

from dialsum.trace.generation_trace import simulate_generate
from dialsum.trace.profile import GenerateShape, TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

BART = BartConfig(
    vocab_size=500, d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64,
    decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
    max_position_embeddings=128,
)  # fmt: skip


def test_bart_fp16_generation_and_training_trace() -> None:
    gen16 = simulate_generate(BART, GenerateShape(2, 32, 8, 2), "fp16", use_cache=False)
    gen32 = simulate_generate(BART, GenerateShape(2, 32, 8, 2), "fp32", use_cache=False)
    assert 0 < gen16.peak_bytes < gen32.peak_bytes
    train = simulate_train(
        BART, TrainShape(2, 32, 8), TrainOptions(precision="fp16"), use_cache=False
    )
    assert train.peak_bytes > 0

"""Replayed timelines must equal direct traces exactly, at any batch size."""

from __future__ import annotations

import pytest
from transformers import BartConfig, T5Config

from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train
from dialsum.trace.timeline import _size_at, replay, same_structure

T5 = T5Config(
    vocab_size=3000, d_model=64, d_ff=256, d_kv=16, num_layers=2, num_heads=4,
    tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
)  # fmt: skip
BART = BartConfig(
    vocab_size=3000, d_model=64, encoder_layers=2, decoder_layers=2, encoder_ffn_dim=128,
    decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
    max_position_embeddings=256,
)  # fmt: skip


@pytest.mark.parametrize(
    ("config", "options"),
    [
        (T5, TrainOptions()),
        (T5, TrainOptions(precision="bf16", gradient_checkpointing=True)),
        (BART, TrainOptions(precision="fp16", optimizer="adafactor")),
        (BART, TrainOptions(lora=True)),
    ],
    ids=["t5-fp32", "t5-bf16-checkpointing", "bart-fp16-adafactor", "bart-lora"],
)
def test_replay_equals_direct_trace(config, options) -> None:
    for batch in (4, 7):
        shape = TrainShape(batch, 96, 24)
        direct = simulate_train(config, shape, options, use_cache=False, replay_batches=False)
        replayed = simulate_train(config, shape, options, use_cache=False)
        assert replayed == direct


def test_sizes_must_be_affine_and_structures_equal() -> None:
    assert _size_at(100, 150, 2, 3, 6) == 300
    assert _size_at(7, 7, 2, 3, 9) == 7  # no batch dimension
    assert _size_at(100, 151, 2, 4, 3) is None  # not an integer: not affine
    lo = [("p", "forward"), ("a", 100, "activations"), ("f", 100, "activations"), ("step",)]
    hi = [("p", "forward"), ("a", 150, "activations"), ("f", 150, "activations"), ("step",)]
    assert same_structure(lo, hi)
    steps = replay(lo, hi, 2, 3, 6, round_allocation_bytes)
    assert steps is not None and steps[0][0].total_bytes == 512  # 300 B rounds to 512
    other = [("p", "forward"), ("a", 150, "temporaries"), ("f", 150, "temporaries"), ("step",)]
    assert not same_structure(lo, other)
    assert replay(lo, other, 2, 3, 6, round_allocation_bytes) is None


@pytest.mark.parametrize("config", [T5, BART], ids=["t5", "bart"])
def test_generation_replay_equals_direct_trace(config) -> None:
    from dialsum.trace.generation_trace import simulate_generate
    from dialsum.trace.profile import GenerateShape

    for batch, beams, precision in ((5, 4, "fp32"), (16, 1, "bf16")):
        shape = GenerateShape(batch, 96, 16, beams)
        direct = simulate_generate(config, shape, precision, use_cache=False, replay_batches=False)
        assert simulate_generate(config, shape, precision, use_cache=False) == direct

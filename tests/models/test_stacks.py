"""Stacks of repeated layers, and the same model with fewer layers."""

from __future__ import annotations

import pytest
from transformers import BartConfig, Gemma2Config, LlamaConfig, T5Config

from dialsum.models.stacks import Stacks, stacks_of, without_layers


def test_each_family_names_its_stacks() -> None:
    t5 = T5Config(num_layers=12, num_decoder_layers=10)
    assert stacks_of(t5) == Stacks(("num_layers", "num_decoder_layers"), 10, 1, first=1)
    # Block 0's position bias only differs in the backward: generation repeats from 1.
    assert stacks_of(t5, backward=False).first == 0
    bart = BartConfig(encoder_layers=6, decoder_layers=6)
    assert stacks_of(bart) == Stacks(("encoder_layers", "decoder_layers"), 6, 1)
    llama = LlamaConfig(num_hidden_layers=48)
    assert stacks_of(llama) == Stacks(("num_hidden_layers",), 48, 1)


def test_gemma2_alternates_sliding_and_full_attention_a_period_of_two() -> None:
    gemma = Gemma2Config(num_hidden_layers=26)
    assert gemma.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert stacks_of(gemma) == Stacks(("num_hidden_layers",), 26, 2)


def test_without_layers_removes_from_every_stack_and_keeps_the_rest() -> None:
    t5 = T5Config(num_layers=12, num_decoder_layers=10, d_model=64)
    shallow = without_layers(t5, 7)
    assert (shallow.num_layers, shallow.num_decoder_layers, shallow.d_model) == (5, 3, 64)
    assert (t5.num_layers, t5.num_decoder_layers) == (12, 10)  # the original is untouched
    gemma = without_layers(Gemma2Config(num_hidden_layers=26), 20)
    assert gemma.num_hidden_layers == 6
    assert gemma.layer_types == ["sliding_attention", "full_attention"] * 3


@pytest.mark.parametrize("count", [-1, 10, 11])
def test_without_layers_keeps_at_least_one_layer(count: int) -> None:
    with pytest.raises(ValueError, match="cannot remove"):
        without_layers(T5Config(num_layers=12, num_decoder_layers=10), count)


def test_without_layers_removes_whole_periods_only() -> None:
    with pytest.raises(ValueError, match="cannot remove 3"):
        without_layers(Gemma2Config(num_hidden_layers=26), 3)

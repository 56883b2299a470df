"""A traced step's costs spread over tokens: every generated token, per-token weights."""

from __future__ import annotations

from test_step_trace import tiny_t5

from dialsum.trace.token_costs import decode_total, linear_flops_per_token, short_cache_len


def test_decode_total_closed_form() -> None:
    # c(t) = 100 + 10 t: c(8) = 180, c(4) = 140; sum over t = 1..8 = 800 + 360 = 1160.
    assert decode_total(180, 140, 8, 4) == 1160
    assert decode_total(180, 180, 8, 8) == 8 * 180  # one length traced: upper bound
    assert short_cache_len(64) == 32 and short_cache_len(3) == 2 and short_cache_len(2) == 2


def test_linear_flops_per_token_splits_encoder_and_decoder() -> None:
    source, target = linear_flops_per_token(tiny_t5())
    d, inner, d_ff, vocab, layers = 32, 32, 64, 64, 2
    assert source == layers * (4 * 2 * d * inner + 2 * 2 * d * d_ff)
    # decoder: self q,k,v,o + cross q,k,v,o + FFN per layer, and the LM head
    assert target == layers * (8 * 2 * d * inner + 2 * 2 * d * d_ff) + 2 * d * vocab

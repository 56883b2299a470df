"""A traced step's compute costs spread over tokens it did not trace one by one.

Generation is traced at one decoder step (``trace.generation_trace``) and at a shorter
cache (``decode_short``); the costs of every generated token follow from those two
(``generation_totals``). A training step is traced at one padded shape; its cost spreads
over rows of other lengths by the linear layers' FLOPs per source and per target token
(``linear_flops_per_token``). The per-op counting itself is ``trace.flops``.
"""

from __future__ import annotations

import functools
from fractions import Fraction

from dialsum.trace.flops import COSTS

# -- generation: from one decoder step to every generated token ------------------------


def short_cache_len(max_new_tokens: int) -> int:
    """Second cache length a decoder step is traced at (keys seen by the step's query):
    half the longest, at least 2 (an empty cache takes another code path)."""
    return max(2, max_new_tokens // 2) if max_new_tokens > 2 else max_new_tokens


def decode_total(at_longest: int, at_short: int, longest: int, short: int) -> int:
    """Sum over the ``longest`` steps of generation (step ``t`` attends to ``t`` keys) of
    a per-step cost that is affine in ``t``, from its values at ``longest`` and ``short``.

    A decoder step's linear layers, cross-attention and logits cost the same every step;
    self-attention reads and multiplies ``t`` cached keys/values: ``c(t) = c(N) - b (N - t)``
    with ``b = (c(N) - c(short)) / (N - short)``, so ``sum_{t=1..N} c(t) = N c(N) - b N(N-1)/2``.
    With one traced length only (``short == longest``) every step is charged the longest
    one's cost: an upper bound.
    """
    n = longest
    if short == longest:
        return n * at_longest
    slope = Fraction(at_longest - at_short, longest - short)
    total = n * at_longest - slope * Fraction(n * (n - 1), 2)
    return max(0, round(total))


DECODE_TOKEN_PHASES: tuple[str, ...] = ("decode_step", "logits", "reorder")
"""Phases of one generated token at the longest cache (the ``decode_short`` probe ran
the same three at ``short_cache_len``)."""


def generation_totals(
    costs: dict[str, dict[str, int]], max_new_tokens: int
) -> dict[str, dict[str, int]]:
    """``{cost: {"encoder", "decode", "eval_loss", "total"}}`` of one generation call:
    the encoder pass, every decoder step (``decode_total``) and, when traced, the
    evaluation's loss forward; ``total`` is their sum."""
    out: dict[str, dict[str, int]] = {}
    for cost in COSTS:
        by_phase = costs.get(cost, {})
        longest = sum(by_phase.get(phase, 0) for phase in DECODE_TOKEN_PHASES)
        short = by_phase.get("decode_short", longest)
        decode = decode_total(longest, short, max_new_tokens, short_cache_len(max_new_tokens))
        parts = {
            "encoder": by_phase.get("encoder", 0),
            "decode": decode,
            "eval_loss": by_phase.get("eval_loss", 0),
        }
        out[cost] = {**parts, "total": sum(parts.values())}
    return out


# -- per-token weights of the two sides ------------------------------------------------


def linear_flops_per_token(config) -> tuple[int, int]:
    """(forward FLOPs per source token, per target token) of the model's linear layers:
    2 x in x out for every ``nn.Linear`` of the encoder (source side) and of the rest -
    decoder and LM head (target side). Built on the meta device: no memory, no weights.

    Used only to spread a traced step's cost over rows of other lengths (``timing``); the
    step's own FLOPs always come from the trace.
    """
    return _linear_flops_per_token(config.to_json_string(use_diff=False), type(config))


@functools.lru_cache(maxsize=16)
def _linear_flops_per_token(config_json: str, config_class) -> tuple[int, int]:
    import json

    from torch import nn

    from dialsum.models.architectures import model_from_config

    config = config_class.from_dict(json.loads(config_json))
    model = model_from_config(config, device="meta")
    encoder = {id(m) for m in model.get_encoder().modules()}
    source = target = 0
    for module in model.modules():
        if isinstance(module, nn.Linear):
            flops = 2 * module.in_features * module.out_features
            if id(module) in encoder:
                source += flops
            else:
                target += flops
    return source, target

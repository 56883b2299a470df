"""The stacks of repeated layers a model is built from, and the same model with fewer.

Every supported architecture is one or two stacks of identical blocks: T5/mT5
(``num_layers`` encoder, ``num_decoder_layers`` decoder blocks), BART/mBART
(``encoder_layers``, ``decoder_layers``) and the decoder-only LLMs (``num_hidden_layers``).
A stack may repeat a pattern instead of a single block: Gemma-2 alternates sliding-window
and full attention (``layer_types``), a period of 2.

The planner traces a shallower copy of the model and repeats its layers
(``trace.depth``); ``without_layers`` builds that copy. Only the count changes; every
other field, the first layer's (T5's relative position bias lives in block 0) included,
stays as the checkpoint has it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from transformers import PretrainedConfig

_STACK_FIELDS: tuple[tuple[str, ...], ...] = (
    ("num_layers", "num_decoder_layers"),  # T5, mT5, UMT5, LongT5
    ("encoder_layers", "decoder_layers"),  # BART, mBART
    ("num_hidden_layers",),  # decoder-only LLMs
)


@dataclass(frozen=True)
class Stacks:
    """``fields`` name each stack's layer count in the config; ``layers`` is the fewest
    layers of any stack; ``period`` is how many layers one repeat spans; the first
    ``first`` layers differ from the repeat."""

    fields: tuple[str, ...]
    layers: int
    period: int
    first: int = 0


# T5's block 0 computes the relative position bias every later block reuses, so in the
# backward of a one-layer stack no gradient adds into it: a training step's repeats start
# at layer 2 (generation has no backward: they start at layer 1).
_FIRST_IN_BACKWARD = {("num_layers", "num_decoder_layers"): 1}


def _period(layer_types: list | None) -> int:
    """The shortest ``p`` with ``layer_types[i] == layer_types[i % p]`` for every ``i``."""
    if not layer_types:
        return 1
    for p in range(1, len(layer_types) + 1):
        if all(t == layer_types[i % p] for i, t in enumerate(layer_types)):
            return p
    return len(layer_types)


def stacks_of(config: PretrainedConfig, backward: bool = True) -> Stacks | None:
    """The repeated stacks of ``config`` (in a step with a ``backward`` or without); None
    when it names none we know."""
    own = config.to_dict()
    for fields in _STACK_FIELDS:
        counts = [own.get(name) for name in fields]
        if all(isinstance(n, int) and n > 0 for n in counts):
            period = _period(own.get("layer_types"))
            first = _FIRST_IN_BACKWARD.get(fields, 0) if backward else 0
            return Stacks(fields, min(counts), period, first)
    return None


def without_layers(config: PretrainedConfig, count: int) -> PretrainedConfig:
    """A copy of ``config`` with ``count`` layers (whole periods) removed from every stack."""
    stacks = stacks_of(config)
    if stacks is None or count % stacks.period or not 0 <= count < stacks.layers:
        raise ValueError(f"cannot remove {count} layers from {stacks}")
    config = copy.deepcopy(config)
    for name in stacks.fields:
        setattr(config, name, getattr(config, name) - count)
    layer_types = getattr(config, "layer_types", None)
    if layer_types:
        config.layer_types = list(layer_types[: len(layer_types) - count])
    return config

"""Depth extrapolation: trace shallow copies of a model, extend to its real depth.

A fake-tensor trace costs about 0.3-0.5 ms per op on a CPU, and a T5-base training step
has ~40k ops, so tracing 12+12 layers takes 15-30 s. Every encoder layer (and every
decoder layer) of these models allocates the same tensors: the same weights, gradients,
optimizer state, saved activations and temporaries, rounded the same way. So each phase's
peak, and its split by category, is an affine function of the layer counts:

    phase(e, d) = phase(b, b) + (e - b) * enc_step + (d - b) * dec_step

with ``enc_step = phase(b+1, b) - phase(b, b)`` and ``dec_step = phase(b, b+1) - phase(b, b)``
(one trace fewer when encoder and decoder have the same depth and move together). Layer 0
is special (T5's relative-position bias lives there), so both shallow models keep it and
the step is a plain layer. The base depth ``b`` is 1, except with gradient checkpointing:
there the backward peak sits in the recomputation of one layer, and with a single layer
that layer is the special one (measured 4% too high on T5), so ``b`` is 2. Checked equal
to full-depth traces, byte for byte, in ``tests/memory/test_depth.py``.

The extrapolation is per *phase* (forward, backward, optimizer), never of the overall
peak: the phase holding the peak can change with depth (optimizer-bound when shallow,
backward-bound when deep), and the maximum is taken only after extrapolating.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from transformers import PretrainedConfig

from dialsum.memory.profile import MemoryProfile

BASE_DEPTH = 1
BASE_DEPTH_CHECKPOINTING = 2

# (encoder layers key, decoder layers key) per model type.
_LAYER_KEYS: dict[str, tuple[str, str]] = {
    "t5": ("num_layers", "num_decoder_layers"),
    "mt5": ("num_layers", "num_decoder_layers"),
    "umt5": ("num_layers", "num_decoder_layers"),
    "bart": ("encoder_layers", "decoder_layers"),
    "mbart": ("encoder_layers", "decoder_layers"),
    "pegasus": ("encoder_layers", "decoder_layers"),
}


def layer_counts(config: PretrainedConfig) -> tuple[int, int] | None:
    """(encoder layers, decoder layers), or None for an architecture we don't know."""
    keys = _LAYER_KEYS.get(getattr(config, "model_type", ""))
    if keys is None:
        return None
    enc, dec = (getattr(config, k, None) for k in keys)
    if not isinstance(enc, int) or not isinstance(dec, int):
        return None
    return enc, dec


def with_layers(config: PretrainedConfig, encoder: int, decoder: int) -> PretrainedConfig:
    out = copy.deepcopy(config)
    enc_key, dec_key = _LAYER_KEYS[config.model_type]
    setattr(out, enc_key, encoder)
    setattr(out, dec_key, decoder)
    if config.model_type in ("bart", "mbart", "pegasus"):
        out.num_hidden_layers = encoder
    return out


def base_depth(gradient_checkpointing: bool) -> int:
    return BASE_DEPTH_CHECKPOINTING if gradient_checkpointing else BASE_DEPTH


def worth_extrapolating(config: PretrainedConfig, gradient_checkpointing: bool = False) -> bool:
    counts = layer_counts(config)
    return counts is not None and max(counts) > base_depth(gradient_checkpointing) + 1


def _affine(base: int, enc_step: int, dec_step: int, de: int, dd: int) -> int:
    return base + de * enc_step + dd * dec_step


def _extend(
    base: MemoryProfile,
    enc: MemoryProfile,
    dec: MemoryProfile,
    de: int,
    dd: int,
) -> MemoryProfile:
    """Affine extension of per-phase peaks and breakdowns; the peak is taken last."""
    phases = set(base.phase_breakdowns) & set(enc.phase_breakdowns) & set(dec.phase_breakdowns)
    breakdowns: dict[str, dict[str, int]] = {}
    for phase in phases:
        b, e, d = (p.phase_breakdowns[phase] for p in (base, enc, dec))
        cats = set(b) | set(e) | set(d)
        breakdowns[phase] = {
            c: max(
                0,
                _affine(b.get(c, 0), e.get(c, 0) - b.get(c, 0), d.get(c, 0) - b.get(c, 0), de, dd),
            )
            for c in sorted(cats)
        }
    peaks = {phase: sum(parts.values()) for phase, parts in breakdowns.items()}
    peak_phase = max(peaks, key=lambda p: peaks[p])
    return MemoryProfile(
        params=_affine(base.params, enc.params - base.params, dec.params - base.params, de, dd),
        trainable_params=_affine(
            base.trainable_params,
            enc.trainable_params - base.trainable_params,
            dec.trainable_params - base.trainable_params,
            de,
            dd,
        ),
        peak_bytes=peaks[peak_phase],
        peak_phase=peak_phase,
        breakdown=dict(breakdowns[peak_phase]),
        phase_peaks=peaks,
        phase_breakdowns=breakdowns,
    )


def extrapolate_train(
    config: PretrainedConfig,
    trace: Callable[[PretrainedConfig], MemoryProfile],
    gradient_checkpointing: bool = False,
) -> MemoryProfile:
    """Profile of ``config`` from traces of shallow copies (see the module docstring)."""
    counts = layer_counts(config)
    if counts is None:
        raise ValueError(f"no layer keys known for model type {config.model_type!r}")
    n_enc, n_dec = counts
    b = base_depth(gradient_checkpointing)
    base = trace(with_layers(config, b, b))
    if n_enc == n_dec:
        # Encoder and decoder grow together: one trace gives the combined step.
        both = trace(with_layers(config, b + 1, b + 1))
        return _extend(base, both, base, n_enc - b, 0)
    enc = trace(with_layers(config, b + 1, b))
    dec = trace(with_layers(config, b, b + 1))
    return _extend(base, enc, dec, n_enc - b, n_dec - b)

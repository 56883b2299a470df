"""Peak GPU memory of ``generate()``, predicted on a CPU (see ``trace.step_trace``).

``generate()`` itself cannot run on fake tensors - its stopping and beam bookkeeping read
values (``.item()``, data-dependent control flow). We trace its memory-relevant parts in
the order ``generate()`` runs them: the encoder pass, one decoder step at the longest
cache, and the logits processing of that step (and beam search's cache reorder); with
labels, the Trainer's eval-loss forward after it.
"""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from dialsum.models.architectures import is_causal
from dialsum.models.stacks import stacks_of, without_layers
from dialsum.trace import cache as trace_cache
from dialsum.trace.causal_generation import trace_causal_generate
from dialsum.trace.cuda_emulation import CudaEmulationMode
from dialsum.trace.fake_model import fake_model_from_config, fresh_fake_mode, unique_params
from dialsum.trace.flops import CostMeter
from dialsum.trace.generation_parts import (
    GENERATE_COST_PHASES,
    generate_profile,
    process_logits,
)
from dialsum.trace.model_run import (
    dtype_of,
    emulation_on,
    labelled_batch,
    prepared_model,
    random_ids,
    track_model,
)
from dialsum.trace.profile import GenerateOptions, GenerateShape, MemoryProfile, Precision
from dialsum.trace.repeat import TraceAt, Traced, set_costs
from dialsum.trace.reuse import default_round_fn, reused_or_traced, speculate
from dialsum.trace.token_costs import short_cache_len
from dialsum.trace.trace_mode import TraceMode
from dialsum.trace.tracer import LiveStorageTracker, RoundFn


def _decoder_dims(config: PretrainedConfig) -> tuple[int, int, int]:
    """(decoder layers, attention heads, head dim) for T5-style and BART-style configs."""
    if hasattr(config, "d_kv"):
        layers = config.num_decoder_layers or config.num_layers
        return layers, config.num_heads, config.d_kv
    heads = config.decoder_attention_heads
    return config.decoder_layers, heads, config.d_model // heads


def _prefilled_cache(
    config: PretrainedConfig, rows: int, self_len: int, cross_len: int, dtype: torch.dtype
) -> EncoderDecoderCache:
    # Self-attention K/V [rows, heads, self_len, d_kv] and cross-attention K/V
    # [rows, heads, cross_len, d_kv] per decoder layer, as after ``self_len`` steps.
    layers, heads, head_dim = _decoder_dims(config)
    self_cache, cross_cache = DynamicCache(), DynamicCache()
    for layer in range(layers):
        for cache, length in ((self_cache, self_len), (cross_cache, cross_len)):
            key = torch.zeros(rows, heads, length, head_dim, dtype=dtype)
            value = torch.zeros(rows, heads, length, head_dim, dtype=dtype)
            cache.update(key, value, layer)
    return EncoderDecoderCache(self_cache, cross_cache)


def _cache_tensors(cache: EncoderDecoderCache) -> Iterator[torch.Tensor]:
    for sub in (cache.self_attention_cache, cache.cross_attention_cache):
        for layer in sub.layers:
            yield layer.keys
            yield layer.values


def _cache_kwarg(model: nn.Module) -> str:
    # transformers renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _trace_generate(
    config: PretrainedConfig,
    shape: GenerateShape,
    options: GenerateOptions,
    round_fn: RoundFn,
    record: bool = False,
) -> tuple[MemoryProfile, list | None]:
    """(profile, recorded timeline or None)."""
    config = copy.deepcopy(config)
    dtype = dtype_of(options.precision)
    # predict casts the weights; evaluation inside AMP training keeps fp32 masters.
    weights_dtype = None if options.amp or dtype == torch.float32 else dtype
    mode = fresh_fake_mode()
    model = fake_model_from_config(config, mode, weights_dtype)
    model.eval()
    tracker = LiveStorageTracker(round_fn, record=record)
    emulation = CudaEmulationMode()
    rows = shape.batch * shape.num_beams
    with mode:
        # Under autocast the K/V projections run in the low dtype: the cache is in ``dtype``.
        cache = _prefilled_cache(config, rows, shape.max_new_tokens - 1, shape.source_len, dtype)
    amp_precision = options.precision if options.amp else "fp32"
    # Costs counted in the trace's one dispatch layer (``trace_mode``), into the timeline.
    meter = CostMeter(lambda: tracker.phase, sink=tracker.events)
    with mode, emulation_on(emulation, options.device), TraceMode(tracker, meter), torch.no_grad():
        track_model(tracker, model)
        decoder = prepared_model(model, emulation, amp_precision, options.device)

        hidden, mask = _encode(model, config, shape, tracker)
        hidden_like = (hidden.shape, hidden.dtype)
        # generate()'s running ids stay alive to the end (the [rows, 1] start tensor here).
        ids = _decode_token(decoder, model, cache, hidden, mask, shape, tracker)
        if shape.label_len:
            # After generate() returns (cache and encoder outputs freed), the Trainer's
            # prediction_step runs a no-grad forward with the labels for the eval loss.
            del cache, hidden, mask
            _eval_loss_forward(decoder, config, shape, tracker)
        del ids
    if tracker.events is not None:
        tracker.events.append(("step",))
    short = short_cache_len(shape.max_new_tokens)
    if short < shape.max_new_tokens:
        # The cost of a token grows with the cache: one more token at a shorter cache,
        # outside the memory tracker, gives the slope (``token_costs.decode_total``).
        with mode:
            hidden = torch.zeros(hidden_like[0], dtype=hidden_like[1])
            mask = torch.ones(rows, shape.source_len, dtype=torch.long)
            cache = _prefilled_cache(config, rows, short - 1, shape.source_len, dtype)
        meter.phase_of = lambda: "decode_short"
        with mode, meter, emulation_on(emulation, options.device), torch.no_grad():
            _decode_token(decoder, model, cache, hidden, mask, shape, LiveStorageTracker(round_fn))
    params = sum(p.numel() for p in unique_params(model))
    profile = generate_profile(params, tracker.peak, tracker.phase_records)
    set_costs(profile, meter.phases(GENERATE_COST_PHASES))
    return profile, tracker.events


def _encode(
    model: nn.Module, config: PretrainedConfig, shape: GenerateShape, tracker: LiveStorageTracker
) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder pass (phase ``encoder``): encoder outputs [batch*beams, source_len,
    d_model] and mask [batch*beams, source_len], as ``generate()`` keeps them to the end."""
    tracker.set_phase("encoder")
    input_ids = random_ids(shape.batch, shape.source_len, config.vocab_size)
    mask = torch.ones(shape.batch, shape.source_len, dtype=torch.long)
    # generate() calls the encoder module itself, outside accelerate's autocast wrapper.
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=mask)
    # generate() expands encoder outputs to batch*beams rows and keeps them to the end.
    hidden = encoded.last_hidden_state.repeat_interleave(shape.num_beams, dim=0)
    mask = mask.repeat_interleave(shape.num_beams, dim=0)
    del encoded, input_ids
    tracker.track_all([hidden, mask], "activations")
    return hidden, mask


def _eval_loss_forward(
    decoder: Callable, config: PretrainedConfig, shape: GenerateShape, tracker: LiveStorageTracker
) -> None:
    """The eval-loss forward (phase ``eval_loss``) on [batch, source_len] ids and
    [batch, label_len] labels."""
    tracker.set_phase("eval_loss", default_category="activations")
    batch = labelled_batch(config, shape.batch, shape.source_len, shape.label_len)
    outputs = decoder(**batch)
    del outputs, batch


def _decode_token(
    decoder: Callable,
    model: nn.Module,
    cache: EncoderDecoderCache,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    shape: GenerateShape,
    tracker: LiveStorageTracker,
) -> torch.Tensor:
    """One generated token: the decoder step on ``cache``, its logits processing and beam
    search's cache reorder (phases ``decode_step``, ``logits``, ``reorder``)."""
    rows = shape.batch * shape.num_beams
    tracker.set_phase("decode_step")
    # The cache was built untracked (building it has transients generate() never has);
    # from here on it counts, as after max_new_tokens - 1 steps.
    tracker.track_all(_cache_tensors(cache), "kv_cache")
    start = torch.zeros(rows, 1, dtype=torch.long)
    outputs = decoder(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        attention_mask=mask,
        decoder_input_ids=start,
        use_cache=True,
        **{_cache_kwarg(model): cache},
    )
    tracker.track_all(_cache_tensors(cache), "kv_cache")
    tracker.track(outputs.logits, "logits")

    tracker.set_phase("logits", default_category="logits")
    process_logits(outputs.logits, shape.batch, shape.num_beams)
    del outputs
    if shape.num_beams > 1:
        # Beam search reorders every layer's self- and cross-attention K/V by the chosen
        # beams (``index_select``: a new tensor while the old one is still alive).
        tracker.set_phase("reorder")
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long))
        tracker.track_all(_cache_tensors(cache), "kv_cache")
    return start


def _generate_at(
    trace: Callable,
    config: PretrainedConfig,
    shape: GenerateShape,
    options: GenerateOptions,
    round_fn: RoundFn,
    batch: int,
    record: bool,
    removed: int,
) -> Traced:
    """``simulate_generate``'s trace at ``batch`` with ``removed`` layers fewer per stack."""
    shallow = without_layers(config, removed) if removed else config
    return trace(shallow, replace(shape, batch=batch), options, round_fn, record)


def _generate_work(
    config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions, round_fn: RoundFn
) -> tuple[TraceAt, Callable[[], str]]:
    """``trace_at`` (picklable: a module-level function, arguments bound; see
    ``trace.parallel``) and the timeline key of ``simulate_generate``'s question."""
    # A decoder-only LLM generates from its prompt alone (``trace.causal_generation``).
    trace = trace_causal_generate if is_causal(config) else _trace_generate
    trace_at = functools.partial(_generate_at, trace, config, shape, options, round_fn)

    def timeline_key() -> str:
        return trace_cache.cache_key(
            "generate-timeline", config, replace(shape, batch=0), options, round_fn.__name__
        )

    return trace_at, timeline_key


def speculate_generate(
    config: PretrainedConfig, shape: GenerateShape, options: GenerateOptions
) -> None:
    """Start ``simulate_generate(config, shape, options)``'s first traces in the helper
    process's idle time (``reuse.speculate``)."""
    trace_at, timeline_key = _generate_work(
        config, shape, options, default_round_fn(options.device)
    )
    speculate(timeline_key, trace_at, stacks_of(config, backward=False))


def simulate_generate(
    config: PretrainedConfig,
    shape: GenerateShape,
    options: GenerateOptions | Precision = "fp32",
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    round_fn: RoundFn | None = None,
    replay_batches: bool = True,
) -> MemoryProfile:
    """Peak GPU memory of ``generate()`` for ``shape`` run as ``options`` says (a bare
    precision string means weights cast to it, as ``predict`` does).

    Phases: ``encoder`` (encoder pass under no_grad), ``decode_step`` (one decoder step with
    the self-attention cache at ``max_new_tokens`` and the cross-attention cache at
    ``source_len``, for ``batch*num_beams`` rows), ``logits`` (fp32 copy, log_softmax, beam
    scores, top-k over ``[batch, beams*vocab]``), ``reorder`` (beam search's cache
    reorder), ``eval_loss`` (with ``shape.label_len``: the Trainer's loss forward).
    Breakdown: ``weights``, ``activations`` (encoder outputs kept through decoding),
    ``kv_cache``, ``logits``, ``temporaries``.
    """
    if isinstance(options, str):
        options = GenerateOptions(precision=options)
    round_fn = round_fn or default_round_fn(options.device)
    trace_at, timeline_key = _generate_work(config, shape, options, round_fn)
    return reused_or_traced(
        trace_cache.cache_key("generate", config, shape, options, round_fn.__name__),
        timeline_key,
        shape.batch,
        trace_at,
        lambda base, steps: generate_profile(base.params, *steps[-1]),
        round_fn,
        cache_dir=cache_dir,
        use_cache=use_cache,
        replay_batches=replay_batches,
        stacks=stacks_of(config, backward=False),
    )

"""Peak GPU memory of a decoder-only LLM's ``generate()``, predicted on a CPU.

As for seq2seq (``trace.generation_trace``), ``generate()`` cannot run on fake tensors, so
its memory-relevant parts are traced in the order it runs them, for ``rows = batch x
beams`` (``generate()`` expands the left-padded prompts to every beam *before* the first
forward):

- ``prefill``: one forward over the prompts ``[rows, prompt]`` that fills the KV cache
  (``[rows, kv_heads, prompt, head_dim]`` per layer, keys and values) and, since
  ``generate()`` passes ``logits_to_keep=1``, computes logits for the last position only
  (``[rows, 1, vocab]``; without it a 256k vocabulary would cost ``rows x prompt x 256k``);
- the first token's logits processing;
- ``decode_step``: one step at the longest cache, ``prompt + new - 1`` positions (growing
  the cache by concatenation: the old and the new layer tensor are briefly both alive),
  then its logits processing and, for beam search, the cache reorder.

With labels (evaluation inside training) the Trainer's loss forward on prompt + labels runs
after ``generate()`` returns. A LoRA/QLoRA model generates with its adapters on the base
(``predict`` loads them unmerged; QLoRA's base in 4 bit, its other weights in the compute
dtype).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import torch
from torch import nn
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache

from dialsum.trace.cuda_emulation import CudaEmulationMode
from dialsum.trace.fake_model import fake_model_from_config, fresh_fake_mode, unique_params
from dialsum.trace.flops import CostMeter
from dialsum.trace.generation_parts import GENERATE_COST_PHASES, generate_profile, process_logits
from dialsum.trace.model_run import (
    dtype_of,
    emulation_on,
    labelled_batch,
    prepared_model,
    quantization_of,
    random_ids,
    track_model,
)
from dialsum.trace.profile import GenerateOptions, GenerateShape, MemoryProfile
from dialsum.trace.repeat import set_costs
from dialsum.trace.token_costs import short_cache_len
from dialsum.trace.trace_mode import TraceMode
from dialsum.trace.tracer import LiveStorageTracker, RoundFn

# Cost phases: the prompt pass is charged as the seq2seq encoder pass (``flops``).
_COST_PHASE = {"prefill": "encoder"}


def _cache_dims(config: PretrainedConfig) -> tuple[int, int, int]:
    """(layers, KV heads, head dim) of a Llama-layout config (grouped-query attention)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def _new_cache(config: PretrainedConfig) -> DynamicCache:
    # With the config, layers with a sliding window (Gemma-2's every other layer) keep at
    # most ``sliding_window`` positions, as generate()'s own cache does.
    return DynamicCache(config=config)


def _prefilled_cache(
    config: PretrainedConfig, rows: int, length: int, dtype: torch.dtype
) -> DynamicCache:
    """The cache after ``length`` positions: K and V ``[rows, kv_heads, length, head_dim]``
    per layer (built untracked: building it has transients generate() never has)."""
    layers, kv_heads, head_dim = _cache_dims(config)
    cache = _new_cache(config)
    for layer in range(layers):
        key = torch.zeros(rows, kv_heads, length, head_dim, dtype=dtype)
        value = torch.zeros(rows, kv_heads, length, head_dim, dtype=dtype)
        cache.update(key, value, layer)
    return cache


def cache_tensors(cache: DynamicCache) -> list[torch.Tensor]:
    out = []
    for layer in cache.layers:
        for tensor in (getattr(layer, "keys", None), getattr(layer, "values", None)):
            if isinstance(tensor, torch.Tensor):
                out.append(tensor)
    return out


def _forward_parameters(model: nn.Module):
    # A peft model's forward takes **kwargs; generate() asks the base model (peft delegates
    # generate() to it), so its signature decides.
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inspect.signature(base.forward).parameters


def _cache_kwarg(model: nn.Module) -> str:
    # transformers renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40).
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def _forward_kwargs(model: nn.Module) -> dict:
    # generate() computes the last position's logits only when the model can.
    return {"logits_to_keep": 1} if "logits_to_keep" in _forward_parameters(model) else {}


def _step(
    decoder: Callable,
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    cache: DynamicCache,
    shape: GenerateShape,
    tracker: LiveStorageTracker,
    phase: str,
) -> None:
    """One forward (``phase``: ``prefill`` or ``decode_step``) on ``ids`` [rows, n] with
    ``cache``, then its logits processing and, for beams, the cache reorder."""
    tracker.set_phase(phase)
    outputs = decoder(
        input_ids=ids,
        attention_mask=mask,
        use_cache=True,
        **{_cache_kwarg(model): cache},
        **_forward_kwargs(model),
    )
    tracker.track_all(cache_tensors(cache), "kv_cache")
    tracker.track(outputs.logits, "logits")
    tracker.set_phase("logits", default_category="logits")
    process_logits(outputs.logits, shape.batch, shape.num_beams)
    del outputs
    if shape.num_beams > 1 and phase == "decode_step":
        # Beam search picks rows of every layer's K/V (``index_select``: a new tensor
        # while the old one is alive).
        tracker.set_phase("reorder")
        cache.reorder_cache(torch.zeros(ids.shape[0], dtype=torch.long))
        tracker.track_all(cache_tensors(cache), "kv_cache")


def trace_causal_generate(
    config: PretrainedConfig,
    shape: GenerateShape,
    options: GenerateOptions,
    round_fn: RoundFn,
    record: bool = False,
) -> tuple[MemoryProfile, list | None]:
    """(profile, recorded timeline or None) of a causal LM's generation at ``shape``
    (``source_len`` is the prompt length)."""
    config = copy.deepcopy(config)
    dtype = dtype_of(options.precision)
    weights_dtype = None if options.amp or dtype == torch.float32 else dtype
    mode = fresh_fake_mode()
    model = fake_model_from_config(
        config,
        mode,
        weights_dtype,
        lora_rank=options.lora_rank if options.lora else None,
        quantization=quantization_of(options),
        kbit_training=False,
        device=options.device,
    )
    model.eval()
    tracker = LiveStorageTracker(round_fn, record=record)
    emulation = CudaEmulationMode()
    rows = shape.batch * shape.num_beams
    prompt, new = shape.source_len, shape.max_new_tokens
    amp_precision = options.precision if options.amp else "fp32"
    meter = CostMeter(lambda: _COST_PHASE.get(tracker.phase, tracker.phase), sink=tracker.events)
    with mode, emulation_on(emulation, options.device), TraceMode(tracker, meter), torch.no_grad():
        track_model(tracker, model)
        decoder = prepared_model(model, emulation, amp_precision, options.device)
        # generate() keeps the expanded prompt ids and mask [rows, prompt] to the end.
        ids = random_ids(rows, prompt, config.vocab_size)
        mask = torch.ones(rows, prompt, dtype=torch.long)
        tracker.track_all([ids, mask], "activations")
        cache = _new_cache(config)
        _step(decoder, model, ids, mask, cache, shape, tracker, "prefill")
        del cache
        if new > 1:
            # The cache after prompt + new - 1 positions (the last step's keys), tracked
            # from here on; the step's query is one token.
            tracker.set_phase("decode_step")
            cache = _prefilled_cache(config, rows, prompt + new - 1, dtype)
            tracker.track_all(cache_tensors(cache), "kv_cache")
            step_mask = torch.ones(rows, prompt + new, dtype=torch.long)
            token = torch.zeros(rows, 1, dtype=torch.long)
            _step(decoder, model, token, step_mask, cache, shape, tracker, "decode_step")
            del cache, step_mask, token
        if shape.label_len:
            # After generate() returns, the Trainer's no-grad loss forward on the labelled
            # rows (prompt + labels).
            del ids, mask
            tracker.set_phase("eval_loss", default_category="activations")
            batch = labelled_batch(config, shape.batch, prompt, shape.label_len)
            outputs = decoder(**batch)
            del outputs, batch
    if tracker.events is not None:
        tracker.events.append(("step",))
    short = short_cache_len(new)
    if 1 < short < new:
        # One more decode step at a shorter cache, outside the memory tracker: the slope of
        # a token's cost with the cache length (``token_costs.decode_total``).
        with mode:
            cache = _prefilled_cache(config, rows, prompt + short - 1, dtype)
            step_mask = torch.ones(rows, prompt + short, dtype=torch.long)
            token = torch.zeros(rows, 1, dtype=torch.long)
        meter.phase_of = lambda: "decode_short"
        with mode, meter, emulation_on(emulation, options.device), torch.no_grad():
            probe = LiveStorageTracker(round_fn)  # phases only, not entered: no counting
            _step(decoder, model, token, step_mask, cache, shape, probe, "decode_step")
    params = sum(p.numel() for p in unique_params(model))
    profile = generate_profile(params, tracker.peak, tracker.phase_records)
    set_costs(profile, meter.phases(GENERATE_COST_PHASES))
    return profile, tracker.events

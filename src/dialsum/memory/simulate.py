"""Peak GPU memory of seq2seq training and generation, predicted on a CPU.

The real model code (transformers' T5/mT5/BART) runs on *fake* CPU tensors: shapes, dtypes
and autograd are real, data is not, and no weight memory is allocated. A
``LiveStorageTracker`` counts the bytes of every live storage, rounded as the CUDA caching
allocator rounds them, and records the peak per phase. ``CudaEmulationMode`` makes the
CPU trace allocate what CUDA would (fused dropout, memory-efficient attention, CUDA's
autocast op lists).

Training (``simulate_train``) runs two full steps - forward with labels, backward,
``optimizer.step()``, ``zero_grad(set_to_none=True)`` - so the second step sees the
optimizer state the first created. The result is the higher of the two steps (the second
in practice). Phases: ``forward``, ``backward``, ``optimizer``. Breakdown categories:
``weights`` (parameters and buffers), ``gradients`` (``.grad``), ``optimizer_state``,
``activations`` (storages created during forward: what autograd saved, plus forward's
own short-lived tensors while forward runs), ``temporaries`` (everything else).

Generation (``simulate_generate``): ``generate()`` itself cannot run on fake tensors - its
stopping and beam bookkeeping read values (``.item()``, data-dependent control flow). We
trace its memory-relevant parts in the order ``generate()`` runs them: the encoder pass,
one decoder step at the longest cache, and the logits processing of that step.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import PretrainedConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.modeling_outputs import BaseModelOutput

from dialsum.memory import cache as trace_cache
from dialsum.memory import timeline
from dialsum.memory.allocator import exact_bytes, round_allocation_bytes
from dialsum.memory.cuda_emulation import CudaEmulationMode, checkpoint_context_fn
from dialsum.memory.fake_model import (
    fake_model_from_config,
    trainable_params,
    unique_params,
)
from dialsum.memory.flops import COSTS, CostMeter, interpolate_costs, short_cache_len
from dialsum.memory.optimizers import AdamW8bitModel, state_tensors
from dialsum.memory.profile import (
    GenerateOptions,
    GenerateShape,
    MemoryProfile,
    Precision,
    TrainOptions,
    TrainShape,
)
from dialsum.memory.tracer import LiveStorageTracker, PeakRecord, RoundFn
from dialsum.training.step import build_optimizer, step_forward_backward

TRAIN_CATEGORIES = ("weights", "gradients", "optimizer_state", "activations", "temporaries")
GENERATE_CATEGORIES = ("weights", "activations", "kv_cache", "logits", "temporaries")

# fp16 AMP: the loss is scaled by GradScaler's initial scale, grads unscaled in place.
GRAD_SCALER_INIT_SCALE = 2.0**16

_DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "pure_bf16": torch.bfloat16,
}


# -- small helpers ---------------------------------------------------------------------


def dtype_of(precision: str) -> torch.dtype:
    """Storage dtype of low-precision tensors for ``precision`` (fp32 for ``fp32``)."""
    if precision not in _DTYPES:
        raise ValueError(f"unknown precision {precision!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[precision]


def _amp_dtype(precision: str) -> torch.dtype | None:
    # bf16/fp16 are AMP (fp32 master weights + autocast); pure_bf16 casts the model instead.
    return _DTYPES[precision] if precision in ("bf16", "fp16") else None


def _weights_dtype(precision: str) -> torch.dtype | None:
    return torch.bfloat16 if precision == "pure_bf16" else None


def weights_bytes(
    config_or_params: PretrainedConfig | nn.Module | int,
    dtype: torch.dtype = torch.float32,
    round_fn: RoundFn = round_allocation_bytes,
) -> int:
    """Bytes the weights take on the GPU in ``dtype``.

    A config or module is measured tensor by tensor (each rounded by the allocator,
    buffers included, tied weights once); a bare parameter count gives ``count * itemsize``.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    if isinstance(config_or_params, int):
        return config_or_params * itemsize
    module = config_or_params
    if isinstance(config_or_params, PretrainedConfig):
        from dialsum.models.architectures import model_from_config

        module = model_from_config(copy.deepcopy(config_or_params), device="meta")
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()
    return sum(
        round_fn(t.numel() * (itemsize if t.is_floating_point() else t.element_size()))
        for t in tensors
    )


def _full_breakdown(record: PeakRecord, categories: tuple[str, ...]) -> dict[str, int]:
    breakdown = {name: record.by_category.get(name, 0) for name in categories}
    for name, nbytes in record.by_category.items():
        if name not in breakdown:
            breakdown[name] = nbytes
    return breakdown


def _random_ids(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    # Values never matter on fake tensors; dtype/shape do (int64 like a tokenizer's output).
    return torch.randint(0, vocab_size, (batch, length), dtype=torch.long)


def _train_batch(config: PretrainedConfig, rows: int, shape: TrainShape) -> dict[str, torch.Tensor]:
    # What the collator hands the trainer: source ids/mask [rows, source_len], labels and
    # the shifted ``decoder_input_ids`` [rows, target_len] (int64, like a tokenizer's).
    return {
        "input_ids": _random_ids(rows, shape.source_len, config.vocab_size),
        "attention_mask": torch.ones(rows, shape.source_len, dtype=torch.long),
        "labels": _random_ids(rows, shape.target_len, config.vocab_size),
        "decoder_input_ids": _random_ids(rows, shape.target_len, config.vocab_size),
    }


# -- training ----------------------------------------------------------------------------


@dataclass
class _TrainRig:
    """Everything one simulated training run needs, built on fake tensors."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    params: int
    trainable: int


def _build_train_rig(
    config: PretrainedConfig, options: TrainOptions, mode: FakeTensorMode
) -> _TrainRig:
    lora_rank = options.lora_rank if options.lora else None
    model = fake_model_from_config(config, mode, _weights_dtype(options.precision), lora_rank)
    if options.gradient_checkpointing:
        amp = _amp_dtype(options.precision) if options.device == "cuda" else None
        context_fn = checkpoint_context_fn(amp) if options.device == "cuda" else None
        checkpoint_kwargs = {"use_reentrant": False}
        if context_fn is not None:
            checkpoint_kwargs["context_fn"] = context_fn
        # transformers renames this to activation_checkpointing_enable (old name deprecated).
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint_kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpoint_kwargs)
        if options.lora:
            # What HF/peft do so checkpointed blocks of a frozen base still get gradients.
            with mode:
                model.enable_input_require_grads()
    model.train()
    trainable = trainable_params(model)
    with mode:
        if options.optimizer == "adamw8bit":
            # bitsandbytes runs on CUDA only: its state is modelled (see optimizers.py).
            optimizer = AdamW8bitModel(trainable)
        else:
            # The trainer's own optimizer construction (parameter groups, fused AdamW).
            optimizer = build_optimizer(model, options.optimizer, lr=1e-4, weight_decay=0.01)
    total = sum(p.numel() for p in unique_params(model))
    trainable_count = sum(p.numel() for p in trainable)
    # ``params`` is the base model; with LoRA the adapters are the trainable part on top.
    base = total - trainable_count if options.lora else total
    return _TrainRig(model, optimizer, base, trainable_count)


class _AmpForward:
    """The model as accelerate prepares it for AMP: ``forward`` under autocast, then the
    outputs converted to fp32 (``convert_outputs_to_fp32``: a fp32 copy of the logits).

    On ``cuda`` the emulation applies CUDA's autocast lists and drops its weight cast cache
    when the region exits; on ``cpu`` the real CPU autocast runs.
    """

    def __init__(
        self, model: nn.Module, emulation: CudaEmulationMode, amp: torch.dtype, device: str
    ) -> None:
        self.model, self.emulation, self.amp, self.device = model, emulation, amp, device

    def __call__(self, **inputs):
        if self.device == "cpu":
            with torch.autocast("cpu", dtype=self.amp):
                outputs = self.model(**inputs)
        else:
            self.emulation.autocast_dtype = self.amp
            try:
                outputs = self.model(**inputs)
            finally:
                self.emulation.clear_cache()  # autocast exit
                self.emulation.autocast_dtype = None
        if outputs.logits.dtype != torch.float32:
            outputs.logits = outputs.logits.float()
        return outputs


def _prepared_model(
    model: nn.Module, emulation: CudaEmulationMode, precision: str, device: str
) -> Callable:
    amp = _amp_dtype(precision)
    return model if amp is None else _AmpForward(model, emulation, amp, device)


def _train_step(
    rig: _TrainRig,
    batch: dict,
    tracker: LiveStorageTracker,
    emulation: CudaEmulationMode,
    options: TrainOptions,
    micro: int,
) -> None:
    """One optimizer step as the guarded trainer runs it: ``step.step_forward_backward``
    over the micro-batches of ``batch``, then ``optimizer.step()`` and ``zero_grad``."""

    def forward_phase(_chunk: dict) -> None:
        tracker.set_phase("forward", default_category="activations")

    def backward(loss: torch.Tensor) -> None:
        tracker.set_phase("backward")
        if options.precision == "fp16":
            loss = loss * GRAD_SCALER_INIT_SCALE  # GradScaler.scale
        loss.backward()

    model = _prepared_model(rig.model, emulation, options.precision, options.device)
    step_forward_backward(
        model,
        batch,
        micro,
        1.0,  # the normaliser is a Python float in the trainer too: no tensor
        backward=backward,
        before_micro_batch=forward_phase,
        trim=False,  # fake tensors hold no values; the simulated rows are unpadded
    )

    tracker.set_phase("optimizer")
    grads = [p.grad for p in trainable_params(rig.model) if p.grad is not None]
    if options.precision == "fp16" and grads:
        # GradScaler.unscale_: in-place on the grads, plus a one-element found_inf flag.
        torch.zeros(1)
        torch._foreach_mul_(grads, 1.0 / GRAD_SCALER_INIT_SCALE)
    del grads
    rig.optimizer.step()
    tracker.track_all(state_tensors(rig.optimizer), "optimizer_state")
    rig.optimizer.zero_grad(set_to_none=True)


def _emulation_on(emulation: CudaEmulationMode, device: str) -> contextlib.AbstractContextManager:
    """CUDA's kernel choices for a ``cuda`` trace; nothing for ``cpu`` (real CPU kernels)."""
    return emulation if device == "cuda" else contextlib.nullcontext()


def _track_model(tracker: LiveStorageTracker, model: nn.Module) -> None:
    tracker.track_all(unique_params(model), "weights")
    tracker.track_all(model.buffers(), "weights")


def _grad_hooks(tracker: LiveStorageTracker, params: list[nn.Parameter]) -> list:
    def retag(param: nn.Parameter) -> None:
        tracker.track(param.grad, "gradients")

    return [p.register_post_accumulate_grad_hook(retag) for p in params]


def _trace_train(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions,
    round_fn: RoundFn,
    record: bool = False,
) -> tuple[MemoryProfile, list | None]:
    """(profile, recorded timeline or None)."""
    config = copy.deepcopy(config)  # building unties heads on the config; keep the caller's
    mode = FakeTensorMode()
    rig = _build_train_rig(config, options, mode)
    tracker = LiveStorageTracker(round_fn, record=record)
    emulation = CudaEmulationMode()
    hooks = _grad_hooks(tracker, trainable_params(rig.model))
    # Below the tracker on the dispatch stack: FLOPs, bytes moved and kernels of the step.
    meter = CostMeter(lambda: tracker.phase)
    step_peaks: list[tuple[PeakRecord, dict[str, PeakRecord]]] = []
    rows = shape.batch * options.micro_batches
    try:
        with mode, meter, tracker, _emulation_on(emulation, options.device):
            _track_model(tracker, rig.model)
            for _ in range(2):
                meter.reset()  # the costs kept are the second (steady) step's
                tracker.reset_peaks()
                tracker.set_phase("data")
                batch = _train_batch(config, rows, shape)
                _train_step(rig, batch, tracker, emulation, options, shape.batch)
                del batch
                if tracker.events is not None:
                    tracker.events.append(("step",))
                step_peaks.append((tracker.peak, dict(tracker.phase_records)))
    finally:
        for hook in hooks:
            hook.remove()
    profile = _train_profile(rig.params, rig.trainable, step_peaks)
    _set_costs(profile, _per_micro_batch(meter.phases(_TRAIN_COST_PHASES), options.micro_batches))
    return profile, tracker.events


_TRAIN_COST_PHASES = ("forward", "backward", "optimizer")


def _per_micro_batch(costs: dict[str, dict[str, int]], micro_batches: int) -> dict:
    """Forward/backward per micro-batch (the step ran ``micro_batches`` of them; a second
    one adds into existing gradients, so this is their mean); the optimizer once."""
    return {
        cost: {
            phase: value // micro_batches if phase != "optimizer" else value
            for phase, value in by_phase.items()
        }
        for cost, by_phase in costs.items()
    }


def _set_costs(profile: MemoryProfile, costs: dict[str, dict[str, int]]) -> MemoryProfile:
    profile.flops, profile.bytes_moved, profile.kernels = (dict(costs[c]) for c in COSTS)
    return profile


def _costs(profile: MemoryProfile) -> dict[str, dict[str, int]]:
    return {"flops": profile.flops, "bytes_moved": profile.bytes_moved, "kernels": profile.kernels}


def _train_profile(
    params: int, trainable: int, step_peaks: list[tuple[PeakRecord, dict[str, PeakRecord]]]
) -> MemoryProfile:
    # The second (steady-state) step decides unless the first was strictly higher.
    best = step_peaks[-1][0]
    for record, _ in step_peaks[:-1]:
        if record.total_bytes > best.total_bytes:
            best = record
    phase_records: dict[str, PeakRecord] = {}
    for _, records in step_peaks:
        for phase, record in records.items():
            # Ties go to the later (steady-state) step, as for the overall peak.
            seen = phase_records.get(phase)
            if phase != "data" and (seen is None or record.total_bytes >= seen.total_bytes):
                phase_records[phase] = record
    phase_peaks = {phase: r.total_bytes for phase, r in phase_records.items()}
    return MemoryProfile(
        params=params,
        trainable_params=trainable,
        peak_bytes=best.total_bytes,
        peak_phase=best.phase,
        breakdown=_full_breakdown(best, TRAIN_CATEGORIES),
        phase_peaks=phase_peaks,
        phase_breakdowns={
            phase: _full_breakdown(r, TRAIN_CATEGORIES) for phase, r in phase_records.items()
        },
    )


# Recorded timelines for this process: key -> (profiles at REPLAY_LO and HI, events LO, HI).
_TIMELINES: dict[str, tuple[MemoryProfile, MemoryProfile, list, list]] = {}
REPLAY_LO, REPLAY_HI = 2, 3

Traced = tuple[MemoryProfile, list | None]


def _replayed(
    key: str,
    batch: int,
    trace_at: Callable[[int, bool], Traced],
    profile_of: Callable[[MemoryProfile, timeline.StepPeaks], MemoryProfile],
    round_fn: RoundFn,
) -> MemoryProfile:
    """``batch``'s profile replayed from recordings at REPLAY_LO/HI (traced once per key);
    ``trace_at(batch, record)`` traces, ``profile_of(base, steps)`` builds the profile."""
    if key not in _TIMELINES:
        (lo, e_lo), (hi, e_hi) = (trace_at(b, True) for b in (REPLAY_LO, REPLAY_HI))
        _TIMELINES[key] = (lo, hi, e_lo, e_hi)
        if batch in (REPLAY_LO, REPLAY_HI):
            return lo if batch == REPLAY_LO else hi
    base, hi, e_lo, e_hi = _TIMELINES[key]
    steps = timeline.replay(e_lo, e_hi, REPLAY_LO, REPLAY_HI, batch, round_fn)
    # FLOPs, bytes moved and kernels are sums over the same ops: affine in the batch too.
    costs = interpolate_costs(_costs(base), _costs(hi), REPLAY_LO, REPLAY_HI, batch)
    if not steps or costs is None:
        return trace_at(batch, False)[0]  # not exactly replayable: trace directly
    return _set_costs(profile_of(base, steps), costs)


def default_round_fn(device: str) -> RoundFn:
    """CUDA's caching allocator rounds blocks to 512 bytes; a CPU run counts exact bytes."""
    return round_allocation_bytes if device == "cuda" else exact_bytes


def _cached(
    key: str,
    cache_dir: str | Path | None,
    use_cache: bool,
    round_fn: RoundFn,
    compute: Callable[[], MemoryProfile],
) -> MemoryProfile:
    """Disk cache around ``compute``; a custom ``round_fn`` bypasses it."""
    cacheable = use_cache and round_fn in (round_allocation_bytes, exact_bytes)
    cache_path = Path(cache_dir) if cache_dir is not None else trace_cache.default_cache_dir()
    if cacheable and (hit := trace_cache.load(cache_path, key)) is not None:
        return hit
    profile = compute()
    if cacheable:
        trace_cache.store(cache_path, key, profile)
    return profile


def simulate_train(
    config: PretrainedConfig,
    shape: TrainShape,
    options: TrainOptions = TrainOptions(),  # noqa: B008 - frozen dataclass
    *,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    round_fn: RoundFn | None = None,
    replay_batches: bool = True,
) -> MemoryProfile:
    """Peak GPU memory of one training step of ``config`` at ``shape`` with ``options``.

    Results are cached on disk (see ``dialsum.memory.cache``); a custom ``round_fn`` (e.g.
    ``allocator.exact_bytes`` to compare with a CPU run) bypasses the cache.

    Batch sizes above 1 are computed by replaying timelines recorded at batch 2 and 3 with
    every allocation resized for the batch (``dialsum.memory.timeline``: exact, and checked
    against direct traces in the tests); the two recordings are kept for this process, so
    each further batch size costs a replay (~0.1 s) instead of a trace (~10 s for T5-base).
    ``replay_batches=False`` traces directly. Every call traces the full depth.
    Extrapolating from shallow copies (1-2 layers) was tried and is exact on
    small-vocabulary toys but not on real models: on eenzeenee at
    batch 4, 512/64 it gave 6.96 GiB against the full trace's 5.77 GiB, because the moment
    of the backward peak moves with depth when embedding gradients are large.
    """

    round_fn = round_fn or default_round_fn(options.device)

    def trace_at(batch: int, record: bool) -> Traced:
        return _trace_train(config, replace(shape, batch=batch), options, round_fn, record)

    def compute() -> MemoryProfile:
        if not (replay_batches and shape.batch > 1):
            return trace_at(shape.batch, False)[0]
        key = trace_cache.cache_key(
            "timeline", config, shape.source_len, shape.target_len, options, round_fn.__name__
        )
        return _replayed(
            key,
            shape.batch,
            trace_at,
            lambda base, steps: _train_profile(base.params, base.trainable_params, steps),
            round_fn,
        )

    key = trace_cache.cache_key("train", config, shape, options, round_fn.__name__)
    return _cached(key, cache_dir, use_cache, round_fn, compute)


# -- generation --------------------------------------------------------------------------


def _decoder_dims(config: PretrainedConfig) -> tuple[int, int, int]:
    """(decoder layers, attention heads, head dim) for T5-style and BART-style configs."""
    if hasattr(config, "d_kv"):
        layers = config.num_decoder_layers or config.num_layers
        return layers, config.num_heads, config.d_kv
    heads = config.decoder_attention_heads
    return config.decoder_layers, heads, config.d_model // heads


def kv_cache_bytes(config: PretrainedConfig, shape: GenerateShape, dtype: torch.dtype) -> int:
    """Analytic KV cache at the last step: 2 (K, V) x layers x (batch*beams) x heads x d_kv
    x (max_new_tokens self + source_len cross) x itemsize, unrounded."""
    layers, heads, head_dim = _decoder_dims(config)
    rows = shape.batch * shape.num_beams
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * layers * rows * heads * head_dim * itemsize
    return per_token * (shape.max_new_tokens + shape.source_len)


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


def _process_logits(raw_logits: torch.Tensor, batch: int, num_beams: int) -> None:
    """``generate()``'s per-step logits work on ``raw_logits`` [batch*beams, 1, vocab]."""
    vocab = raw_logits.shape[-1]
    # fp32 copy of the last position: [batch*beams, vocab]
    logits = raw_logits[:, -1, :].to(copy=True, dtype=torch.float32)
    if num_beams == 1:
        # greedy: one processor output (e.g. masked_fill of banned tokens), then argmax.
        scores = logits.masked_fill(torch.zeros_like(logits[:1], dtype=torch.bool), 0.0)
        torch.argmax(scores, dim=-1)
        return
    # beam search: log_softmax, one processor output, + running beam scores, then topk
    # over [batch, beams*vocab] keeping 2*beams continuations.
    log_probs = torch.log_softmax(logits, dim=-1)
    log_probs = log_probs.masked_fill(torch.zeros_like(log_probs[:1], dtype=torch.bool), 0.0)
    running = torch.zeros(batch, num_beams, 1, dtype=torch.float32)
    accumulated = (log_probs.view(batch, num_beams, vocab) + running).reshape(batch, -1)
    torch.topk(accumulated, k=min(2 * num_beams, accumulated.shape[-1]), dim=-1)


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
    mode = FakeTensorMode()
    model = fake_model_from_config(config, mode, weights_dtype)
    model.eval()
    tracker = LiveStorageTracker(round_fn, record=record)
    emulation = CudaEmulationMode()
    rows = shape.batch * shape.num_beams
    with mode:
        # Under autocast the K/V projections run in the low dtype: the cache is in ``dtype``.
        cache = _prefilled_cache(config, rows, shape.max_new_tokens - 1, shape.source_len, dtype)
    amp_precision = options.precision if options.amp else "fp32"
    meter = CostMeter(lambda: tracker.phase)  # below the tracker: see simulate_train
    with mode, meter, tracker, _emulation_on(emulation, options.device), torch.no_grad():
        _track_model(tracker, model)
        decoder = _prepared_model(model, emulation, amp_precision, options.device)

        tracker.set_phase("encoder")
        input_ids = _random_ids(shape.batch, shape.source_len, config.vocab_size)
        mask = torch.ones(shape.batch, shape.source_len, dtype=torch.long)
        # generate() calls the encoder module itself, outside accelerate's autocast wrapper.
        encoded = model.get_encoder()(input_ids=input_ids, attention_mask=mask)
        # generate() expands encoder outputs to batch*beams rows and keeps them to the end.
        hidden = encoded.last_hidden_state.repeat_interleave(shape.num_beams, dim=0)
        mask = mask.repeat_interleave(shape.num_beams, dim=0)
        del encoded, input_ids
        tracker.track_all([hidden, mask], "activations")
        hidden_like = (hidden.shape, hidden.dtype)
        # generate()'s running ids stay alive to the end (the [rows, 1] start tensor here).
        ids = _decode_token(decoder, model, cache, hidden, mask, shape, tracker)
        if shape.label_len:
            # After generate() returns (cache and encoder outputs freed), the Trainer's
            # prediction_step runs a no-grad forward with the labels for the eval loss.
            del cache, hidden, mask
            tracker.set_phase("eval_loss", default_category="activations")
            batch = {
                "input_ids": _random_ids(shape.batch, shape.source_len, config.vocab_size),
                "attention_mask": torch.ones(shape.batch, shape.source_len, dtype=torch.long),
                "labels": _random_ids(shape.batch, shape.label_len, config.vocab_size),
                "decoder_input_ids": _random_ids(shape.batch, shape.label_len, config.vocab_size),
            }
            outputs = decoder(**batch)
            del outputs, batch
        del ids
    if tracker.events is not None:
        tracker.events.append(("step",))
    short = short_cache_len(shape.max_new_tokens)
    if short < shape.max_new_tokens:
        # The cost of a token grows with the cache: one more token at a shorter cache,
        # outside the memory tracker, gives the slope (``flops.decode_total``).
        with mode:
            hidden = torch.zeros(hidden_like[0], dtype=hidden_like[1])
            mask = torch.ones(rows, shape.source_len, dtype=torch.long)
            cache = _prefilled_cache(config, rows, short - 1, shape.source_len, dtype)
        meter.phase_of = lambda: "decode_short"
        with mode, meter, _emulation_on(emulation, options.device), torch.no_grad():
            _decode_token(decoder, model, cache, hidden, mask, shape, LiveStorageTracker(round_fn))
    params = sum(p.numel() for p in unique_params(model))
    profile = _generate_profile(params, tracker.peak, tracker.phase_records)
    _set_costs(profile, meter.phases(_GENERATE_COST_PHASES))
    return profile, tracker.events


_GENERATE_COST_PHASES = ("encoder", "decode_step", "logits", "reorder", "eval_loss", "decode_short")


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
    _process_logits(outputs.logits, shape.batch, shape.num_beams)
    del outputs
    if shape.num_beams > 1:
        # Beam search reorders every layer's self- and cross-attention K/V by the chosen
        # beams (``index_select``: a new tensor while the old one is still alive).
        tracker.set_phase("reorder")
        cache.reorder_cache(torch.zeros(rows, dtype=torch.long))
        tracker.track_all(_cache_tensors(cache), "kv_cache")
    return start


def _generate_profile(
    params: int, peak: PeakRecord, phases: dict[str, PeakRecord]
) -> MemoryProfile:
    return MemoryProfile(
        params=params,
        trainable_params=0,
        peak_bytes=peak.total_bytes,
        peak_phase=peak.phase,
        breakdown=_full_breakdown(peak, GENERATE_CATEGORIES),
        phase_peaks={k: r.total_bytes for k, r in phases.items() if k != "setup"},
    )


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

    def trace_at(batch: int, record: bool) -> Traced:
        return _trace_generate(config, replace(shape, batch=batch), options, round_fn, record)

    def compute() -> MemoryProfile:
        if not (replay_batches and shape.batch > 1):
            return trace_at(shape.batch, False)[0]
        key = trace_cache.cache_key(
            "generate-timeline", config, replace(shape, batch=0), options, round_fn.__name__
        )
        return _replayed(
            key,
            shape.batch,
            trace_at,
            lambda base, steps: _generate_profile(base.params, *steps[-1]),
            round_fn,
        )

    key = trace_cache.cache_key("generate", config, shape, options, round_fn.__name__)
    return _cached(key, cache_dir, use_cache, round_fn, compute)

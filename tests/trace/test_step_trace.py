"""Simulator: exact bytes on a hand-computable model, and the directions that must hold."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from transformers import BartConfig, PretrainedConfig, T5Config

from dialsum.models.architectures import KNOWN_PARAM_COUNTS, known_config, model_from_config
from dialsum.trace.allocator import round_allocation_bytes, segment_bytes
from dialsum.trace.fake_model import fake_model_from_config, unique_params
from dialsum.trace.generation_trace import simulate_generate
from dialsum.trace.profile import GenerateShape, TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train
from dialsum.trace.timeline import without_costs
from helpers import TRACE_BART, TRACE_T5

MIB = 1 << 20


# -- independent references (analytic, no tracing) -------------------------------------


def weights_bytes(config: PretrainedConfig, dtype: torch.dtype = torch.float32) -> int:
    """Bytes the weights take on the GPU in ``dtype``: tensor by tensor on the meta device,
    each rounded by the allocator, buffers included, tied weights once."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    module = model_from_config(copy.deepcopy(config), device="meta")
    tensors = {id(t): t for t in [*module.parameters(), *module.buffers()]}.values()
    return sum(
        round_allocation_bytes(
            t.numel() * (itemsize if t.is_floating_point() else t.element_size())
        )
        for t in tensors
    )


def kv_cache_bytes(config: T5Config, shape: GenerateShape, dtype: torch.dtype) -> int:
    """Analytic KV cache of a T5 at the last step: 2 (K, V) x layers x (batch*beams) x heads
    x d_kv x (max_new_tokens self + source_len cross) x itemsize, unrounded."""
    layers = config.num_decoder_layers or config.num_layers
    rows = shape.batch * shape.num_beams
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = 2 * layers * rows * config.num_heads * config.d_kv * itemsize
    return per_token * (shape.max_new_tokens + shape.source_len)


def tiny_t5(**overrides) -> T5Config:
    # 2+2 layers, d_model 32, vocab 64: every tensor is hand-countable (see test below).
    values = dict(
        vocab_size=64,
        d_model=32,
        d_ff=64,
        d_kv=8,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        feed_forward_proj="relu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    values.update(overrides)
    return T5Config(**values)


def small_t5() -> T5Config:
    # Big enough that activations dominate at a moderate shape.
    return tiny_t5(vocab_size=1000, d_model=128, d_ff=512, d_kv=32, num_layers=2, num_heads=4)


def small_bart() -> BartConfig:
    return BartConfig(
        vocab_size=1000,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        max_position_embeddings=256,
        pad_token_id=3,
        bos_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=1,
    )


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path / "traces"))


# -- allocator rounding -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "block_bytes"),
    [(0, 0), (1, 512), (511, 512), (512, 512), (513, 1024), (1_000_000, 1_000_448),
     (1 << 20, 1 << 20), ((1 << 20) + 1, (1 << 20) + 512), (30_000_001, 30_000_128)],
)  # fmt: skip
def test_round_allocation_bytes_exact(request_bytes: int, block_bytes: int) -> None:
    assert round_allocation_bytes(request_bytes) == block_bytes


@pytest.mark.parametrize(
    ("request_bytes", "segment"),
    [(1, 2 * MIB), (MIB, 2 * MIB), (MIB + 1, 20 * MIB), (10 * MIB - 1, 20 * MIB),
     (10 * MIB, 10 * MIB), (10 * MIB + 1, 12 * MIB), (30_000_001, 30 * MIB)],
)  # fmt: skip
def test_segment_bytes_exact(request_bytes: int, segment: int) -> None:
    assert segment_bytes(request_bytes) == segment


# -- model building --------------------------------------------------------------------


@pytest.mark.parametrize("model_id", sorted(KNOWN_PARAM_COUNTS))
def test_fake_model_has_exact_param_count(model_id: str) -> None:
    model = fake_model_from_config(known_config(model_id), FakeTensorMode())
    assert sum(p.numel() for p in unique_params(model)) == KNOWN_PARAM_COUNTS[model_id]
    assert all(p.device.type == "cpu" for p in model.parameters())


def _tiny_t5_param_shapes() -> list[tuple[int, ...]]:
    # shared [64, 32]; per encoder layer: q,k,v,o [32, 32], ln [32] x2, wi [64, 32],
    # wo [32, 64]; first layers hold relative bias [8, 4]; final ln [32]; decoder layers add
    # cross q,k,v,o and a third ln; untied lm_head [64, 32].
    enc_layer = [(32, 32)] * 4 + [(32,)] * 2 + [(64, 32), (32, 64)]
    dec_layer = [(32, 32)] * 8 + [(32,)] * 3 + [(64, 32), (32, 64)]
    shapes = [(64, 32)] + enc_layer * 2 + [(8, 4), (32,)] + dec_layer * 2 + [(8, 4), (32,)]
    return shapes + [(64, 32)]


def test_tiny_t5_weights_grads_adam_state_exact() -> None:
    shapes = _tiny_t5_param_shapes()
    numel = sum(torch.Size(s).numel() for s in shapes)
    fp32_bytes = sum(round_allocation_bytes(torch.Size(s).numel() * 4) for s in shapes)
    # AdamW state: exp_avg + exp_avg_sq per parameter plus a 0-dim fp32 ``step`` tensor.
    adam_bytes = 2 * fp32_bytes + len(shapes) * round_allocation_bytes(4)

    foreach = TrainOptions(optimizer="adamw_foreach")
    profile = simulate_train(tiny_t5(), TrainShape(1, 8, 4), foreach, use_cache=False)

    assert profile.params == numel == 45_504
    assert profile.breakdown["weights"] == fp32_bytes == weights_bytes(tiny_t5())
    assert profile.breakdown["optimizer_state"] == adam_bytes
    # Tiny model, foreach AdamW: the peak is in optimizer.step() with every gradient alive
    # and the multi-tensor kernel's temporaries.
    assert profile.peak_phase == "optimizer"
    assert profile.breakdown["gradients"] == fp32_bytes
    assert sum(profile.breakdown.values()) == profile.peak_bytes

    # Fused AdamW (the default) updates in place: its steady step holds exactly weights,
    # gradients and state, so the peak moves to backward.
    fused = simulate_train(tiny_t5(), TrainShape(1, 8, 4), TrainOptions(), use_cache=False)
    assert fused.peak_phase == "backward"
    assert fused.phase_peaks["optimizer"] < profile.phase_peaks["optimizer"]
    assert fused.phase_peaks["backward"] == profile.phase_peaks["backward"]


# -- directions that must hold ---------------------------------------------------------


def _train(config, shape: TrainShape, **options):
    return simulate_train(config, shape, TrainOptions(**options), use_cache=False)


def test_more_batch_more_memory() -> None:
    small = _train(small_t5(), TrainShape(2, 64, 16))
    large = _train(small_t5(), TrainShape(8, 64, 16))
    assert large.peak_bytes > small.peak_bytes
    assert large.breakdown["weights"] == small.breakdown["weights"]


def test_gradient_checkpointing_lowers_peak_when_activations_dominate() -> None:
    shape = TrainShape(16, 128, 32)
    plain = _train(small_t5(), shape)
    checkpointed = _train(small_t5(), shape, gradient_checkpointing=True)
    assert checkpointed.peak_bytes < 0.8 * plain.peak_bytes


def test_optimizer_order_adamw_adafactor_sgd() -> None:
    shape = TrainShape(2, 32, 8)
    adamw = _train(small_t5(), shape)
    adam8 = _train(small_t5(), shape, optimizer="adamw8bit")
    adafactor = _train(small_t5(), shape, optimizer="adafactor")
    sgd = _train(small_t5(), shape, optimizer="sgd")
    assert adamw.peak_bytes > adam8.peak_bytes > adafactor.peak_bytes
    # SGD keeps no state, but with the Trainer's weight decay its foreach step makes a
    # parameter-sized temporary (grads + wd * params).
    assert sgd.breakdown["optimizer_state"] == 0
    assert sgd.phase_breakdowns["optimizer"]["temporaries"] >= sgd.breakdown["weights"] * 0.99
    assert adam8.breakdown["optimizer_state"] < adamw.breakdown["optimizer_state"] / 3


def test_bf16_amp_lowers_activations_at_large_batch() -> None:
    shape = TrainShape(16, 128, 32)
    fp32 = _train(small_t5(), shape)
    bf16 = _train(small_t5(), shape, precision="bf16")
    assert bf16.breakdown["activations"] < fp32.breakdown["activations"]
    # AMP keeps fp32 master weights.
    assert bf16.breakdown["weights"] == fp32.breakdown["weights"]


def test_pure_bf16_halves_weights_and_state() -> None:
    shape = TrainShape(2, 32, 8)
    fp32 = _train(small_t5(), shape)
    pure = _train(small_t5(), shape, precision="pure_bf16")
    assert pure.breakdown["weights"] == pytest.approx(fp32.breakdown["weights"] / 2, rel=0.01)


def test_lora_is_far_lower_and_freezes_the_base() -> None:
    shape = TrainShape(2, 32, 8)
    full = _train(small_bart(), shape)
    lora = _train(small_bart(), shape, lora=True, lora_rank=4)
    assert lora.params == full.params
    assert lora.trainable_params < full.trainable_params / 10
    assert lora.breakdown["optimizer_state"] < full.breakdown["optimizer_state"] / 10
    assert lora.peak_bytes < 0.7 * full.peak_bytes


def test_generation_grows_with_beams_and_counts_the_kv_cache() -> None:
    greedy_shape = GenerateShape(batch=2, source_len=64, max_new_tokens=16, num_beams=1)
    beam_shape = GenerateShape(batch=2, source_len=64, max_new_tokens=16, num_beams=4)
    greedy = simulate_generate(small_t5(), greedy_shape, use_cache=False)
    beams = simulate_generate(small_t5(), beam_shape, use_cache=False)
    assert beams.peak_bytes > greedy.peak_bytes
    kv_bytes = kv_cache_bytes(small_t5(), beam_shape, torch.float32)
    # Beam search reorders each layer's cache with index_select: at the peak one layer's
    # new cross-attention K [batch*beams=8, heads=4, source=64, d_kv=32] fp32 (262,144 bytes)
    # exists next to the whole cache (plus the beam index and small bookkeeping).
    assert beams.peak_phase == "reorder"
    cross_k = 8 * 4 * 64 * 32 * 4
    extra = beams.breakdown["kv_cache"] + beams.breakdown["temporaries"] - kv_bytes
    assert cross_k <= extra < cross_k + 4096
    assert "reorder" not in greedy.phase_peaks  # greedy search never reorders


def test_cache_hit_is_identical_and_fast(tmp_path) -> None:
    shape = TrainShape(1, 8, 4)
    first = simulate_train(tiny_t5(), shape, cache_dir=tmp_path)
    start = time.perf_counter()
    second = simulate_train(tiny_t5(), shape, cache_dir=tmp_path)
    assert time.perf_counter() - start < 0.5
    assert second == first
    assert len(list(tmp_path.glob("*.json"))) == 1


def test_evaluation_inside_amp_training_keeps_fp32_weights_and_a_low_precision_cache() -> None:
    from dialsum.trace.profile import GenerateOptions

    shape = GenerateShape(batch=2, source_len=64, max_new_tokens=16, num_beams=4)
    amp = simulate_generate(small_t5(), shape, GenerateOptions("bf16", amp=True), use_cache=False)
    cast = simulate_generate(small_t5(), shape, GenerateOptions("bf16"), use_cache=False)
    fp32 = simulate_generate(small_t5(), shape, GenerateOptions("fp32"), use_cache=False)
    # Evaluation during bf16 AMP training: fp32 master weights stay, autocast's per-step
    # weight casts come on top; predict after training casts the weights instead.
    assert amp.breakdown["weights"] == fp32.breakdown["weights"] == weights_bytes(small_t5())
    assert cast.breakdown["weights"] == weights_bytes(small_t5(), torch.bfloat16)
    assert amp.peak_bytes > cast.peak_bytes
    # K/V projections run under autocast: the cache is bf16, as after a cast.
    assert amp.breakdown["kv_cache"] == cast.breakdown["kv_cache"]
    assert amp.breakdown["kv_cache"] * 2 == fp32.breakdown["kv_cache"]


def test_evaluation_adds_the_eval_loss_forward() -> None:
    shape = GenerateShape(batch=4, source_len=32, max_new_tokens=8, num_beams=1)
    with_loss = simulate_generate(
        small_t5(), GenerateShape(4, 32, 8, 1, label_len=64), use_cache=False
    )
    plain = simulate_generate(small_t5(), shape, use_cache=False)
    assert "eval_loss" in with_loss.phase_peaks and "eval_loss" not in plain.phase_peaks
    # The loss forward holds [4, 64, 1000] fp32 logits (1,024,000 bytes) and more.
    assert with_loss.phase_peaks["eval_loss"] > weights_bytes(small_t5()) + 4 * 64 * 1000 * 4


# -- step 2 reused from step 1 ---------------------------------------------------------------


def _segments(events: list) -> list[list]:
    """The step's events from its data phase to (not including) its optimizer phase."""
    steps, current = [], []
    for event in events:
        current.append(event)
        if event == ("step",):
            steps.append(current[current.index(("p", "data")) : current.index(("p", "optimizer"))])
            current = []
    return steps


def _through_last_step(timeline: list) -> list:
    # Frees after it (the rig dying whenever the garbage collector runs) replay nothing.
    return timeline[: len(timeline) - timeline[::-1].index(("step",))]


def _by_default_and_step_two_traced(
    monkeypatch, config: PretrainedConfig, shape: TrainShape, options: TrainOptions
) -> tuple:
    """(profile, timeline) as ``_trace_train`` makes them, then with step 2 traced whole
    (a gradient "laid out unlike its parameter"); every micro-batch traced, not built from
    a kept step (``test_micro_batches``)."""
    import dialsum.trace.step_trace as step_trace

    def trace():
        return step_trace._trace_train(
            config, shape, options, round_allocation_bytes, True, build_micro_batches=False
        )

    default = trace()
    monkeypatch.setattr(step_trace, "zeros_like_grads", lambda _params: False)
    return default, trace()


@pytest.mark.parametrize(
    "options",
    [
        # CUDA emulation: memory-efficient attention's padded bias gradient (a cache hit
        # used to be rebuilt 16 bytes smaller in step 2), checkpointing, two micro-batches.
        TrainOptions(precision="bf16", gradient_checkpointing=True, micro_batches=2),
        TrainOptions(precision="fp16", optimizer="adafactor", micro_batches=1),
    ],
    ids=["bf16-ckpt-mb2", "fp16-adafactor"],
)
def test_step_two_reused_equals_step_two_traced(monkeypatch, options: TrainOptions) -> None:
    (reused, events), (traced, traced_events) = _by_default_and_step_two_traced(
        monkeypatch, TRACE_T5, TrainShape(3, 24, 8), options
    )
    assert reused == traced  # peaks, breakdowns, costs: every field
    assert _through_last_step(events) == _through_last_step(traced_events)
    # Step 1's cost events are dropped (the timeline carries the step's costs once).
    first, second = _segments(without_costs(traced_events))
    assert first == second  # what makes the reuse exact: a cache hit sized as computed


def test_a_step_that_sets_something_up_once_is_not_copied_into_step_two(monkeypatch) -> None:
    """bitsandbytes' ``Linear4bit`` casts its bias to the compute dtype on its first call
    only: step 2's forward/backward is traced (QLoRA on a model with biases), not copied
    from step 1's, whose cast step 2 does not make."""
    options = TrainOptions(precision="bf16", lora=True, quantization="nf4")
    (default, events), (traced, traced_events) = _by_default_and_step_two_traced(
        monkeypatch, TRACE_BART, TrainShape(2, 16, 8), options
    )
    assert default == traced
    assert _through_last_step(events) == _through_last_step(traced_events)
    first, second = _segments(without_costs(traced_events))
    assert first != second  # the cast: in step 1 only

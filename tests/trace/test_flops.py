"""FLOPs, bytes moved and kernels from the memory trace: hand counts, replay, no side effects."""

from __future__ import annotations

import pytest
import torch
from test_depth import LLAMA
from test_step_trace import small_t5, tiny_t5

from dialsum.trace import flops as flops_mod
from dialsum.trace.allocator import round_allocation_bytes
from dialsum.trace.causal_generation import trace_causal_generate
from dialsum.trace.flops import COSTS, CostMeter, interpolate, runs_kernel
from dialsum.trace.generation_parts import GENERATE_COST_PHASES
from dialsum.trace.generation_trace import _trace_generate, simulate_generate
from dialsum.trace.profile import GenerateOptions, GenerateShape, TrainOptions, TrainShape
from dialsum.trace.step_trace import _trace_train, simulate_train
from dialsum.trace.timeline import cost_events
from dialsum.trace.token_costs import DECODE_TOKEN_PHASES, generation_totals


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path / "traces"))


def _mm(m: int, k: int, n: int) -> int:
    return 2 * m * k * n


def tiny_t5_hand_count(batch: int, source: int, target: int) -> tuple[int, int]:
    """(linear-layer FLOPs, attention FLOPs) of one forward of ``tiny_t5`` by hand.

    d_model 32, 4 heads x d_kv 8 (inner 32), ReLU d_ff 64, vocab 64, 2+2 layers. Every
    projection is 2·m·n·k with m = tokens; attention is QK^T and AV, each
    2·batch·heads·queries·keys·d_kv. Embedding lookups and the position bias are free.
    """
    d, inner, heads, d_kv, d_ff, vocab, layers = 32, 32, 4, 8, 64, 64, 2
    src, tgt = batch * source, batch * target

    def attention(queries: int, keys: int) -> int:
        return 2 * (2 * batch * heads * queries * keys * d_kv)

    encoder = 4 * _mm(src, d, inner) + _mm(src, d, d_ff) + _mm(src, d_ff, d)
    decoder = (
        4 * _mm(tgt, d, inner)  # self-attention q, k, v, o
        + 2 * _mm(tgt, d, inner)  # cross-attention q, o on target tokens
        + 2 * _mm(src, d, inner)  # cross-attention k, v on the encoder output
        + _mm(tgt, d, d_ff)
        + _mm(tgt, d_ff, d)
    )
    linear = layers * (encoder + decoder) + _mm(tgt, d, vocab)  # + untied lm_head
    attn = layers * (
        attention(source, source) + attention(target, target) + attention(target, source)
    )
    return linear, attn


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_training_flops_match_a_hand_count(device: str) -> None:
    linear, attention = tiny_t5_hand_count(2, 16, 8)
    profile = simulate_train(
        tiny_t5(), TrainShape(2, 16, 8), TrainOptions(device=device), use_cache=False
    )
    assert profile.flops["forward"] == linear + attention == 2_260_992
    # Backward: grad input + grad weight per linear (2x). Attention: CUDA's efficient
    # kernel recomputes the scores (5 matmuls = 2.5x forward); the CPU math path 2x.
    backward_attention = attention * 5 // 2 if device == "cuda" else 2 * attention
    assert profile.flops["backward"] == 2 * linear + backward_attention
    assert profile.flops["optimizer"] == 0  # fused AdamW: element-wise, no matmul


def test_gradient_checkpointing_counts_the_recompute() -> None:
    shape = TrainShape(2, 16, 8)
    plain = simulate_train(tiny_t5(), shape, TrainOptions(), use_cache=False)
    checkpointed = simulate_train(
        tiny_t5(), shape, TrainOptions(gradient_checkpointing=True), use_cache=False
    )
    # Every checkpointed layer's forward runs again in backward; the LM head does not.
    head = _mm(2 * 8, 32, 64)
    assert checkpointed.flops["forward"] == plain.flops["forward"]
    assert checkpointed.flops["backward"] - plain.flops["backward"] == plain.flops["forward"] - head


def test_micro_batches_are_counted_per_micro_batch() -> None:
    one = simulate_train(tiny_t5(), TrainShape(2, 16, 8), TrainOptions(), use_cache=False)
    two = simulate_train(
        tiny_t5(), TrainShape(2, 16, 8), TrainOptions(micro_batches=2), use_cache=False
    )
    assert two.flops == one.flops


def test_replayed_costs_equal_direct_traces() -> None:
    batch = 5  # replayed from the recordings at batch 2 and 3
    train_shape = TrainShape(batch, 16, 8)
    options = TrainOptions(micro_batches=2, precision="bf16")
    replayed = simulate_train(tiny_t5(), train_shape, options, use_cache=False)
    direct = simulate_train(tiny_t5(), train_shape, options, use_cache=False, replay_batches=False)
    assert (replayed.flops, replayed.bytes_moved, replayed.kernels) == (
        direct.flops,
        direct.bytes_moved,
        direct.kernels,
    )
    gen_shape = GenerateShape(batch, 16, 6, 4, label_len=8)
    replayed = simulate_generate(tiny_t5(), gen_shape, use_cache=False)
    direct = simulate_generate(tiny_t5(), gen_shape, use_cache=False, replay_batches=False)
    assert (replayed.flops, replayed.bytes_moved, replayed.kernels) == (
        direct.flops,
        direct.bytes_moved,
        direct.kernels,
    )
    # FLOPs scale with the batch (no term without a batch dimension).
    assert (
        direct.flops["encoder"] * 2
        == simulate_generate(
            tiny_t5(), GenerateShape(2 * batch, 16, 6, 4, label_len=8), use_cache=False
        ).flops["encoder"]
    )


@pytest.mark.parametrize("beams", [1, 4])
def test_generation_flops_sum_every_decoder_step(beams: int) -> None:
    # The decode step traced at every cache length 1..6, summed, against the two-point sum.
    def step_flops(cache_len: int) -> int:
        profile = simulate_generate(
            tiny_t5(), GenerateShape(2, 16, cache_len, beams), use_cache=False
        )
        return sum(profile.flops.get(p, 0) for p in DECODE_TOKEN_PHASES)

    longest = simulate_generate(tiny_t5(), GenerateShape(2, 16, 6, beams), use_cache=False)
    totals = generation_totals({"flops": longest.flops}, 6)["flops"]
    assert totals["decode"] == sum(step_flops(n) for n in range(1, 7))
    assert totals["encoder"] == longest.flops["encoder"] > 0
    assert totals["total"] == totals["encoder"] + totals["decode"]


def test_meter_leaves_memory_unchanged(monkeypatch) -> None:
    def profiles():
        shape = TrainShape(2, 32, 8)
        out = []
        for options in (
            TrainOptions(precision="bf16", gradient_checkpointing=True, micro_batches=2),
            TrainOptions(device="cpu", optimizer="adamw_foreach"),
        ):
            p = simulate_train(small_t5(), shape, options, use_cache=False, replay_batches=False)
            out.append((p.peak_bytes, p.phase_peaks, p.breakdown, p.phase_breakdowns))
        gen = simulate_generate(
            small_t5(),
            GenerateShape(2, 32, 8, 4, label_len=8),
            GenerateOptions("bf16", amp=True),
            use_cache=False,
            replay_batches=False,
        )
        return out + [(gen.peak_bytes, gen.phase_peaks, gen.breakdown)]

    metered = profiles()
    monkeypatch.setattr(CostMeter, "__enter__", lambda self: self)
    monkeypatch.setattr(CostMeter, "__exit__", lambda self, *exc: None)
    assert profiles() == metered


@pytest.mark.parametrize(
    "options",
    [
        TrainOptions(),
        TrainOptions(precision="bf16", gradient_checkpointing=True, micro_batches=2),
        TrainOptions(precision="fp16", optimizer="adafactor"),
    ],
    ids=["fp32", "bf16-ckpt-micro2", "fp16-adafactor"],
)
def test_a_recorded_training_step_carries_its_costs(options: TrainOptions) -> None:
    # The timeline's cost events (what a layer repeated from shallow traces carries) sum to
    # the step's forward and backward costs; the optimizer's stay out of it.
    profile, events = _trace_train(
        small_t5(), TrainShape(2, 32, 8), options, round_allocation_bytes, True, False
    )
    summed = cost_events(events, ("forward", "backward", "optimizer"))
    for cost in COSTS:
        by_phase = getattr(profile, cost)
        assert summed[cost]["forward"] == by_phase["forward"] > 0
        assert summed[cost]["backward"] == by_phase["backward"] > 0
        assert summed[cost]["optimizer"] == 0


@pytest.mark.parametrize("causal", [False, True], ids=["t5", "llama"])
def test_a_recorded_generation_carries_its_costs(causal: bool) -> None:
    config = LLAMA if causal else small_t5()
    trace = trace_causal_generate if causal else _trace_generate
    shape = GenerateShape(2, 16, 6, 2, label_len=4)
    profile, events = trace(config, shape, GenerateOptions("bf16"), round_allocation_bytes, True)
    summed = cost_events(events, GENERATE_COST_PHASES)
    for cost in COSTS:
        assert summed[cost] == getattr(profile, cost)
    assert summed["flops"]["decode_short"] > 0  # traced after the step, still carried


# -- pure parts ---------------------------------------------------------------------------


def test_interpolate_is_exact_or_refuses() -> None:
    assert interpolate({"a": 20, "b": 7}, {"a": 30, "b": 7}, 2, 3, 8) == {"a": 80, "b": 7}
    assert interpolate({"a": 20}, {"a": 25}, 2, 4, 3) is None  # 22.5: not affine in integers
    assert interpolate({"a": 20}, {"b": 25}, 2, 3, 4) is None


def test_views_and_metadata_launch_no_kernel() -> None:
    aten = torch.ops.aten
    x = torch.ones(4, 4)
    assert not runs_kernel(aten.view.default, (x, [16]), {}, x.view(16))
    assert not runs_kernel(aten._unsafe_view.default, (x, [16]), {}, aten._unsafe_view(x, [16]))
    assert runs_kernel(aten.add.Tensor, (x, x), {}, x + x)
    assert runs_kernel(aten.add_.Tensor, (x, x), {}, x)
    # add: read 2 x 64 bytes, write 64; in-place add_: the same, its output is its input.
    assert flops_mod.op_traffic_bytes(aten.add.Tensor, (x, x), {}, x + x) == 192
    assert flops_mod.op_traffic_bytes(aten.add_.Tensor, (x, x), {}, x) == 192

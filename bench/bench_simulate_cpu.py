"""Check the simulator's live-storage accounting against a real training step on the CPU.

A small T5 (d_model 256, 4+4 layers, vocab 8000) trains for two real steps on the CPU at
batch 8, 128 source / 32 target tokens, fp32, ``AdamW(foreach=True)``. The second step
runs under ``torch.profiler`` with ``profile_memory=True``: its allocation/free events,
summed in time order on top of what was live before the step (parameters and optimizer
state), give the measured peak - a measure independent of the simulator's dispatch mode.
``simulate_train`` predicts the same step without allocator rounding (the CPU allocator
does not round).

Two things are set so that CPU and the simulator run the *same* kernels (the simulator
otherwise emulates CUDA's choices): dropout is off (CPU's unfused dropout keeps a float
mask, CUDA's a bool one) and attention is ``eager`` (CPU and CUDA pick different SDPA
kernels). What is compared is the accounting: weights, grads, optimizer state and
temporaries, saved activations and their frees.

Run: ``uv run python bench/bench_simulate_cpu.py``; prints the ratio predicted/measured.
"""

from __future__ import annotations

import copy
import time

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import T5Config

from dialsum.models.architectures import model_from_config
from dialsum.trace.allocator import exact_bytes
from dialsum.trace.optimizers import LEARNING_RATE, state_tensors
from dialsum.trace.profile import TrainOptions, TrainShape
from dialsum.trace.step_trace import simulate_train

SHAPE = TrainShape(batch=8, source_len=128, target_len=32)


def bench_config() -> T5Config:
    return T5Config(
        vocab_size=8000,
        d_model=256,
        d_ff=1024,
        d_kv=32,
        num_layers=4,
        num_decoder_layers=4,
        num_heads=8,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        attn_implementation="eager",
    )


def _batch(config: T5Config, shape: TrainShape) -> dict[str, torch.Tensor]:
    return {
        "input_ids": torch.randint(0, config.vocab_size, (shape.batch, shape.source_len)),
        "attention_mask": torch.ones(shape.batch, shape.source_len, dtype=torch.long),
        "labels": torch.randint(0, config.vocab_size, (shape.batch, shape.target_len)),
    }


def _step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: T5Config) -> None:
    batch = _batch(config, SHAPE)
    loss = model(**batch).loss
    loss.backward()
    del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _live_storage_bytes(tensors: list[torch.Tensor]) -> int:
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


def _peak_from_events(prof: profile) -> int:
    """Max over time of the running sum of CPU allocation (+) and free (-) events."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running, peak = 0, 0
    for event in events:
        if event.device_type() == torch.autograd.DeviceType.CPU:
            running += event.nbytes()
            peak = max(peak, running)
    return peak


def measure_real_peak_bytes(config: T5Config) -> int:
    torch.manual_seed(0)
    # model_from_config writes ``tie_word_embeddings=False`` into the config it is given,
    # which would untie T5's encoder/decoder embeddings in a later build: use a copy.
    model = model_from_config(copy.deepcopy(config))
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, foreach=True)
    _step(model, optimizer, config)  # creates the optimizer state
    baseline = _live_storage_bytes([*model.parameters(), *state_tensors(optimizer)])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _step(model, optimizer, config)
    return baseline + _peak_from_events(prof)


def main() -> None:
    config = bench_config()
    start = time.perf_counter()
    measured = measure_real_peak_bytes(config)
    real_s = time.perf_counter() - start
    start = time.perf_counter()
    predicted = simulate_train(config, SHAPE, TrainOptions(), round_fn=exact_bytes)
    sim_s = time.perf_counter() - start
    print(f"shape {SHAPE}, fp32 AdamW(foreach), eager attention, no dropout")
    print(f"measured (CPU profiler) : {measured / 2**20:9.1f} MiB  ({real_s:.1f}s)")
    print(
        f"predicted (simulate)    : {predicted.peak_bytes / 2**20:9.1f} MiB  ({sim_s:.1f}s), "
        f"phase {predicted.peak_phase}"
    )
    print(f"ratio predicted/measured: {predicted.peak_bytes / measured:.3f}")


if __name__ == "__main__":
    main()

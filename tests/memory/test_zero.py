"""ZeRO per-rank memory: DeepSpeed's published estimators, our sharding rules, the planner.

DeepSpeed's estimators (bytes; P parameters, L parameters of the largest layer, N GPUs):
    ZeRO-1/2: GPU 4P + 16P/N; with CPU offload 2P
    ZeRO-3:   GPU 4L + 18P/N; offload optimizer 4L + 2P/N; offload optimizer + params 4L
"""

from __future__ import annotations

import pytest
from transformers import T5Config

from dialsum.core.errors import ConfigError
from dialsum.memory.overheads import Overheads
from dialsum.memory.plan import make_plan
from dialsum.memory.request import PlanRequest
from dialsum.memory.simulator import Simulator
from dialsum.memory.zero import (
    ZERO12_BUCKET_ELEMENTS,
    StateLayout,
    communication_bytes,
    deepspeed_layout,
    deepspeed_zero2_estimate,
    deepspeed_zero3_estimate,
    largest_layer_params,
    sharded_peak_bytes,
    sharded_profile_peak_bytes,
    stage3_bucket_elements,
    zero_state_bytes,
)
from dialsum.models.architectures import known_config, model_from_config
from dialsum.speed.gpus import GPU
from dialsum.trace.profile import GenerateShape, MemoryProfile, TrainOptions, TrainShape

GIB = 2**30
P = 1_000_000_000  # divisible by every N below, so shards are exact
L = 50_000_000
MIXED = deepspeed_layout("bf16")


# ------------------------------------------------------------------ published estimators


def test_zero2_estimator_numbers() -> None:
    # 4 GPUs on one node: 4P + 16P/4 = 8e9 on each GPU; CPU P*4*4*1.5.
    assert deepspeed_zero2_estimate(P, num_gpus_per_node=4, cpu_offload=False) == (
        24_000_000_000,
        8_000_000_000,
    )
    # Offload: 2P on the GPU; CPU P*max(4*4, 16)*1.5.
    assert deepspeed_zero2_estimate(P, num_gpus_per_node=4, cpu_offload=True) == (
        24_000_000_000,
        2_000_000_000,
    )
    # 2 nodes x 8 GPUs: the optimizer shard is 16P/16, CPU offload P*max(64, 16)*1.5.
    assert deepspeed_zero2_estimate(P, 8, 2, cpu_offload=False)[1] == 5_000_000_000
    assert deepspeed_zero2_estimate(P, 8, 2, cpu_offload=True)[0] == 96_000_000_000


def test_zero3_estimator_numbers() -> None:
    assert deepspeed_zero3_estimate(P, L, num_gpus_per_node=4, cpu_offload=False) == (
        1_200_000_000,  # zero_init: L*4*4*1.5 on CPU
        4_700_000_000,  # 4L + 18P/4
        200_000_000,
    )
    assert deepspeed_zero3_estimate(P, L, 4, cpu_offload=True, cpu_offload_params=True) == (
        27_000_000_000,  # P*18*1.5
        200_000_000,  # 4L
        200_000_000,
    )
    assert deepspeed_zero3_estimate(P, L, 4, cpu_offload=True, cpu_offload_params=False) == (
        24_000_000_000,  # P*16*1.5
        700_000_000,  # 4L + 2P/4
        200_000_000,
    )


# ------------------------------------------------------------------ our sharding rules


def test_deepspeed_layout_bytes_per_parameter() -> None:
    assert deepspeed_layout("bf16") == StateLayout(2, 2, 16)
    assert deepspeed_layout("fp16", "sgd") == StateLayout(2, 2, 8)
    assert deepspeed_layout("fp32") == StateLayout(4, 4, 16)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_sharding_matches_the_published_estimators(world: int) -> None:
    for stage in (1, 2):
        ours = zero_state_bytes(P, MIXED, stage=stage, world=world)
        assert ours.gpu_bytes == deepspeed_zero2_estimate(P, world, cpu_offload=False)[1]
        ours = zero_state_bytes(P, MIXED, stage=stage, world=world, offload=True)
        assert ours.gpu_bytes == deepspeed_zero2_estimate(P, world, cpu_offload=True)[1]
    ours = zero_state_bytes(P, MIXED, stage=3, world=world, largest_layer_params=L)
    assert ours.gpu_bytes == deepspeed_zero3_estimate(P, L, world, cpu_offload=False)[1]
    ours = zero_state_bytes(P, MIXED, stage=3, world=world, offload=True, largest_layer_params=L)
    assert ours.gpu_bytes == deepspeed_zero3_estimate(P, L, world, cpu_offload=True)[1]


def test_each_stage_shards_one_more_state() -> None:
    n = 4
    stage0 = zero_state_bytes(P, MIXED, stage=0, world=n)
    assert (stage0.weights_bytes, stage0.gradients_bytes, stage0.optimizer_state_bytes) == (
        2 * P,
        2 * P,
        16 * P,
    )
    stage1 = zero_state_bytes(P, MIXED, stage=1, world=n)
    assert (stage1.weights_bytes, stage1.gradients_bytes, stage1.optimizer_state_bytes) == (
        2 * P,
        2 * P,
        4 * P,  # 16P / 4
    )
    stage3 = zero_state_bytes(P, MIXED, stage=3, world=n, largest_layer_params=L)
    assert (stage3.weights_bytes, stage3.optimizer_state_bytes) == (P // 2, 4 * P)
    assert stage3.gathered_layer_bytes == 4 * L
    offloaded = zero_state_bytes(P, MIXED, stage=3, world=n, offload=True, largest_layer_params=L)
    assert offloaded.cpu_bytes == 4 * P + P // 2  # optimizer shard + parameter shard
    assert offloaded.gpu_bytes == 4 * L


def test_lora_shards_only_the_trainable_states() -> None:
    states = zero_state_bytes(P, MIXED, stage=2, world=4, trainable_params=1_000_000)
    assert states.weights_bytes == 2 * P
    assert states.gradients_bytes == 2_000_000
    assert states.optimizer_state_bytes == 4_000_000


def test_invalid_stage_or_world() -> None:
    with pytest.raises(ValueError, match="ZeRO stage"):
        zero_state_bytes(P, MIXED, stage=4, world=2)
    with pytest.raises(ValueError, match="world size"):
        zero_state_bytes(P, MIXED, stage=1, world=0)


def test_sharded_peak_replaces_model_states_only() -> None:
    breakdown = {"weights": 400, "gradients": 400, "optimizer_state": 800, "activations": 1000}
    states = zero_state_bytes(100, MIXED, stage=2, world=4)  # 200 + 200 + 400
    assert sharded_peak_bytes(2600, breakdown, states, communication_bytes=10) == 1810
    # At the start of backward no gradient exists yet: none is added.
    no_grads = breakdown | {"gradients": 0}
    assert sharded_peak_bytes(2200, no_grads, states) == 1000 + 200 + 400


def test_the_largest_sharded_phase_decides() -> None:
    states = zero_state_bytes(100, MIXED, stage=2, world=4)  # 200 + 200 + 400
    model = {"weights": 400, "optimizer_state": 800}
    backward = model | {"gradients": 0, "activations": 1200}  # 2400 on one GPU
    step = model | {"gradients": 400, "temporaries": 900}  # 2500 on one GPU: the peak
    profile = MemoryProfile(
        100, 100, 2500, "optimizer", step, phase_peaks={"backward": 2400, "optimizer": 2500}
    )
    assert sharded_profile_peak_bytes(profile, states) == 1700  # no per-phase data
    profile.phase_breakdowns = {"backward": backward, "optimizer": step}
    # Per rank: backward 1200 + 200 + 400 = 1800 > step 900 + 800 = 1700.
    assert sharded_profile_peak_bytes(profile, states) == 1800


def test_communication_buffers() -> None:
    assert communication_bytes(0, 768, 2) == 0
    assert communication_bytes(2, 768, 2) == 3 * ZERO12_BUCKET_ELEMENTS * 2
    assert stage3_bucket_elements(768) == (589_824, 530_841, 7_680)
    assert communication_bytes(3, 768, 2) == (589_824 + 530_841) * 2


def test_largest_layer_of_t5_base_is_its_embedding() -> None:
    model = model_from_config(known_config("eenzeenee/t5-base-korean-summarization"), "meta")
    assert largest_layer_params(model) == 50_358 * 768 == 38_674_944


# ------------------------------------------------------------------ planner integration

PARAMS = 100_000_000
MIB = 2**20
NO_OVERHEADS = Overheads(
    cuda_context_bytes=0, library_workspace_bytes=0, fragmentation_fraction=0.0, margin_fraction=0.0
)


def fake_train(config: object, shape: TrainShape, options: TrainOptions) -> MemoryProfile:
    # Autocast bf16 as simulated: fp32 weights and gradients, AdamW 8 B/param.
    breakdown = {
        "weights": 4 * PARAMS,
        "gradients": 4 * PARAMS,
        "optimizer_state": 8 * PARAMS,
        "activations": MIB * shape.batch * (shape.source_len + shape.target_len) // 2,
    }
    return MemoryProfile(PARAMS, PARAMS, sum(breakdown.values()), "backward", breakdown)


def fake_generate(config: object, shape: GenerateShape, precision: str) -> MemoryProfile:
    return MemoryProfile(PARAMS, 0, 2 * PARAMS, "decode_step", {"weights": 2 * PARAMS})


def zero_plan(stage: int, *, offload: bool = False, world: int = 4, total_gib: int = 16):
    request = PlanRequest(
        model_config=T5Config(d_model=512),
        source_len=448,
        target_len=64,
        effective_batch_size=32,
        world_size=world,
        zero_stage=stage,
        offload=offload,
        largest_layer_params=L // 10,
    )
    gpu = GPU("test", "Test GPU", total_gib * GIB, bf16=True, compute_capability=(8, 0))
    simulator = Simulator(train=fake_train, generate=fake_generate)
    return make_plan(request, gpu, overheads=NO_OVERHEADS, simulator=simulator)


def test_plan_per_rank_peak_under_zero2() -> None:
    plan = zero_plan(2)
    activations = MIB * plan.micro_batch_size * 512 // 2
    states = 2 * PARAMS + 2 * PARAMS + 16 * PARAMS // 4  # 4P + 16P/N
    comm = 3 * ZERO12_BUCKET_ELEMENTS * 2
    assert plan.predicted_peak_bytes == activations + states + comm
    assert plan.zero_states is not None and plan.zero_states.gpu_bytes == states
    assert plan.to_json_dict()["zero_states_per_rank"]["gpu"] == states
    assert any("ZeRO-2" in reason for reason in plan.reasons)


def test_zero3_with_offload_leaves_room_for_a_larger_micro_batch() -> None:
    # 5 GiB per GPU, 16 rows per GPU, 256 MiB of activations per row. Plain DDP holds
    # 1.6 GB of model states plus a DDP gradient copy: micro-batch 8. ZeRO-3 with offload
    # keeps only the gathered layer on the GPU: all 16 rows at once.
    ddp = zero_plan(0, world=2, total_gib=5)
    zero3 = zero_plan(3, offload=True, world=2, total_gib=5)
    assert (ddp.micro_batch_size, zero3.micro_batch_size) == (8, 16)
    assert zero3.zero_states is not None
    assert zero3.zero_states.gpu_bytes == 4 * (L // 10)  # only the gathered layer
    assert zero3.zero_states.cpu_bytes == 16 * PARAMS // 2 + 2 * PARAMS // 2


def test_offload_without_zero_is_rejected() -> None:
    with pytest.raises(ConfigError, match="offload needs DeepSpeed ZeRO"):
        zero_plan(0, offload=True)

"""Per-rank GPU memory of model states under DeepSpeed ZeRO (pure functions).

Model states are the weights, their gradients and the optimizer's state. ZeRO splits them
over the N data-parallel ranks (Rajbhandari et al., "ZeRO: Memory Optimizations Toward
Training Trillion Parameter Models", 2020):

- stage 0 (plain DDP): every rank holds everything;
- stage 1: the optimizer state is sharded (1/N per rank);
- stage 2: + the gradients are sharded;
- stage 3: + the parameters are sharded; a layer is gathered whole only while it runs;
- offload: the optimizer state (and at stage 3 the parameters) live in CPU memory.

Bytes per parameter follow DeepSpeed's own accounting, so that ``zero_state_bytes`` with
``deepspeed_layout`` reproduces DeepSpeed's published estimators exactly (their source is
``deepspeed/runtime/zero/stage_1_and_2.py::estimate_zero2_model_states_mem_needs`` and
``deepspeed/runtime/zero/stage3.py::estimate_zero3_model_states_mem_needs``; both are
copied below as ``deepspeed_zero2_estimate`` / ``deepspeed_zero3_estimate`` and the tests
hold the two sides equal):

- the model's parameters and gradients in the training dtype: 2 + 2 bytes in mixed
  precision (bf16/fp16), 4 + 4 in fp32;
- the sharded "optimizer partition": an fp32 master copy of the weights (4), an fp32
  gradient partition the low-precision gradients are reduced into (4) and the optimizer's
  own state (AdamW: 8). That is the 16 in DeepSpeed's ``16 * P / N``.

Two places where DeepSpeed's estimator is more careful than the paper's steady state, and
this module follows the estimator (an OOM costs more than a smaller batch):

- stages 1 and 2 (one estimator, ``4 * P + 16 * P / N``): the low-precision gradients are
  counted whole: backward produces each gradient at full size before the bucketed
  reduce-scatter moves it into the rank's fp32 partition, so stage 2's sharding of
  gradients is the fp32 partition inside the 16 bytes;
- stage 3 (``4 * L + 18 * P / N``): the largest layer is gathered whole with its gradient
  (``4 * L``: 2 + 2 bytes per parameter of the largest module ``L``); the low-precision
  gradients are reduce-scattered right after each layer's backward, so beyond that layer
  only the fp32 partition remains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dialsum.trace.profile import MemoryProfile

if TYPE_CHECKING:  # a guide read from the answer cache never imports torch
    from torch import nn

ZERO_STAGES: tuple[int, ...] = (0, 1, 2, 3)

# Bytes of optimizer state per trainable parameter, beyond the fp32 master copy and the
# fp32 gradient partition (AdamW: exp_avg + exp_avg_sq in fp32).
OPTIMIZER_STATE_BYTES: dict[str, int] = {
    "adamw": 8,
    "adamw8bit": 2,
    "paged_adamw8bit": 2,
    "adafactor": 0,
    "sgd": 0,
}

_MIXED = ("bf16", "fp16", "pure_bf16")


@dataclass(frozen=True)
class StateLayout:
    """Bytes per parameter of each model-state group, before any sharding."""

    param_bytes: int  # the model's weights in the training dtype
    grad_bytes: int  # the model's gradients in the training dtype
    partition_bytes: int  # fp32 master + fp32 gradient partition + optimizer state


def deepspeed_layout(precision: str, optimizer: str = "adamw") -> StateLayout:
    """How DeepSpeed holds model states for ``precision`` and ``optimizer``.

    Mixed precision + AdamW gives (2, 2, 16), the numbers of DeepSpeed's estimators. In
    fp32 the engine still keeps its flat fp32 partition next to the model's fp32 weights.
    """
    low = 2 if precision in _MIXED else 4
    return StateLayout(
        param_bytes=low,
        grad_bytes=low,
        partition_bytes=4 + 4 + OPTIMIZER_STATE_BYTES[optimizer],
    )


@dataclass(frozen=True)
class ZeroStateBytes:
    """Model-state bytes one rank holds, on its GPU and in CPU memory."""

    weights_bytes: int
    gradients_bytes: int
    optimizer_state_bytes: int
    gathered_layer_bytes: int  # stage 3: the largest layer gathered whole, with its gradient
    cpu_bytes: int

    @property
    def gpu_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.gradients_bytes
            + self.optimizer_state_bytes
            + self.gathered_layer_bytes
        )


def check_zero(stage: int, world: int) -> None:
    if stage not in ZERO_STAGES:
        raise ValueError(f"ZeRO stage must be one of {ZERO_STAGES}, got {stage!r}")
    if world < 1:
        raise ValueError(f"world size must be >= 1, got {world!r}")


def zero_state_bytes(
    params: int,
    layout: StateLayout,
    *,
    stage: int,
    world: int,
    offload: bool = False,
    trainable_params: int | None = None,
    largest_layer_params: int = 0,
) -> ZeroStateBytes:
    """Model-state bytes per rank for ``params`` parameters at ZeRO ``stage`` on ``world``.

    ``trainable_params`` (default: all) carry gradients and optimizer state (LoRA trains a
    few). Shards are rounded down, as DeepSpeed's ``int(16 * P / N)`` is. ``offload``
    moves the optimizer partition to CPU (stages 1-3; its low-precision gradients then
    stream to CPU in buckets and are not held whole), and at stage 3 also the parameters.
    """
    check_zero(stage, world)
    trainable = params if trainable_params is None else trainable_params
    weights = params * layout.param_bytes
    grads = trainable * layout.grad_bytes
    partition = trainable * layout.partition_bytes
    if stage == 0:
        return ZeroStateBytes(weights, grads, partition, 0, 0)
    shard = partition // world
    gpu_partition, cpu = (0, shard) if offload else (shard, 0)
    if stage in (1, 2):
        gpu_grads = 0 if offload else grads
        return ZeroStateBytes(weights, gpu_grads, gpu_partition, 0, cpu)
    gathered = largest_layer_params * (layout.param_bytes + layout.grad_bytes)
    weights_shard = weights // world
    if offload:
        return ZeroStateBytes(0, 0, 0, gathered, cpu + weights_shard)
    return ZeroStateBytes(weights_shard, 0, gpu_partition, gathered, 0)


ZERO12_BUCKET_ELEMENTS = 50_000_000
"""reduce/allgather bucket of stages 1-2 (elements). DeepSpeed's default, 5e8, would hold
1 GB of bf16 gradients per bucket; 5e7 costs little bandwidth and fits small GPUs."""


def stage3_bucket_elements(hidden_size: int) -> tuple[int, int, int]:
    """(reduce bucket, prefetch bucket, persistence threshold) of ZeRO-3 in elements.

    The values the HF integration fills for ``auto`` (``hidden^2``, ``0.9 * hidden^2``,
    ``10 * hidden``): buckets sized to a layer, small tensors kept whole on every rank.
    """
    return hidden_size * hidden_size, int(0.9 * hidden_size * hidden_size), 10 * hidden_size


def communication_bytes(stage: int, hidden_size: int, element_bytes: int) -> int:
    """The engine's communication buffers per rank (not in DeepSpeed's estimators).

    Stages 1-2 with ``overlap_comm``: two reduce buckets (one fills while the other is
    reduced) and one all-gather bucket. Stage 3: a reduce and a prefetch bucket.
    """
    if stage == 0:
        return 0
    if stage in (1, 2):
        return 3 * ZERO12_BUCKET_ELEMENTS * element_bytes
    reduce, prefetch, _ = stage3_bucket_elements(hidden_size)
    return (reduce + prefetch) * element_bytes


def sharded_peak_bytes(
    peak_bytes: int,
    breakdown: dict[str, int],
    states: ZeroStateBytes,
    communication_bytes: int = 0,
) -> int:
    """A simulated single-GPU peak with its model-state parts replaced by ZeRO's.

    ``breakdown`` is the simulated peak split by category (``weights``, ``gradients``,
    ``optimizer_state``, ...); activations and temporaries are per rank already, since
    every rank runs its own micro-batch. Gradients are counted only when the simulated
    peak holds some: the peak often sits at the start of backward, before any gradient
    exists (DeepSpeed's estimators count model states without regard to the phase).
    ``communication_bytes`` are the engine's buckets.
    """
    model_states = sum(
        breakdown.get(k, 0) for k in ("weights", "weights_4bit", "adapters", "gradients",
                                      "optimizer_state")
    )  # fmt: skip
    gradients = states.gradients_bytes if breakdown.get("gradients", 0) > 0 else 0
    sharded = (
        states.weights_bytes
        + gradients
        + states.optimizer_state_bytes
        + states.gathered_layer_bytes
    )
    return peak_bytes - model_states + sharded + communication_bytes


def sharded_profile_peak_bytes(
    profile: MemoryProfile, states: ZeroStateBytes, communication_bytes: int = 0
) -> int:
    """``sharded_peak_bytes`` of every simulated phase, the largest of them.

    Sharding shrinks phases unequally (the optimizer step holds every gradient, the start
    of backward none), so the phase that peaks on one GPU need not peak per rank.
    """
    phases = profile.phase_breakdowns or {profile.peak_phase: profile.breakdown}
    return max(
        sharded_peak_bytes(sum(parts.values()), parts, states, communication_bytes)
        for parts in phases.values()
    )


def largest_layer_params(model: nn.Module) -> int:
    """Parameters of the largest single module (its own, not its children's).

    What ZeRO-3 gathers at once; DeepSpeed's ``model_to_params`` measures it the same way.
    """
    return max(
        (sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0
    )


# --------------------------------------------------------------------------------------
# DeepSpeed's published estimators, transcribed (bytes; P = total parameters,
# L = parameters of the largest layer). Kept verbatim in meaning so tests can hold
# ``zero_state_bytes`` to them; ``additional_buffer_factor`` pads the CPU side only.


def deepspeed_zero2_estimate(
    total_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int]:
    """(cpu_bytes, gpu_bytes) of ``estimate_zero2_model_states_mem_needs`` (stages 1-2):

    offload: GPU ``2 * P``, CPU ``P * max(4 * N, 16) * buffer``;
    otherwise: GPU ``4 * P + int(16 * P / N)``, CPU ``P * 4 * gpus_per_node * buffer``.
    """
    total_gpus = num_nodes * num_gpus_per_node
    if cpu_offload:
        gpu_mem = 2 * total_params
        cpu_mem = total_params * max(4 * total_gpus, 16) * additional_buffer_factor
    else:
        gpu_mem = 4 * total_params + int(16 * total_params / total_gpus)
        cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem)


def deepspeed_zero3_estimate(
    total_params: int,
    largest_layer_params: int,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    cpu_offload: bool = True,
    cpu_offload_params: bool = True,
    zero_init: bool = True,
    additional_buffer_factor: float = 1.5,
) -> tuple[int, int, int]:
    """(cpu_bytes, gpu_bytes, largest_layer_bytes) of ``estimate_zero3_model_states_mem_needs``:

    offload params + optimizer: GPU ``4 * L``; offload optimizer only: GPU
    ``4 * L + int(2 * P / N)``; no offload: GPU ``4 * L + int(18 * P / N)``.
    """
    total_gpus = num_nodes * num_gpus_per_node
    gpus_factor = 1 / num_nodes
    largest_layer_memory = 4 * largest_layer_params
    if cpu_offload:
        if cpu_offload_params:
            gpu_mem = largest_layer_memory
            per_param = (
                18 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 18 * gpus_factor)
            )
        else:
            gpu_mem = largest_layer_memory + int(2 * total_params / total_gpus)
            per_param = (
                16 * gpus_factor if zero_init else max(4 * num_gpus_per_node, 16 * gpus_factor)
            )
        cpu_mem = total_params * per_param * additional_buffer_factor
    else:
        gpu_mem = largest_layer_memory + int(18 * total_params / total_gpus)
        if zero_init:
            cpu_mem = largest_layer_params * 4 * num_gpus_per_node * additional_buffer_factor
        else:
            cpu_mem = total_params * 4 * num_gpus_per_node * additional_buffer_factor
    return int(cpu_mem), int(gpu_mem), largest_layer_memory

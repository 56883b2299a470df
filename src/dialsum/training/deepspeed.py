"""The DeepSpeed JSON of a run, derived from the resolved settings (never hand-written).

Why the engine, not the guard, accumulates under DeepSpeed: ``engine.backward`` scales the
loss by its own accumulation count and adds the gradient into the engine's (at stages 2-3
partitioned) buffers, and ``engine.step`` only steps at the boundary it counts itself. The
guard's redo of a step needs to zero a half-accumulated gradient and start over, which
those buffers do not allow. So under DeepSpeed the Trainer gets
``per_device_train_batch_size = micro_batch_size`` and ``gradient_accumulation_steps =
accumulation``, and the JSON says the same: ``train_batch_size = micro x accumulation x
world = effective_batch_size``.

Every value is concrete (no ``"auto"``), so ``ds_config.json`` in the run folder records
what really ran; the HF integration checks each one against the Trainer's arguments.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from dialsum.core.errors import UserError
from dialsum.memory.zero import ZERO12_BUCKET_ELEMENTS, stage3_bucket_elements

if TYPE_CHECKING:
    from dialsum.core.config_schema import SectionConfig
    from dialsum.training.settings import Settings

STEPS_PER_PRINT = 10**9  # DeepSpeed's own step log would duplicate the Trainer's


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def require_deepspeed(zero_stage: int, *, cuda: bool = True) -> None:
    """A clear error when ZeRO is asked for but DeepSpeed (an optional extra) is missing,
    or when there is no CUDA device for it to run on."""
    if zero_stage == 0:
        return
    if not deepspeed_available():
        raise UserError(
            f"hardware.zero_stage={zero_stage} needs DeepSpeed, which is not installed: run "
            "`uv sync --extra deepspeed` (CUDA GPUs and a CUDA toolkit needed), or set "
            "hardware.zero_stage=0 for plain data-parallel training"
        )
    if not cuda:
        raise UserError(
            f"hardware.zero_stage={zero_stage}: DeepSpeed ZeRO runs on CUDA GPUs and none is "
            "in use (no GPU, or hardware.cpu is true); set hardware.zero_stage=0"
        )


def zero_optimization(stage: int, offload: bool, hidden_size: int) -> dict[str, Any]:
    """The ``zero_optimization`` block: stage, buckets, and CPU offload when asked."""
    block: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        block |= {
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": ZERO12_BUCKET_ELEMENTS,
            "allgather_bucket_size": ZERO12_BUCKET_ELEMENTS,
        }
    elif stage == 3:
        reduce, prefetch, persistence = stage3_bucket_elements(hidden_size)
        block |= {
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": reduce,
            "stage3_prefetch_bucket_size": prefetch,
            "stage3_param_persistence_threshold": persistence,
            # save_model() then writes whole weights, loadable without DeepSpeed.
            "stage3_gather_16bit_weights_on_model_save": True,
        }
    if offload:
        block["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            block["offload_param"] = {"device": "cpu", "pin_memory": True}
    return block


def optimizer_block(
    optimizer: str, learning_rate: float, weight_decay: float
) -> dict[str, Any] | None:
    """DeepSpeed's own AdamW (its CPU Adam when offloading); None keeps the Trainer's."""
    if optimizer not in ("adamw", "adamw_foreach"):
        return None
    return {
        "type": "AdamW",
        # The Trainer's defaults (adam_beta1/2, adam_epsilon), so the check against its
        # arguments passes and the update is the one a non-DeepSpeed run makes.
        "params": {
            "lr": learning_rate,
            "betas": [0.9, 0.999],
            "eps": 1e-8,
            "weight_decay": weight_decay,
        },
    }


def build_deepspeed_config(
    *,
    zero_stage: int,
    offload: bool,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    world_size: int,
    precision: str,
    max_grad_norm: float,
    optimizer: str,
    learning_rate: float,
    weight_decay: float,
    hidden_size: int,
) -> dict[str, Any]:
    """The DeepSpeed config for one run (stage 1-3)."""
    if zero_stage not in (1, 2, 3):
        raise ValueError(f"DeepSpeed config needs zero_stage 1, 2 or 3, got {zero_stage!r}")
    config: dict[str, Any] = {
        "train_batch_size": micro_batch_size * gradient_accumulation_steps * world_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": gradient_accumulation_steps,
        "gradient_clipping": max_grad_norm,
        "bf16": {"enabled": precision in ("bf16", "pure_bf16")},
        # loss_scale 0 = dynamic loss scaling, which fp16 needs.
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0},
        "zero_optimization": zero_optimization(zero_stage, offload, hidden_size),
        "steps_per_print": STEPS_PER_PRINT,
        "wall_clock_breakdown": False,
    }
    block = optimizer_block(optimizer, learning_rate, weight_decay)
    if block is not None:
        config["optimizer"] = block
    elif offload:
        # Offloading with the Trainer's (torch) optimizer: DeepSpeed must be told to allow it.
        config["zero_force_ds_cpu_optimizer"] = False
    return config


def config_for_run(cfg: SectionConfig, settings: Settings, model_config: Any) -> dict[str, Any]:
    """``build_deepspeed_config`` for a section and its resolved ``Settings``."""
    t = cfg.training
    hidden = getattr(model_config, "d_model", None) or getattr(model_config, "hidden_size", 0)
    return build_deepspeed_config(
        zero_stage=cfg.hardware.zero_stage,
        offload=cfg.hardware.offload,
        micro_batch_size=settings.micro_batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        world_size=settings.world_size,
        precision=settings.precision,
        max_grad_norm=t.max_grad_norm,
        optimizer=settings.optimizer,
        learning_rate=t.learning_rate,
        weight_decay=t.weight_decay,
        hidden_size=int(hidden or 0),
    )

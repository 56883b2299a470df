"""`dialsum probe`: check the plan against a real GPU, and calibrate the overheads.

For each (emulated) GPU: plan, run real training steps and one generation at the planned
settings (random weights: memory does not depend on their values), compare with the
prediction, then search the true largest micro-batch by trial. A smaller GPU is emulated
on a big one with ``torch.cuda.set_per_process_memory_fraction``: the caching allocator
then refuses to grow past that share of the device, as a smaller card would.

Calibration: the CUDA context (NVML used minus PyTorch reserved) and the fragmentation,
measured as reserved-minus-allocated over a short run of the planned micro-batch with
variable-length batches (``calibrate.measure_fragmentation``) under the allocator mode the
runs use (``allocator_env``). Both go to the calibration file the planner reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from dialsum.checks.calibrate import (
    FragmentationMeasurement,
    Measurement,
    context_bytes,
    measure_fragmentation,
    measure_generate,
    measure_train,
    write_calibration,
)
from dialsum.core.calibration_file import default_calibration_path
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import UserError
from dialsum.core.torch_build import prepare_cuda_run
from dialsum.memory.fit import largest_fitting
from dialsum.memory.overheads import default_overheads
from dialsum.memory.section import plan_for_section
from dialsum.models.architectures import load_config, model_from_config
from dialsum.speed.gpus import GPU, detect_gpu, resolve_gpu
from dialsum.trace.profile import GenerateShape, TrainOptions, TrainShape

GIB = 1024**3


def _require_cuda() -> GPU:
    gpu = detect_gpu() if torch.cuda.is_available() else None
    if gpu is None:
        raise UserError(
            "dialsum probe needs a CUDA GPU and found none. Run it on the training machine; "
            "`dialsum plan --gpu NAME` predicts memory without a GPU."
        )
    return gpu


def emulate(gpu: GPU, real: GPU) -> float:
    """Memory fraction of the real device that leaves what ``gpu`` would leave to PyTorch."""
    context = default_overheads().cuda_context_bytes
    return max(0.01, min(1.0, (gpu.total_bytes - context) / real.total_bytes))


def probe_one(cfg: SectionConfig, model, gpu: GPU, real: GPU, *, search: bool, echo) -> dict:
    """Plan for ``gpu``, emulate it on the ``real`` device, and measure the planned training
    step, the true largest micro-batch (when ``search``) and the planned generation."""
    plan = plan_for_section(cfg, model.config, gpu=gpu)
    fraction = emulate(gpu, real)
    torch.cuda.set_per_process_memory_fraction(fraction)
    train_at = _train_measurer(cfg, model, plan)
    result = {"gpu": gpu.slug, "memory_fraction": round(fraction, 4)}
    result |= _probe_planned_step(gpu, plan, train_at, echo)
    if search:
        result |= _search_largest_micro_batch(plan, train_at, echo)
    result["generation"] = _probe_generation(cfg, model, plan, echo)
    torch.cuda.set_per_process_memory_fraction(1.0)
    return result


def _train_measurer(cfg: SectionConfig, model, plan) -> Callable[[int], Measurement]:
    """``train_at(micro_batch)``: real training steps at the plan's settings and lengths."""
    options = TrainOptions(
        precision=plan.precision,  # type: ignore[arg-type]
        optimizer=plan.optimizer,  # type: ignore[arg-type]
        gradient_checkpointing=plan.gradient_checkpointing,
        lora=cfg.model.lora.enabled,
        lora_rank=cfg.model.lora.rank,
    )
    device = torch.device("cuda")

    def train_at(batch: int) -> Measurement:
        return measure_train(
            model, TrainShape(batch, plan.source_len, plan.target_len), options, device
        )

    return train_at


def _probe_planned_step(gpu: GPU, plan, train_at, echo) -> dict:
    """The planned micro-batch: predicted vs measured peak."""
    planned = train_at(plan.micro_batch_size)
    echo(
        f"{gpu.slug}: micro-batch {plan.micro_batch_size} predicted "
        f"{plan.predicted_peak_bytes / GIB:.2f} GiB, measured "
        f"{planned.max_allocated_bytes / GIB:.2f} GiB allocated / "
        f"{planned.max_reserved_bytes / GIB:.2f} GiB reserved" + (" -- OOM!" if planned.oom else "")
    )
    return {
        "planned_micro_batch": plan.micro_batch_size,
        "precision": plan.precision,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "predicted_peak_bytes": plan.predicted_peak_bytes,
        "measured": asdict(planned),
        "error_pct": _error_pct(plan.predicted_peak_bytes, planned.max_allocated_bytes),
    }


def _search_largest_micro_batch(plan, train_at, echo) -> dict:
    """The largest micro-batch that really fits, found by trial, next to the planned one."""
    cap = max(64, 4 * plan.micro_batch_size)
    true_max = largest_fitting(range(1, cap + 1), lambda b: not train_at(b).oom)
    result = {"true_largest_micro_batch": true_max}
    if true_max:
        result["planned_vs_true"] = round(plan.micro_batch_size / true_max, 3)
    echo(f"  largest micro-batch that really fits: {true_max}")
    return result


def _probe_generation(cfg: SectionConfig, model, plan, echo) -> dict:
    """The planned generation batch: predicted vs measured peak."""
    gen = measure_generate(
        model,
        GenerateShape(
            plan.generation_batch_size, plan.source_len, cfg.max_new_tokens, cfg.inference.num_beams
        ),
        torch.device("cuda"),
        plan.predict_precision,
    )
    echo(
        f"  generation batch {plan.generation_batch_size} x {cfg.inference.num_beams} beams: "
        f"predicted {plan.generate_profile.peak_bytes / GIB:.2f} GiB, measured "
        f"{gen.max_allocated_bytes / GIB:.2f} GiB" + (" -- OOM!" if gen.oom else "")
    )
    return {
        "batch": plan.generation_batch_size,
        "predicted_peak_bytes": plan.generate_profile.peak_bytes,
        "measured": asdict(gen),
        "error_pct": _error_pct(plan.generate_profile.peak_bytes, gen.max_allocated_bytes),
    }


def _error_pct(predicted: int, measured: int) -> float | None:
    return round(100 * (predicted - measured) / measured, 2) if measured else None


def probe_fragmentation(
    cfg: SectionConfig, model, real: GPU, *, echo, measure=measure_fragmentation
) -> FragmentationMeasurement:
    """Reserved minus allocated over a short run at the real GPU's plan, with batches of
    variable length (the waste the default allocator makes grows with them)."""
    plan = plan_for_section(cfg, model.config, gpu=real)
    options = TrainOptions(
        precision=plan.precision,  # type: ignore[arg-type]
        optimizer=plan.optimizer,  # type: ignore[arg-type]
        gradient_checkpointing=plan.gradient_checkpointing,
    )
    shape = TrainShape(plan.micro_batch_size, plan.source_len, plan.target_len)
    frag = measure(model, shape, options, torch.device("cuda"))
    echo(
        f"fragmentation over {len(frag.source_lengths)} steps of micro-batch "
        f"{shape.batch} with source lengths {min(frag.source_lengths)}-{shape.source_len}: "
        f"reserved {frag.max_reserved_bytes / GIB:.2f} GiB for "
        f"{frag.max_allocated_bytes / GIB:.2f} GiB allocated ({100 * frag.fraction:.1f}%)"
        + (" -- OOM, not used" if frag.oom else "")
    )
    return frag


def run_probe(
    cfg: SectionConfig,
    *,
    emulate_gpus: list[str] | None = None,
    search: bool = True,
    calibration: Path | None = None,
    echo=print,
) -> dict:
    # The allocator setting must be in place before CUDA starts (detecting the GPU starts it).
    allocator = prepare_cuda_run(echo) if torch.cuda.is_available() else None
    real = _require_cuda()
    model = model_from_config(load_config(cfg.model.name), device="cuda")
    context = context_bytes()
    gpus = [resolve_gpu(s) for s in emulate_gpus] if emulate_gpus else [real]
    results = [probe_one(cfg, model, g, real, search=search, echo=echo) for g in gpus]
    frag = probe_fragmentation(cfg, model, real, echo=echo)
    defaults = default_overheads()
    path = calibration or default_calibration_path()
    write_calibration(
        path,
        gpu=real.slug,
        cuda_context_bytes=context if context is not None else defaults.cuda_context_bytes,
        fragmentation_fraction=defaults.fragmentation_fraction if frag.oom else frag.fraction,
        allocator=allocator.mode if allocator is not None else defaults.allocator,
        extra={
            "section": cfg.name,
            "model": cfg.model.name,
            "results": results,
            "fragmentation": asdict(frag) | {"fraction": frag.fraction},
        },
    )
    echo(f"calibration written to {path}")
    from dialsum.checks.step_probe import probe_step_time  # the time model's efficiency

    step_time = probe_step_time(cfg, model, real, path, echo=echo)
    return {
        "device": real.slug,
        "results": results,
        "calibration": str(path),
        "step_time": step_time,
    }

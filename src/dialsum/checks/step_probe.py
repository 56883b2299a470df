"""The probe's step time: the planned step timed on this machine, and the calibration.

- ``measure_step_seconds``: optimizer steps of the shared training step
  (``step.train_step.step_forward_backward`` + ``build_optimizer``) on random full-length
  rows, for ``dialsum probe`` on the GPU (the plan's micro-batch, accumulation, precision).
- ``calibrate_step_time``: the efficiency that makes the prediction match a measured step,
  written to the calibration file (``speed.step_time.record_efficiency``): later plans on
  this GPU use it and are no longer marked *estimated*.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dialsum.speed.device_specs import spec_for
from dialsum.speed.step_time import (
    StepTime,
    achieved_step_efficiency,
    matmul_precision,
    record_efficiency,
    step_time_of,
)
from dialsum.training.step_clock import _sync

_AMP = {"bf16": torch.bfloat16, "fp16": torch.float16}


def random_rows(vocab: int, rows: int, source_len: int, target_len: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (rows, source_len), generator=g)
    labels = torch.randint(4, vocab, (rows, target_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
        "decoder_input_ids": torch.cat([torch.zeros_like(labels[:, :1]), labels[:, :-1]], dim=1).to(
            device
        ),
    }


def measure_step_seconds(
    model: torch.nn.Module,
    *,
    micro: int,
    accumulation: int,
    source_len: int,
    target_len: int,
    precision: str = "fp32",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = False,
    device: torch.device | str = "cpu",
    steps: int = 3,
    warmup: int = 1,
) -> float:
    """Median seconds of ``steps`` optimizer steps after ``warmup`` ones, run as the
    trainer runs them (shared step, token-sum loss, the planned optimizer, autocast)."""
    from dialsum.checks.calibrate import set_checkpointing
    from dialsum.step.train_step import build_optimizer, step_forward_backward

    device = torch.device(device)
    set_checkpointing(model, gradient_checkpointing)
    model.train()
    opt = build_optimizer(model, optimizer, lr=1e-5)
    batch = random_rows(
        model.config.vocab_size, micro * accumulation, source_len, target_len, device
    )
    amp = _AMP.get(matmul_precision(precision)) if precision != "pure_bf16" else None

    def context():
        if amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp)

    seconds = []
    for i in range(warmup + steps):
        _sync()
        started = time.perf_counter()
        step_forward_backward(model, batch, micro, float(micro * accumulation), context=context)
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync()
        if i >= warmup:
            seconds.append(time.perf_counter() - started)
    del opt
    model.zero_grad(set_to_none=True)
    return statistics.median(seconds)


@dataclass(frozen=True)
class Calibration:
    """A measured step against the prediction, before and after calibration."""

    measured_s: float
    before: StepTime
    after: StepTime
    efficiency: float


def calibrate_step_time(plan, measured_s: float, path: Path | None) -> Calibration | None:
    """Achieved efficiency of ``plan``'s step from ``measured_s``; written to ``path`` (the
    calibration file) unless None. None when the plan has no FLOPs or no device speeds."""
    spec = spec_for(plan.gpu)
    if spec is None or plan.timing is None:
        return None
    profile, accumulation = plan.train_profile, plan.gradient_accumulation_steps
    precision = matmul_precision(plan.precision)
    before = plan.timing.step or step_time_of(profile, accumulation, spec, precision)
    efficiency = achieved_step_efficiency(profile, accumulation, spec, precision, measured_s)
    after = step_time_of(profile, accumulation, spec, precision, efficiency, calibrated=True)
    if path is not None:
        record_efficiency(Path(path), spec.slug, precision, efficiency)
    return Calibration(measured_s, before, after, efficiency)


def probe_step_time(cfg, model, gpu, path: Path, echo=print, device: str = "cuda") -> dict | None:
    """``dialsum probe``: time the planned step on this GPU, print it against the
    prediction and write the achieved efficiency to the calibration file at ``path``
    (``device="cpu"`` with ``gpu = cpu_device()`` runs the same path on a CPU)."""
    from dialsum.memory.section import plan_for_section

    plan = plan_for_section(cfg, model.config, gpu=gpu)
    if plan.timing is None or plan.timing.step is None or not plan.fits:
        return None
    seconds = measure_step_seconds(
        model,
        micro=plan.micro_batch_size,
        accumulation=plan.gradient_accumulation_steps,
        source_len=plan.source_len,
        target_len=plan.target_len,
        precision=plan.precision,
        optimizer=plan.optimizer,
        gradient_checkpointing=plan.gradient_checkpointing,
        device=device,
    )
    calibration = calibrate_step_time(plan, seconds, path)
    if calibration is None:
        return None
    before = calibration.before
    echo(
        f"step time at the plan (micro-batch {plan.micro_batch_size} x "
        f"{plan.gradient_accumulation_steps}, {plan.precision}): measured {seconds:.4f} s, "
        f"predicted {before.seconds:.4f} s ({'calibrated' if before.calibrated else 'estimated'}"
        f", efficiency {before.efficiency:.1%}) -> achieved {calibration.efficiency:.1%} of "
        f"the {before.precision} peak, written to {path}"
    )
    return {
        "measured_s": seconds,
        "predicted_s": before.seconds,
        "predicted_efficiency": before.efficiency,
        "achieved_efficiency": calibration.efficiency,
        "matmul_precision": before.precision,
    }

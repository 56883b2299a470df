"""Measurements on a real device: the ground truth the simulator is checked against.

Used by ``dialsum probe`` (writes a calibration file the planner then uses) and by
``bench/gpu_validate.py`` (predicted vs measured for the real architectures). Everything
here runs real kernels; on a CPU the functions still run (for tests) but only CUDA
devices report allocator peaks.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dialsum.memory.guard import is_oom
from dialsum.memory.profile import GenerateShape, TrainOptions, TrainShape

_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Measurement:
    max_allocated_bytes: int
    max_reserved_bytes: int
    seconds: float
    oom: bool = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peaks(device: torch.device) -> tuple[int, int]:
    if device.type != "cuda":
        return 0, 0
    return int(torch.cuda.max_memory_allocated(device)), int(torch.cuda.max_memory_reserved(device))


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn activation (gradient) checkpointing on/off with the transformers 5.x names."""
    if enabled:
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        model.activation_checkpointing_disable()


def make_optimizer(params, name: str, lr: float = 1e-4) -> torch.optim.Optimizer:
    """The optimizers the simulator models, built the same way (foreach AdamW on CUDA)."""
    params = [p for p in params if p.requires_grad]
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, foreach=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False)
    if name == "adamw8bit":
        import bitsandbytes as bnb  # optional: only on CUDA machines that install it

        return bnb.optim.AdamW8bit(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def random_batch(
    vocab_size: int, shape: TrainShape, device: torch.device, pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """Full-length random rows: [batch, source_len] inputs, [batch, target_len] labels."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab_size, (shape.batch, shape.source_len), generator=g)
    labels = torch.randint(4, vocab_size, (shape.batch, shape.target_len), generator=g)
    return {
        "input_ids": ids.to(device),
        "attention_mask": torch.ones_like(ids).to(device),
        "labels": labels.to(device),
    }


def measure_train(
    model: nn.Module,
    shape: TrainShape,
    options: TrainOptions,
    device: torch.device,
    steps: int = 2,
) -> Measurement:
    """Peak memory of ``steps`` full training steps (forward, backward, optimizer step).

    Two steps, like the simulator: the first creates the optimizer state, the second runs
    with it in memory. An OOM is caught and reported as ``oom=True``.
    """
    set_checkpointing(model, options.gradient_checkpointing)
    model.train()
    optimizer = make_optimizer(model.parameters(), options.optimizer)
    scaler = torch.amp.GradScaler(device.type) if options.precision == "fp16" else None
    batch = random_batch(model.config.vocab_size, shape, device)
    amp = _AMP_DTYPES.get(options.precision)
    _reset(device)
    started = time.perf_counter()
    oom = False
    try:
        for _ in range(steps):
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = model(**batch).loss
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del loss
        _sync(device)
    except Exception as exc:  # noqa: BLE001 - only OOMs are expected here
        if not is_oom(exc):
            raise
        oom = True
    seconds = time.perf_counter() - started
    allocated, reserved = _peaks(device)
    del optimizer, batch
    model.zero_grad(set_to_none=True)
    _reset(device)
    return Measurement(allocated, reserved, seconds, oom)


def measure_generate(
    model: nn.Module, shape: GenerateShape, device: torch.device, precision: str = "fp32"
) -> Measurement:
    """Peak memory of one beam-search ``generate()`` that runs to ``max_new_tokens``."""
    model.eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (shape.batch, shape.source_len), generator=g)
    ids = ids.to(device)
    amp = _AMP_DTYPES.get(precision)
    _reset(device)
    started = time.perf_counter()
    oom = False
    try:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=amp, enabled=amp is not None),
        ):
            # min_new_tokens = max_new_tokens: every beam runs to the longest output.
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                num_beams=shape.num_beams,
                max_new_tokens=shape.max_new_tokens,
                min_new_tokens=shape.max_new_tokens,
                early_stopping=False,
            )
        _sync(device)
    except Exception as exc:  # noqa: BLE001
        if not is_oom(exc):
            raise
        oom = True
    seconds = time.perf_counter() - started
    allocated, reserved = _peaks(device)
    _reset(device)
    return Measurement(allocated, reserved, seconds, oom)


def context_bytes(device_index: int = 0) -> int | None:
    """Device memory used outside PyTorch's allocator (CUDA context, libraries), via NVML.

    NVML ``used`` counts every process; run this where dialsum is the only GPU process.
    """
    from dialsum.monitor import nvml_devices

    devices = nvml_devices()
    if not devices or not torch.cuda.is_available():
        return None
    used = devices[device_index].used_bytes
    return max(0, used - int(torch.cuda.memory_reserved(device_index)))


def write_calibration(
    path: Path,
    *,
    gpu: str,
    cuda_context_bytes: int,
    fragmentation_fraction: float,
    library_workspace_bytes: int | None = None,
    extra: dict | None = None,
) -> None:
    """The file ``overheads.load_calibration`` reads (atomic write)."""
    from dialsum.runs import write_json_atomic

    data = {
        "gpu": gpu,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cuda_context_bytes": int(cuda_context_bytes),
        "fragmentation_fraction": round(float(fragmentation_fraction), 4),
    }
    if library_workspace_bytes is not None:
        data["library_workspace_bytes"] = int(library_workspace_bytes)
    if extra:
        data["measurements"] = extra
    write_json_atomic(Path(path), data)

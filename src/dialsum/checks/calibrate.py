"""Measurements on a real device: the ground truth the simulator is checked against.

Used by ``dialsum probe`` (writes a calibration file the planner then uses). The training
steps are the run's own (``step.step_forward_backward`` and ``step.build_optimizer``).
Everything here runs real kernels; on a CPU the functions still run (for tests) but only
CUDA devices report allocator peaks.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dialsum.step.train_step import build_optimizer, label_token_count, step_forward_backward
from dialsum.trace.profile import GenerateShape, TrainOptions, TrainShape
from dialsum.training.oom_guard import is_oom

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


def random_batch(
    model: nn.Module, shape: TrainShape, device: torch.device, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Full-length random rows as the collator delivers them: [batch, source_len] inputs,
    [batch, target_len] labels and the decoder inputs shifted from them."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(4, vocab, (shape.batch, shape.source_len), generator=g)
    labels = torch.randint(4, vocab, (shape.batch, shape.target_len), generator=g)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    batch["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
    return {k: v.to(device) for k, v in batch.items()}


def _train_steps(
    model: nn.Module,
    batches,
    options: TrainOptions,
    device: torch.device,
) -> bool:
    """The run's training step on each batch (one micro-batch per step) and its optimizer;
    False when one raised an OOM (caught)."""
    set_checkpointing(model, options.gradient_checkpointing)
    model.train()
    optimizer = build_optimizer(model, options.optimizer, lr=1e-5)
    amp = _AMP_DTYPES.get(options.precision)
    try:
        for batch in batches:
            rows = int(batch["labels"].shape[0])

            def autocast(amp=amp):
                return torch.autocast(device.type, dtype=amp, enabled=amp is not None)

            # Loss scaling (fp16) changes values, not memory: the plain backward is kept.
            step_forward_backward(
                model, batch, rows, float(label_token_count(batch["labels"])), context=autocast
            )
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        return True
    except Exception as exc:  # noqa: BLE001 - only OOMs are expected here
        if not is_oom(exc):
            raise
        return False
    finally:
        del optimizer
        model.zero_grad(set_to_none=True)


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
    batch = random_batch(model, shape, device)
    _reset(device)
    started = time.perf_counter()
    ok = _train_steps(model, [batch] * steps, options, device)
    seconds = time.perf_counter() - started
    allocated, reserved = _peaks(device)
    del batch
    _reset(device)
    return Measurement(allocated, reserved, seconds, not ok)


def fragmentation_fraction(max_allocated_bytes: int, max_reserved_bytes: int) -> float:
    """Reserved minus allocated at the peaks, as a fraction of the allocated peak (what
    ``overheads.required_bytes`` adds to a predicted peak); 0 when nothing was allocated,
    at most 0.99 (the calibration file's limit)."""
    if max_allocated_bytes <= 0:
        return 0.0
    waste = max(0, max_reserved_bytes - max_allocated_bytes) / max_allocated_bytes
    return round(min(waste, 0.99), 4)


def variable_lengths(steps: int, longest: int, seed: int = 0) -> list[int]:
    """``steps`` lengths drawn between a quarter of ``longest`` and ``longest``, in random
    order, the longest among them: batches of ever new sizes, as real data gives."""
    g = torch.Generator().manual_seed(seed)
    low = max(1, longest // 4)
    lengths = torch.randint(low, longest + 1, (steps,), generator=g).tolist()
    lengths[int(torch.randint(0, steps, (1,), generator=g))] = longest
    return [int(n) for n in lengths]


@dataclass
class FragmentationMeasurement:
    max_allocated_bytes: int
    max_reserved_bytes: int
    source_lengths: list[int]
    target_lengths: list[int]
    oom: bool = False

    @property
    def fraction(self) -> float:
        return fragmentation_fraction(self.max_allocated_bytes, self.max_reserved_bytes)


def measure_fragmentation(
    model: nn.Module,
    shape: TrainShape,
    options: TrainOptions,
    device: torch.device,
    steps: int = 8,
    seed: int = 0,
) -> FragmentationMeasurement:
    """Reserved vs allocated peaks over ``steps`` training steps whose batches have
    ``shape.batch`` rows and variable source/target lengths up to ``shape``'s."""
    sources = variable_lengths(steps, shape.source_len, seed)
    targets = variable_lengths(steps, shape.target_len, seed + 1)
    batches = (
        random_batch(model, TrainShape(shape.batch, src, tgt), device, seed=i)
        for i, (src, tgt) in enumerate(zip(sources, targets, strict=True))
    )
    _reset(device)
    ok = _train_steps(model, batches, options, device)
    allocated, reserved = _peaks(device)
    _reset(device)
    return FragmentationMeasurement(allocated, reserved, sources, targets, oom=not ok)


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
    from dialsum.training.monitor import NvmlDevice

    if not torch.cuda.is_available():
        return None
    nvml = NvmlDevice.for_cuda_device(device_index)  # by PCI bus id: NVML's order differs
    if nvml is None:
        return None
    try:
        used = nvml.memory()[0]
    finally:
        nvml.close()
    return max(0, used - int(torch.cuda.memory_reserved(device_index)))


def write_calibration(
    path: Path,
    *,
    gpu: str,
    cuda_context_bytes: int,
    fragmentation_fraction: float,
    allocator: str | None = None,
    library_workspace_bytes: int | None = None,
    extra: dict | None = None,
) -> None:
    """The file ``overheads.load_calibration`` reads (atomic write)."""
    from dialsum.core.runs import write_json_atomic

    data = {
        "gpu": gpu,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "cuda_context_bytes": int(cuda_context_bytes),
        "fragmentation_fraction": round(float(fragmentation_fraction), 4),
    }
    if allocator is not None:
        data["allocator"] = allocator  # the mode the fragmentation was measured under
    if library_workspace_bytes is not None:
        data["library_workspace_bytes"] = int(library_workspace_bytes)
    if extra:
        data["measurements"] = extra
    write_json_atomic(Path(path), data)

"""What a GPU really gives a training step: the memory beyond the simulated tensors.

The simulator predicts the bytes of live tensors. A real run needs more:

- the CUDA context and loaded kernels, outside PyTorch's allocator (``nvidia-smi`` shows
  them, ``torch.cuda.memory_reserved`` does not);
- library workspaces (cuBLAS, cuBLASLt) that *are* allocated through PyTorch;
- fragmentation: the caching allocator reserves more than it hands out;
- a safety margin the user keeps for other processes and surprises.

``usable_bytes`` is what is left for PyTorch's allocator; ``required_bytes`` is what a
predicted peak needs from it. A plan fits when required <= usable. The defaults are
educated guesses; a calibration file measured on the real device replaces them.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

from dialsum.core.calibration_file import CALIBRATION_ENV, default_calibration_path
from dialsum.core.errors import ConfigError
from dialsum.speed.gpus import GPU

_MIB = 2**20

"""Environment variable naming the calibration file (overrides the default location)."""


@dataclass(frozen=True)
class Overheads:
    """Memory outside the simulated tensors, and the safety margin.

    - ``cuda_context_bytes`` (default 768 MiB): the CUDA context with lazily loaded
      kernels lives outside PyTorch's allocator. With CUDA 12 and lazy module loading it is
      about 400-600 MiB on A100/H100 right after ``torch.cuda.init()``; the kernels a
      training step loads later (matmuls, AMP casts, fused optimizer, attention) add
      100-300 MiB more. We take the upper end because an OOM costs more than a smaller batch.
    - ``library_workspace_bytes`` (default 64 MiB): cuBLAS and cuBLASLt workspaces, which
      PyTorch allocates through its caching allocator (up to 32 MiB per handle on Hopper,
      about 8 MiB elsewhere), so they count against usable memory but are not in the trace.
    - ``fragmentation_fraction``: reserved minus allocated at the peak, as a fraction of
      the predicted peak. It depends on the allocator mode (``allocator``), see
      ``ALLOCATOR_FRAGMENTATION``; the dataclass default (0.08) is the default allocator's.
    - ``margin_fraction`` (default 0.05): a safety margin as a fraction of the GPU's total
      memory, for other processes on a shared server and for prediction error.

    ``source`` says where the numbers came from ("defaults" or the calibration file);
    ``gpu`` and ``measured_at`` are copied from a calibration file; ``allocator`` is the
    allocator mode the fragmentation applies to ("default" or "expandable_segments").
    """

    cuda_context_bytes: int = 768 * _MIB
    library_workspace_bytes: int = 64 * _MIB
    fragmentation_fraction: float = 0.08
    margin_fraction: float = 0.05
    source: str = "defaults"
    gpu: str | None = None
    measured_at: str | None = None
    allocator: str = "default"


ALLOCATOR_FRAGMENTATION: dict[str, float] = {
    "expandable_segments": 0.03,
    "default": 0.08,
}
"""Fragmentation allowance per allocator mode (``allocator_env``), before calibration.

- ``expandable_segments`` (0.03): what dialsum runs use unless you set the allocator
  yourself. A segment grows and shrinks in place, so freed memory is reused whatever the
  next tensor's size; what stays is page and block rounding, a few percent.
- ``default`` (0.08): the classic caching allocator. Freed blocks of one size cannot
  always serve the next size; 5-10 % is typical with fixed-size batches, variable-length
  batches can leave far more (public reports up to ~50 %).

``dialsum probe`` measures reserved-minus-allocated over a short run with
variable-length batches on your GPU and writes it to the calibration file, which then
replaces the allowance of the mode it was measured under.
"""


def overheads_for_allocator(mode: str) -> Overheads:
    """The documented defaults with the fragmentation allowance of allocator ``mode``."""
    if mode not in ALLOCATOR_FRAGMENTATION:
        raise ValueError(f"unknown allocator mode {mode!r}; use {sorted(ALLOCATOR_FRAGMENTATION)}")
    return Overheads(fragmentation_fraction=ALLOCATOR_FRAGMENTATION[mode], allocator=mode)


def _ceil_times(value: int, fraction: float) -> int:
    # Exact decimal arithmetic: 1000 * 0.08 must be 80, not 80.00000000000001 rounded up to 81.
    return math.ceil(value * Fraction(str(fraction)))


def margin_bytes(gpu: GPU, overheads: Overheads) -> int:
    """The safety margin in bytes (rounded up)."""
    return _ceil_times(gpu.total_bytes, overheads.margin_fraction)


def usable_bytes(gpu: GPU, overheads: Overheads) -> int:
    """Bytes PyTorch's allocator may reserve: total - CUDA context - margin (never negative)."""
    usable = gpu.total_bytes - overheads.cuda_context_bytes - margin_bytes(gpu, overheads)
    return max(0, usable)


def required_bytes(peak_bytes: int, overheads: Overheads) -> int:
    """Bytes a predicted tensor peak needs from the allocator: peak + fragmentation + workspace."""
    return _ceil_times(peak_bytes, 1 + overheads.fragmentation_fraction) + (
        overheads.library_workspace_bytes
    )


_BYTE_KEYS = ("cuda_context_bytes", "library_workspace_bytes")
_FRACTION_KEYS = ("fragmentation_fraction", "margin_fraction")
_TEXT_KEYS = ("gpu", "measured_at", "allocator")


def load_calibration(path: str | Path, base: Overheads | None = None) -> Overheads:
    """Overheads measured on a real device, from the JSON file a calibration probe writes.

    Keys: ``cuda_context_bytes``, ``library_workspace_bytes`` (non-negative integers),
    ``fragmentation_fraction``, ``margin_fraction`` (numbers in [0, 1)), ``gpu``,
    ``measured_at``, ``allocator`` (text). Missing keys keep their value in ``base``
    (default: ``Overheads()``); other keys are ignored so a
    newer probe can add fields, except a near-miss of a known key (a typo), which is an
    error. Any problem raises ``ConfigError`` naming the file and the key.
    """
    file = Path(path)
    where = f"calibration file {str(file)!r}"
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{where} does not exist; run the calibration probe on the GPU, or unset "
            f"{CALIBRATION_ENV} to use the default overheads"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{where} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{where} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix it or run the calibration probe again"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must hold a JSON object, not {type(data).__name__}")
    return replace(_overheads_from_dict(data, where, base or Overheads()), source=str(file))


def _overheads_from_dict(data: dict, where: str, base: Overheads) -> Overheads:
    known = _BYTE_KEYS + _FRACTION_KEYS + _TEXT_KEYS
    for key in data:
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"{where}: unknown key {key!r}; did you mean {close[0]!r}?")
    values: dict = {}
    for key in _BYTE_KEYS:
        if key in data:
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    f"{where}: key {key!r} must be a non-negative integer (bytes), got {value!r}"
                )
            values[key] = value
    for key in _FRACTION_KEYS:
        if key in data:
            value = data[key]
            valid = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not valid or not 0 <= value < 1:
                raise ConfigError(
                    f"{where}: key {key!r} must be a number from 0 up to (not including) 1, "
                    f"got {value!r}"
                )
            values[key] = float(value)
    for key in _TEXT_KEYS:
        if key in data and data[key] is not None:
            if not isinstance(data[key], str):
                raise ConfigError(f"{where}: key {key!r} must be text, got {data[key]!r}")
            values[key] = data[key]
    if values.get("allocator", base.allocator) not in ALLOCATOR_FRAGMENTATION:
        raise ConfigError(
            f"{where}: key 'allocator' must be one of {sorted(ALLOCATOR_FRAGMENTATION)}, "
            f"got {values['allocator']!r}"
        )
    return replace(base, **values)


def default_overheads() -> Overheads:
    """Calibrated overheads when a calibration file exists, else the documented defaults,
    with the fragmentation allowance of the allocator mode a run here uses
    (``allocator_env.planned_allocator_mode``: expandable segments unless you set one).

    A file named by ``$DIALSUM_CALIBRATION`` must exist (the user asked for it); the default
    location may be absent. A fragmentation measured under the other allocator mode does
    not apply: the mode's allowance is kept (a file without ``allocator`` applies as is).
    """
    from dialsum.core.allocator_env import planned_allocator_mode

    base = overheads_for_allocator(planned_allocator_mode())
    path = default_calibration_path()
    if not (os.environ.get(CALIBRATION_ENV) or path.is_file()):
        return base
    calibrated = load_calibration(path, base)
    if calibrated.allocator != base.allocator:
        return replace(
            calibrated,
            fragmentation_fraction=base.fragmentation_fraction,
            allocator=base.allocator,
        )
    return calibrated

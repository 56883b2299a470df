"""PyTorch's CUDA allocator settings for dialsum runs: expandable segments unless you chose.

The caching allocator keeps freed blocks for reuse. With variable-length batches the
blocks come in ever new sizes, a freed block is often too small for the next request, and
memory reserved from the device but not allocated to tensors grows (public reports range
from ~2 % to ~50 % of the peak). ``expandable_segments:True`` lets a segment grow and
shrink in place (virtual memory mapped page by page), which removes most of that waste.

``train``, ``predict`` and ``probe`` therefore set ``PYTORCH_CUDA_ALLOC_CONF=
expandable_segments:True`` unless you set ``PYTORCH_CUDA_ALLOC_CONF`` or
``PYTORCH_ALLOC_CONF`` yourself (yours is kept as it is). The allocator reads the variable
once, when CUDA starts in the process, so this must happen before anything touches CUDA;
``configure_allocator`` says when it is too late. The planner's fragmentation allowance
depends on the mode (``memory.overheads.ALLOCATOR_FRAGMENTATION``), read from the same
variables by ``planned_allocator_mode``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Literal

AllocatorMode = Literal["expandable_segments", "default"]

ALLOC_CONF_ENV = "PYTORCH_CUDA_ALLOC_CONF"
GENERIC_ALLOC_CONF_ENV = "PYTORCH_ALLOC_CONF"
"""Newer torch also reads this name (for every accelerator) and prefers it."""

EXPANDABLE_SEGMENTS = "expandable_segments:True"

SET_BY_DIALSUM_ENV = "DIALSUM_SET_ALLOC_CONF"
"""Marks the allocator setting as ours, so a later call (or a child process) still knows
the user did not choose it."""


def user_alloc_conf(environ: MutableMapping[str, str] | None = None) -> tuple[str, str] | None:
    """(variable, value) of an allocator setting the user made; None when unset or ours."""
    environ = os.environ if environ is None else environ
    generic = environ.get(GENERIC_ALLOC_CONF_ENV)
    if generic:  # torch prefers the generic name
        return GENERIC_ALLOC_CONF_ENV, generic
    value = environ.get(ALLOC_CONF_ENV)
    if not value or (environ.get(SET_BY_DIALSUM_ENV) == "1" and value == EXPANDABLE_SEGMENTS):
        return None
    return ALLOC_CONF_ENV, value


def mode_of(conf: str) -> AllocatorMode:
    """The mode a setting such as ``"expandable_segments:True,max_split_size_mb:128"``
    selects: expandable segments only when the option is on; anything else (including
    ``backend:cudaMallocAsync``) gets the default allowance."""
    for option in conf.split(","):
        key, _, value = option.partition(":")
        if key.strip() == "expandable_segments" and value.strip().lower() == "true":
            return "expandable_segments"
    return "default"


def planned_allocator_mode(environ: MutableMapping[str, str] | None = None) -> AllocatorMode:
    """The mode a dialsum run here will use: the user's setting, else expandable segments
    (what ``train``/``predict`` set)."""
    user = user_alloc_conf(environ)
    return mode_of(user[1]) if user else "expandable_segments"


@dataclass(frozen=True)
class AllocatorSetting:
    mode: AllocatorMode
    variable: str
    value: str
    source: str  # "dialsum", "user", or "too-late" (CUDA started before it could be set)

    def describe(self) -> str:
        """One line for the run log."""
        if self.source == "user":
            return f"CUDA allocator: {self.variable}={self.value} (set by you; kept)"
        if self.source == "too-late":
            return (
                f"CUDA allocator: default (CUDA was started before dialsum could set "
                f"{ALLOC_CONF_ENV}={EXPANDABLE_SEGMENTS}; set it in the environment to use it)"
            )
        return (
            f"CUDA allocator: {ALLOC_CONF_ENV}={EXPANDABLE_SEGMENTS} (set by dialsum before "
            "CUDA started: less fragmentation with variable-length batches; set "
            f"{ALLOC_CONF_ENV} yourself to choose otherwise)"
        )

    def to_json(self) -> dict[str, str]:
        return {"mode": self.mode, "variable": self.variable, "value": self.value,
                "source": self.source}  # fmt: skip


def _cuda_initialized() -> bool:
    import torch

    return bool(torch.cuda.is_initialized())


def configure_allocator(
    environ: MutableMapping[str, str] | None = None,
    cuda_initialized: Callable[[], bool] = _cuda_initialized,
) -> AllocatorSetting:
    """Set expandable segments unless the user chose a setting; must run before CUDA starts.

    Returns what the process runs with; ``describe()`` is the line for the run log.
    """
    environ = os.environ if environ is None else environ
    user = user_alloc_conf(environ)
    if user is not None:
        return AllocatorSetting(mode_of(user[1]), user[0], user[1], "user")
    if environ.get(SET_BY_DIALSUM_ENV) == "1":
        # Set by an earlier call in this process (or by the parent): already in effect.
        return AllocatorSetting("expandable_segments", ALLOC_CONF_ENV, EXPANDABLE_SEGMENTS,
                                "dialsum")  # fmt: skip
    if cuda_initialized():
        return AllocatorSetting("default", ALLOC_CONF_ENV, "", "too-late")
    environ[ALLOC_CONF_ENV] = EXPANDABLE_SEGMENTS
    environ[SET_BY_DIALSUM_ENV] = "1"
    return AllocatorSetting("expandable_segments", ALLOC_CONF_ENV, EXPANDABLE_SEGMENTS, "dialsum")

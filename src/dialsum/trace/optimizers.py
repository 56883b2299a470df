"""What the simulator needs about optimizers beyond the trainer's own construction.

The simulated step builds its optimizer with the trainer's ``step.train_step.build_optimizer``
(parameter groups, fused AdamW, foreach AdamW, Adafactor, SGD), so those are traced as they
run. Two things are left here:

- ``AdamW8bitModel``: bitsandbytes runs on CUDA only, so this allocates what
  ``bnb.optim.AdamW8bit`` keeps, as real (fake) tensors: two uint8 states per parameter
  (2 bytes/param) plus one fp32 absmax per 2048-element block for each state
  (``2 * ceil(numel / 2048) * 4`` bytes). Tensors under 4096 elements keep fp32 states, as
  bitsandbytes' ``min_8bit_size`` does. Its update kernel works in place: no temporaries.
- ``state_tensors``: every tensor an optimizer holds, to count its state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

LEARNING_RATE = 1e-4
BNB_BLOCK_ELEMENTS = 2048  # elements per absmax block of a blockwise-quantised state
BNB_MIN_8BIT_ELEMENTS = 4096  # smaller tensors keep fp32 states


def bnb_state_bytes(numel: int) -> list[int]:
    """Bytes of each tensor AdamW8bit keeps for a parameter of ``numel`` elements."""
    if numel < BNB_MIN_8BIT_ELEMENTS:
        return [numel * 4, numel * 4]
    absmax_bytes = math.ceil(numel / BNB_BLOCK_ELEMENTS) * 4
    return [numel, numel, absmax_bytes, absmax_bytes]


class AdamW8bitModel(torch.optim.Optimizer):
    """Memory model of ``bnb.optim.AdamW8bit``: its state tensors, an in-place update."""

    def __init__(self, params: Sequence[nn.Parameter], lr: float = LEARNING_RATE) -> None:
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ARG002 - Optimizer API
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["tensors"] = [
                        torch.zeros(nbytes, dtype=torch.uint8, device=param.device)
                        for nbytes in bnb_state_bytes(param.numel())
                    ]
                param.add_(param.grad, alpha=-group["lr"])
        return None


def state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor held in ``optimizer.state`` (nested lists included)."""
    found: list[torch.Tensor] = []
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found

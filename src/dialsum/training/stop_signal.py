"""SIGTERM (Slurm, Kubernetes, ``kill``, preemptible cloud GPUs): save, say so, exit 143.

The default action of SIGTERM kills the process where it stands: up to ``save_steps`` of
work lost and the run lock left behind. ``StopOnSignal`` turns it into a request: the
handler only sets a flag; at the next step boundary the callback asks the Trainer to save a
checkpoint and stop (no evaluation at that boundary), and the recipe then raises
``RunStopped`` instead of evaluating and writing ``best/``. The lock is released on the way
out (``run_training``'s ``finally``) and the CLI prints one line and exits 143 (128 +
SIGTERM, what the launcher would have seen anyway).

Under DDP every rank runs the callback at the same step boundaries; the flag is agreed
with a max over ranks there, so all ranks save and stop at the same step even when the
signal reached them a step apart.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

import torch
from transformers import TrainerCallback

from dialsum.core.errors import RunStopped


class StopOnSignal(TrainerCallback):
    """Flag on SIGTERM; save and stop at the next step boundary (module docstring)."""

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - the signal API
        self.requested = True

    @contextlib.contextmanager
    def installed(self):
        """The handler for the duration of the block (main thread only: Python's rule)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGTERM, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _agreed(self) -> bool:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.requested
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        flag = torch.tensor([int(self.requested)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def on_step_end(self, args, state, control, **kwargs):
        if self._agreed():
            self.requested = True
            self.stopped_at = int(state.global_step)
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True
        return control

    def raise_if_requested(self, run: Path, section: str, checkpoint: Path | None) -> None:
        """``RunStopped`` with the one line to print, when a SIGTERM came."""
        if not self.requested:
            return
        resume = f"`dialsum train -s {section} --resume {run}`"
        if self.stopped_at is None:
            raise RunStopped(f"stopped by SIGTERM before the first step; start again with {resume}")
        saved = f"saved {checkpoint}" if checkpoint is not None else "nothing saved"
        raise RunStopped(
            f"stopped by SIGTERM at step {self.stopped_at}: {saved}; continue with {resume}"
        )

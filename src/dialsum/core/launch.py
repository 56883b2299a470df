"""What the launcher (torchrun, accelerate, deepspeed) told this process, from its environment.

Read before any process group exists, and by code below ``training`` (the supported-GPU
check picks the GPU of this process by its local rank). Process-group state lives in
``training.distributed``.
"""

from __future__ import annotations

import os


def launched_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """This process's GPU index on its node (``LOCAL_RANK``; 0 without a launcher)."""
    return int(os.environ.get("LOCAL_RANK", "0"))

"""Where this machine's calibration lives: one JSON file shared by the memory overheads
(``memory.overheads``) and the measured matmul efficiencies (``speed.step_time``)."""

from __future__ import annotations

import os
from pathlib import Path

CALIBRATION_ENV = "DIALSUM_CALIBRATION"


def default_calibration_path() -> Path:
    """``$DIALSUM_CALIBRATION`` if set, else ``~/.cache/dialsum/calibration.json``."""
    override = os.environ.get(CALIBRATION_ENV)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "dialsum" / "calibration.json"

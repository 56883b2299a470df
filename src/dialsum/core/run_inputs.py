"""The data files a run trains on, fingerprinted, so ``--resume`` continues on the same rows.

A resumed run reproduces the uninterrupted run bit for bit only on the same data: the
Trainer skips the batches already trained by position, so a training CSV edited, re-sorted
or regenerated between the start and the resume would silently continue on other rows (or
fail deep inside the Trainer when the row count changed). ``inputs.json`` in the run folder
holds each file's size and SHA-256 at the start; ``--resume`` compares before anything is
written. Runs started before this file existed resume without the check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from dialsum.core.config_schema import SectionConfig

INPUTS_FILE = "inputs.json"
_CHUNK = 1 << 20


def file_fingerprint(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def training_inputs(cfg: SectionConfig) -> dict[str, dict[str, Any]]:
    """``{"data.train": fingerprint, "data.dev": fingerprint}`` of the files that exist."""
    out = {}
    for key, value in (("data.train", cfg.data.train), ("data.dev", cfg.data.dev)):
        path = Path(value)
        if path.is_file():
            out[key] = file_fingerprint(path)
    return out


def read_inputs(run: Path) -> dict[str, dict[str, Any]] | None:
    """The fingerprints saved in ``run``; ``None`` for a run that has none (older)."""
    try:
        data = json.loads((run / INPUTS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def changed_inputs(saved: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]) -> list[str]:
    """One line per data file whose content differs from the saved fingerprint."""
    lines = []
    for key, before in saved.items():
        after = now.get(key)
        if after is None:
            lines.append(f"{key} {before.get('path')}: missing now")
        elif after.get("sha256") != before.get("sha256"):
            lines.append(
                f"{key} {after['path']}: changed since the run started "
                f"({before.get('bytes')} -> {after['bytes']} bytes, SHA-256 "
                f"{str(before.get('sha256'))[:12]}... -> {after['sha256'][:12]}...)"
            )
    return lines

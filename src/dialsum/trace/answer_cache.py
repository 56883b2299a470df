"""Answers cached by the question asked (a plan, a guide section), keyed without torch.

The trace cache (``trace.cache``) keeps what a trace measured; a plan or a guide section
built from cached traces still imports torch and transformers and rebuilds meta models.
An answer is kept whole instead, under a key that is everything it depends on, all read
without importing torch: what the caller names (resolved config, device, options), the
bytes of the files read (``file_digest``, ``model_source``), the versions of the libraries
a trace runs, and the dialsum source itself (``source_digest``: any change of the code is
a new key). Entries are pickles in a folder per kind inside the trace cache folder,
written atomically; an unreadable entry is recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dialsum.core.calibration_file import default_calibration_path
from dialsum.trace.cache import default_cache_dir

ANSWER_CACHE_VERSION = "1"

# Libraries whose version can change a trace, a tokenization or the ladder (8-bit AdamW
# is offered only with bitsandbytes installed).
_LIBRARIES = ("torch", "transformers", "tokenizers", "peft", "bitsandbytes", "accelerate")

# Weights are never read by a plan; everything else in a local model folder may be.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


@functools.cache
def source_digest() -> str:
    """sha256 over dialsum's own files (code, shipped configs): a new version, a new key."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".json", ".yaml", ".yml"):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def optional_file_digest(path: str | Path | None) -> str | None:
    if not path:
        return None
    path = Path(path)
    return file_digest(path) if path.is_file() else None


def model_source(name: str, with_tokenizer: bool = False) -> str | None:
    """Digest of what the model's architecture (and, ``with_tokenizer``, its tokenizer)
    is read from; None when it comes from the hub (not cacheable)."""
    if name.startswith("tiny:"):
        return name  # built in code: the source digest covers it
    from importlib.resources import files

    shipped = files("dialsum.models") / "configs" / f"{name.replace('/', '--')}.json"
    if shipped.is_file():
        # A shipped model's tokenizer is the one its id names (from the hub's cache).
        return hashlib.sha256(shipped.read_bytes()).hexdigest()
    path = Path(name)
    if path.is_file():
        return file_digest(path)
    if not path.is_dir():
        # A hub id: with a tokenizer, it comes from the hub or its local cache.
        return None
    digest = hashlib.sha256()
    wanted = sorted(path.iterdir()) if with_tokenizer else [path / "config.json"]
    for item in wanted:
        if item.is_file() and not item.name.endswith(_WEIGHT_SUFFIXES):
            digest.update(item.name.encode())
            digest.update(file_digest(item).encode())
    return digest.hexdigest()


def plain_dict(value: Any) -> Any:
    """A (nested) dataclass as plain JSON-able values, for a key."""

    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return value

    return plain(value)


def machine_inputs() -> dict[str, Any]:
    """What every answer reads besides its question: the calibration file (overheads and
    step-time efficiencies) and the allocator settings of the environment."""
    calibration = default_calibration_path()
    return {
        "calibration": [str(calibration), optional_file_digest(calibration)],
        "environment": {k: v for k, v in os.environ.items() if k.startswith("PYTORCH_")},
    }


def answer_key(payload: dict[str, Any]) -> str:
    """sha256 of ``payload`` with the machine inputs, library versions and source digest."""
    payload = {
        **payload,
        **machine_inputs(),
        "cache_version": ANSWER_CACHE_VERSION,
        "dialsum": source_digest(),
        "versions": _versions(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def _path(kind: str, key: str) -> Path:
    return default_cache_dir() / kind / f"{key}.pkl"


def load(kind: str, key: str | None) -> Any | None:
    if key is None:
        return None
    try:
        with open(_path(kind, key), "rb") as fh:
            return pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None


def store(kind: str, key: str | None, value: Any) -> None:
    """Write atomically (temp file + rename); a read-only or full disk is not an error."""
    if key is None:
        return
    target = _path(kind, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "wb", dir=target.parent, suffix=".tmp", delete=False
        ) as fh:
            pickle.dump(value, fh, protocol=pickle.HIGHEST_PROTOCOL)
            tmp = Path(fh.name)
        tmp.replace(target)
    except OSError:
        return

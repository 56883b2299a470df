"""`dialsum plan`'s answers cached by the question asked: a warm plan without torch.

A plan whose traces are all cached still imports torch and transformers (seconds on two
cores) and rebuilds meta models to count parameters and linear FLOPs. Asked again, the
same question has the same answer, so the whole printed result is kept, keyed by
everything it depends on, all read *without* importing torch:

- the resolved section (every field, overrides applied) and the command's options;
- the device, when one is named (a detected GPU is never cached: detecting needs torch);
- the bytes of every file the plan reads: the model's ``config.json`` (shipped or in a
  local folder; a bare hub id is not cached, the hub may change), the section's training
  CSV, ``--data`` and the calibration file, and the allocator settings in the environment;
- the versions of the libraries a trace runs (torch, transformers, peft, bitsandbytes, ...);
- the dialsum source itself: any change of the code is a new key.

Tokenized lengths of a ``--data`` file are kept on their own (``lengths_for``), keyed by
the file's content: a plan for another GPU over the same data skips tokenizing it again.
The epoch estimate needs every row's lengths in file order (the Trainer's length-grouped
sampler orders rows by index), so the per-row list is kept, not a histogram.

Entries are pickles in ``plans/`` and ``lengths/`` of the trace cache folder, written
atomically; an unreadable entry is recomputed.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import asdict, fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from dialsum.core.calibration_file import default_calibration_path
from dialsum.core.config_schema import SectionConfig
from dialsum.speed.gpus import named_device
from dialsum.trace.cache import default_cache_dir

PLAN_CACHE_VERSION = "1"

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


def _optional_file(path: str | Path | None) -> str | None:
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


def _section_dict(cfg: SectionConfig) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
        return value

    return plain(cfg)


def _key(payload: dict[str, Any]) -> str:
    payload = {
        **payload,
        "cache_version": PLAN_CACHE_VERSION,
        "dialsum": source_digest(),
        "versions": _versions(),
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def plan_key(
    cfg: SectionConfig, *, gpu: str | None, num_gpus: int, data: Path | None, buckets: bool
) -> str | None:
    """The key of ``dialsum plan``'s answer, or None when it cannot be cached (a detected
    GPU, a model only the hub knows)."""
    device = named_device(gpu or cfg.hardware.gpu, cfg.hardware.memory_cap_gib)
    model = model_source(cfg.model.name, with_tokenizer=data is not None)
    if device is None or model is None:
        return None
    if data is not None and not Path(data).is_file():
        return None
    calibration = default_calibration_path()
    return _key(
        {
            "kind": "plan",
            "section": _section_dict(cfg),
            "device": asdict(device),
            "num_gpus": num_gpus,
            "buckets": buckets,
            "model": model,
            "data": [str(data), _optional_file(data)] if data is not None else None,
            "train_file": _optional_file(cfg.data.train),
            "calibration": [str(calibration), _optional_file(calibration)],
            "environment": {k: v for k, v in os.environ.items() if k.startswith("PYTORCH_")},
        }
    )


def lengths_key(cfg: SectionConfig, data: Path) -> str | None:
    """Key of ``data``'s tokenized lengths under ``cfg``'s tokenizer settings."""
    model = model_source(cfg.model.name, with_tokenizer=True)
    if model is None:
        return None
    return _key(
        {
            "kind": "lengths",
            "data": file_digest(Path(data)),
            "model": [cfg.model.name, model],
            "section": _section_dict(cfg),
        }
    )


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

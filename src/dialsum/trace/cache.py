"""On-disk cache of simulation results (the planner asks for the same traces many times).

One JSON file per result under ``~/.cache/dialsum/traces`` (``DIALSUM_CACHE_DIR`` or an
explicit argument overrides it), named by the sha256 of everything the result depends on:
the config JSON, the shape, the options, the torch and transformers versions and
``SIMULATOR_VERSION`` (bump it whenever the simulator's accounting changes).

Next to them, ``timelines/`` keeps the recordings other batch sizes are replayed from
(``trace.reuse``), so a plan for another GPU or the guide's main pass replays instead of
tracing again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING

from dialsum.trace.profile import MemoryProfile

if TYPE_CHECKING:
    from transformers import PretrainedConfig

SIMULATOR_VERSION = "10"
CACHE_DIR_ENV = "DIALSUM_CACHE_DIR"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "dialsum" / "traces"


def cache_key(kind: str, config: PretrainedConfig, *parts: object) -> str:
    """sha256 over the config, the dataclasses/values in ``parts`` and the versions."""
    # Imported here: finding the cache folder (a warm ``dialsum plan``) needs neither.
    import torch
    import transformers

    payload = {
        "kind": kind,
        "config": json.loads(config.to_json_string(use_diff=False)),
        "parts": [dataclasses.asdict(p) if dataclasses.is_dataclass(p) else p for p in parts],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "simulator": SIMULATOR_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def load(cache_dir: Path, key: str) -> MemoryProfile | None:
    path = cache_dir / f"{key}.json"
    try:
        data = json.loads(path.read_text())
        return MemoryProfile(**data)
    except (OSError, ValueError, TypeError):
        return None


def store(cache_dir: Path, key: str, profile: MemoryProfile) -> None:
    """Write atomically (temp file + rename) so parallel planners never read half a file."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=cache_dir, suffix=".tmp", delete=False) as fh:
            json.dump(profile.to_dict(), fh, sort_keys=True)
            tmp = Path(fh.name)
        tmp.replace(cache_dir / f"{key}.json")
    except OSError:
        # A read-only or full cache dir must never break a prediction.
        return


def timeline_path(cache_dir: Path, key: str) -> Path:
    """Where the two recordings a key's other batch sizes are replayed from are kept
    (``trace.reuse``), one pickle per key."""
    return cache_dir / "timelines" / f"{key}.pkl"


def load_timelines(cache_dir: Path | None, key: str) -> tuple | None:
    """Recordings another process made for ``key`` (the guide's workers, a plan for
    another GPU: the GPU changes the budget, not the trace); None when absent."""
    if cache_dir is None:
        return None
    try:
        with open(timeline_path(cache_dir, key), "rb") as fh:
            stored = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError):
        return None
    if not isinstance(stored, tuple) or len(stored) not in (4, 5):
        return None
    return stored if len(stored) == 5 else (*stored, None)  # 4: kept before the layout was


def store_timelines(cache_dir: Path | None, key: str, recorded: tuple) -> None:
    """Atomically (temp file + rename); a read-only or full cache folder is no error."""
    if cache_dir is None:
        return
    target = timeline_path(cache_dir, key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=target.parent, delete=False) as fh:
            pickle.dump(recorded, fh, protocol=pickle.HIGHEST_PROTOCOL)
            tmp = Path(fh.name)
        tmp.replace(target)
    except OSError:
        return


def fill_in_processes(
    worker: Callable[..., object], calls: Sequence[tuple], workers: int
) -> Iterator[Future]:
    """Run ``worker(*call)`` for every call in up to ``workers`` processes; yield each
    future as it finishes (``future.result()`` re-raises a worker's error).

    A trace is Python on one core, so independent traces run in parallel processes that
    only fill this on-disk cache; the caller's own pass then reads it. Processes are
    spawned, never forked: a fork after torch started its threads (or CUDA) can hang.
    """
    import concurrent.futures as futures
    import multiprocessing

    from dialsum.trace.parallel import mark_worker

    context = multiprocessing.get_context("spawn")
    pool = futures.ProcessPoolExecutor(
        min(workers, len(calls)), mp_context=context, initializer=mark_worker
    )
    try:
        yield from futures.as_completed([pool.submit(worker, *call) for call in calls])
    finally:
        # Every call is done (or the caller gave up): the workers' exits (seconds of
        # interpreter teardown with torch loaded) need not hold up the caller.
        pool.shutdown(wait=False, cancel_futures=True)

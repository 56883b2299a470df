from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory):
    """Traces and tiny models are cached in a per-session folder, never in the user's home."""
    cache = tmp_path_factory.mktemp("dialsum-cache")
    old = os.environ.get("DIALSUM_CACHE_DIR")
    os.environ["DIALSUM_CACHE_DIR"] = str(cache)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    yield cache
    if old is None:
        os.environ.pop("DIALSUM_CACHE_DIR", None)
    else:
        os.environ["DIALSUM_CACHE_DIR"] = old


@pytest.fixture
def root() -> Path:
    return ROOT

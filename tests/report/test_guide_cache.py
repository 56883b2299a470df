"""The guide keeps each computed section by its question: a warm guide plans nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_guide import CONFIG, FakeSimulator, snapshot

from dialsum.report import guide as guide_mod
from dialsum.speed.gpus import resolve_gpu


@pytest.fixture(autouse=True)
def _own_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIALSUM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("DIALSUM_CALIBRATION", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_a_second_guide_reads_its_sections_back_and_writes_the_same_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: list[str] = []
    compute = guide_mod._compute_section

    def with_fake(name, config_path, gpus, simulator, advance):
        # The real simulator's sections are cached; a fake stands in for its traces here.
        computed.append(name)
        return compute(name, config_path, gpus, FakeSimulator().as_simulator(), advance)

    monkeypatch.setattr(guide_mod, "_compute_section", with_fake)
    monkeypatch.setattr(guide_mod, "_prefill_trace_cache", lambda *args: None)
    kwargs = dict(sections=["kobart"], gpus=["t4-16gb", "a100-40gb"], progress=False)
    guide_mod.build_guide(CONFIG, out=tmp_path / "a" / "guide.md", **kwargs)
    assert computed == ["kobart"]
    guide_mod.build_guide(CONFIG, out=tmp_path / "b" / "guide.md", **kwargs)
    assert computed == ["kobart"]  # read back, not planned again
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    # Other GPUs are another question.
    guide_mod.build_guide(
        CONFIG, out=tmp_path / "c" / "guide.md", **{**kwargs, "gpus": ["t4-16gb"]}
    )
    assert computed == ["kobart", "kobart"]


def test_a_section_key_follows_the_section_and_the_gpus() -> None:
    t4, a100 = resolve_gpu("t4-16gb"), resolve_gpu("a100-40gb")
    key = guide_mod._section_key(CONFIG, "kobart", [t4, a100])
    assert key == guide_mod._section_key(CONFIG, "kobart", [t4, a100])
    assert key != guide_mod._section_key(CONFIG, "kobart", [t4])
    assert key != guide_mod._section_key(CONFIG, "eenzeenee", [t4, a100])


def test_the_largest_model_is_traced_first() -> None:
    costs = {name: guide_mod._tracing_cost(CONFIG, name) for name in ("eenzeenee", "kobart")}
    assert costs["eenzeenee"] > costs["kobart"] > 0
    assert guide_mod._tracing_cost(CONFIG, "xlsum_mt5") > costs["eenzeenee"]


def test_a_decoder_only_model_counts_its_layers_too() -> None:
    if "solar_qlora" not in guide_mod.real_sections(CONFIG):
        pytest.skip("no decoder-only section in config.yaml")
    assert guide_mod._tracing_cost(CONFIG, "solar_qlora") > guide_mod._tracing_cost(
        CONFIG, "xlsum_mt5"
    )


def test_a_warm_guide_imports_neither_torch_nor_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compute = guide_mod._compute_section

    def with_fake(name, config_path, gpus, simulator, advance):
        return compute(name, config_path, gpus, FakeSimulator().as_simulator(), advance)

    monkeypatch.setattr(guide_mod, "_compute_section", with_fake)
    monkeypatch.setattr(guide_mod, "_prefill_trace_cache", lambda *args: None)
    kwargs = dict(sections=["kobart"], gpus=["t4-16gb", "a100-40gb"], progress=False)
    guide_mod.build_guide(CONFIG, out=tmp_path / "a" / "guide.md", **kwargs)
    # The same guide in a fresh process (the cache folder is inherited): read back whole,
    # rendered, written, with neither library imported (seconds of a warm guide).
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dialsum.report.guide import build_guide\n"
        f"build_guide({str(CONFIG)!r}, out=Path({str(tmp_path / 'b' / 'guide.md')!r}), "
        f"**{kwargs!r})\n"
        "heavy = sorted({'torch', 'transformers'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")

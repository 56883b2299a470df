"""GPU catalog, resolving what users type, and detection from driver properties."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from dialsum.core.errors import ConfigError
from dialsum.speed import gpus
from dialsum.speed.gpus import GPU, catalog, detect_gpu, gpu_from_properties, resolve_gpu

GIB = 2**30


def test_catalog_slugs_and_capabilities() -> None:
    table = {gpu.slug: (gpu.bf16, gpu.compute_capability) for gpu in catalog()}
    assert table == {
        "v100-16gb": (False, (7, 0)),
        "t4-16gb": (False, (7, 5)),
        "rtx3080-10gb": (True, (8, 6)),
        "rtx3090-24gb": (True, (8, 6)),
        "rtx4090-24gb": (True, (8, 9)),
        "l4-24gb": (True, (8, 9)),
        "a100-40gb": (True, (8, 0)),
        "a100-80gb": (True, (8, 0)),
        "h100-80gb": (True, (9, 0)),
        "h200-141gb": (True, (9, 0)),
    }
    assert all(gpu.fp16 and gpu.warning is None for gpu in catalog())


def test_catalog_uses_driver_reported_totals_not_labels() -> None:
    assert resolve_gpu("v100-16gb").total_bytes == 16_945_709_056
    assert resolve_gpu("a100-40gb").total_bytes == 42_505_273_344
    # The driver keeps some memory: every card reports less than its label in GiB.
    for gpu in catalog():
        label_gib = int(gpu.slug.rsplit("-", 1)[1].removesuffix("gb"))
        assert 0.9 * label_gib * GIB < gpu.total_bytes < label_gib * GIB


def test_catalog_returns_a_fresh_list() -> None:
    first = catalog()
    first.clear()
    assert len(catalog()) == 10


@pytest.mark.parametrize(
    ("spec", "slug"),
    [
        ("a100-40gb", "a100-40gb"),
        ("A100-40GB", "a100-40gb"),
        ("A100", "a100-40gb"),  # a bare A100 is the smaller card: safe on both
        ("a100 80gb", "a100-80gb"),
        ("A100-80", "a100-80gb"),
        ("V100", "v100-16gb"),
        ("Tesla V100", "v100-16gb"),
        ("t4", "t4-16gb"),
        ("RTX 3080", "rtx3080-10gb"),
        ("NVIDIA GeForce RTX 4090", "rtx4090-24gb"),
        ("3090", "rtx3090-24gb"),
        ("L4", "l4-24gb"),
        ("nvidia h100", "h100-80gb"),
        (" H200 ", "h200-141gb"),
    ],
)
def test_resolve_gpu_slugs_and_aliases(spec: str, slug: str) -> None:
    assert resolve_gpu(spec).slug == slug


@pytest.mark.parametrize(
    ("spec", "total_bytes", "slug"),
    [
        ("24GB", 24 * GIB, "generic-24gib"),
        ("24gb", 24 * GIB, "generic-24gib"),
        ("24GiB", 24 * GIB, "generic-24gib"),
        ("24 G", 24 * GIB, "generic-24gib"),
        ("10.5GB", 11_274_289_152, "generic-10.5gib"),
        ("16384MiB", 16 * GIB, "generic-16384mib"),
    ],
)
def test_resolve_gpu_sizes_mean_gib(spec: str, total_bytes: int, slug: str) -> None:
    gpu = resolve_gpu(spec)
    assert gpu.total_bytes == total_bytes
    assert gpu.slug == slug
    assert gpu.bf16 is True
    assert gpu.warning is not None and "assumed" in gpu.warning


def test_resolve_gpu_zero_size_is_an_error() -> None:
    with pytest.raises(ConfigError, match="larger than zero"):
        resolve_gpu("0GB")


def test_unknown_gpu_lists_known_slugs_and_suggests_closest() -> None:
    with pytest.raises(ConfigError) as caught:
        resolve_gpu("rtx3080-10g")
    message = str(caught.value)
    assert "unknown GPU 'rtx3080-10g'" in message
    assert "Did you mean 'rtx3080-10gb'?" in message
    for gpu in catalog():
        assert gpu.slug in message
    assert "'24GB'" in message


def test_unknown_gpu_suggests_slug_for_alias_typo() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'h100-80gb'"):
        resolve_gpu("h1000")


def test_empty_gpu_spec_is_an_error() -> None:
    with pytest.raises(ConfigError, match="Known GPUs"):
        resolve_gpu("  ")


def test_gpu_from_properties_keeps_the_reported_memory() -> None:
    gpu = gpu_from_properties("NVIDIA A100-SXM4-80GB", 85_000_000_000, (8, 0))
    assert gpu == GPU(
        slug="a100-80gb",
        name="NVIDIA A100-SXM4-80GB",
        total_bytes=85_000_000_000,
        bf16=True,
        fp16=True,
        compute_capability=(8, 0),
    )
    v100 = gpu_from_properties("Tesla V100-SXM2-16GB", 16_945_709_056, (7, 0))
    assert (v100.slug, v100.bf16) == ("v100-16gb", False)


def test_gpu_from_properties_does_not_mistake_similar_names() -> None:
    # "L40S" contains "l4" and an "RTX 3080 Ti" is no 3080: neither takes their slug.
    assert gpu_from_properties("NVIDIA L40S", 48 * GIB, (8, 9)).slug == "cuda-l40s"
    assert gpu_from_properties("NVIDIA GeForce RTX 3080 Ti", 12 * GIB, (8, 6)).slug == (
        "cuda-rtx3080ti"
    )


def test_detect_gpu_without_cuda_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert detect_gpu() is None


def test_detect_gpu_reads_device_properties(monkeypatch: pytest.MonkeyPatch) -> None:
    props = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", total_memory=85_520_809_984, major=9, minor=0
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    gpu = detect_gpu()
    assert gpu is not None
    assert (gpu.slug, gpu.total_bytes, gpu.bf16, gpu.compute_capability) == (
        "h100-80gb",
        85_520_809_984,
        True,
        (9, 0),
    )


def test_total_gib_property() -> None:
    assert gpus.gpu_from_size("24GB").total_gib == 24.0  # type: ignore[union-attr]

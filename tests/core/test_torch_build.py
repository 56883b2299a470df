"""Supported-GPU check: compute capability against the torch build's arch list.

No GPU is needed: capability, device name and arch list are monkeypatched, and a fake
V100 (sm_70) under a CUDA 13 build must stop ``dialsum train`` and ``dialsum predict``
with exit code 2 and the install command before any data or weights load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import dialsum.core.torch_build as gpu_support
from dialsum.core.errors import UserError
from dialsum.core.torch_build import (
    TorchBuild,
    arch_runs_on,
    build_runs_on,
    install_command,
    matching_cuda_builds,
    parse_arch,
    plan_warning,
    require_supported_gpu,
    unsupported_message,
)
from dialsum.speed.gpus import cpu_device, resolve_gpu

ROOT = Path(__file__).resolve().parents[2]

CU132 = TorchBuild("2.15.0+cu132", "13.2", ("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"))
CU126 = TorchBuild("2.15.0+cu126", "12.6", ("sm_50", "sm_60", "sm_70", "sm_75", "sm_80",
                                             "sm_86", "sm_90"))  # fmt: skip
RELEASES = {
    "12.6": frozenset({50, 60, 70, 75, 80, 86, 90}),
    "13.0": frozenset({75, 80, 86, 90, 100, 120}),
    "13.2": frozenset({75, 80, 86, 90, 100, 120}),
}
V100_COMMAND = (
    'uv pip install "torch==2.15.0+cu126" --index-url https://download.pytorch.org/whl/cu126'
)


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [
        ("sm_70", ("sm", (7, 0), "")),
        ("sm_86", ("sm", (8, 6), "")),
        ("sm_90a", ("sm", (9, 0), "a")),
        ("sm_100", ("sm", (10, 0), "")),
        ("sm_120f", ("sm", (12, 0), "f")),
        ("compute_90", ("compute", (9, 0), "")),
        ("gfx90a", None),
    ],
)
def test_parse_arch(entry: str, parsed) -> None:
    assert parse_arch(entry) == parsed


@pytest.mark.parametrize(
    ("entry", "capability", "runs"),
    [
        ("sm_80", (8, 0), True),
        ("sm_80", (8, 6), True),  # same major, newer minor: binary compatible
        ("sm_86", (8, 0), False),  # an older minor cannot run newer code
        ("sm_80", (9, 0), False),  # machine code never crosses a major version
        ("sm_75", (7, 0), False),
        ("sm_70", (7, 5), True),
        ("sm_90a", (9, 0), True),
        ("sm_90a", (10, 0), False),  # arch-specific: that capability only
        ("sm_100f", (10, 3), True),
        ("compute_80", (9, 0), True),  # PTX: JIT-compiled for any newer device
        ("compute_80", (12, 0), True),
        ("compute_90", (8, 6), False),
        ("compute_70", (7, 0), True),
    ],
)
def test_arch_runs_on(entry: str, capability: tuple[int, int], runs: bool) -> None:
    assert arch_runs_on(entry, capability) is runs


def test_cuda13_build_runs_turing_and_later_but_not_volta() -> None:
    assert not build_runs_on(CU132.arch_list, (7, 0))
    for capability in [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]:
        assert build_runs_on(CU132.arch_list, capability), capability
    assert build_runs_on(CU126.arch_list, (7, 0))
    # A build with PTX for 9.0 runs a future 13.0 device by JIT; machine code alone does not.
    assert not build_runs_on(("sm_90",), (13, 0))
    assert build_runs_on(("sm_90", "compute_90"), (13, 0))


def test_matching_builds_newest_first() -> None:
    assert matching_cuda_builds((7, 0), RELEASES) == ["12.6"]
    assert matching_cuda_builds((8, 0), RELEASES) == ["13.2", "13.0", "12.6"]
    assert matching_cuda_builds((3, 5), RELEASES) == []


def test_install_command_pins_the_same_version_with_the_build_label() -> None:
    assert install_command(CU132, "12.6") == V100_COMMAND


def test_unsupported_message_names_gpu_build_and_command() -> None:
    message = unsupported_message("Tesla V100-SXM2-16GB", (7, 0), CU132, RELEASES)
    assert message.startswith(
        "this GPU cannot run the installed torch: Tesla V100-SXM2-16GB has compute "
        "capability 7.0 (sm_70), and torch 2.15.0+cu132 (CUDA 13.2; kernels for sm_75 sm_80 "
        "sm_86 sm_90 sm_100 sm_120) has no kernel for it"
    )
    assert f"Install the CUDA 12.6 build of torch 2.15.0: {V100_COMMAND}" in message
    assert "uv run --no-sync" in message and "Older GPUs" in message
    old = unsupported_message("Tesla K80", (3, 7), CU132, RELEASES)
    assert "no published build of torch 2.15.0 carries compute capability 3.7" in old


def _fake_device(monkeypatch: pytest.MonkeyPatch, capability=(7, 0), name="Tesla V100-SXM2-16GB"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: name)
    monkeypatch.setattr(gpu_support, "installed_build", lambda: CU132)
    monkeypatch.setattr(gpu_support, "release_archs", lambda: RELEASES)


def test_require_supported_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_device(monkeypatch, capability=(7, 0))
    with pytest.raises(UserError, match="Tesla V100-SXM2-16GB") as caught:
        require_supported_gpu()
    assert V100_COMMAND in str(caught.value)
    require_supported_gpu(build=CU126)  # the CUDA 12.6 build runs it
    _fake_device(monkeypatch, capability=(8, 0), name="NVIDIA A100-SXM4-40GB")
    require_supported_gpu()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    require_supported_gpu(build=TorchBuild("2.15.0+cu132", "13.2", ("sm_75",)))  # CPU: no-op


def test_plan_warning_from_the_catalog_capability() -> None:
    warning = plan_warning(resolve_gpu("v100-16gb"), CU132)
    assert warning is not None
    assert warning.startswith("the installed torch 2.15.0+cu132 (CUDA 13.2;")
    assert "cannot run the Tesla V100 16GB (sm_70)" in warning
    assert "torch==2.15.0+cu126" in warning
    assert plan_warning(resolve_gpu("v100-16gb"), CU126) is None
    assert plan_warning(resolve_gpu("a100-40gb"), CU132) is None
    assert plan_warning(resolve_gpu("24GB"), CU132) is None  # capability unknown (assumed)
    assert plan_warning(cpu_device(2**30), CU132) is None
    assert plan_warning(resolve_gpu("v100"), TorchBuild("2.15.0+cpu", None, ())) is None


@pytest.fixture
def clean_allocator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check sets PYTORCH_CUDA_ALLOC_CONF first; record the variables so it is undone.
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF", "DIALSUM_SET_ALLOC_CONF"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def _nothing_may_load(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def forbidden(name: str):
        def fail(*_args, **_kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called before the supported-GPU check")

        return fail

    import dialsum.inference.predict as predict
    import dialsum.models.loading as modeling
    import dialsum.models.setup as model_setup
    import dialsum.training.recipe as train

    for module, name in [
        (train, "setup_model"),
        (train, "read_tables"),
        (predict, "setup_model"),
        (modeling, "load_model"),
        (model_setup, "resolve_model"),
    ]:
        monkeypatch.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    return calls


@pytest.mark.usefixtures("clean_allocator_env")
@pytest.mark.parametrize("verb", ["train", "predict"])
def test_fake_v100_stops_before_anything_loads(
    verb: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    from dialsum.cli.app import main

    _fake_device(monkeypatch, capability=(7, 0))
    calls = _nothing_may_load(monkeypatch)
    runs = tmp_path / "runs"
    argv = [verb, "-c", str(ROOT / "config.yaml"), "-s", "eenzeenee"]
    argv += ["--max-steps", "1", "--output-dir", str(runs)] if verb == "train" else []
    argv += ["--checkpoint", str(tmp_path / "model")] if verb == "predict" else []
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert V100_COMMAND in captured.err
    assert "Tesla V100-SXM2-16GB" in captured.err and "CUDA 13.2" in captured.err
    # The allocator was set before the check (before CUDA could start), and said so.
    assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (set by dialsum" in captured.out
    assert calls == []
    assert not runs.exists()


def test_plan_rows_for_a_gpu_the_build_cannot_run_name_the_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    import dialsum.memory.section as section_plan
    from dialsum.core.config_load import load_section
    from dialsum.models.architectures import known_config

    monkeypatch.setattr(gpu_support, "installed_build", lambda: CU132)
    monkeypatch.setattr(gpu_support, "release_archs", lambda: RELEASES)
    monkeypatch.setattr(section_plan, "make_plan", lambda *a, **k: SimpleNamespace(warnings=[]))
    cfg = load_section(ROOT / "config.yaml", "eenzeenee")
    config = known_config("eenzeenee/t5-base-korean-summarization")
    (warning,) = section_plan.plan_for_section(cfg, config, gpu="v100-16gb").warnings
    assert "cannot run the Tesla V100 16GB (sm_70)" in warning and V100_COMMAND in warning
    assert section_plan.plan_for_section(cfg, config, gpu="a100-40gb").warnings == []

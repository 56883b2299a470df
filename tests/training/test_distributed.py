"""Data-parallel helpers without a launcher (identity), and gradient bucketing."""

from __future__ import annotations

import pytest
import torch

from dialsum.core.errors import UserError
from dialsum.training import distributed


@pytest.fixture(autouse=True)
def _no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_single_process_is_rank_zero_and_starts_no_group() -> None:
    assert distributed.launched_world_size() == 1
    assert distributed.rank() == 0
    assert distributed.is_main_process()
    assert distributed.ensure_process_group(cpu=True) is False
    assert not distributed.is_initialized()


def test_launcher_environment_names_the_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert (distributed.rank(), distributed.launched_world_size()) == (3, 4)
    assert not distributed.is_main_process()


def test_backend_per_device() -> None:
    assert distributed.backend_for(cpu=True) == "gloo"
    assert distributed.backend_for(cpu=False) == "nccl"


def test_sharing_without_a_group_is_the_identity() -> None:
    assert distributed.broadcast_object({"path": "runs/x"}) == {"path": "runs/x"}
    assert distributed.on_main_then_share(lambda: 7) == 7
    with pytest.raises(UserError, match="no run"):
        distributed.on_main_then_share(lambda: (_ for _ in ()).throw(UserError("no run")))
    with distributed.main_process_first():
        pass
    grad = torch.ones(3)
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = grad.clone()
    distributed.average_gradients([param])  # no peers: unchanged
    assert param.grad.tolist() == [1.0, 1.0, 1.0]


def test_gradient_buckets_split_by_size_and_dtype() -> None:
    f32 = [torch.zeros(10), torch.zeros(20), torch.zeros(5)]  # 40, 80, 20 bytes
    half = [torch.zeros(10, dtype=torch.float16)]  # 20 bytes
    buckets = distributed.gradient_buckets([f32[0], half[0], f32[1], f32[2]], bucket_bytes=100)
    sizes = [[t.numel() for t in bucket] for bucket in buckets]
    # 40 + 80 > 100 closes the first fp32 bucket; 80 + 20 fits; fp16 has its own.
    assert sizes == [[10], [20, 5], [10]]
    assert [b[0].dtype for b in buckets] == [torch.float32, torch.float32, torch.float16]


def test_a_gradient_larger_than_a_bucket_gets_its_own() -> None:
    buckets = distributed.gradient_buckets([torch.zeros(100), torch.zeros(1)], bucket_bytes=16)
    assert [[t.numel() for t in b] for b in buckets] == [[100], [1]]


def test_settings_split_the_effective_batch_over_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from dialsum.core.config_load import load_section
    from dialsum.training.settings import resolve_settings

    # The tiny section asks for micro-batch 16 = effective batch 16 on one process; with
    # two processes each gets 8 rows per step, so the micro-batch follows.
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = load_section(Path(__file__).resolve().parents[2] / "config.yaml", "tiny", [])
    settings = resolve_settings(cfg, None, echo=lambda *_: None)
    assert (settings.world_size, settings.per_step_rows) == (2, 8)
    assert (settings.micro_batch_size, settings.gradient_accumulation_steps) == (8, 1)
    assert settings.micro_batch_size * settings.gradient_accumulation_steps * 2 == 16
    assert "micro-batch 16 -> 8" in settings.reasons[-1]


@pytest.fixture
def world_of_one(tmp_path):
    """A real gloo process group of one rank in this process (all_reduce runs for real)."""
    from torch import distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _params_with_grads(sizes: list[int]) -> list[torch.nn.Parameter]:
    params = []
    for i, n in enumerate(sizes):
        param = torch.nn.Parameter(torch.zeros(n))
        param.grad = torch.arange(n, dtype=torch.float32) + i
        params.append(param)
    return params


def test_a_gradient_larger_than_a_bucket_is_reduced_in_place(world_of_one) -> None:
    # mT5's 250k x 768 embedding gradient (732 MiB) is one bucket of its own: a flat copy
    # of it would need that much again, right after the ranks agreed the step worked.
    from dialsum.trace.live_cap import LiveBytesCap

    params = _params_with_grads([1000, 5, 5])  # 4000-byte gradient, 100-byte buckets
    expected = [p.grad.clone() for p in params]
    with LiveBytesCap(1 << 40) as cap:
        cap.track_all(p.grad for p in params)
        cap.cap_bytes = cap.current_bytes + 200  # a small bucket's copy fits, 4000 does not
        distributed.average_gradients(params, bucket_bytes=100)
    for param, grad in zip(params, expected, strict=True):
        assert torch.equal(param.grad, grad)  # one rank: the average is the gradient


def test_with_staging_the_reduce_allocates_nothing(world_of_one) -> None:
    from dialsum.trace.live_cap import LiveBytesCap

    params = _params_with_grads([1000, 5, 5, 7, 3])
    staging = distributed.reduce_staging(params, bucket_bytes=100)
    # fp32 buckets: [1000] alone, [5, 5, 7, 3] -> one 20-float staging buffer
    assert [(k[0], t.numel()) for k, t in staging.items()] == [(torch.float32, 20)]
    expected = [p.grad.clone() for p in params]
    with LiveBytesCap(1 << 40) as cap:
        cap.track_all(p.grad for p in params)
        cap.track_all(staging.values())
        cap.cap_bytes = cap.current_bytes  # not one byte more
        distributed.average_gradients(params, staging, bucket_bytes=100)
    for param, grad in zip(params, expected, strict=True):
        assert torch.equal(param.grad, grad)

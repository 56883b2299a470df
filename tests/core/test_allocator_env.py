"""The allocator setting dialsum runs use, and the mode the planner reads from it."""

from __future__ import annotations

import pytest

from dialsum.core.allocator_env import (
    ALLOC_CONF_ENV,
    SET_BY_DIALSUM_ENV,
    configure_allocator,
    mode_of,
    planned_allocator_mode,
    user_alloc_conf,
)


def _not_started() -> bool:
    return False


def test_sets_expandable_segments_when_unset() -> None:
    env: dict[str, str] = {}
    setting = configure_allocator(env, cuda_initialized=_not_started)
    assert env == {ALLOC_CONF_ENV: "expandable_segments:True", SET_BY_DIALSUM_ENV: "1"}
    assert (setting.mode, setting.source) == ("expandable_segments", "dialsum")
    assert setting.describe() == (
        "CUDA allocator: PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (set by dialsum "
        "before CUDA started: less fragmentation with variable-length batches; set "
        "PYTORCH_CUDA_ALLOC_CONF yourself to choose otherwise)"
    )
    # A second run in the same process (or a child process) still knows it was ours.
    again = configure_allocator(env, cuda_initialized=lambda: True)
    assert (again.mode, again.source) == ("expandable_segments", "dialsum")
    assert user_alloc_conf(env) is None


@pytest.mark.parametrize(
    ("env", "variable", "mode"),
    [
        ({"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}, "PYTORCH_CUDA_ALLOC_CONF",
         "default"),
        ({"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True,max_split_size_mb:128"},
         "PYTORCH_CUDA_ALLOC_CONF", "expandable_segments"),
        ({"PYTORCH_ALLOC_CONF": "expandable_segments:False"}, "PYTORCH_ALLOC_CONF", "default"),
        ({"PYTORCH_ALLOC_CONF": "backend:cudaMallocAsync",
          "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"}, "PYTORCH_ALLOC_CONF",
         "default"),
    ],
)  # fmt: skip
def test_a_setting_of_the_user_is_kept(env: dict, variable: str, mode: str) -> None:
    before = dict(env)
    setting = configure_allocator(env, cuda_initialized=_not_started)
    assert env == before
    assert (setting.variable, setting.mode, setting.source) == (variable, mode, "user")
    assert setting.describe().endswith("(set by you; kept)")
    assert planned_allocator_mode(env) == mode


def test_too_late_when_cuda_already_started() -> None:
    env: dict[str, str] = {}
    setting = configure_allocator(env, cuda_initialized=lambda: True)
    assert env == {}
    assert (setting.mode, setting.source) == ("default", "too-late")
    assert "CUDA was started before dialsum could set" in setting.describe()


def test_planned_mode_without_a_setting_is_what_runs_set() -> None:
    assert planned_allocator_mode({}) == "expandable_segments"


@pytest.mark.parametrize(
    ("conf", "mode"),
    [
        ("expandable_segments:True", "expandable_segments"),
        ("expandable_segments:true", "expandable_segments"),
        ("max_split_size_mb:64, expandable_segments:True", "expandable_segments"),
        ("expandable_segments:False", "default"),
        ("garbage_collection_threshold:0.6", "default"),
    ],
)
def test_mode_of(conf: str, mode: str) -> None:
    assert mode_of(conf) == mode

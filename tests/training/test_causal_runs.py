"""A causal LoRA or QLoRA run recovers from an OOM and resumes as a seq2seq run does: the
recovered run ends with the adapters of a run at the smaller micro-batch, the resumed run
with those of the uninterrupted run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from dialsum.core.config_load import load_section
from dialsum.training.oom_guard import GuardState
from dialsum.training.recipe import run_training

ROOT = Path(__file__).resolve().parents[2]
quiet = lambda *_: None  # noqa: E731
METHODS = [
    "lora",
    pytest.param(
        "qlora",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("bitsandbytes") is None,
            reason="needs bitsandbytes: uv sync --extra bnb",
        ),
    ),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: two threads on a busy machine only spin
    yield
    torch.set_num_threads(threads)


def section(output_dir: Path, *extra: str, method: str = "lora"):
    overrides = [
        f"model.method={method}",
        "model.dropout=0.0",
        "data.max_train_samples=16",
        "training.effective_batch_size=8",
        "training.micro_batch_size=8",
        "training.max_steps=4",
        "training.eval_strategy=no",
        "training.save_strategy=steps",
        "training.save_steps=2",
        "training.group_by_length=false",
        "training.report_to=[none]",
        "tokenizer.max_source_length=64",
        "tokenizer.max_target_length=16",
        f"training.output_dir={output_dir}",
        *extra,
    ]
    return load_section(ROOT / "config.yaml", "tiny_causal", overrides)


def adapters(run_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_path / "best" / "adapter_model.safetensors"))


class OOMOnce:
    """The trainer's fault injector: one OOM at the first 8-row micro-batch."""

    def __init__(self) -> None:
        self.fired = False

    def __call__(self, phase: str, rows: int) -> None:
        if phase == "train" and rows == 8 and not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class StopAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("method", METHODS)
def test_an_oom_in_a_causal_adapter_step_is_recovered_at_the_same_effective_batch(
    method: str, tmp_path: Path
) -> None:
    injector = OOMOnce()
    cfg = section(tmp_path / "a", method=method)
    recovered = run_training(cfg, echo=quiet, fault_injector=injector)
    assert injector.fired
    (event,) = GuardState.load(recovered.run.guard).events
    assert (event.step, event.old_batch, event.new_batch) == (0, 8, 4)
    cfg = section(tmp_path / "b", "training.micro_batch_size=4", method=method)
    reference = run_training(cfg, echo=quiet)
    got, want = adapters(recovered.run.path), adapters(reference.run.path)
    assert got.keys() == want.keys() and any("lora_B" in k for k in got)
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", METHODS)
def test_a_resumed_causal_adapter_run_ends_with_the_uninterrupted_runs_adapters(
    method: str, tmp_path: Path
) -> None:
    whole = run_training(section(tmp_path / "a", method=method), echo=quiet)
    run_training(section(tmp_path / "b", method=method), echo=quiet, callbacks=[StopAt(2)])
    resumed = run_training(section(tmp_path / "b", method=method), resume=True, echo=quiet)
    assert resumed.metrics["train_loss_steps"] == "1-4"
    got, want = adapters(resumed.run.path), adapters(whole.run.path)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert resumed.metrics["train_loss"] == pytest.approx(whole.metrics["train_loss"], rel=1e-6)

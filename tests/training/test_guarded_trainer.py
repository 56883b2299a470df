"""OOM recovery inside the HF Trainer, with injected real OOM exceptions on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dialsum.core.runs import latest_run
from dialsum.step.train_step import slice_rows
from dialsum.training.oom_guard import GuardState, OOMUnrecoverable
from dialsum.training.recipe import run_training
from helpers import tiny_section

ROOT = Path(__file__).resolve().parents[2]


def section(tmp_path: Path, *extra: str):
    return tiny_section(tmp_path, *extra)


class InjectOOM:
    """Raises the real CUDA OOM exception type for batches larger than ``max_rows``."""

    def __init__(self, phase: str, max_rows: int, times: int | None = None) -> None:
        self.phase, self.max_rows, self.times = phase, max_rows, times
        self.seen: list[int] = []

    def __call__(self, phase: str, rows: int) -> None:
        if phase != self.phase:
            return
        self.seen.append(rows)
        if rows > self.max_rows and (self.times is None or self.times > 0):
            if self.times is not None:
                self.times -= 1
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total)"
            )


def weights(run_path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_path / "best" / "model.safetensors"))


def test_train_oom_shrinks_micro_batch_and_matches_a_run_started_small(tmp_path: Path) -> None:
    inject = InjectOOM("train", max_rows=2)
    a = run_training(section(tmp_path / "a"), echo=lambda *_: None, fault_injector=inject)
    # Step 1: 8 fails, 4 fails, 2 works (x4 chunks); steps 2-3: 2 x4 chunks each.
    assert inject.seen[:3] == [8, 4, 2]
    assert inject.seen[3:] == [2] * (4 + 4 + 4 - 1)
    state = GuardState.load(a.run.guard)
    assert state.micro_batch_size == 2
    assert [(e.old_batch, e.new_batch) for e in state.events] == [(8, 4), (4, 2)]
    assert a.metrics["oom_recoveries"] == 2

    b = run_training(section(tmp_path / "b", "training.micro_batch_size=2"), echo=lambda *_: None)
    wa, wb = weights(a.run.path), weights(b.run.path)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6)


def test_micro_batch_does_not_change_the_gradient(tmp_path: Path) -> None:
    # Token-sum / step-token-count normalisation: micro 8 and micro 1 give the same gradient.
    # SGD makes the update proportional to it (Adam's first step is sign-like and would
    # amplify float noise in near-zero gradients).
    common = ("training.max_steps=1", "training.optimizer=sgd", "training.learning_rate=0.5")
    a = run_training(section(tmp_path / "a", *common), echo=lambda *_: None)
    b = run_training(
        section(tmp_path / "b", *common, "training.micro_batch_size=1"), echo=lambda *_: None
    )
    wa, wb = weights(a.run.path), weights(b.run.path)
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-4, atol=1e-6)


def test_oom_at_micro_batch_one_stops_with_the_next_ladder_step(tmp_path: Path) -> None:
    with pytest.raises(OOMUnrecoverable, match="nothing smaller is left"):
        run_training(section(tmp_path), echo=lambda *_: None, fault_injector=InjectOOM("train", 0))


def test_resume_keeps_the_reduced_micro_batch(tmp_path: Path) -> None:
    cfg = section(
        tmp_path, "training.save_strategy=steps", "training.save_steps=1", "training.max_steps=2"
    )
    run_training(cfg, echo=lambda *_: None, fault_injector=InjectOOM("train", 4, times=1))
    run = latest_run(tmp_path, "tiny")
    assert GuardState.load(run.guard).micro_batch_size == 4

    resumed = section(
        tmp_path, "training.save_strategy=steps", "training.save_steps=1", "training.max_steps=3"
    )
    seen = InjectOOM("train", 100)
    result = run_training(
        resumed,
        resume=True,
        resume_overrides=["training.max_steps=3"],
        override_on_resume=True,
        echo=lambda *_: None,
        fault_injector=seen,
    )
    assert result.run.path == run.path
    assert result.settings.micro_batch_size == 4
    assert seen.seen == [4, 4]  # the one remaining step, two micro-batches of 4


def test_eval_oom_halves_the_eval_batch(tmp_path: Path) -> None:
    inject = InjectOOM("eval", max_rows=2)
    cfg = section(
        tmp_path, "training.max_steps=1", "training.eval_strategy=steps", "training.eval_steps=1"
    )
    result = run_training(cfg, echo=lambda *_: None, fault_injector=inject)
    state = GuardState.load(result.run.guard)
    assert [(e.phase, e.old_batch, e.new_batch) for e in state.events][:2] == [
        ("eval", 6, 3),
        ("eval", 3, 1),
    ]
    assert "eval_score" in result.metrics


def test_slice_rows_trims_padding_to_the_chunk() -> None:
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0], [5, 6, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]),
        "labels": torch.tensor([[9, 1, -100], [9, -100, -100]]),
        "decoder_input_ids": torch.tensor([[0, 9, 1], [0, 9, 0]]),
    }
    chunk = slice_rows(batch, 1, 2)
    assert chunk["input_ids"].tolist() == [[5, 6]]
    assert chunk["labels"].tolist() == [[9]]
    assert chunk["decoder_input_ids"].tolist() == [[0]]


def test_resume_does_not_report_tied_embeddings_as_missing() -> None:
    from transformers import T5Config

    from dialsum.models.architectures import model_from_config
    from dialsum.training.resumable_trainer import untied_missing_keys

    config = T5Config(vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      tie_word_embeddings=False, decoder_start_token_id=0)  # fmt: skip
    missing = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"]
    # encoder/decoder embed_tokens are `shared` (loaded); the untied head really is missing.
    assert untied_missing_keys(model_from_config(config), missing) == ["lm_head.weight"]

"""The plan is the run, on the CPU: the simulator against the real trainer, measured.

The tiny model runs the guarded trainer's real steps, an evaluation and a prediction pass
on the CPU; ``torch.profiler`` measures each phase's peak live bytes independently of the
simulator. The test fails when the plan and the run diverge beyond the targets.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dialsum.step.train_step as step
import dialsum.trace.step_trace as simulate
import dialsum.trace.train_rig as simulated_rig
import dialsum.training.guarded_trainer as guarded_trainer
from dialsum.checks.cpu_loop import Setup, compare, measure, predict
from dialsum.core.config_load import load_section
from dialsum.models.setup import setup_model
from dialsum.trace.profile import TrainOptions, TrainShape

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    cfg = load_section(ROOT / "config.yaml", "tiny", ["model.dropout=0.0"])
    model, tokenizer = setup_model(cfg)
    return cfg, model, tokenizer


def test_plan_matches_the_real_run_phase_by_phase(tiny, tmp_path) -> None:
    cfg, model, tokenizer = tiny
    setup = Setup(source_len=96, target_len=24, micro=2, accumulation=2, eval_batch=2,
                  beams=2, new_tokens=12)  # fmt: skip
    measured, state_bytes = measure(model, tokenizer, cfg, setup, tmp_path)
    rows = compare(predict(model.config, setup, state_bytes), measured)
    outside = {phase: row["ratio"] for phase, row in rows.items() if not row["inside"]}
    assert not outside, f"predicted/measured outside the targets: {outside}"
    # The optimizer state evaluation runs next to is AdamW's: two moments per parameter.
    params = sum(p.numel() for p in model.parameters())
    assert state_bytes >= 2 * 4 * params


def test_trainer_and_simulator_run_the_same_step_function(monkeypatch) -> None:
    # Both import the one step function; a wrapper seen through either module is the same.
    assert guarded_trainer.step_forward_backward is step.step_forward_backward
    assert simulate.step_forward_backward is step.step_forward_backward
    assert guarded_trainer.build_optimizer is step.build_optimizer
    assert simulated_rig.build_optimizer is step.build_optimizer  # the simulator's optimizer
    calls: list[int] = []
    real = step.step_forward_backward

    def spy(model, inputs, micro, *args, **kwargs):
        calls.append(micro)
        return real(model, inputs, micro, *args, **kwargs)

    monkeypatch.setattr(simulate, "step_forward_backward", spy)
    from transformers import T5Config

    tiny_config = T5Config(vocab_size=64, d_model=16, d_ff=32, d_kv=8, num_layers=1,
                           num_heads=2, decoder_start_token_id=0)  # fmt: skip
    simulate.simulate_train(
        tiny_config, TrainShape(2, 8, 4), TrainOptions(micro_batches=2), use_cache=False,
        replay_batches=False,
    )  # fmt: skip
    # Step 1's forward/backward over two micro-batches of 2 rows; step 2 replays its events
    # (only step 2's optimizer phase is traced).
    assert calls == [2]


def test_a_large_vocabulary_sums_its_embedding_gradients_in_place(tiny, tmp_path) -> None:
    # The shared embedding feeds encoder and decoder: a real backward sums its two
    # [32000, 64] gradients in place (8 MiB), as the simulator now does under its dispatch
    # modes. Summed out of place (what any mode makes the engine do) the step's peak is
    # ~10 % higher than the run's; measured by the profiler, no mode involved.
    from transformers import T5Config

    from dialsum.models.architectures import model_from_config

    cfg, _, tokenizer = tiny
    config = T5Config(vocab_size=32000, d_model=64, d_ff=128, d_kv=16, num_heads=2,
                      num_layers=1, num_decoder_layers=1, tie_word_embeddings=False,
                      dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                      eos_token_id=1)  # fmt: skip
    model = model_from_config(config)
    for key in ("pad_token_id", "decoder_start_token_id", "eos_token_id"):
        setattr(model.generation_config, key, getattr(config, key))
    setup = Setup(source_len=32, target_len=8, micro=2, accumulation=2, eval_batch=1,
                  beams=1, new_tokens=4)  # fmt: skip
    measured, state_bytes = measure(model, tokenizer, cfg, setup, tmp_path)
    rows = compare(predict(config, setup, state_bytes), measured)
    assert abs(rows["train"]["ratio"] - 1) < 0.005, rows["train"]
    assert abs(rows["optimizer"]["ratio"] - 1) < 0.005, rows["optimizer"]

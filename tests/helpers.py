"""Shared by tests: the tiny section set up for fast, deterministic CPU runs."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from dialsum.core.config_load import load_section
from dialsum.core.config_schema import SectionConfig

ROOT = Path(__file__).resolve().parents[1]


def tiny_section(output_dir: Path, *extra: str) -> SectionConfig:
    """16 training rows, 8 per step (one micro-batch of 8), 3 steps, no eval or saving,
    dropout off, runs under ``output_dir``; ``extra`` overrides come last."""
    overrides = [
        "data.max_train_samples=16",
        "data.max_eval_samples=6",
        "training.effective_batch_size=8",
        "training.micro_batch_size=8",
        "training.eval_batch_size=6",
        "training.max_steps=3",
        "training.eval_strategy=no",
        "training.save_strategy=no",
        "training.group_by_length=false",
        "training.report_to=[none]",
        "training.logging_steps=1",
        "model.dropout=0.0",
        f"training.output_dir={output_dir}",
        *extra,
    ]
    return load_section(ROOT / "config.yaml", "tiny", overrides)


def micro_t5(**overrides) -> transformers.T5ForConditionalGeneration:
    """A one-layer T5 (vocabulary 64, d_model 16), random weights from seed 0."""
    torch.manual_seed(0)
    fields = dict(
        vocab_size=64, d_model=16, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        d_kv=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return transformers.T5ForConditionalGeneration(transformers.T5Config(**(fields | overrides)))


def micro_t5_and_batch() -> tuple[transformers.T5ForConditionalGeneration, dict]:
    """``micro_t5()`` and a 2-row batch (8 source, 5 label tokens) drawn right after it."""
    model = micro_t5()
    batch = {"input_ids": torch.randint(2, 64, (2, 8)), "labels": torch.randint(2, 64, (2, 5))}
    return model, batch


# Two-layer configs of the three families, small enough to trace a step in a second (the
# tracers deep-copy a config before building from it: sharing these is safe).
TRACE_T5 = transformers.T5Config(vocab_size=320, d_model=32, d_ff=64, d_kv=8, num_heads=4,
                                 num_layers=2, decoder_start_token_id=0)  # fmt: skip
TRACE_BART = transformers.BartConfig(vocab_size=320, d_model=32, encoder_layers=2,
                                     decoder_layers=2, encoder_attention_heads=4,
                                     decoder_attention_heads=4, encoder_ffn_dim=64,
                                     decoder_ffn_dim=64, max_position_embeddings=64)  # fmt: skip
TRACE_LLAMA = transformers.LlamaConfig(vocab_size=320, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=2,
                                       max_position_embeddings=128)  # fmt: skip

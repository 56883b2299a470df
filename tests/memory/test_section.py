"""dialsum.memory.section: the architecture a plan starts from, refused clearly when it
cannot be built (issue 18, points 2, 7 and 10)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dialsum.cli.plan import plan_command
from dialsum.core.config_load import section_from_dict
from dialsum.core.errors import ConfigError
from dialsum.memory.section import section_model_config

T5 = {"model_type": "t5", "d_model": 8, "num_layers": 1, "num_heads": 2, "d_ff": 16, "d_kv": 4,
      "vocab_size": 64}  # fmt: skip


def _folder(tmp_path: Path, config) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        text = config if isinstance(config, str) else json.dumps(config)
        (folder / "config.json").write_text(text, encoding="utf-8")
    return str(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "has no config.json"),
        ([1, 2], "is not a JSON object"),
        ("{not json", "is not a valid JSON file"),
        ({"model_type": "bert", "hidden_size": 8}, "model_type 'bert' is not supported"),
        (T5 | {"d_model": -8}, "d_model: -8 is not a size"),
        (T5 | {"num_heads": 0}, "num_heads: 0 is not a size"),
    ],
)
def test_an_unusable_model_folder_is_one_clear_config_error(tmp_path, config, message) -> None:
    cfg = section_from_dict({"model": {"name": _folder(tmp_path, config)}})
    with pytest.raises(ConfigError, match=message):
        section_model_config(cfg)


def test_positions_beyond_bart_s_table_are_refused_before_planning() -> None:
    cfg = section_from_dict(
        {"model": {"name": "digit82/kobart-summarization"},
         "tokenizer": {"max_source_length": 2048}}
    )  # fmt: skip
    with pytest.raises(ConfigError, match="max_source_length: 2048 is above the 1026 positions"):
        section_model_config(cfg)


@pytest.mark.parametrize("lengths", [(0, 64), (512, 0), (-1, 64)])
def test_plan_model_with_a_zero_or_negative_length_is_refused(lengths) -> None:
    source_len, target_len = lengths
    with pytest.raises(ConfigError, match="must be >= 1"):
        plan_command(
            config=None, section=None, model="digit82/kobart-summarization", gpu="24GB",
            source_len=source_len, target_len=target_len, effective_batch=None, num_beams=None,
            num_gpus=1, data=None, overrides=[], buckets=False,
        )  # fmt: skip


def test_plan_honours_model_dropout_as_train_applies_it(tmp_path: Path) -> None:
    """Issue 18, point 16: dropout keeps a mask per activation for backward."""
    from dialsum.memory.section import plan_for_section

    bart = {"model_type": "bart", "d_model": 64, "encoder_layers": 2, "decoder_layers": 2,
            "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 128,
            "decoder_ffn_dim": 128, "vocab_size": 512, "max_position_embeddings": 256,
            "dropout": 0.1, "attention_dropout": 0.1, "activation_dropout": 0.1}  # fmt: skip
    name = _folder(tmp_path, bart)

    def peak(dropout: float | None) -> int:
        raw = {"model": {"name": name, "dropout": dropout},
               "tokenizer": {"max_source_length": 128, "max_target_length": 32},
               "training": {"effective_batch_size": 4, "micro_batch_size": 4}}  # fmt: skip
        cfg = section_from_dict(raw)
        config = section_model_config(cfg)
        if dropout is not None:
            assert (config.dropout, config.attention_dropout) == (dropout, dropout)
        return plan_for_section(cfg, config, gpu="cpu").predicted_peak_bytes

    assert peak(0.0) < peak(None) == peak(0.1)

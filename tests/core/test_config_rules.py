"""dialsum.core.config_rules: every field's value rules and combinations, checked when the
config loads, before anything runs (issue 18, points 2, 4 and 7)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from dialsum.core.config_load import load_section
from dialsum.core.config_rules import model_limit_problems
from dialsum.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.yaml"

# (override, the key the error must name): each was accepted and failed later (or ran
# silently wrong) before these rules.
BAD = [
    ("training.weight_decay=nan", "training.weight_decay"),
    ("training.weight_decay=.inf", "training.weight_decay"),
    ("training.learning_rate=.nan", "training.learning_rate"),
    ("training.weight_decay=-0.1", "training.weight_decay"),
    ("training.num_train_epochs=0", "training.num_train_epochs"),
    ("training.num_train_epochs=-1", "training.num_train_epochs"),
    ("training.max_steps=0", "training.max_steps"),
    ("training.max_steps=-2", "training.max_steps"),
    ("data.max_train_samples=-1", "data.max_train_samples"),
    ("data.max_train_samples=0", "data.max_train_samples"),
    ("data.max_eval_samples=0", "data.max_eval_samples"),
    ("inference.max_new_tokens=0", "inference.max_new_tokens"),
    ("inference.min_new_tokens=-1", "inference.min_new_tokens"),
    ("inference.min_new_tokens=500", "inference.min_new_tokens"),
    ("inference.no_repeat_ngram_size=-1", "inference.no_repeat_ngram_size"),
    ("inference.length_penalty=2.0", "inference.length_penalty"),  # tiny: num_beams 1? see below
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=-0.1", "model.dropout"),
    ("model.lora.rank=0", "model.lora.rank"),
    ("model.lora.alpha=0", "model.lora.alpha"),
    ("model.lora.dropout=1.5", "model.lora.dropout"),
    ("training.max_grad_norm=-1", "training.max_grad_norm"),
    ("training.label_smoothing=1.0", "training.label_smoothing"),
    ("training.label_smoothing=-0.1", "training.label_smoothing"),
    ("training.eval_steps=0", "training.eval_steps"),
    ("training.save_total_limit=0", "training.save_total_limit"),
    ("training.early_stopping_patience=0", "training.early_stopping_patience"),
    ("training.early_stopping_threshold=-1", "training.early_stopping_threshold"),
    ("training.seed=-1", "training.seed"),
    ("training.seed=4294967296", "training.seed"),
    ("training.dataloader_num_workers=-1", "training.dataloader_num_workers"),
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps"),
    ("training.output_dir=''", "training.output_dir"),
    ("data.train=''", "data.train"),
    ("tokenizer.name=''", "tokenizer.name"),
    ("tokenizer.special_tokens=['#Person1#', '#Person1#']", "tokenizer.special_tokens[1]"),
    ("hardware.offload=true", "hardware.offload"),
    ("hardware.memory_cap_gib=.inf", "hardware.memory_cap_gib"),
    ("hardware.memory_margin=.nan", "hardware.memory_margin"),
]


@pytest.mark.parametrize(("override", "key"), BAD)
def test_a_bad_value_is_refused_at_load_naming_its_key(override: str, key: str) -> None:
    extra = ["inference.num_beams=1"] if "length_penalty" in override else []
    with pytest.raises(ConfigError) as err:
        load_section(SHIPPED, "tiny", [override, *extra])
    assert f"{key}:" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        # transformers: load_best_model_at_end needs saves on evaluation points
        (
            ["training.eval_strategy=steps", "training.eval_steps=3",
             "training.save_strategy=steps", "training.save_steps=5"],
            "training.save_steps",
        ),
        # save_strategy epoch follows eval_strategy steps: save_steps 500 must be a multiple
        (
            ["training.eval_strategy=steps", "training.eval_steps=7",
             "training.save_strategy=epoch"],
            "training.save_steps",
        ),
        (["training.save_strategy=best", "training.eval_strategy=no"], "training.save_strategy"),
        (
            ["training.lr_scheduler_type=polynomial", "training.learning_rate=1e-8"],
            "training.learning_rate",
        ),
    ],
)  # fmt: skip
def test_combinations_the_libraries_refuse_are_refused_at_load(overrides, key) -> None:
    with pytest.raises(ConfigError) as err:
        load_section(SHIPPED, "tiny", overrides)
    assert f"{key}:" in str(err.value)


def test_good_edges_still_load() -> None:
    cfg = load_section(
        SHIPPED,
        "tiny",
        ["training.max_steps=1", "training.num_train_epochs=0", "data.max_train_samples=1",
         "inference.max_new_tokens=1", "training.seed=0", "training.weight_decay=0",
         "training.eval_strategy=steps", "training.eval_steps=5", "training.save_strategy=steps",
         "training.save_steps=10", "inference.num_beams=2", "inference.length_penalty=2.0"],
    )  # fmt: skip
    assert cfg.training.max_steps == 1 and cfg.data.max_train_samples == 1


def test_a_leading_tilde_is_the_home_folder_in_every_path_field() -> None:
    cfg = load_section(
        SHIPPED,
        "tiny",
        ["training.output_dir=~/runs", "data.train=~/a.csv", "data.dev=~/b.csv",
         "data.test=~/c.csv", "inference.output=~/sub.csv", "tokenizer.name=~/tok"],
    )  # fmt: skip
    home = os.path.expanduser("~")
    assert cfg.training.output_dir == f"{home}/runs"
    assert (cfg.data.train, cfg.data.dev, cfg.data.test) == (
        f"{home}/a.csv",
        f"{home}/b.csv",
        f"{home}/c.csv",
    )
    assert cfg.inference.output == f"{home}/sub.csv"
    assert cfg.tokenizer.name == f"{home}/tok"
    assert load_section(SHIPPED, "tiny", ["model.name=~/m"]).model.name == f"{home}/m"


def test_positions_beyond_a_bart_table_are_named_t5_has_no_table() -> None:
    cfg = load_section(
        SHIPPED, "tiny", ["tokenizer.max_source_length=2048", "inference.max_new_tokens=1025"]
    )
    bart = SimpleNamespace(model_type="bart", max_position_embeddings=1024)
    problems = model_limit_problems(cfg, bart)
    assert [p.split(":")[0] for p in problems] == [
        "tokenizer.max_source_length",
        "inference.max_new_tokens",
    ]
    t5 = SimpleNamespace(model_type="t5", max_position_embeddings=None)
    assert model_limit_problems(cfg, t5) == []

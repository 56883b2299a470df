from __future__ import annotations

from pathlib import Path

import pytest

from dialsum.core.config_load import deep_merge, load_section, parse_override, read_yaml
from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config.yaml"


@pytest.mark.parametrize("section", sorted(read_yaml(SHIPPED)["sections"]))
def test_every_shipped_section_validates(section: str) -> None:
    cfg = load_section(SHIPPED, section)
    assert isinstance(cfg, SectionConfig)
    assert cfg.model.name
    assert cfg.training.effective_batch_size >= 1


def test_shipped_sections_match_the_issue() -> None:
    assert set(read_yaml(SHIPPED)["sections"]) >= {"eenzeenee", "xlsum_mt5", "kobart", "tiny"}
    e = load_section(SHIPPED, "eenzeenee")
    assert e.model.name == "eenzeenee/t5-base-korean-summarization"
    assert e.tokenizer.prefix == "summarize: "
    assert (e.tokenizer.max_source_length, e.tokenizer.max_target_length) == (512, 64)
    m = load_section(SHIPPED, "xlsum_mt5")
    assert (m.tokenizer.max_source_length, m.tokenizer.max_target_length) == (512, 84)
    assert (m.inference.num_beams, m.inference.no_repeat_ngram_size) == (4, 2)
    k = load_section(SHIPPED, "kobart")
    assert (k.tokenizer.max_source_length, k.tokenizer.max_target_length) == (512, 100)


def test_inheritance_keeps_unnamed_keys() -> None:
    # kobart names only training.learning_rate; the defaults' other training keys survive.
    k = load_section(SHIPPED, "kobart")
    assert k.training.learning_rate == 5e-5
    assert k.training.effective_batch_size == 16
    assert k.training.warmup_ratio == 0.05


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_extends_chain(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
defaults: {training: {seed: 1, learning_rate: 1.0e-4}}
sections:
  base: {model: {name: tiny:t5}, training: {seed: 2}}
  child: {extends: base, training: {learning_rate: 2.0e-4}}
""",
    )
    c = load_section(path, "child")
    assert (c.model.name, c.training.seed, c.training.learning_rate) == ("tiny:t5", 2, 2e-4)


def test_all_problems_reported_at_once_with_suggestions(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
sections:
  s:
    model: {name: tiny:t5}
    training: {eval_stratgy: "no", learning_rate: fast, micro_batch_size: many}
    tokenizr: {}
""",
    )
    with pytest.raises(ConfigError) as info:
        load_section(path, "s")
    msg = str(info.value)
    assert "4 problem(s)" in msg
    assert "training.eval_stratgy: unknown key (did you mean eval_strategy?)" in msg
    assert "training.learning_rate: expected float" in msg
    assert "training.micro_batch_size: expected int or 'auto'" in msg
    assert "tokenizr: unknown key (did you mean tokenizer?)" in msg


def test_duplicate_keys_are_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sections:\n  s:\n    model: {name: a}\n    model: {name: b}\n",
    )
    with pytest.raises(ConfigError, match="duplicate key 'model' at line 4 \\(first at line 3\\)"):
        load_section(path, "s")


def test_unknown_section_suggests(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match="unknown section 'eenzenee' \\(did you mean eenzeenee\\?\\)"
    ):
        load_section(SHIPPED, "eenzenee")


def test_overrides_are_typed_and_relative_to_section() -> None:
    c = load_section(SHIPPED, "eenzeenee", ["training.learning_rate=3e-5", "inference.num_beams=2"])
    assert c.training.learning_rate == 3e-5
    assert c.inference.num_beams == 2
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("training.seed")


def test_micro_batch_must_divide_effective_batch() -> None:
    with pytest.raises(ConfigError, match="does not divide"):
        load_section(SHIPPED, "tiny", ["training.micro_batch_size=3"])
    with pytest.raises(ConfigError, match="gradient_accumulation_steps: 3 x"):
        load_section(
            SHIPPED,
            "tiny",
            ["training.micro_batch_size=4", "training.gradient_accumulation_steps=3"],
        )


def test_literal_values_are_checked() -> None:
    with pytest.raises(ConfigError, match="'bf61' is not one of"):
        load_section(SHIPPED, "tiny", ["training.precision=bf61"])


def test_deep_merge_does_not_mutate() -> None:
    base = {"a": {"b": 1, "c": 2}}
    out = deep_merge(base, {"a": {"b": 3}})
    assert out == {"a": {"b": 3, "c": 2}}
    assert base == {"a": {"b": 1, "c": 2}}


# -- --set never silently drops a block; warmup is a fraction ---------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.=1", "empty part in the key path"),
        (".seed=1", "empty part in the key path"),
        ("training=1", "training is a block; set one of its keys"),
        ("training.seed.x=1", "training.seed is a value"),
    ],
)
def test_overrides_that_would_drop_a_block_are_refused(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_section(ROOT / "config.yaml", "tiny", [override, "training.max_steps=5"])


def test_a_mapping_override_merges_into_the_block() -> None:
    # 3.0e-3: the tiny section's training.learning_rate in config.yaml (the defaults say
    # 5.0e-5), which a replaced training block would have lost.
    merged = load_section(ROOT / "config.yaml", "tiny", ["training={}", "training.max_steps=5"])
    assert merged.training.learning_rate == 3e-3
    assert merged.training.max_steps == 5
    seeded = load_section(ROOT / "config.yaml", "tiny", ["training={seed: 7}"])
    assert (seeded.training.seed, seeded.training.learning_rate) == (7, 3e-3)


@pytest.mark.parametrize("ratio", [1.0, 1.5, -0.1])
def test_warmup_ratio_must_be_a_fraction(ratio) -> None:
    with pytest.raises(ConfigError, match="training.warmup_ratio: a fraction"):
        load_section(ROOT / "config.yaml", "tiny", [f"training.warmup_ratio={ratio}"])


def test_empty_yaml_and_cycles_are_explained(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="has no sections"):
        load_section(empty, "tiny")
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("sections:\n  a: {extends: b}\n  b: {extends: a}\n")
    with pytest.raises(ConfigError, match="forms a cycle: a -> b -> a"):
        load_section(cyclic, "a")


def test_a_directory_is_not_reported_as_missing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_section(tmp_path, "tiny")

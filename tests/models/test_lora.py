"""LoRA adapters: only they train, the T5 head stays untied, mT5 gets T5's module names."""

from __future__ import annotations

import pytest

from dialsum.core.errors import ConfigError
from dialsum.models.lora import apply_lora
from dialsum.models.tiny import build_tiny_model


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_lora_trains_only_adapters(family: str, texts: list[str]) -> None:
    model, _ = build_tiny_model(texts, family=family, vocab_size=500)
    peft_model = apply_lora(model, rank=4, alpha=8)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_" in n for n in trainable)
    if family == "t5":
        base = peft_model.get_base_model()
        assert base.lm_head.weight is not base.shared.weight


@pytest.mark.parametrize("model_type", ["mt5", "umt5"])
def test_lora_gives_mt5_the_t5_attention_names(model_type: str, texts: list[str]) -> None:
    model, _ = build_tiny_model(texts, family="t5", vocab_size=500)
    model.config.model_type = model_type  # mT5's modules are named as T5's
    peft_model = apply_lora(model, rank=4, alpha=8)
    # e.g. base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.default.weight
    names = [n for n, _ in peft_model.named_parameters() if n.endswith(".lora_A.default.weight")]
    assert {name.split(".")[-4] for name in names} == {"q", "k", "v", "o"}


def test_lora_unknown_family_needs_targets(texts: list[str]) -> None:
    model, _ = build_tiny_model(texts, family="t5", vocab_size=500)
    model.config.model_type = "mystery"
    with pytest.raises(ConfigError, match="target_modules"):
        apply_lora(model)

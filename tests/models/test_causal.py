"""Causal LMs: kind resolution, tiny:llama, LoRA adapters saved and put back on the base,
and a QLoRA step on CPU with real bitsandbytes 4-bit layers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from dialsum.core.config_schema import ModelConfig, QuantizationConfig
from dialsum.core.errors import ConfigError
from dialsum.core.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import known_config
from dialsum.models.causal import (
    compute_dtype,
    is_adapter_folder,
    load_adapters,
    load_causal_model,
    prepare_causal_tokenizer,
    prepare_for_kbit,
    resolve_kind,
)
from dialsum.models.loading import load_tokenizer, save_pretrained
from dialsum.models.lora import apply_lora
from dialsum.models.tiny import build_tiny_model, tiny_config, train_tiny_tokenizer
from dialsum.step.train_step import build_optimizer, step_forward_backward

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
needs_bnb = pytest.mark.skipif(
    not HAS_BNB, reason="bitsandbytes not installed (uv sync --extra bnb)"
)


TEXTS = [
    "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요.",
    "#Person2#: 네, 산책하기 좋은 날이에요.",
    "두 사람은 날씨와 산책에 대해 이야기한다.",
]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, tokenizer = build_tiny_model(TEXTS, family="llama", vocab_size=300)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def load(folder: Path, quantization: QuantizationConfig | None = None):
    tokenizer = prepare_causal_tokenizer(load_tokenizer(str(folder)))
    return load_causal_model(str(folder), tokenizer, quantization=quantization), tokenizer


def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two right-padded rows of prompt + summary, labels on the last 3 tokens of each."""
    rows = [tokenizer("#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요.")["input_ids"],
            tokenizer("#Person2#: 네, 산책하기 좋은 날이에요.")["input_ids"]]  # fmt: skip
    width = max(map(len, rows))
    ids = torch.full((2, width), tokenizer.pad_token_id)
    mask = torch.zeros(2, width, dtype=torch.long)
    labels = torch.full((2, width), -100)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, len(row) - 3 : len(row)] = torch.tensor(row[-3:])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_kind_follows_the_config_and_model_kind_is_checked() -> None:
    llama = tiny_config("llama", 100)
    t5 = known_config("eenzeenee/t5-base-korean-summarization")
    assert resolve_kind(ModelConfig(name="x"), llama) == "causal"
    assert resolve_kind(ModelConfig(name="x"), t5) == "seq2seq"
    with pytest.raises(ConfigError, match="model.kind: causal, but x is a seq2seq model"):
        resolve_kind(ModelConfig(name="x", kind="causal"), t5)
    with pytest.raises(ConfigError, match="model.method: qlora is not supported for x"):
        resolve_kind(ModelConfig(name="x", method="qlora"), t5)


def test_compute_dtype_auto_is_fp32_on_cpu() -> None:
    assert compute_dtype("auto", "cpu") == torch.float32
    assert compute_dtype("bf16", "cpu") == torch.bfloat16


def test_lora_adapters_round_trip_through_save_and_load(tiny_llama_dir: Path, tmp_path) -> None:
    model, tokenizer = load(tiny_llama_dir)
    markers = [tokenizer.convert_tokens_to_ids("#Person1#")]
    peft_model = apply_lora(model, causal=True, trainable_token_indices=markers)
    # all-linear: every projection of attention and MLP, not the head.
    targeted = {n.split(".")[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert targeted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    with torch.no_grad():  # trained adapters and marker row (B starts at zero: no effect)
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    inputs = batch(tokenizer)
    del inputs["labels"]
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    folder = tmp_path / "best"
    peft_model.save_pretrained(str(folder))
    assert is_adapter_folder(folder) and not (folder / "config.json").exists()
    base, _ = load(tiny_llama_dir)
    with torch.no_grad():
        before = base(**inputs).logits
    restored = load_adapters(base, folder).eval()
    with torch.no_grad():
        got = restored(**inputs).logits
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(before, expected)  # the adapters did change the output


@needs_bnb
def test_a_qlora_step_runs_on_cpu_with_real_4bit_layers(tiny_llama_dir: Path) -> None:
    import bitsandbytes as bnb

    model, tokenizer = load(tiny_llama_dir, QuantizationConfig())
    linear = [m for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    assert linear and all(isinstance(m, bnb.nn.Linear4bit) for m in linear)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)  # the head stays unquantized
    assert linear[0].weight.dtype == torch.uint8  # packed: two 4-bit values per byte
    model = prepare_for_kbit(model, gradient_checkpointing=True)
    four_bit = {id(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)}
    others = [p for p in model.parameters() if id(p) not in four_bit]
    assert others and all(p.dtype == torch.float32 for p in others)
    assert not any(p.requires_grad for p in model.parameters())
    model = apply_lora(model, causal=True)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = build_optimizer(model, "adamw", lr=1e-2)
    model.train()
    inputs = batch(tokenizer)
    tokens = float((inputs["labels"][:, 1:] != -100).sum())
    loss = step_forward_backward(model, inputs, 1, tokens, causal=True)
    assert torch.isfinite(loss)
    grads = [p.grad for p in trainable.values()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer.step()
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())


def test_marker_rows_added_to_a_base_train_and_travel_with_the_adapters(tmp_path: Path) -> None:
    """A real LLM's tokenizer lacks the speaker/PII markers: loading adds them and grows the
    embedding, every new row at the mean of the old ones - #Person1# and #Person2# the same
    vector. They train as trainable tokens and are saved with the adapters, so base +
    adapters reproduces the trained model, markers told apart."""
    plain = train_tiny_tokenizer(TEXTS, family="llama", vocab_size=300, special_tokens=())
    folder = tmp_path / "base"
    base_model = AutoModelForCausalLM.from_config(tiny_config("llama", len(plain)))
    save_pretrained(base_model, plain, folder)
    base, tokenizer = load(folder)  # load_tokenizer adds the markers; the embedding grows
    markers = [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    assert min(markers) >= len(plain)  # all new rows
    ids = torch.tensor(markers[:2])  # #Person1#, #Person2#

    def marker_rows(model) -> torch.Tensor:
        with torch.no_grad():
            return model.get_input_embeddings()(ids)

    untrained = marker_rows(base)
    torch.testing.assert_close(untrained[0], untrained[1], rtol=0, atol=1e-3)
    peft_model = apply_lora(base, causal=True, trainable_token_indices=markers)
    with torch.no_grad():  # "training": adapters and marker rows move
        for param in peft_model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    trained = marker_rows(peft_model)
    assert (trained[0] - trained[1]).abs().max() > 0.05
    inputs = batch(tokenizer)
    del inputs["labels"]
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**inputs).logits
    peft_model.save_pretrained(str(tmp_path / "best"))
    again, _ = load(folder)
    restored = load_adapters(again, tmp_path / "best").eval()
    torch.testing.assert_close(marker_rows(restored), trained)
    with torch.no_grad():
        torch.testing.assert_close(restored(**inputs).logits, expected)

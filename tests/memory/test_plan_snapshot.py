"""Planner outputs pinned: a refactor or speed-up must not change a single answer.

Every case is a ``make_plan`` (or ``bucket_table``) call over the three built-in
architectures, every catalog GPU and many request variants, against the exact analytic
``FakeSimulator`` of ``test_plan``; a few more trace tiny T5/BART models for real. The
snapshot stores a digest of each case's full JSON output (``plan.json``'s dict), so a
failure names the cases that changed. Regenerate only when an answer is meant to change:
``DIALSUM_WRITE_SNAPSHOT=1 uv run pytest tests/memory/test_plan_snapshot.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_plan import FakeSimulator
from transformers import BartConfig, T5Config

from dialsum.core.errors import ConfigError
from dialsum.memory.overheads import Overheads
from dialsum.memory.plan import bucket_table, make_plan
from dialsum.memory.request import PlanRequest
from dialsum.models.architectures import known_config
from dialsum.speed.gpus import catalog, resolve_gpu

SNAPSHOT = Path(__file__).parent / "snapshots" / "plan_outputs.json"

MODELS = {
    "t5": "eenzeenee/t5-base-korean-summarization",
    "mt5": "csebuetnlp/mT5_multilingual_XLSum",
    "bart": "digit82/kobart-summarization",
}

# Request variants: each is applied on top of (512 source, 64 target, effective batch 32).
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "short": {"source_len": 256, "target_len": 32},
    "long": {"source_len": 1024, "target_len": 128, "effective_batch_size": 64},
    "ddp2": {"world_size": 2},
    "ddp4_b64": {"world_size": 4, "effective_batch_size": 64},
    "micro4": {"micro_batch_size": 4},
    "ckpt_on": {"gradient_checkpointing": True},
    "ckpt_off": {"gradient_checkpointing": False},
    "adafactor": {"optimizer": "adafactor"},
    "sgd": {"optimizer": "sgd"},
    "fp32": {"precision": "fp32"},
    "beams1": {"num_beams": 1, "max_new_tokens": 100},
    "eval8": {"eval_batch_size": 8},
    "lora": {"lora": True, "lora_rank": 16},
    "zero2": {"world_size": 2, "zero_stage": 2},
    "zero3_offload": {"world_size": 2, "zero_stage": 3, "offload": True},
    "no_fallbacks": {"fallbacks": ()},
    "lengths": {"data_lengths": [(100 + 37 * i % 900, 20 + i % 90) for i in range(200)]},
}


def _request(model: str, variant: dict[str, Any]) -> PlanRequest:
    values: dict[str, Any] = {
        "model_config": known_config(MODELS[model]),
        "source_len": 512,
        "target_len": 64,
        "effective_batch_size": 32,
    }
    values.update(variant)
    return PlanRequest(**values)


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        result = call()
    except ConfigError as exc:
        return {"error": str(exc)}
    return result.to_json_dict() if hasattr(result, "to_json_dict") else result


def _cases() -> Iterator[tuple[str, Callable[[], Any]]]:
    overheads = Overheads()
    for model in MODELS:
        for name, variant in VARIANTS.items():
            for gpu in catalog():
                request = _request(model, variant)
                simulator = FakeSimulator().as_simulator()
                yield (
                    f"plan/{model}/{name}/{gpu.slug}",
                    lambda r=request, g=gpu, s=simulator: make_plan(r, g, overheads, s),
                )
        for gpu in catalog():
            request = _request(model, {})
            simulator = FakeSimulator().as_simulator()
            yield (
                f"buckets/{model}/{gpu.slug}",
                lambda r=request, g=gpu, s=simulator: bucket_table(r, g, overheads, s),
            )
    # Real traces of tiny models (the default simulator, no fake).
    tiny = {
        "tiny_t5": T5Config(
            vocab_size=512,
            d_model=64,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_heads=4,
            decoder_start_token_id=0,
            tie_word_embeddings=False,
        ),
        "tiny_bart": BartConfig(
            vocab_size=512,
            d_model=64,
            encoder_layers=2,
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=256,
        ),
    }
    for name, config in tiny.items():
        for slug in ("t4-16gb", "a100-40gb"):
            request = PlanRequest(
                model_config=config, source_len=128, target_len=32, effective_batch_size=8
            )
            gpu = resolve_gpu(slug)
            yield (
                f"traced/{name}/{slug}",
                lambda r=request, g=gpu: make_plan(r, g, overheads),
            )


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def test_planner_outputs_match_snapshot(monkeypatch) -> None:
    # The ladder offers 8-bit AdamW only where bitsandbytes is installed; the snapshot was
    # recorded without it, so pin that answer whatever this environment has.
    import dialsum.step.train_step as train_step

    real = train_step.optimizer_available
    monkeypatch.setattr(
        train_step, "optimizer_available", lambda name: name != "adamw8bit" and real(name)
    )
    got = {name: _digest(_outcome(call)) for name, call in _cases()}
    if os.environ.get("DIALSUM_WRITE_SNAPSHOT") == "1":
        SNAPSHOT.write_text(json.dumps(got, indent=0, sort_keys=True) + "\n")
        pytest.skip(f"wrote {len(got)} cases to {SNAPSHOT}")
    expected = json.loads(SNAPSHOT.read_text())
    changed = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
    assert not changed, f"{len(changed)} of {len(expected)} planner outputs changed: {changed[:20]}"

"""A merged section mapping -> a typed, validated ``SectionConfig``.

Validation happens once, here, at the edge: unknown keys, wrong types and cross-field rules
(``_check_semantics``) are all collected and reported together, each with its key path and,
where it helps, a suggestion ("did you mean eval_strategy?"). ``config_load`` reads the YAML
and merges the section; duplicate keys and unknown sections are reported there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import importlib.util
import math
import os
import types
import typing
from typing import Any, Literal, Union

from dialsum.core.config_rules import PATH_FIELDS, check_blocks
from dialsum.core.config_schema import SectionConfig, TrainingConfig
from dialsum.core.errors import ConfigError


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def suggest(word: str, options: list[str]) -> str:
    """`` (did you mean X?)`` for the option closest to a mistyped ``word``, else ""."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def _coerce(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` against annotation ``tp``; return the typed value or record an error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path, errors)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value is False and "no" in allowed:
            return "no"  # YAML 1.1 reads an unquoted `no` as false
        if value in allowed and type(value) in {type(a) for a in allowed}:
            return value
        hint = suggest(str(value), [str(a) for a in allowed])
        errors.append(f"{path}: {value!r} is not one of {_type_name(tp)}{hint}")
        return None
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            trial: list[str] = []
            result = _coerce(value, option, path, trial)
            if not trial:
                return result
        errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {value!r}")
            return None
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        errors.append(f"{path}: expected null, got {value!r}")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None and math.isfinite(number):
            return number
        if number is not None:  # .nan / .inf reach torch as a silent NaN run
            errors.append(f"{path}: expected a finite number, got {value!r}")
            return None
    elif tp is str and isinstance(value, str):
        return value
    errors.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
    return None


def _build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{path}: expected a mapping, got {raw!r}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            errors.append(f"{key_path}: unknown key{suggest(str(key), list(fields))}")
            continue
        kwargs[key] = _coerce(value, hints[key], key_path, errors)
        if key in PATH_FIELDS.get(path, ()) and isinstance(kwargs[key], str):
            kwargs[key] = os.path.expanduser(kwargs[key])  # the shell leaves ``=~/x`` alone
    return cls(**{k: v for k, v in kwargs.items() if v is not None or _allows_none(hints[k])})


def _allows_none(tp: Any) -> bool:
    return type(None) in typing.get_args(tp)


def _check_semantics(cfg: SectionConfig, errors: list[str]) -> None:
    """Cross-field rules that types alone cannot express."""
    t, tok, inf = cfg.training, cfg.tokenizer, cfg.inference
    if not cfg.model.name:
        errors.append("model.name: required (a hub id, a local directory, or tiny:t5)")
    positive = {
        "training.effective_batch_size": t.effective_batch_size,
        "tokenizer.max_source_length": tok.max_source_length,
        "tokenizer.max_target_length": tok.max_target_length,
        "inference.num_beams": inf.num_beams,
        "training.logging_steps": t.logging_steps,
        "training.save_steps": t.save_steps,
    }
    if t.micro_batch_size != "auto":
        positive["training.micro_batch_size"] = t.micro_batch_size
    if t.eval_batch_size != "auto":
        positive["training.eval_batch_size"] = t.eval_batch_size
    if inf.batch_size != "auto":
        positive["inference.batch_size"] = inf.batch_size
    for key, value in positive.items():
        if value is not None and value < 1:
            errors.append(f"{key}: must be >= 1, got {value}")
    if not 0 <= t.warmup_ratio < 1:
        errors.append(
            f"training.warmup_ratio: a fraction of the training steps in [0, 1), got "
            f"{t.warmup_ratio} (0.05 = the first 5% of steps warm up)"
        )
    if not 0 < t.learning_rate < 1:
        errors.append(f"training.learning_rate: expected a value in (0, 1), got {t.learning_rate}")
    if not 0 <= cfg.hardware.memory_margin < 0.5:
        errors.append("hardware.memory_margin: expected a fraction in [0, 0.5)")
    cap = cfg.hardware.memory_cap_gib
    if cap is not None and not cap > 0:
        errors.append(f"hardware.memory_cap_gib: expected a size in GiB > 0, got {cap}")
    if t.eval_strategy == "steps" and not t.eval_steps:
        errors.append("training.eval_steps: required when training.eval_strategy is 'steps'")
    _check_batch_split(t, errors)
    check_blocks(cfg, errors)
    check_model_method(cfg, errors)
    for name in t.report_to:
        if name not in ("tensorboard", "wandb", "none"):
            hint = suggest(name, ["tensorboard", "wandb", "none"])
            errors.append(f"training.report_to: unknown logger {name!r}{hint}")


def _check_batch_split(t: TrainingConfig, errors: list[str]) -> None:
    """A set micro-batch must divide the effective batch; an asserted accumulation must be
    possible for some GPU count (see ``TrainingConfig.gradient_accumulation_steps``)."""
    if t.micro_batch_size != "auto" and t.micro_batch_size >= 1:
        if t.effective_batch_size % t.micro_batch_size:
            errors.append(
                f"training.micro_batch_size: {t.micro_batch_size} does not divide "
                f"training.effective_batch_size {t.effective_batch_size}; pick a divisor so "
                "the effective batch stays exact"
            )
        elif (
            t.gradient_accumulation_steps is not None
            and t.gradient_accumulation_steps >= 1
            and t.effective_batch_size % (t.gradient_accumulation_steps * t.micro_batch_size)
        ):
            # The exact check needs the GPU count and the micro-batch the run ends up with
            # (planned when auto, fitted to the rows per process, or kept from an OOM
            # recovery): ``BatchGeometry.build`` in ``settings.resolve_settings``, at run
            # start. Here only what no GPU count can satisfy.
            errors.append(
                f"training.gradient_accumulation_steps: {t.gradient_accumulation_steps} x "
                f"micro_batch_size {t.micro_batch_size} does not divide effective_batch_size "
                f"{t.effective_batch_size} for any number of GPUs; remove "
                "gradient_accumulation_steps (it is derived)"
            )


SUPPORTED_METHODS = (
    "seq2seq models (T5, mT5, BART) train with model.method full or lora; causal LMs "
    "(model.kind: causal - Llama, Qwen2, Gemma2, Mistral style) with full, lora or qlora"
)


def check_model_method(cfg: SectionConfig, errors: list[str]) -> None:
    """Model kind, training method, LoRA targets, quantization and prompt: the rules the
    config alone can decide (the kind ``auto`` resolves to is checked when the model's
    config is read, ``models.causal.resolve_kind``). On success ``lora.enabled: true``
    becomes ``model.method: lora`` and ``lora.enabled`` agrees with a set method, so every
    reader sees one answer (``ModelConfig.training_method``: unset = full)."""
    m, tok = cfg.model, cfg.tokenizer
    if m.method == "full" and m.lora.enabled:
        errors.append(
            "model.method: full disagrees with model.lora.enabled: true; remove one of them "
            "(model.method: lora trains adapters, model.method: full trains every weight)"
        )
    method = m.training_method
    tiny_family = m.name[len("tiny:") :] if m.name.startswith("tiny:") else None
    kind = m.kind
    if kind == "auto" and tiny_family is not None:
        kind = "causal" if tiny_family == "llama" else "seq2seq"
    if tiny_family in ("t5", "bart") and m.kind == "causal":
        errors.append(f"model.kind: causal, but {m.name} is a seq2seq model; use tiny:llama")
    if tiny_family == "llama" and m.kind == "seq2seq":
        errors.append("model.kind: seq2seq, but tiny:llama is a causal LM; use tiny:t5")
    if method == "qlora":
        if kind == "seq2seq":
            errors.append(f"model.method: qlora is not supported for {m.name}: {SUPPORTED_METHODS}")
        if importlib.util.find_spec("bitsandbytes") is None:
            errors.append(
                "model.method: qlora needs the bitsandbytes package: run "
                "`uv sync --extra bnb` (or train with model.method: lora)"
            )
        if cfg.hardware.zero_stage:
            errors.append(
                "model.method: qlora with hardware.zero_stage > 0 is not supported; set "
                "hardware.zero_stage: 0 (a 4-bit base with adapters rarely needs DeepSpeed)"
            )
    if m.lora.target_modules is not None and not m.lora.target_modules:
        errors.append(
            "model.lora.target_modules: empty; name the modules to adapt (e.g. [q_proj, "
            "v_proj]), write all-linear, or remove the key for the default"
        )
    if kind == "causal" and tok.prefix:
        errors.append(
            f"tokenizer.prefix: {tok.prefix!r} is for seq2seq models; a causal LM reads "
            "tokenizer.prompt_template (the instruction around {dialogue}): remove the prefix"
        )
    if tok.prompt_template.count("{dialogue}") != 1:
        errors.append(
            "tokenizer.prompt_template: must contain {dialogue} exactly once (where the "
            f"dialogue goes), got {tok.prompt_template!r}"
        )
    if not errors:
        # ``lora.enabled`` spelled the method before ``model.method`` existed. An unset
        # method stays unset otherwise: the planner may pick one (memory.ladder).
        if m.method is None and m.lora.enabled:
            m.method = "lora"
        if m.method is not None:
            m.lora.enabled = m.method != "full"


def typed_section(
    raw: dict[str, Any], where: str, errors: list[str] | None = None
) -> SectionConfig:
    """``raw`` (a merged section mapping) as a ``SectionConfig``, or one ``ConfigError``
    listing every problem, ``errors`` (found by the caller) first, headed by ``where``."""
    errors = list(errors or [])
    cfg = _build(SectionConfig, raw, "", errors)
    if not errors:
        _check_semantics(cfg, errors)
    if errors:
        listing = "\n  - ".join(errors)
        raise ConfigError(f"{where}: {len(errors)} problem(s):\n  - {listing}")
    return cfg

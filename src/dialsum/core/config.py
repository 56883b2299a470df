"""Typed, strict configuration: one YAML file, several named sections.

Layout of ``config.yaml``::

    defaults:            # every section starts from these values
      training: {...}
    sections:
      eenzeenee:
        extends: t5_base # optional: start from another section (which starts from defaults)
        model: {...}

Each section has the blocks ``model``, ``tokenizer``, ``data``, ``training``, ``inference``
and ``hardware``. Inheritance is explicit and deep: a section only replaces the keys it
names, nothing is dropped (unlike YAML ``<<`` merges, which replace whole mappings).

Validation happens once, here, at the edge: unknown keys, wrong types, duplicate YAML
keys and unknown sections are all collected and reported together, each with its key
path and, where it helps, a suggestion ("did you mean eval_strategy?").
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dialsum.core.errors import ConfigError
from dialsum.data.tokens import SPECIAL_TOKENS

Auto = Literal["auto"]


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with a help text (shown by ``dialsum config --help``-style docs)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class LoraConfig:
    enabled: bool = _f(False, "Train LoRA adapters on attention q,k,v,o instead of all weights.")
    rank: int = _f(8, "LoRA rank r.")
    alpha: int = _f(16, "LoRA scaling alpha.")
    dropout: float = _f(0.05, "Dropout on the LoRA path.")


@dataclass
class ModelConfig:
    name: str = _f("", "Hub id, local directory, or tiny:t5 / tiny:bart (built offline).")
    trust_remote_code: bool = _f(False, "Run model code from the hub repository (off: safer).")
    dropout: float | None = _f(None, "Override every dropout probability of the model.")
    lora: LoraConfig = field(default_factory=LoraConfig)


@dataclass
class TokenizerConfig:
    name: str | None = _f(None, "Tokenizer id or directory; defaults to model.name.")
    prefix: str = _f("", "Text put before every dialogue, e.g. 'summarize: ' for T5.")
    max_source_length: int = _f(512, "Encoder tokens kept per dialogue (longer is truncated).")
    max_target_length: int = _f(64, "Decoder tokens kept per summary (longer is truncated).")
    special_tokens: list[str] = _f(list(SPECIAL_TOKENS), "Tokens never split (speakers, PII).")


@dataclass
class DataConfig:
    train: str = _f("data/sample/train.csv", "Training CSV: fname, dialogue, summary[, topic].")
    dev: str = _f("data/sample/dev.csv", "Validation CSV with reference summaries.")
    test: str = _f("data/sample/test.csv", "Test CSV: fname, dialogue.")
    max_train_samples: int | None = _f(None, "Use only the first N training rows.")
    max_eval_samples: int | None = _f(None, "Evaluate on the first N validation rows only.")


@dataclass
class WandbConfig:
    project: str | None = _f(None, "W&B project; setting it turns W&B logging on.")
    mode: Literal["online", "offline", "disabled"] = _f("offline", "W&B mode.")


@dataclass
class TrainingConfig:
    output_dir: str = _f("runs", "Folder that holds one sub-folder per run.")
    effective_batch_size: int = _f(16, "Rows per optimizer step over all GPUs (your intent).")
    micro_batch_size: int | Auto = _f("auto", "Rows per forward pass per GPU; auto = planner.")
    gradient_accumulation_steps: int | None = _f(
        None,
        "Derived: effective / (micro x GPUs). Set only to assert it (checked with the GPU count).",
    )
    eval_batch_size: int | Auto = _f("auto", "Rows per evaluation generate() call.")
    num_train_epochs: float = _f(3.0, "Epochs (ignored when max_steps > 0).")
    max_steps: int = _f(-1, "Optimizer steps; -1 = use num_train_epochs.")
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.0, "Fraction of steps for linear warm-up.")
    lr_scheduler_type: Literal[
        "linear", "cosine", "constant", "constant_with_warmup", "polynomial"
    ] = _f("linear", "Learning-rate schedule.")
    optimizer: Literal["auto", "adamw", "adamw_foreach", "adafactor", "adamw8bit", "sgd"] = _f(
        "auto",
        "auto = fused AdamW, which the planner may replace by Adafactor when memory is short; "
        "a named optimizer is kept (adamw8bit needs `uv sync --extra bnb`).",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "auto = bf16 where the GPU has it, else fp32 (T5) / fp16 (BART)."
    )
    allow_fp16_for_t5: bool = _f(False, "Let fp16 be used for T5/mT5 (known to give NaN).")
    gradient_checkpointing: bool | Auto = _f("auto", "Recompute activations in backward.")
    group_by_length: bool = _f(True, "Batch rows of similar length (less padding).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    label_smoothing: float = _f(0.0, "Label smoothing factor.")
    eval_strategy: Literal["no", "steps", "epoch"] = _f("epoch", "When to evaluate.")
    eval_steps: int | None = _f(None, "Evaluate every N steps (eval_strategy: steps).")
    save_strategy: Literal["no", "steps", "epoch", "best"] = _f("epoch", "When to checkpoint.")
    save_steps: int = _f(500, "Checkpoint every N steps (save_strategy: steps).")
    save_total_limit: int | None = _f(2, "Keep at most N checkpoints (the best is kept).")
    logging_steps: int = _f(10, "Log every N steps.")
    early_stopping_patience: int | None = _f(None, "Stop after N evaluations without gain.")
    early_stopping_threshold: float = _f(0.0, "Minimum score gain that counts.")
    metric_for_best_model: Literal["score", "rouge1", "rouge2", "rougeL", "loss"] = _f(
        "score", "Metric that picks the best checkpoint (score = mean ROUGE F1 x 100)."
    )
    seed: int = _f(42, "Random seed.")
    report_to: list[str] = _f(["tensorboard"], "Loggers: tensorboard, wandb, none.")
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.")


@dataclass
class InferenceConfig:
    batch_size: int | Auto = _f("auto", "Rows per generate() call; auto = planner.")
    num_beams: int = _f(4, "Beam search width.")
    max_new_tokens: int | None = _f(None, "Longest summary; default tokenizer.max_target_length.")
    min_new_tokens: int = _f(0, "Shortest summary in tokens.")
    no_repeat_ngram_size: int = _f(0, "Forbid repeating n-grams of this size (0 = off).")
    length_penalty: float = _f(1.0, "Beam length penalty (>1 favours longer).")
    early_stopping: bool = _f(True, "Stop beams when num_beams finished candidates exist.")
    output: str | None = _f(None, "Submission CSV; default <run>/submission.csv.")


@dataclass
class HardwareConfig:
    gpu: str = _f("auto", "auto = detected GPU; or a slug (a100-40gb) or a size (24GB).")
    memory_margin: float = _f(0.05, "Fraction of GPU memory kept free as a safety margin.")
    cpu: bool = _f(False, "Force CPU even when a GPU exists.")
    zero_stage: Literal[0, 1, 2, 3] = _f(0, "DeepSpeed ZeRO stage; 0 = no DeepSpeed.")
    offload: bool = _f(False, "DeepSpeed: offload optimizer state (and stage-3 params) to CPU.")
    memory_cap_gib: float | None = _f(
        None,
        "CPU runs only: emulate a device of this many GiB - plan against it and raise an "
        "out-of-memory error when live tensors would exceed it (checks plans without a GPU).",
    )


@dataclass
class SectionConfig:
    """One resolved section: the settings of one model/recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    name: str = field(default="", metadata={"internal": True})
    source: str = field(default="", metadata={"internal": True})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("name")
        data.pop("source")
        return data

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name or self.model.name

    @property
    def max_new_tokens(self) -> int:
        return self.inference.max_new_tokens or self.tokenizer.max_target_length


# ---------------------------------------------------------------------------- YAML reading


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys instead of silently keeping the last one."""

    duplicate_keys: list[str]


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            loader.duplicate_keys.append(
                f"duplicate key '{key}' at line {line} (first at line {seen[key]}); "
                "remove one of them"
            )
        else:
            seen[key] = line
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path) -> dict[str, Any]:
    """Parse ``path``; duplicate keys and syntax errors become one ConfigError."""
    if path.is_dir():
        raise ConfigError(f"{path} is a directory; pass -c/--config PATH to a YAML file.")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass -c/--config PATH to a YAML file.")
    loader = _StrictLoader(_config_text(path))
    loader.duplicate_keys = []
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if loader.duplicate_keys:
        raise ConfigError(f"{path}:\n  - " + "\n  - ".join(loader.duplicate_keys))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with 'sections:'.")
    _check_top_blocks(path, root, data)
    return data


def _config_text(path: Path) -> str:
    """The file as text. YAML is UTF-8; a CP949 file (saved by a Korean Windows editor) is
    named as such rather than decoded by guess, since other YAML tools would misread it."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        try:
            raw.decode("cp949")
            found = "it looks CP949/EUC-KR encoded"
        except UnicodeDecodeError:
            found = "it is neither UTF-8 nor CP949 text"
        raise ConfigError(
            f"{path}: line {line}: not UTF-8 ({found}); re-save the file as UTF-8 "
            "(in Notepad: Save as, Encoding UTF-8)"
        ) from None


_BLOCK_EXAMPLES = {
    "sections": "sections:\n  tiny:\n    model: {name: tiny:t5}",
    "defaults": "defaults:\n  training: {seed: 42}",
}


def _check_top_blocks(path: Path, root: yaml.Node | None, data: dict[str, Any]) -> None:
    """``sections`` and ``defaults`` must be mappings; a YAML list ('- name:') is the usual
    slip, and would otherwise surface as a TypeError deep inside the merge."""
    pairs = root.value if isinstance(root, yaml.MappingNode) else []
    lines = {k.value: k.start_mark.line + 1 for k, _ in pairs if isinstance(k, yaml.ScalarNode)}
    for key, example in _BLOCK_EXAMPLES.items():
        value = data.get(key)
        if value is None or isinstance(value, dict):
            continue
        kind = "a list" if isinstance(value, list) else f"a {type(value).__name__}"
        raise ConfigError(
            f"{path}: line {lines.get(key, '?')}: '{key}' must be a mapping of names to "
            f"blocks, not {kind} (no '-' before the names); write it as:\n{example}"
        )


# ---------------------------------------------------------------------------- validation


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


def _suggest(word: str, options: list[str]) -> str:
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
        hint = _suggest(str(value), [str(a) for a in allowed])
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
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-5" as a string
            try:
                return float(value)
            except ValueError:
                pass
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
            errors.append(f"{key_path}: unknown key{_suggest(str(key), list(fields))}")
            continue
        kwargs[key] = _coerce(value, hints[key], key_path, errors)
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
            # The exact check needs the GPU count (geometry.BatchGeometry.build, at run
            # time); here only what no GPU count can satisfy.
            errors.append(
                f"training.gradient_accumulation_steps: {t.gradient_accumulation_steps} x "
                f"micro_batch_size {t.micro_batch_size} does not divide effective_batch_size "
                f"{t.effective_batch_size} for any number of GPUs; remove "
                "gradient_accumulation_steps (it is derived)"
            )
    for name in t.report_to:
        if name not in ("tensorboard", "wandb", "none"):
            hint = _suggest(name, ["tensorboard", "wandb", "none"])
            errors.append(f"training.report_to: unknown logger {name!r}{hint}")


# ---------------------------------------------------------------------------- merging


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``; nested mappings merge key by key, nothing is dropped."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve_raw(doc: dict[str, Any], name: str, path: Path, chain: tuple[str, ...] = ()) -> dict:
    sections = doc.get("sections") or {}
    if not sections:
        raise ConfigError(
            f"{path} has no sections (is the file empty?): add a 'sections:' mapping with "
            f"a section named '{name}' (see the project's config.yaml for an example)"
        )
    if name not in sections:
        names = sorted(sections)
        raise ConfigError(
            f"{path}: unknown section '{name}'{_suggest(name, names)}. "
            f"Available sections: {', '.join(names)}"
        )
    if name in chain:
        loop = " -> ".join((*chain, name))
        raise ConfigError(f"{path}: sections.{name}.extends forms a cycle: {loop}")
    raw = sections[name] or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: sections.{name} must be a mapping of blocks")
    raw = dict(raw)
    parent = raw.pop("extends", None)
    if parent is None:
        base = doc.get("defaults") or {}
    elif isinstance(parent, str):
        base = _resolve_raw(doc, parent, path, chain + (name,))
    else:
        raise ConfigError(f"{path}: sections.{name}.extends must be a section name")
    return deep_merge(base, raw)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``training.learning_rate=3e-5`` → (["training", "learning_rate"], 3e-05)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. training.seed=1")
    key, _, text = item.partition("=")
    keys = [k.strip() for k in key.strip().split(".")]
    if not any(keys):
        raise ConfigError(f"--set {item!r}: empty key path; expected e.g. training.seed=1")
    if not all(keys):
        raise ConfigError(
            f"--set {item!r}: empty part in the key path {key.strip()!r}; "
            "expected dotted names such as training.learning_rate=3e-5"
        )
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        value = text
    return keys, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set key.path=value`` items to a section's raw mapping.

    A mapping value merges into a block (``training={seed: 1}`` sets one key); a block is
    never replaced by a scalar nor a scalar descended into: either would silently drop
    the section's values, which the user meant to keep.
    """
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for depth, k in enumerate(keys[:-1]):
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                where = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"--set {item!r}: {where} is a value ({child!r}), not a block with keys"
                )
            node = child
        last, where = keys[-1], ".".join(keys)
        if isinstance(node.get(last), dict):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"--set {item!r}: {where} is a block; set one of its keys, e.g. "
                    f"{where}.{next(iter(node[last]), 'key')}=VALUE"
                )
            node[last] = deep_merge(node[last], value)
        else:
            node[last] = value
    return out


def list_sections(path: Path) -> list[str]:
    return sorted((read_yaml(Path(path)).get("sections") or {}).keys())


def load_section(path: str | Path, name: str, overrides: list[str] | None = None) -> SectionConfig:
    """Read, merge, override and validate one section.

    Raises one ConfigError listing every problem.
    """
    path = Path(path)
    doc = read_yaml(path)
    errors = [
        f"{key}: unknown top-level key{_suggest(str(key), ['defaults', 'sections'])}"
        for key in doc
        if key not in ("defaults", "sections")
    ]
    raw = apply_overrides(_resolve_raw(doc, name, path), overrides or [])
    cfg = _build(SectionConfig, raw, "", errors)
    if not errors:
        _check_semantics(cfg, errors)
    if errors:
        listing = "\n  - ".join(errors)
        raise ConfigError(f"{path} [section {name}]: {len(errors)} problem(s):\n  - {listing}")
    cfg.name, cfg.source = name, str(path)
    return cfg


def section_from_dict(raw: dict[str, Any], name: str = "inline") -> SectionConfig:
    """Validate an in-memory section (used by tests and by run folders on --resume)."""
    errors: list[str] = []
    cfg = _build(SectionConfig, raw, "", errors)
    if not errors:
        _check_semantics(cfg, errors)
    if errors:
        raise ConfigError(
            f"[section {name}]: {len(errors)} problem(s):\n  - " + "\n  - ".join(errors)
        )
    cfg.name = name
    return cfg


def field_docs(cls: type = SectionConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key path, type, help) for every field, for documentation and ``--help`` output."""
    rows: list[tuple[str, str, str]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            rows.extend(field_docs(hints[f.name], key + "."))
        else:
            rows.append((key, _type_name(hints[f.name]), f.metadata.get("help", "")))
    return rows

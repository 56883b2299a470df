"""Value rules of every config field, one function per block, checked before any run folder
exists: the ranges and combinations the libraries underneath (torch optimizers and losses,
transformers' TrainingArguments and generate(), the DataLoader, numpy's seeding) accept,
so a bad value is one clear ``ConfigError`` line instead of a traceback minutes later.

``config_validate`` types the section first (wrong types, unknown keys, non-finite floats,
``~`` in paths); ``check_blocks`` then adds these rules to the same list of problems. Rules
that need the model's own config (position limits) are ``model_limit_problems``, checked
when the architecture is known (``train``, ``predict``, ``plan``). A block's new fields get
their rules in that block's function.
"""

from __future__ import annotations

from typing import Any

from dialsum.core.config_schema import (
    DataConfig,
    HardwareConfig,
    InferenceConfig,
    ModelConfig,
    SectionConfig,
    TokenizerConfig,
    TrainingConfig,
)

# Fields that name a file or folder: a leading ``~`` is the user's home (the shell does not
# expand ``--set data.train=~/x.csv`` or ``--output-dir=~/runs``).
PATH_FIELDS: dict[str, tuple[str, ...]] = {
    "model": ("name",),
    "tokenizer": ("name",),
    "data": ("train", "dev", "test"),
    "training": ("output_dir",),
    "inference": ("output",),
}

SEED_LIMIT = 2**32  # numpy's seed (transformers.set_seed seeds numpy too) is < 2**32
POLYNOMIAL_LR_END = 1e-7  # transformers' polynomial schedule decays to this, from above


def _at_least(
    errors: list[str], key: str, value: int | float | None, low: int, what: str = ""
) -> None:
    if value is not None and value < low:
        errors.append(f"{key}: must be >= {low}{what}, got {value}")


def _fraction(errors: list[str], key: str, value: float | None, what: str) -> None:
    """``value`` in [0, 1) (a probability such as a dropout rate)."""
    if value is not None and not 0 <= value < 1:
        errors.append(f"{key}: {what} in [0, 1), got {value}")


def _not_empty(errors: list[str], key: str, value: str | None, what: str) -> None:
    if value is not None and not value.strip():
        errors.append(f"{key}: empty; {what}")


def check_model(m: ModelConfig, errors: list[str]) -> None:
    _fraction(errors, "model.dropout", m.dropout, "a dropout probability")
    _at_least(errors, "model.lora.rank", m.lora.rank, 1, " (the adapter rank r)")
    _at_least(errors, "model.lora.alpha", m.lora.alpha, 1, " (the scaling is alpha / rank)")
    _fraction(errors, "model.lora.dropout", m.lora.dropout, "a dropout probability")


def check_tokenizer(tok: TokenizerConfig, errors: list[str]) -> None:
    _not_empty(errors, "tokenizer.name", tok.name, "remove the key to use model.name's tokenizer")
    seen: set[str] = set()
    for i, token in enumerate(tok.special_tokens):
        if token is None or not token.strip():
            errors.append(f"tokenizer.special_tokens[{i}]: empty token; remove it")
        elif token in seen:
            errors.append(f"tokenizer.special_tokens[{i}]: {token!r} is listed twice")
        seen.add(token)


def check_data(d: DataConfig, errors: list[str]) -> None:
    for key in ("train", "dev", "test"):
        _not_empty(errors, f"data.{key}", getattr(d, key), "give the path of a CSV file")
    for key in ("max_train_samples", "max_eval_samples"):
        value = getattr(d, key)
        if value is not None and value < 1:
            errors.append(
                f"data.{key}: must be >= 1 (the first N rows), got {value}; remove the key "
                "(or set null) to use every row"
            )


def check_training(t: TrainingConfig, errors: list[str]) -> None:
    _not_empty(errors, "training.output_dir", t.output_dir, "give a folder, e.g. runs")
    _at_least(errors, "training.gradient_accumulation_steps", t.gradient_accumulation_steps, 1)
    if t.max_steps == 0 or t.max_steps < -1:
        errors.append(
            f"training.max_steps: must be -1 (train num_train_epochs) or >= 1 optimizer "
            f"steps, got {t.max_steps}"
        )
    if t.max_steps == -1 and not t.num_train_epochs > 0:
        errors.append(
            f"training.num_train_epochs: must be > 0 (nothing would be trained), got "
            f"{t.num_train_epochs}; or set training.max_steps to a number of steps"
        )
    _at_least(errors, "training.weight_decay", t.weight_decay, 0, " (torch AdamW)")
    _at_least(errors, "training.max_grad_norm", t.max_grad_norm, 0, " (0 = no clipping)")
    if not 0 <= t.label_smoothing < 1:
        errors.append(
            f"training.label_smoothing: a fraction in [0, 1), got {t.label_smoothing} "
            "(0.1 is usual; 0 = off)"
        )
    _at_least(errors, "training.eval_steps", t.eval_steps, 1)
    _at_least(errors, "training.save_total_limit", t.save_total_limit, 1, " (null = keep all)")
    _at_least(errors, "training.early_stopping_patience", t.early_stopping_patience, 1)
    _at_least(errors, "training.early_stopping_threshold", t.early_stopping_threshold, 0)
    if not 0 <= t.seed < SEED_LIMIT:
        errors.append(f"training.seed: must be in [0, 2**32), got {t.seed}")
    _at_least(errors, "training.dataloader_num_workers", t.dataloader_num_workers, 0)
    _not_empty(errors, "training.wandb.project", t.wandb.project, "name a W&B project or remove it")
    _check_training_combinations(t, errors)


def _check_training_combinations(t: TrainingConfig, errors: list[str]) -> None:
    evaluates = t.eval_strategy != "no"
    if t.save_strategy == "best" and not evaluates:
        errors.append(
            "training.save_strategy: 'best' needs evaluations to pick the best checkpoint, but "
            "training.eval_strategy is 'no'; set eval_strategy epoch/steps or save_strategy "
            "epoch/steps"
        )
    # With evaluation and saving on, the best model is loaded at the end, and transformers
    # then saves at evaluation points: every save step must be one (save_steps a multiple
    # of eval_steps). A save_strategy other than the eval strategy follows the eval one.
    if (
        t.eval_strategy == "steps"
        and t.save_strategy in ("steps", "epoch")
        and t.eval_steps is not None
        and t.eval_steps >= 1
        and t.save_steps >= 1
        and t.save_steps % t.eval_steps
    ):
        multiple = t.eval_steps * max(1, t.save_steps // t.eval_steps)
        errors.append(
            f"training.save_steps: {t.save_steps} is not a multiple of training.eval_steps "
            f"{t.eval_steps}; the best checkpoint is picked at evaluation points, so saves "
            f"must fall on them (e.g. save_steps {multiple})"
        )
    if t.lr_scheduler_type == "polynomial" and t.learning_rate <= POLYNOMIAL_LR_END:
        errors.append(
            f"training.learning_rate: {t.learning_rate} with lr_scheduler_type polynomial, "
            f"which decays to {POLYNOMIAL_LR_END}: the rate must be above that"
        )


def check_inference(inf: InferenceConfig, tok: TokenizerConfig, errors: list[str]) -> None:
    if inf.max_new_tokens is not None and inf.max_new_tokens < 1:
        errors.append(
            f"inference.max_new_tokens: must be >= 1, got {inf.max_new_tokens}; remove the key "
            f"(or set null) for tokenizer.max_target_length ({tok.max_target_length})"
        )
    _at_least(errors, "inference.min_new_tokens", inf.min_new_tokens, 0)
    longest = inf.max_new_tokens or tok.max_target_length
    if inf.min_new_tokens > longest >= 1:
        errors.append(
            f"inference.min_new_tokens: {inf.min_new_tokens} is above the longest summary "
            f"({longest} tokens, inference.max_new_tokens or tokenizer.max_target_length)"
        )
    _at_least(errors, "inference.no_repeat_ngram_size", inf.no_repeat_ngram_size, 0, " (0 = off)")
    if inf.num_beams == 1 and inf.length_penalty != 1.0:
        errors.append(
            f"inference.length_penalty: {inf.length_penalty} only acts in beam search, but "
            "inference.num_beams is 1; set num_beams > 1 or length_penalty 1.0"
        )
    _not_empty(errors, "inference.output", inf.output, "give a CSV path or remove the key")


def check_hardware(hw: HardwareConfig, errors: list[str]) -> None:
    _not_empty(errors, "hardware.gpu", hw.gpu, "auto, a slug such as a100-40gb, or a size (24GB)")
    if hw.offload and hw.zero_stage == 0:
        errors.append(
            "hardware.offload: true needs DeepSpeed ZeRO (hardware.zero_stage 1-3); set a "
            "stage or remove offload"
        )


def check_blocks(cfg: SectionConfig, errors: list[str]) -> None:
    """Every block's value rules (module docstring), appended to ``errors``."""
    check_model(cfg.model, errors)
    check_tokenizer(cfg.tokenizer, errors)
    check_data(cfg.data, errors)
    check_training(cfg.training, errors)
    check_inference(cfg.inference, cfg.tokenizer, errors)
    check_hardware(cfg.hardware, errors)


def model_limit_problems(
    cfg: SectionConfig, model_config: Any, *, source_len: int | None = None
) -> list[str]:
    """What the section asks beyond the model's learned position table.

    BART-style models embed positions from a table of ``max_position_embeddings`` rows (T5
    has relative positions and no such limit): a longer source, label sequence or
    generation indexes past the table and fails (an IndexError on CPU, a device assert on
    a GPU). The decoder sees at most ``max_target_length`` label tokens in training and
    ``max_new_tokens`` positions in generation (start token + max_new_tokens - 1 generated).
    """
    limit = getattr(model_config, "max_position_embeddings", None)
    model_type = getattr(model_config, "model_type", "")
    if not isinstance(limit, int) or model_type in ("t5", "mt5", "umt5", "longt5"):
        return []
    name = cfg.model.name
    asked = {
        "tokenizer.max_source_length": source_len or cfg.tokenizer.max_source_length,
        "tokenizer.max_target_length": cfg.tokenizer.max_target_length,
        "inference.max_new_tokens": cfg.max_new_tokens,
    }
    return [
        f"{key}: {value} is above the {limit} positions {name} has "
        f"(max_position_embeddings); use at most {limit}"
        for key, value in asked.items()
        if value > limit
    ]

"""LoRA: low-rank adapters on the attention projections, the base model frozen.

Only the adapters train, so gradients and optimizer state exist for them alone; the default
targets are each family's attention projections, found by module name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedModel

from dialsum.core.errors import ConfigError
from dialsum.models.architectures import is_t5_like, model_family

if TYPE_CHECKING:
    from peft import PeftModel

# LoRA targets: the attention projections of each family (mT5 uses T5's names).
_LORA_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
}


def apply_lora(
    model: PreTrainedModel,
    rank: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
) -> PeftModel:
    """Wrap ``model`` in LoRA adapters on the attention projections; only adapters train.

    Note: rows added for the special tokens stay frozen at their resize-time values.
    """
    from peft import LoraConfig, TaskType, get_peft_model  # heavy import, only when used

    family = model_family(model)
    # mT5 (and umT5) name their modules as T5 does: the same architecture.
    default = _LORA_TARGETS.get("t5" if is_t5_like(family) else family)
    targets = list(target_modules) if target_modules else default
    if targets is None:
        raise ConfigError(
            f"no default LoRA target modules for model type "
            f"{getattr(model.config, 'model_type', '?')!r}; set target_modules to the names of "
            "its attention projection layers (e.g. ['q_proj', 'v_proj'])"
        )
    config = LoraConfig(
        task_type=TaskType.SEQ_2_SEQ_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
    )
    return get_peft_model(model, config)

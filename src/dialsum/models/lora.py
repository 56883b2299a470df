"""LoRA: low-rank adapters, the base model frozen.

Only the adapters train, so gradients and optimizer state exist for them alone. Default
targets: each seq2seq family's attention projections, found by module name; for causal LMs
peft's ``all-linear`` (every linear layer but the head: q/k/v/o and gate/up/down, what the
QLoRA recipes on this task use). A causal run saves the adapters alone
(``save_pretrained`` of the peft model) and ``predict`` puts them back on the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from transformers import PreTrainedModel

from dialsum.core.config_schema import ALL_LINEAR
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
    target_modules: Sequence[str] | str | None = None,
    *,
    causal: bool = False,
    trainable_token_indices: Sequence[int] = (),
) -> PeftModel:
    """Wrap ``model`` in LoRA adapters (see module docstring); only adapters train.

    ``trainable_token_indices``: embedding rows that train too and are saved with the
    adapters - the rows a causal run added for the speaker/PII markers, which a base loaded
    again for ``predict`` would otherwise fill with other random values. Seq2seq runs merge
    their adapters into a whole model instead; there the added rows stay frozen at their
    resize-time values.
    """
    from peft import LoraConfig, TaskType, get_peft_model  # heavy import, only when used

    family = model_family(model)
    # mT5 (and umT5) name their modules as T5 does: the same architecture.
    if causal:
        default: list[str] | str | None = ALL_LINEAR
    else:
        default = _LORA_TARGETS.get("t5" if is_t5_like(family) else family)
    if isinstance(target_modules, str):
        targets: list[str] | str | None = target_modules
    else:
        targets = list(target_modules) if target_modules else default
    if targets is None:
        raise ConfigError(
            f"model.lora.target_modules: no default for model type "
            f"{getattr(model.config, 'model_type', '?')!r}; set it to the names of its "
            "attention projection layers (e.g. [q_proj, v_proj])"
        )
    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM if causal else TaskType.SEQ_2_SEQ_LM,
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        trainable_token_indices=list(trainable_token_indices) or None,
    )
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise ConfigError(f"model.lora.target_modules: {exc}") from None

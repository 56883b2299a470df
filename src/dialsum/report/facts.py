"""What the guide says about a model before any memory is simulated: its exact parameter
count, an untied output head, saved buffers and the weights' size per dtype.

The count comes from the real architecture built on the meta device (no weights, no
download), so it is exact where the old hand-written guide guessed; it is cached on disk
next to the memory traces because building the model is most of a warm guide's time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig

WEIGHT_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "int8": 1}
"""Bytes per weight of the dtypes the guide lists the weights' size in, in that order."""


@dataclass(frozen=True)
class ModelFacts:
    """What the guide says about a model before any memory is simulated."""

    model_id: str
    params: int
    untied_head_params: int
    """Parameters of a separate ``lm_head`` (0 when the head shares the input embedding)."""
    buffers: dict[str, int]
    """Non-parameter tensors saved with the model, name -> elements (e.g. final_logits_bias)."""

    def weight_bytes(self, dtype: str) -> int:
        return self.params * WEIGHT_DTYPE_BYTES[dtype]


def model_facts(model_id: str, model_config: PretrainedConfig) -> ModelFacts:
    """Exact parameter count from the model built on the meta device (no memory, no download).

    Cached next to the traces: building the model imports its modeling code, which is most
    of a warm guide's time.
    """
    from dialsum.trace import cache as trace_cache

    path = (
        trace_cache.default_cache_dir()
        / f"facts-{trace_cache.cache_key('facts', model_config)}.json"
    )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelFacts(model_id, data["params"], data["untied_head_params"], data["buffers"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    facts = _build_model_facts(model_id, model_config)
    try:
        from dialsum.core.runs import write_json_atomic

        write_json_atomic(
            path,
            {
                "params": facts.params,
                "untied_head_params": facts.untied_head_params,
                "buffers": facts.buffers,
            },
        )
    except OSError:
        pass  # a read-only cache must never break the guide
    return facts


def _build_model_facts(model_id: str, model_config: PretrainedConfig) -> ModelFacts:
    from dialsum.models.architectures import count_params, model_from_config

    model = model_from_config(model_config, device="meta")
    head = getattr(model, "lm_head", None)
    embed = model.get_input_embeddings()
    untied = 0
    if head is not None and head.weight is not embed.weight:
        untied = head.weight.numel()
    buffers = {name: buffer.numel() for name, buffer in model.named_buffers()}
    return ModelFacts(model_id, count_params(model), untied, buffers)

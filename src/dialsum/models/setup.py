"""The model and tokenizer a section names: a checkpoint, a hub id or local folder, or a
tiny model built offline from the section's training CSV.

Every verb that loads a model (``train``, ``predict``, ``plan``, the checks) goes through
``setup_model``, so all of them read the same model; ``resolve_model`` is the dispatch
between ``models.loading`` and ``models.tiny`` (the tiny builder loads and saves through
``loading``, so the dispatch lives above both).

Causal LMs (``models.causal``) load through ``AutoModelForCausalLM``, in 4-bit for
``model.method: qlora``; a checkpoint folder that holds adapters (a LoRA/QLoRA causal run)
is loaded as the section's base model with those adapters on it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from dialsum.core.config_schema import SectionConfig
from dialsum.core.errors import ConfigError, UserError, first_line
from dialsum.data import dataset as data_mod
from dialsum.models.architectures import load_config, set_dropout
from dialsum.models.causal import (
    is_adapter_folder,
    load_adapters,
    load_causal_model,
    prepare_causal_tokenizer,
    resolve_kind,
)
from dialsum.models.loading import TINY_PREFIX, damaged_weight_files, load_model, load_tokenizer
from dialsum.models.tiny import resolve_tiny, tiny_family, tiny_folder


def resolve_model(
    spec: str,
    *,
    tiny_texts: Callable[[], Iterable[str]] | None = None,
    cache_dir: Path | None = None,
    trust_remote_code: bool = False,
    vocab_size: int = 2000,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for a hub id, a local directory, or ``tiny:t5`` / ``tiny:bart``.

    A tiny model is trained on ``tiny_texts()``; with ``cache_dir`` it is saved there under
    a hash of texts, family and vocabulary size, and loaded from there next time.
    """
    if spec.startswith(TINY_PREFIX):
        return resolve_tiny(spec, tiny_texts, cache_dir, vocab_size)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model = load_model(spec, tokenizer, trust_remote_code=trust_remote_code)
    return model, tokenizer


def tiny_texts_from(cfg: SectionConfig):
    """Texts a tiny tokenizer is trained on: the training dialogues and summaries."""

    def texts() -> list[str]:
        table = data_mod.read_dialogue_csv(Path(cfg.data.train), "train")
        out: list[str] = []
        if cfg.model.name == "tiny:llama":
            # The instruction around every dialogue: its words get pieces of their own.
            out.append(cfg.tokenizer.prompt_template.replace("{dialogue}", ""))
        for rec in table.records:
            out.append(cfg.tokenizer.prefix + rec.dialogue)
            out.extend(rec.references)
        return out

    return texts


def tiny_cache_dir() -> Path:
    root = os.environ.get("DIALSUM_CACHE_DIR")
    return Path(root) / "tiny" if root else Path.home() / ".cache" / "dialsum" / "tiny"


def setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None, *, device: str = "cpu"):
    """(model, tokenizer): a checkpoint folder, a hub id / local folder, or a tiny model.

    ``device`` matters for QLoRA only: 4-bit weights are quantized while loading, on the
    device they will run on ("cuda": this process's GPU).
    """
    _require_whole_weights(checkpoint if checkpoint is not None else cfg.model.name)
    try:
        if _causal(cfg, checkpoint):
            model, tokenizer = _setup_causal(cfg, checkpoint, device)
        else:
            model, tokenizer = _setup_model(cfg, checkpoint)
        if cfg.model.dropout is not None:
            set_dropout(model, cfg.model.dropout)
        return model, tokenizer
    except OSError as exc:
        # transformers raises OSError for unreachable hubs, unknown repos and missing files.
        name = checkpoint or cfg.model.name
        first = first_line(exc)
        raise UserError(
            f"could not load model '{name}' (model.name): {first} "
            "Without network access, download it where there is network (e.g. "
            f"`hf download {name} --local-dir DIR`), copy DIR here and set model.name to DIR; "
            "or use tiny:t5 to try the pipeline."
        ) from None


def _require_whole_weights(folder: str | Path) -> None:
    """A local model folder whose safetensors file is cut short or not safetensors at all
    is named before transformers fails inside its loader with a traceback."""
    damaged = damaged_weight_files(folder)
    if damaged:
        listing = "; ".join(damaged)
        raise UserError(
            f"{folder}: damaged weights ({listing}). The file is incomplete or not a "
            "safetensors file (a full disk or an interrupted copy): use another checkpoint "
            "(<run>/checkpoints/checkpoint-N) or copy the model again"
        )


def _setup_model(cfg: SectionConfig, checkpoint: str | Path | None = None):
    remote = cfg.model.trust_remote_code
    if checkpoint is not None:
        tokenizer = load_tokenizer(str(checkpoint), trust_remote_code=remote)
        model = load_model(str(checkpoint), tokenizer, trust_remote_code=remote)
    elif cfg.tokenizer.name and not cfg.model.name.startswith("tiny:"):
        tokenizer = load_tokenizer(cfg.tokenizer.name, trust_remote_code=remote)
        model = load_model(cfg.model.name, tokenizer, trust_remote_code=remote)
    else:
        model, tokenizer = resolve_model(
            cfg.model.name,
            tiny_texts=tiny_texts_from(cfg),
            cache_dir=tiny_cache_dir(),
            trust_remote_code=remote,
        )
    return model, tokenizer


def _causal(cfg: SectionConfig, checkpoint: str | Path | None) -> bool:
    """Whether the section's model is a causal LM (its config read; ``model.kind``
    checked against it, and the method against the kind)."""
    name = cfg.model.name
    if name.startswith(TINY_PREFIX):
        causal = tiny_family(name) == "llama"
        if not causal and cfg.model.training_method == "qlora":
            raise ConfigError(f"model.method: qlora is not supported for {name}")
        return causal
    if checkpoint is not None and not is_adapter_folder(checkpoint):
        name = str(checkpoint)
    return resolve_kind(cfg.model, load_config(name)) == "causal"


def _setup_causal(cfg: SectionConfig, checkpoint: str | Path | None, device: str):
    """A causal LM: the base the section names (4-bit for qlora) with a checkpoint's
    adapters on it, or a whole checkpoint (full fine-tuning)."""
    remote = cfg.model.trust_remote_code
    quantization = cfg.model.quantization if cfg.model.training_method == "qlora" else None
    if checkpoint is not None and not is_adapter_folder(checkpoint):
        tokenizer = prepare_causal_tokenizer(
            load_tokenizer(str(checkpoint), trust_remote_code=remote)
        )
        model = load_causal_model(str(checkpoint), tokenizer, trust_remote_code=remote)
        return model, tokenizer
    base = cfg.model.name
    if base.startswith(TINY_PREFIX):
        base = str(tiny_folder(base, tiny_texts_from(cfg), tiny_cache_dir(), 2000))
    tokenizer_source = str(checkpoint) if checkpoint is not None else cfg.tokenizer.name or base
    tokenizer = load_tokenizer(
        tokenizer_source, trust_remote_code=remote, special_tokens=cfg.tokenizer.special_tokens
    )
    tokenizer = prepare_causal_tokenizer(tokenizer)
    model = load_causal_model(
        base, tokenizer, quantization=quantization, device=device, trust_remote_code=remote
    )
    if checkpoint is not None:
        model = load_adapters(model, checkpoint)
    return model, tokenizer

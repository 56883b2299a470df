"""Load the model and tokenizer a run trains, with special tokens and untied heads kept.

Two sources, one result ``(model, tokenizer)``:

* a hub id (``eenzeenee/t5-base-korean-summarization``) — needs the network once;
* a local directory written by ``save_pretrained``.

``resolve_model`` also takes ``tiny:t5`` / ``tiny:bart`` and hands those to
``dialsum.models.tiny`` (a model built offline on the caller's texts, for demo and tests).

Two traps shape this module. transformers 5.x forces ``T5Config.tie_word_embeddings=True``,
so any later ``tie_weights()`` (``resize_token_embeddings`` calls it) silently ties the
separate ``lm_head`` of T5 v1.1 / mT5 checkpoints back to the input embedding. And the
speaker/PII markers of the competition data must be single tokens the tokenizer never splits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from dialsum.core.errors import ConfigError, first_line
from dialsum.core.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import is_t5_like, model_family, untie_lm_head

TINY_PREFIX = "tiny:"
_WEIGHTS_FILES = ("model.safetensors", "model.safetensors.index.json")
_TORCH_WEIGHTS_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------- loading


def load_tokenizer(
    name_or_path: str,
    *,
    trust_remote_code: bool = False,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> PreTrainedTokenizerBase:
    """Tokenizer of a hub id or local directory, with ``special_tokens`` never split.

    Markers already registered as added tokens are left alone, so loading a saved
    tokenizer again does not grow it.
    """
    _check_local_dir(name_or_path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    add_special_tokens(tokenizer, special_tokens)
    return tokenizer


def add_special_tokens(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> int:
    """Register ``tokens`` as extra special tokens where missing; returns how many were added."""
    registered = set(tokenizer.get_added_vocab())
    missing = [t for t in tokens if t not in registered]
    if not missing:
        return 0
    # Keep the tokenizer's own extras (T5's <extra_id_*>): extend, do not replace.
    return tokenizer.add_special_tokens(
        {"extra_special_tokens": missing}, replace_extra_special_tokens=False
    )


def load_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    trust_remote_code: bool = False,
    pad_to_multiple_of: int | None = 8,
) -> PreTrainedModel:
    """Seq2seq LM of a hub id or local directory, matched to ``tokenizer``.

    Weights come from safetensors when the directory has them, otherwise from a
    ``weights_only`` torch load. The embedding grows when the tokenizer did (rounded up to
    ``pad_to_multiple_of`` rows for tensor-core friendly matmuls); an untied ``lm_head``
    stays untied through loading and resizing.
    """
    _check_local_dir(name_or_path, "model")
    with _quiet_untie_advice():
        model = AutoModelForSeq2SeqLM.from_pretrained(
            name_or_path,
            trust_remote_code=trust_remote_code,
            use_safetensors=_prefer_safetensors(name_or_path),
            weights_only=True,
        )
    keep_head_untied(model)
    resize_to_tokenizer(model, tokenizer, pad_to_multiple_of=pad_to_multiple_of)
    set_generation_ids(model, tokenizer)
    return model


class _UntieAdviceFilter(logging.Filter):
    """Drops transformers' advice to set ``tie_word_embeddings=False`` on load.

    It fires for every untied T5 checkpoint (``T5Config`` resets the flag to True), and
    ``keep_head_untied`` already does what it asks.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "tie_word_embeddings=False" not in record.getMessage()


@contextmanager
def _quiet_untie_advice() -> Iterator[None]:
    log = logging.getLogger("transformers.modeling_utils")
    advice_filter = _UntieAdviceFilter()
    log.addFilter(advice_filter)
    try:
        yield
    finally:
        log.removeFilter(advice_filter)


# A saved tokenizer: its config plus the vocabulary in one of the forms transformers writes.
_TOKENIZER_VOCAB_FILES = ("tokenizer.json", "spiece.model", "sentencepiece.bpe.model", "vocab.json")


def _check_local_dir(name_or_path: str, what: str) -> None:
    """Fail early, with the path, when a local model directory is missing or incomplete."""
    path = Path(name_or_path).expanduser()
    looks_local = path.is_absolute() or name_or_path.startswith((".", "~")) or path.exists()
    if not looks_local:
        return  # a hub id such as "owner/name"
    if what == "tokenizer" and path.is_dir():
        has_vocab = any((path / name).is_file() for name in _TOKENIZER_VOCAB_FILES)
        if not ((path / "tokenizer_config.json").is_file() and has_vocab):
            # transformers would quietly fall back to another tokenizer: summaries made of
            # the wrong vocabulary (<extra_id_96> ...) and exit 0.
            raise ConfigError(
                f"{path} has no tokenizer files (tokenizer_config.json and one of "
                f"{', '.join(_TOKENIZER_VOCAB_FILES)}): a checkpoint cut while saving, or "
                "weights only. Use the run's best/ folder or another complete checkpoint, or "
                "copy the tokenizer files of the model it was trained from into it."
            )
        return  # tokenizer files need no config.json (a causal run's adapters folder)
    if not path.is_dir():
        raise ConfigError(
            f"{what} directory {str(path)!r} does not exist. Give a hub id "
            "(e.g. 'eenzeenee/t5-base-korean-summarization'), 'tiny:t5' / 'tiny:bart', or a "
            "directory written by save_pretrained (config.json + weights + tokenizer files)."
        )
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"{what} directory {str(path)!r} has no config.json. Expected a directory written "
            "by save_pretrained (config.json, model.safetensors, tokenizer files); point the "
            "model setting at that directory or use a hub id."
        )


def _prefer_safetensors(name_or_path: str) -> bool | None:
    """True for a local dir with safetensors; None (prefer, fall back) otherwise."""
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        return None  # hub: transformers picks safetensors when the repo has them
    if any((path / f).is_file() for f in _WEIGHTS_FILES):
        return True
    if any((path / f).is_file() for f in _TORCH_WEIGHTS_FILES):
        return None  # legacy .bin, loaded with weights_only=True
    raise ConfigError(
        f"model directory {str(path)!r} has config.json but no weights "
        f"(expected one of {', '.join(_WEIGHTS_FILES + _TORCH_WEIGHTS_FILES)}). "
        "Save the model with save_pretrained into that directory."
    )


def keep_head_untied(model: nn.Module) -> None:
    """Make an untied ``lm_head`` survive later ``tie_weights()`` calls.

    ``untie_lm_head`` unties a shared head the config asks to be separate. A model fresh
    from ``from_pretrained`` may already have its own head (the checkpoint held two different
    tensors), yet its ``T5Config`` says ``tie_word_embeddings=True`` again, so the next
    ``resize_token_embeddings`` would tie it back: drop the tie from the mapping too.
    """
    if untie_lm_head(model) or not head_is_untied(model):
        return
    model.config.tie_word_embeddings = False
    tied = dict(getattr(model, "_tied_weights_keys", None) or {})
    tied.pop("lm_head.weight", None)
    model._tied_weights_keys = tied
    getattr(model, "all_tied_weights_keys", {}).pop("lm_head.weight", None)


def resize_to_tokenizer(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    pad_to_multiple_of: int | None = 8,
) -> bool:
    """Grow the embedding (and an untied head) to cover every token id; True when resized.

    Never shrinks: T5 checkpoints carry spare rows (32,128 rows for 32,100 tokens).
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return False
    was_untied = head_is_untied(model)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
    if was_untied and not head_is_untied(model):
        raise RuntimeError("resize_token_embeddings tied the lm_head; keep_head_untied missed it")
    return True


def head_is_untied(model: nn.Module) -> bool:
    """True when the output head has a weight of its own (not the input embedding's)."""
    head = model.get_output_embeddings()
    return head is not None and head.weight is not model.get_input_embeddings().weight


def set_generation_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fill pad / eos / decoder-start ids the checkpoint left unset, in config and generation.

    Ids the checkpoint sets are kept: the model was trained with them (KoBART starts the
    decoder with its eos id 1, T5 with pad id 0).
    """
    config = model.config
    if tokenizer.pad_token_id is not None:
        config.pad_token_id = tokenizer.pad_token_id
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    if config.decoder_start_token_id is None:
        # T5 starts decoding from pad; BART (and most others) from eos.
        t5_like = is_t5_like(model_family(config))
        config.decoder_start_token_id = config.pad_token_id if t5_like else config.eos_token_id
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = config.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = config.eos_token_id
        generation.decoder_start_token_id = config.decoder_start_token_id


def save_pretrained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | Path
) -> Path:
    """Write model (safetensors) and tokenizer into ``directory``; load_model reads it back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


# --------------------------------------------------------------------------- resolving


def damaged_weight_files(folder: str | Path) -> list[str]:
    """``"file: reason"`` for each ``*.safetensors`` in a local ``folder`` whose header does
    not parse or whose data the file does not fully hold (truncated by a full disk or an
    interrupted copy). safetensors checks both when a file is opened; the tensors are not
    read (a flipped bit inside the data cannot be seen without a checksum)."""
    from safetensors import safe_open

    problems = []
    path = Path(folder)
    if not path.is_dir():
        return problems
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except Exception as exc:  # noqa: BLE001 - safetensors' own error type, any reason
            problems.append(f"{file.name}: {first_line(exc)}")
    return problems

"""Load (or build) the model and tokenizer a run trains, with special tokens and untied heads kept.

Three sources, one result ``(model, tokenizer)``:

* a hub id (``eenzeenee/t5-base-korean-summarization``) — needs the network once;
* a local directory written by ``save_pretrained``;
* ``tiny:t5`` / ``tiny:bart`` — a few-hundred-thousand-parameter model and a tokenizer
  trained on the caller's texts, built offline and deterministically (demo and tests).

Two traps shape this module. transformers 5.x forces ``T5Config.tie_word_embeddings=True``,
so any later ``tie_weights()`` (``resize_token_embeddings`` calls it) silently ties the
separate ``lm_head`` of T5 v1.1 / mT5 checkpoints back to the input embedding. And the
speaker/PII markers of the competition data must be single tokens the tokenizer never splits.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from tokenizers import (
    AddedToken,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    BartConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
)

from dialsum.core.errors import ConfigError
from dialsum.data.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import model_from_config, untie_lm_head

if TYPE_CHECKING:
    from peft import PeftModel

Family = Literal["t5", "bart"]

TINY_PREFIX = "tiny:"
# Bump when the tiny tokenizer/model recipe changes, so stale caches are not reused.
_TINY_RECIPE_VERSION = "2"

# Special-token layouts of the two families (ids are list positions).
_FAMILY_SPECIALS: dict[str, tuple[str, ...]] = {
    "t5": ("<pad>", "</s>", "<unk>"),
    "bart": ("<s>", "<pad>", "</s>", "<unk>"),
}
_T5_TYPES = frozenset({"t5", "mt5", "umt5", "longt5"})
_BART_TYPES = frozenset({"bart", "mbart"})
# LoRA targets: the attention projections of each family.
_LORA_TARGETS: dict[str, list[str]] = {
    "t5": ["q", "k", "v", "o"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj"],
}
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
    if untie_lm_head(model) or not _head_is_untied(model):
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
    was_untied = _head_is_untied(model)
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of)
    if was_untied and not _head_is_untied(model):
        raise RuntimeError("resize_token_embeddings tied the lm_head; keep_head_untied missed it")
    return True


def _head_is_untied(model: nn.Module) -> bool:
    head = model.get_output_embeddings()
    return head is not None and head.weight is not model.get_input_embeddings().weight


def model_family(model_or_config: nn.Module | PretrainedConfig) -> Literal["t5", "bart", "other"]:
    """``"t5"`` (T5, mT5, umT5, LongT5), ``"bart"`` (BART, mBART) or ``"other"``."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", "")
    if model_type in _T5_TYPES:
        return "t5"
    if model_type in _BART_TYPES:
        return "bart"
    return "other"


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
        family = model_family(config)
        config.decoder_start_token_id = (
            config.pad_token_id if family == "t5" else config.eos_token_id
        )
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.pad_token_id = config.pad_token_id
        if generation.eos_token_id is None:
            generation.eos_token_id = config.eos_token_id
        generation.decoder_start_token_id = config.decoder_start_token_id


def prepare_for_family(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> dict:
    """Set generation ids and return the family facts the data and inference code need.

    ``needs_prefix``: original T5 checkpoints were trained with a task prefix
    (``"summarize: "``); mT5 and BART were not.
    """
    set_generation_ids(model, tokenizer)
    return {
        "family": model_family(model),
        "decoder_start_token_id": model.config.decoder_start_token_id,
        "needs_prefix": getattr(model.config, "model_type", "") == "t5",
    }


# --------------------------------------------------------------------------- tiny models


def train_tiny_tokenizer(
    texts: Iterable[str],
    *,
    family: Family,
    vocab_size: int = 2000,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a small tokenizer on ``texts``, offline and deterministically.

    t5: Unigram (sentencepiece style), ids ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``</s>``
    appended. bart: BPE, ids ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, input wrapped
    in ``<s> … </s>``. Both split words on spaces with the ``▁`` marker (Metaspace) so decoding
    gives back Korean text with its spaces. ``vocab_size`` is an upper bound: a small corpus
    yields fewer pieces. Characters unseen in ``texts`` become ``<unk>``.
    """
    _check_family(family)
    corpus = list(texts)
    if not any(t.strip() for t in corpus):
        raise ConfigError("train_tiny_tokenizer got no non-empty texts to learn a vocabulary from")
    base = _FAMILY_SPECIALS[family]
    corpus = [_without_markers(unicodedata.normalize("NFKC", t), special_tokens) for t in corpus]
    tokenizer = _untrained_tokenizer(family)
    if family == "t5":
        tokenizer.model = _train_unigram(corpus, vocab_size, base)
    else:
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=list(base), show_progress=False
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    # Markers are matched before the model sees the text, so they are never split.
    tokenizer.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in special_tokens]
    )
    tokenizer.post_processor = _post_processor(family, tokenizer)
    return _wrap(tokenizer, family, special_tokens)


def _check_family(family: str) -> None:
    if family not in _FAMILY_SPECIALS:
        raise ConfigError(
            f"unknown tiny model family {family!r}; choose one of {sorted(_FAMILY_SPECIALS)} "
            "(e.g. model 'tiny:t5')"
        )


def _untrained_tokenizer(family: str) -> Tokenizer:
    # Where a ▁ is prepended decides whether encode→decode gives the input back exactly.
    # t5 ("first", sentencepiece style): only the start of the text, not text after a marker
    # such as "#Person1#:"; the decoder strips it from the first token again. bart ("never",
    # like BART's add_prefix_space=False): the first token follows <s>, so the decoder
    # would not strip a prepended ▁ there.
    scheme = "first" if family == "t5" else "never"
    # The t5 Unigram model is replaced by the sentencepiece-trained one.
    model = models.Unigram() if family == "t5" else models.BPE(unk_token="<unk>")
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    return tokenizer


def _without_markers(text: str, markers: Sequence[str]) -> str:
    # Markers become added tokens; spending vocabulary on their pieces ("#", "Person") is waste.
    for marker in markers:
        text = text.replace(marker, "")
    return text


def _train_unigram(
    corpus: Sequence[str], vocab_size: int, specials: Sequence[str]
) -> models.Unigram:
    """Unigram pieces and scores from sentencepiece, the trainer real T5 vocabularies came from.

    tokenizers' own UnigramTrainer orders its fill-in characters by hash-map iteration, so
    ids change between runs on the same texts; sentencepiece with one thread does not.
    """
    import sentencepiece as spm  # only needed to build tiny T5 tokenizers

    proto = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus),
            model_writer=proto,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # a small corpus yields fewer pieces instead of failing
            num_threads=1,  # deterministic EM sums
            character_coverage=0.9995,  # rare characters become <unk>, as in real T5 vocabularies
            normalization_rule_name="identity",  # the tokenizer's NFKC normalizer already ran
            remove_extra_whitespaces=False,
            max_sentence_length=1 << 20,  # whole dialogues, not the 4 KiB default
            pad_id=specials.index("<pad>"),
            eos_id=specials.index("</s>"),
            unk_id=specials.index("<unk>"),
            bos_id=-1,
            minloglevel=2,
        )
    except RuntimeError as exc:
        raise ConfigError(
            f"could not train a {vocab_size}-piece tiny T5 tokenizer: {exc}. "
            "Raise vocab_size or give more varied texts."
        ) from exc
    processor = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    vocab = [(processor.id_to_piece(i), processor.get_score(i)) for i in range(len(processor))]
    return models.Unigram(vocab, unk_id=specials.index("<unk>"), byte_fallback=False)


def _post_processor(family: str, tokenizer: Tokenizer) -> processors.PostProcessor:
    eos = ("</s>", tokenizer.token_to_id("</s>"))
    if family == "t5":
        return processors.TemplateProcessing(
            single="$A </s>", pair="$A </s> $B </s>", special_tokens=[eos]
        )
    bos = ("<s>", tokenizer.token_to_id("<s>"))
    return processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[bos, eos]
    )


def _wrap(
    tokenizer: Tokenizer, family: str, special_tokens: Sequence[str]
) -> PreTrainedTokenizerFast:
    named: dict[str, str] = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if family == "bart":
        named["bos_token"] = "<s>"
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens=list(special_tokens),
        # tiny BART has 256 learned positions; T5's relative positions have no hard limit.
        model_max_length=256 if family == "bart" else 512,
        **named,
    )


def tiny_config(family: Family, vocab_size: int) -> PretrainedConfig:
    """A tiny T5 (v1.1 style, untied head) or BART config with the tiny tokenizer's ids."""
    _check_family(family)
    if family == "t5":
        return T5Config(
            vocab_size=vocab_size,
            d_model=64,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_decoder_layers=2,
            num_heads=4,
            feed_forward_proj="relu",
            # False → scale_decoder_outputs=False, which wants_untied_head reads (v1.1 style).
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    return BartConfig(
        vocab_size=vocab_size,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        max_position_embeddings=256,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
        tie_word_embeddings=True,
    )


def build_tiny_model(
    texts: Iterable[str],
    *,
    family: Family = "t5",
    vocab_size: int = 2000,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Tokenizer trained on ``texts`` plus a randomly initialised tiny model; deterministic."""
    tokenizer = train_tiny_tokenizer(texts, family=family, vocab_size=vocab_size)
    config = tiny_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = model_from_config(config)
    if _head_is_untied(model):
        _init_untied_head(model)
    set_generation_ids(model, tokenizer)
    return model, tokenizer


def _init_untied_head(model: nn.Module) -> None:
    """Draw the untied head independently of the embedding, as an untied checkpoint would be.

    Two equal tensors would also be re-tied by ``from_pretrained`` on reload. Std
    ``d_model**-0.5`` keeps the first logits near unit scale (T5 v1.1 does not rescale them).
    """
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.normal_(mean=0.0, std=head.weight.shape[1] ** -0.5)


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
        return _resolve_tiny(spec, tiny_texts, cache_dir, vocab_size)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    model = load_model(spec, tokenizer, trust_remote_code=trust_remote_code)
    return model, tokenizer


def _resolve_tiny(
    spec: str,
    tiny_texts: Callable[[], Iterable[str]] | None,
    cache_dir: Path | None,
    vocab_size: int,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    family = spec[len(TINY_PREFIX) :]
    _check_family(family)
    if tiny_texts is None:
        raise ConfigError(
            f"model {spec!r} is trained on the run's texts, but none were given; "
            "pass tiny_texts (e.g. the training dialogues) or use a hub id / model directory"
        )
    texts = list(tiny_texts())
    if cache_dir is None:
        return build_tiny_model(texts, family=family, vocab_size=vocab_size)
    target = Path(cache_dir) / f"tiny-{family}-{tiny_cache_key(texts, family, vocab_size)}"
    if not (target / "config.json").is_file():
        model, tokenizer = build_tiny_model(texts, family=family, vocab_size=vocab_size)
        _save_atomically(model, tokenizer, target)
    tokenizer = load_tokenizer(str(target))
    return load_model(str(target), tokenizer), tokenizer


def tiny_cache_key(texts: Sequence[str], family: str, vocab_size: int) -> str:
    """Hash naming a cached tiny model: same texts, family and size → same model."""
    digest = hashlib.sha256(f"{_TINY_RECIPE_VERSION}|{family}|{vocab_size}|".encode())
    for text in texts:
        data = text.encode()
        # Length-prefixed so ["ab", "c"] and ["a", "bc"] hash differently.
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()[:16]


def _save_atomically(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, target: Path
) -> None:
    """Save beside ``target`` and rename, so an interrupted save never looks like a cache hit."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        save_pretrained(model, tokenizer, staging)
        os.replace(staging, target)
    except OSError:
        # Another process filled the cache first (rename onto a non-empty dir fails).
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- LoRA


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

    targets = list(target_modules) if target_modules else _LORA_TARGETS.get(model_family(model))
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

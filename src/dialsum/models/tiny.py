"""Tiny models built offline: a tokenizer trained on the caller's texts and a
few-hundred-thousand-parameter T5, BART or Llama-style causal LM, deterministic for the
same texts and seed.

The demo and the tests run the whole pipeline (train, evaluate, predict) on these without
downloads; ``resolve_model("tiny:t5" | "tiny:bart" | "tiny:llama")`` builds one, or loads it
from the cache folder where an earlier run saved it (keyed by a hash of texts, family and
vocabulary size); ``tiny_folder`` gives that folder (a 4-bit QLoRA load reads it).
The tokenizers keep the speaker/PII markers as single tokens, like the real ones.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

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
    BartConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Config,
)

from dialsum.core.errors import ConfigError
from dialsum.core.tokens import SPECIAL_TOKENS
from dialsum.models.architectures import model_from_config
from dialsum.models.loading import (
    TINY_PREFIX,
    head_is_untied,
    load_model,
    load_tokenizer,
    save_pretrained,
    set_generation_ids,
)

TinyFamily = Literal["t5", "bart", "llama"]

# Bump when the tiny tokenizer/model recipe changes, so stale caches are not reused.
_TINY_RECIPE_VERSION = "2"

# Special-token layouts of the two families (ids are list positions).
_FAMILY_SPECIALS: dict[str, tuple[str, ...]] = {
    "t5": ("<pad>", "</s>", "<unk>"),
    "bart": ("<s>", "<pad>", "</s>", "<unk>"),
    "llama": ("<s>", "<pad>", "</s>", "<unk>"),
}


# --------------------------------------------------------------------------- tokenizer


def train_tiny_tokenizer(
    texts: Iterable[str],
    *,
    family: TinyFamily,
    vocab_size: int = 2000,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
) -> PreTrainedTokenizerFast:
    """Train a small tokenizer on ``texts``, offline and deterministically.

    t5: Unigram (sentencepiece style), ids ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``</s>``
    appended. bart: BPE, ids ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, input wrapped
    in ``<s> … </s>``. llama: bart's BPE and ids, ``<s>`` prepended only (a causal LM reads
    on past the prompt, so no ``</s>`` after it). All split words on spaces with the ``▁``
    marker (Metaspace) so decoding gives back Korean text with its spaces. ``vocab_size``
    is an upper bound: a small corpus yields fewer pieces. Characters unseen in ``texts``
    become ``<unk>``.
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
    if family == "llama":
        return processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[bos]
        )
    return processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[bos, eos]
    )


def _wrap(
    tokenizer: Tokenizer, family: str, special_tokens: Sequence[str]
) -> PreTrainedTokenizerFast:
    named: dict[str, str] = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    if family != "t5":
        named["bos_token"] = "<s>"
    # tiny BART has 256 learned positions; T5's relative positions have no hard limit;
    # tiny Llama's rotary positions are set to 1,024 (prompt + summary).
    max_length = {"bart": 256, "t5": 512, "llama": 1024}[family]
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        extra_special_tokens=list(special_tokens),
        model_max_length=max_length,
        **named,
    )


# --------------------------------------------------------------------------- model


def tiny_config(family: TinyFamily, vocab_size: int) -> PretrainedConfig:
    """A tiny T5 (v1.1 style, untied head), BART or Llama (grouped-query attention, gated
    SiLU MLP, untied head) config with the tiny tokenizer's ids."""
    _check_family(family)
    if family == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            bos_token_id=0,
            pad_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
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
    family: TinyFamily = "t5",
    vocab_size: int = 2000,
    seed: int = 0,
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """Tokenizer trained on ``texts`` plus a randomly initialised tiny model; deterministic."""
    tokenizer = train_tiny_tokenizer(texts, family=family, vocab_size=vocab_size)
    config = tiny_config(family, len(tokenizer))
    torch.manual_seed(seed)
    model = model_from_config(config)
    if head_is_untied(model):
        _init_untied_head(model)
    if family == "llama":
        from dialsum.models.causal import set_causal_generation_ids

        set_causal_generation_ids(model, tokenizer)
    else:
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


# --------------------------------------------------------------------------- cache


def resolve_tiny(
    spec: str,
    tiny_texts: Callable[[], Iterable[str]] | None,
    cache_dir: Path | None,
    vocab_size: int,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """``resolve_model`` for ``tiny:<family>``: built on ``tiny_texts()``, cached by their hash."""
    family = tiny_family(spec)
    if cache_dir is None:
        texts = _texts(spec, tiny_texts)
        return build_tiny_model(texts, family=family, vocab_size=vocab_size)
    target = tiny_folder(spec, tiny_texts, cache_dir, vocab_size)
    tokenizer = load_tokenizer(str(target))
    if family == "llama":
        from dialsum.models.causal import load_causal_model, prepare_causal_tokenizer

        tokenizer = prepare_causal_tokenizer(tokenizer)
        return load_causal_model(str(target), tokenizer), tokenizer
    return load_model(str(target), tokenizer), tokenizer


def tiny_family(spec: str) -> TinyFamily:
    """``tiny:llama`` -> ``llama`` (a ``ConfigError`` for an unknown family)."""
    family = spec[len(TINY_PREFIX) :]
    _check_family(family)
    return family  # type: ignore[return-value]  # checked above


def _texts(spec: str, tiny_texts: Callable[[], Iterable[str]] | None) -> list[str]:
    if tiny_texts is None:
        raise ConfigError(
            f"model {spec!r} is trained on the run's texts, but none were given; "
            "pass tiny_texts (e.g. the training dialogues) or use a hub id / model directory"
        )
    return list(tiny_texts())


def tiny_folder(
    spec: str,
    tiny_texts: Callable[[], Iterable[str]] | None,
    cache_dir: Path,
    vocab_size: int,
) -> Path:
    """The cache folder of ``spec`` built on ``tiny_texts()`` (built and saved when missing)."""
    family = tiny_family(spec)
    texts = _texts(spec, tiny_texts)
    target = Path(cache_dir) / f"tiny-{family}-{tiny_cache_key(texts, family, vocab_size)}"
    if not (target / "config.json").is_file():
        model, tokenizer = build_tiny_model(texts, family=family, vocab_size=vocab_size)
        _save_atomically(model, tokenizer, target)
    return target


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

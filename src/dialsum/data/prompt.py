"""Causal LMs: the prompt around a dialogue, training rows with masked labels, and the
right-padding collator.

A causal LM reads one sequence: ``prompt + summary + EOS``. The prompt is the section's
``tokenizer.prompt_template`` with the dialogue at ``{dialogue}``, wrapped in the
tokenizer's chat template when it has one (``tokenizer.chat_template: auto``) - then the
template is the user turn, ``tokenizer.system_prompt`` an optional system turn, and the
prompt ends with the assistant header (``add_generation_prompt``).

The prompt is tokenized in three pieces - the text before the dialogue, the dialogue, the
text after it - so a prompt longer than the source length loses the *end of the dialogue*,
never the instruction or the assistant header that the summary must follow. Training and
generation build prompts with the same ``PromptFormat.prompt_ids``, so both see the same
ids (tokenizing the pieces apart can differ from tokenizing the joined string at the two
seams; what matters is that train and predict agree).

Labels: -100 on every prompt token and on padding, the summary ids and EOS elsewhere: the
loss counts summary tokens only (``step.train_step`` shifts labels by one position).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dialsum.core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from dialsum.core.config_schema import TokenizerConfig
    from dialsum.data.dataset import Record

DIALOGUE = "{dialogue}"
_MARK = "\x00DIALOGUE\x00"  # stands in for the dialogue while the chat template renders
IGNORE = -100


@dataclass(frozen=True)
class PromptFormat:
    """The prompt around each dialogue, as token ids before and after it."""

    before: tuple[int, ...]  # BOS / chat header / instruction up to {dialogue}
    after: tuple[int, ...]  # instruction after {dialogue}, assistant header
    eos_id: int
    uses_chat_template: bool

    @classmethod
    def build(cls, tokenizer: PreTrainedTokenizerBase, tok: TokenizerConfig) -> PromptFormat:
        """The format for ``tokenizer`` and the section's tokenizer block."""
        template = tok.prompt_template
        if tok.prefix:  # also caught in validation when the section says it is causal
            raise ConfigError(
                f"tokenizer.prefix: {tok.prefix!r} is for seq2seq models; this causal LM reads "
                "tokenizer.prompt_template (the instruction around {dialogue}): remove the "
                "prefix (a section extending a seq2seq one inherits it: set it to '')"
            )
        if template.count(DIALOGUE) != 1:
            raise ConfigError(
                f"tokenizer.prompt_template: must contain {DIALOGUE} exactly once, got {template!r}"
            )
        if tokenizer.eos_token_id is None:
            raise ConfigError(
                f"tokenizer {tokenizer.name_or_path!r} has no eos token: a causal LM needs "
                "one to end its summaries"
            )
        has_chat = bool(getattr(tokenizer, "chat_template", None))
        use_chat = has_chat if tok.chat_template == "auto" else bool(tok.chat_template)
        if use_chat and not has_chat:
            raise ConfigError(
                f"tokenizer.chat_template: true, but tokenizer {tokenizer.name_or_path!r} has "
                "no chat template; set tokenizer.chat_template: auto or false"
            )
        user = template.replace(DIALOGUE, _MARK)
        if use_chat:
            messages = [{"role": "user", "content": user}]
            if tok.system_prompt:
                messages.insert(0, {"role": "system", "content": tok.system_prompt})
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            bos: list[int] = []  # a chat template writes its own BOS text, if any
        else:
            text = user
            bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        head, tail = text.split(_MARK)
        return cls(
            before=tuple(bos + _ids(tokenizer, head)),
            after=tuple(_ids(tokenizer, tail)),
            eos_id=int(tokenizer.eos_token_id),
            uses_chat_template=use_chat,
        )

    @property
    def frame_len(self) -> int:
        """Prompt tokens that are not the dialogue."""
        return len(self.before) + len(self.after)

    def prompt_ids(self, dialogue_ids: Sequence[int], source_len: int) -> list[int]:
        """The prompt of a dialogue, at most ``source_len`` tokens: the dialogue's end is
        cut to make room for the instruction."""
        room = source_len - self.frame_len
        if room < 1:
            raise ConfigError(
                f"tokenizer.max_source_length {source_len} leaves no room for the dialogue: "
                f"the prompt around it takes {self.frame_len} tokens; raise "
                "tokenizer.max_source_length or shorten tokenizer.prompt_template"
            )
        return [*self.before, *list(dialogue_ids)[:room], *self.after]


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_causal(
    records: Sequence[Record],
    tokenizer: PreTrainedTokenizerBase,
    fmt: PromptFormat,
    *,
    source_len: int,
    max_target_len: int,
    with_labels: bool,
) -> list[dict[str, list[int]]]:
    """Unpadded causal examples.

    ``with_labels``: ``input_ids`` = prompt + summary + EOS (summary cut so that summary +
    EOS is at most ``max_target_len`` tokens), ``labels`` = -100 on the prompt, the ids
    elsewhere. Without: the prompt alone (what generation starts from).
    """
    if not records:
        return []
    dialogues = tokenizer([r.dialogue for r in records], add_special_tokens=False)["input_ids"]
    prompts = [fmt.prompt_ids(ids, source_len) for ids in dialogues]
    if not with_labels:
        return [{"input_ids": p, "attention_mask": [1] * len(p)} for p in prompts]
    missing = [r.fname for r in records if r.summary is None]
    if missing:
        raise ValueError(f"records without a summary cannot have labels: {missing[:5]}")
    summaries = tokenizer([r.summary or "" for r in records], add_special_tokens=False)
    rows = []
    for prompt, summary in zip(prompts, summaries["input_ids"], strict=True):
        target = [*list(summary)[: max(max_target_len - 1, 0)], fmt.eos_id]
        ids = prompt + target
        rows.append(
            {
                "input_ids": ids,
                "attention_mask": [1] * len(ids),
                "labels": [IGNORE] * len(prompt) + target,
            }
        )
    return rows


def prompt_lengths(
    records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, fmt: PromptFormat
) -> list[int]:
    """Untruncated prompt lengths (frame + whole dialogue) of ``records``."""
    if not records:
        return []
    dialogues = tokenizer([r.dialogue for r in records], add_special_tokens=False, verbose=False)
    return [fmt.frame_len + len(ids) for ids in dialogues["input_ids"]]


def target_lengths(records: Sequence[Record], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Untruncated summary + EOS lengths of the records that have a summary."""
    texts = [r.summary for r in records if r.summary is not None]
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return [len(ids) + 1 for ids in encoded]


class CausalCollator:
    """Right-pads ``input_ids`` (pad id), ``attention_mask`` (0) and ``labels`` (-100).

    Right padding in training: positions then count from 0 for every row, and
    ``step.train_step.slice_rows`` can cut trailing padding per micro-batch. Generation
    pads on the left (``inference.predict``).
    """

    def __init__(self, pad_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_id = pad_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            multiple = self.pad_to_multiple_of
            width = -(-width // multiple) * multiple
        fill = {"input_ids": self.pad_id, "attention_mask": 0, "labels": IGNORE}
        batch: dict[str, torch.Tensor] = {}
        for key, value in fill.items():
            if key not in features[0]:
                continue
            rows = [list(f[key]) + [value] * (width - len(f[key])) for f in features]
            batch[key] = torch.tensor(rows, dtype=torch.long)
        return batch


def prompts_and_targets(
    input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[list[list[int]], list[list[int]]]:
    """Split right-padded training rows back into prompts and summary ids.

    ``input_ids`` / ``labels`` [rows, seq]: a row's prompt is everything before its first
    label that is not -100; its target is the labelled ids (summary + EOS).
    """
    prompts: list[list[int]] = []
    targets: list[list[int]] = []
    for ids, row_labels in zip(input_ids.tolist(), labels.tolist(), strict=True):
        scored = [i for i, label in enumerate(row_labels) if label != IGNORE]
        start = scored[0] if scored else len(ids)
        prompts.append(ids[:start])
        targets.append([row_labels[i] for i in scored])
    return prompts, targets


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, *, device: Any = None, side: str = "left"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` as one ``[rows, longest]`` tensor padded on ``side``, and its attention mask.

    Generation pads on the left: every row's last prompt token sits at the last column, so
    the first new token of every row is predicted from the same position and the KV cache
    grows in step (a right-padded row would continue after its padding).
    """
    import torch

    width = max((len(r) for r in rows), default=0)
    ids, mask = [], []
    for row in rows:
        pad = [pad_id] * (width - len(row))
        ones, zeros = [1] * len(row), [0] * len(pad)
        ids.append(pad + list(row) if side == "left" else list(row) + pad)
        mask.append(zeros + ones if side == "left" else ones + zeros)
    return (
        torch.tensor(ids, dtype=torch.long, device=device),
        torch.tensor(mask, dtype=torch.long, device=device),
    )

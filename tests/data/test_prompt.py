"""Causal prompts: exact ids and labels of a training row, truncation that keeps the
instruction, the chat template path, the collator's padding, prompts split back out."""

from __future__ import annotations

import pytest
import torch

from dialsum.core.config_schema import TokenizerConfig
from dialsum.core.errors import ConfigError
from dialsum.data.dataset import Record
from dialsum.data.prompt import (
    IGNORE,
    CausalCollator,
    PromptFormat,
    left_pad,
    prompts_and_targets,
    tokenize_causal,
)
from dialsum.models.tiny import train_tiny_tokenizer

TEXTS = [
    "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요.",
    "#Person2#: 네, 산책하기 좋은 날이에요.",
    "두 사람은 날씨와 산책에 대해 이야기한다.",
    "대화를 요약하세요.\n요약:",
    "[system] [user] [assistant]\n",  # the test chat template's own text
]
TEMPLATE = "대화를 요약하세요.\n{dialogue}\n요약:"


@pytest.fixture(scope="module")
def tokenizer():
    return train_tiny_tokenizer(TEXTS, family="llama", vocab_size=300)


def record(dialogue: str, summary: str | None = "두 사람은 날씨 이야기를 한다.") -> Record:
    refs = [summary] if summary is not None else []
    return Record(fname="r0", dialogue=dialogue, summary=summary, references=refs, topic=None)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_a_training_row_is_prompt_summary_eos_with_the_prompt_masked(tokenizer) -> None:
    fmt = PromptFormat.build(tokenizer, TokenizerConfig(prompt_template=TEMPLATE))
    dialogue = "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요."
    (row,) = tokenize_causal(
        [record(dialogue)], tokenizer, fmt, source_len=256, max_target_len=64, with_labels=True
    )
    prompt = [tokenizer.bos_token_id, *ids(tokenizer, "대화를 요약하세요.\n")]
    prompt += ids(tokenizer, dialogue) + ids(tokenizer, "\n요약:")
    summary = ids(tokenizer, "두 사람은 날씨 이야기를 한다.")
    eos = tokenizer.eos_token_id
    assert row["input_ids"] == prompt + summary + [eos]
    assert row["labels"] == [IGNORE] * len(prompt) + summary + [eos]
    assert row["attention_mask"] == [1] * len(row["input_ids"])
    # Without labels: the prompt alone, what generation continues.
    (bare,) = tokenize_causal(
        [record(dialogue, None)], tokenizer, fmt, source_len=256, max_target_len=64,
        with_labels=False,
    )  # fmt: skip
    assert bare == {"input_ids": prompt, "attention_mask": [1] * len(prompt)}


def test_truncation_cuts_the_dialogue_end_and_keeps_the_instruction(tokenizer) -> None:
    fmt = PromptFormat.build(tokenizer, TokenizerConfig(prompt_template=TEMPLATE))
    dialogue = " ".join(TEXTS[:2])
    source_len = fmt.frame_len + 5
    (row,) = tokenize_causal(
        [record(dialogue)], tokenizer, fmt, source_len=source_len, max_target_len=3,
        with_labels=True,
    )  # fmt: skip
    prompt = [*fmt.before, *ids(tokenizer, dialogue)[:5], *fmt.after]
    assert len(prompt) == source_len
    assert row["input_ids"][:source_len] == prompt
    # The summary is cut so that summary + EOS fit max_target_length; EOS is kept.
    assert row["labels"][source_len:] == ids(tokenizer, "두 사람은 날씨 이야기를 한다.")[:2] + [
        tokenizer.eos_token_id
    ]
    with pytest.raises(ConfigError, match="leaves no room for the dialogue"):
        fmt.prompt_ids([5, 6], fmt.frame_len)


def test_the_chat_template_wraps_the_instruction(tokenizer) -> None:
    tokenizer.chat_template = (
        "{% for m in messages %}<s>[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    try:
        tok = TokenizerConfig(prompt_template=TEMPLATE, system_prompt="요약하세요.")
        fmt = PromptFormat.build(tokenizer, tok)
        assert fmt.uses_chat_template
        text = tokenizer.decode(fmt.before)
        assert text.startswith("<s>[system] 요약하세요.") and "[user] 대화를 요약하세요." in text
        assert tokenizer.decode(fmt.after).endswith("[assistant] ")
        # A chat template writes its own <s>: no second BOS in front.
        assert fmt.before.count(tokenizer.bos_token_id) == 2  # one per rendered turn
        off = TokenizerConfig(prompt_template=TEMPLATE, chat_template=False)
        plain = PromptFormat.build(tokenizer, off)
        assert not plain.uses_chat_template
    finally:
        tokenizer.chat_template = None
    with pytest.raises(ConfigError, match="has no chat template"):
        PromptFormat.build(tokenizer, TokenizerConfig(prompt_template=TEMPLATE, chat_template=True))
    with pytest.raises(ConfigError, match="tokenizer.prompt_template"):
        PromptFormat.build(tokenizer, TokenizerConfig(prompt_template="요약하세요"))
    with pytest.raises(ConfigError, match="tokenizer.prefix: 'summarize: ' is for seq2seq"):
        PromptFormat.build(tokenizer, TokenizerConfig(prefix="summarize: "))


def test_the_collator_pads_right_with_ignored_labels() -> None:
    rows = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [IGNORE]},
    ]
    batch = CausalCollator(pad_id=1)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, IGNORE]]
    assert CausalCollator(pad_id=1, pad_to_multiple_of=4)(rows)["input_ids"].shape == (2, 4)


def test_prompts_and_targets_split_rows_back_and_left_pad() -> None:
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 1]])
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8], [IGNORE, 10, 11, IGNORE]])
    prompts, targets = prompts_and_targets(input_ids, labels)
    assert prompts == [[5, 6], [9]] and targets == [[7, 8], [10, 11]]
    ids_, mask = left_pad(prompts, pad_id=1)
    assert ids_.tolist() == [[5, 6], [1, 9]] and mask.tolist() == [[1, 1], [0, 1]]
    right, _ = left_pad(targets, IGNORE, side="right")
    assert right.tolist() == [[7, 8], [10, 11]]

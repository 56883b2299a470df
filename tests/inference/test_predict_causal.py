"""Causal generation: a left-padded batch gives every row what it gives alone, and the
output is the new tokens only (the prompt stripped)."""

from __future__ import annotations

import pytest
import torch

from dialsum.core.config_schema import TokenizerConfig
from dialsum.data.dataset import Record
from dialsum.data.prompt import PromptFormat, tokenize_causal
from dialsum.inference.predict import generate_summaries
from dialsum.metrics import decode_keep_special
from dialsum.models.causal import prepare_causal_tokenizer
from dialsum.models.tiny import build_tiny_model

DIALOGUES = [
    "#Person1#: 안녕하세요, 오늘 날씨가 정말 좋네요. #Person2#: 네, 산책하기 좋은 날이에요.",
    "#Person1#: 점심으로 비빔밥을 먹을까요?",
    "#Person2#: 회의는 오후 세 시에 시작합니다. #Person1#: 알겠습니다. 내일 다시 연락드릴게요.",
    "#Person1#: 주소는 #Address# 로 보내 주세요.",
]
GEN = {"num_beams": 1, "max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def model_and_rows():
    texts = [*DIALOGUES, "두 사람은 날씨와 산책에 대해 이야기한다.", "대화를 요약하세요.\n요약:"]
    model, tokenizer = build_tiny_model(texts, family="llama", vocab_size=300, seed=3)
    tokenizer = prepare_causal_tokenizer(tokenizer)
    fmt = PromptFormat.build(
        tokenizer, TokenizerConfig(prompt_template="대화를 요약하세요.\n{dialogue}\n요약:")
    )
    records = [
        Record(fname=f"t{i}", dialogue=d, summary=None, references=[], topic=None)
        for i, d in enumerate(DIALOGUES)
    ]
    rows = tokenize_causal(
        records, tokenizer, fmt, source_len=256, max_target_len=8, with_labels=False
    )
    assert len({len(r["input_ids"]) for r in rows}) >= 3  # a batch of them is padded
    return model.eval(), tokenizer, rows


def test_left_padded_batch_matches_each_row_alone(model_and_rows) -> None:
    model, tokenizer, rows = model_and_rows
    together = generate_summaries(
        model, tokenizer, rows, GEN, token_budget=10_000, progress=False, causal=True
    )
    alone = generate_summaries(
        model, tokenizer, rows, GEN, token_budget=10_000, max_batch_size=1, progress=False,
        causal=True,
    )  # fmt: skip
    assert together == alone
    assert all(together)


def test_the_output_is_the_new_tokens_only(model_and_rows) -> None:
    model, tokenizer, rows = model_and_rows
    (summary,) = generate_summaries(
        model, tokenizer, rows[:1], GEN, token_budget=10_000, progress=False, causal=True
    )
    prompt = torch.tensor([rows[0]["input_ids"]])
    with torch.inference_mode():
        out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), **GEN)
    assert out.shape[1] > prompt.shape[1]
    (expected,) = decode_keep_special(tokenizer, out[:, prompt.shape[1] :].tolist())
    assert summary == expected
    (with_prompt,) = decode_keep_special(tokenizer, out.tolist())
    assert "요약" in with_prompt and "요약" not in summary.split()[:1]

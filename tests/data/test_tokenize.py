"""Tests for dialsum.data.tokenize: truncated examples, the length report, the collator."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from dialsum.data.dataset import Record
from dialsum.data.tokenize import length_report, make_collator, tokenize_records

# --------------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """Whitespace word-level tokenizer that appends </s>, like T5's; built in process."""
    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words = " ".join(["summarize:"] + [f"w{i}" for i in range(30)])
    core.train_from_iterator(
        [words], trainers.WordLevelTrainer(special_tokens=["<pad>", "</s>", "<unk>"])
    )
    eos_id = core.token_to_id("</s>")
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{start + i}" for i in range(n))


def record(source_words: int, target_words: int | None, fname: str = "r") -> Record:
    summary = None if target_words is None else words(target_words, start=20)
    return Record(fname, words(source_words), summary, [summary] if summary else [], None)


def test_tokenize_records_truncates_and_keeps_eos(tokenizer: PreTrainedTokenizerFast) -> None:
    records = [record(3, 2), record(10, 8)]
    examples = tokenize_records(
        records,
        tokenizer,
        prefix="summarize: ",
        max_source_len=6,
        max_target_len=4,
        with_labels=True,
    )
    eos = tokenizer.eos_token_id
    short, long = examples
    assert short["input_ids"] == tokenizer.convert_tokens_to_ids(
        ["summarize:", "w0", "w1", "w2"]
    ) + [eos]
    assert short["attention_mask"] == [1] * 5
    assert short["labels"] == tokenizer.convert_tokens_to_ids(["w20", "w21"]) + [eos]
    assert len(long["input_ids"]) == 6 and long["input_ids"][-1] == eos
    assert len(long["attention_mask"]) == 6
    assert len(long["labels"]) == 4 and long["labels"][-1] == eos
    assert all(isinstance(i, int) for i in long["input_ids"])


def test_tokenize_records_without_labels(tokenizer: PreTrainedTokenizerFast) -> None:
    (example,) = tokenize_records(
        [record(3, None)],
        tokenizer,
        prefix="",
        max_source_len=10,
        max_target_len=4,
        with_labels=False,
    )
    assert set(example) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="without a summary"):
        tokenize_records(
            [record(3, None, fname="t_7")],
            tokenizer,
            prefix="",
            max_source_len=10,
            max_target_len=4,
            with_labels=True,
        )


def test_length_report_numbers(tokenizer: PreTrainedTokenizerFast) -> None:
    # Untruncated lengths (prefix + words + eos): sources 5, 7, 12; targets 2, 3, 7.
    records = [record(3, 1), record(5, 2), record(10, 6)]
    kwargs = {"prefix": "summarize: ", "max_source_len": 8, "max_target_len": 4}
    report = length_report(records, tokenizer, **kwargs)
    assert (report.n_records, report.n_targets) == (3, 3)
    assert (report.source_over, round(report.source_over_pct, 1)) == (1, 33.3)
    assert (report.source_p50, report.source_p95, report.source_max) == (7, 12, 12)
    assert (report.target_over, report.target_p50, report.target_max) == (1, 3, 7)
    assert (report.longest_source, report.longest_target) == (8, 4)
    # The planner trusts longest_* as the real shapes: they must match tokenize_records.
    examples = tokenize_records(records, tokenizer, with_labels=True, **kwargs)
    assert max(len(e["input_ids"]) for e in examples) == report.longest_source
    assert max(len(e["labels"]) for e in examples) == report.longest_target
    text = report.format()
    assert "max 12" in text and "1 (33.3%) longer than max_source_len 8" in text
    assert "longest source 8" in text and "longest target 4" in text


def test_length_report_without_summaries(tokenizer: PreTrainedTokenizerFast) -> None:
    report = length_report(
        [record(4, None)], tokenizer, prefix="", max_source_len=3, max_target_len=4
    )
    assert (report.n_targets, report.target_max, report.longest_target) == (0, 0, 0)
    assert (report.source_max, report.longest_source) == (5, 3)
    assert "target" not in report.format().splitlines()[0]
    assert len(report.format().splitlines()) == 2


# --------------------------------------------------------------------------- collator


def test_collator_pads_labels_with_ignore_index(tokenizer: PreTrainedTokenizerFast) -> None:
    examples = tokenize_records(
        [record(2, 1), record(6, 4)],
        tokenizer,
        prefix="",
        max_source_len=16,
        max_target_len=16,
        with_labels=True,
    )
    batch = make_collator(tokenizer, pad_to_multiple_of=8)(examples)
    assert batch["input_ids"].shape == (2, 8)
    assert batch["input_ids"][0, 3:].tolist() == [tokenizer.pad_token_id] * 5
    assert batch["attention_mask"][0].tolist() == [1, 1, 1] + [0] * 5
    assert batch["labels"].shape == (2, 8)
    assert batch["labels"][0, 2:].tolist() == [-100] * 6
    assert "decoder_input_ids" not in batch


class _ShiftingModel:
    """Stands in for a seq2seq model: the collator only calls this one method on it.

    (Importing a real T5 class costs tens of seconds on a small CPU machine.)
    """

    def __init__(self, start_id: int) -> None:
        self.start_id = start_id
        self.seen_labels: torch.Tensor | None = None

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        self.seen_labels = labels
        shifted = torch.full_like(labels, self.start_id)
        shifted[:, 1:] = labels[:, :-1].clamp(min=0)
        return shifted


def test_collator_with_model_builds_decoder_inputs(tokenizer: PreTrainedTokenizerFast) -> None:
    model = _ShiftingModel(start_id=tokenizer.pad_token_id)
    examples = tokenize_records(
        [record(2, 1), record(3, 3)],
        tokenizer,
        prefix="",
        max_source_len=16,
        max_target_len=16,
        with_labels=True,
    )
    batch = make_collator(tokenizer, model=model)(examples)
    assert model.seen_labels is not None and model.seen_labels[0, -1].item() == -100
    decoder = batch["decoder_input_ids"]
    assert decoder.shape == batch["labels"].shape
    assert decoder[:, 0].tolist() == [tokenizer.pad_token_id] * 2
    assert torch.equal(decoder[1, 1:], batch["labels"][1, :-1])

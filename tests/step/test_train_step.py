"""The shared training step: token-sum loss, exact micro-batching, logits released before
backward, the optimizer's weight-decay groups, and the generation cost formula."""

from __future__ import annotations

import gc
import importlib.util
import math
import weakref

import pytest
import torch
import transformers

from dialsum.core.errors import UserError
from dialsum.step.train_step import (
    build_optimizer,
    label_token_count,
    micro_batch_forward_backward,
    optimizer_available,
    slice_rows,
    step_forward_backward,
    token_sum_loss,
)
from helpers import micro_t5

VOCAB = 64


def tiny_t5() -> transformers.T5ForConditionalGeneration:
    return micro_t5(dropout_rate=0.0).eval()


def tiny_bart() -> transformers.BartForConditionalGeneration:
    torch.manual_seed(0)
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=32,
    )
    return transformers.BartForConditionalGeneration(config)


def four_row_batch(model) -> dict[str, torch.Tensor]:
    """4 rows of different source and label lengths, padded as the collator pads them."""
    gen = torch.Generator().manual_seed(1)
    source_lens, label_lens = [9, 4, 7, 2], [6, 2, 5, 3]
    input_ids = torch.zeros(4, 9, dtype=torch.long)
    attention_mask = torch.zeros(4, 9, dtype=torch.long)
    labels = torch.full((4, 6), -100, dtype=torch.long)
    for row, (s, t) in enumerate(zip(source_lens, label_lens, strict=True)):
        input_ids[row, :s] = torch.randint(2, VOCAB, (s,), generator=gen)
        attention_mask[row, :s] = 1
        labels[row, :t] = torch.randint(2, VOCAB, (t,), generator=gen)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "decoder_input_ids": model._shift_right(labels),
    }


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


# -- loss ------------------------------------------------------------------------------


def test_token_sum_loss_matches_a_hand_computation() -> None:
    logits = torch.arange(30, dtype=torch.float32).reshape(2, 3, 5).sin() * 3
    labels = torch.tensor([[1, 4, -100], [0, 2, 3]])
    rows = logits.tolist()
    expected = expected_smoothed = 0.0
    for b in range(2):
        for t in range(3):
            if labels[b, t] == -100:
                continue
            row = rows[b][t]
            log_z = math.log(sum(math.exp(x) for x in row))
            log_p = [x - log_z for x in row]
            nll = -log_p[int(labels[b, t])]
            expected += nll
            expected_smoothed += 0.9 * nll + 0.1 * sum(-lp for lp in log_p) / 5
    got = token_sum_loss(logits, labels, 0.0)
    assert got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert token_sum_loss(logits, labels, 0.1).item() == pytest.approx(expected_smoothed, rel=1e-6)
    # the ignored token really is ignored: changing its logits changes nothing
    changed = logits.clone()
    changed[0, 2] = 100.0
    assert token_sum_loss(changed, labels, 0.0).item() == pytest.approx(expected, rel=1e-6)
    # low-precision logits are summed in fp32
    assert token_sum_loss(logits.bfloat16(), labels, 0.0).dtype == torch.float32
    assert label_token_count(labels).item() == 5.0


def test_slice_rows_trims_the_chunks_padding() -> None:
    model = tiny_t5()
    batch = four_row_batch(model)
    chunk = slice_rows(batch, 2, 4)  # rows of source 7, 2 and labels 5, 3
    assert chunk["input_ids"].shape == (2, 7) and chunk["attention_mask"].shape == (2, 7)
    assert chunk["labels"].shape == (2, 5) and chunk["decoder_input_ids"].shape == (2, 5)
    untrimmed = slice_rows(batch, 2, 4, trim=False)
    assert untrimmed["input_ids"].shape == (2, 9) and untrimmed["labels"].shape == (2, 6)


# -- micro-batching ----------------------------------------------------------------------


def test_micro_batches_give_the_same_gradients_as_the_whole_batch() -> None:
    model = tiny_t5()
    batch = four_row_batch(model)
    normalizer = label_token_count(batch["labels"])
    assert normalizer.item() == 16.0

    # The model's own loss: mean cross entropy over all 16 label tokens of the 4 rows.
    model.zero_grad(set_to_none=True)
    reference_loss = model(**batch).loss
    reference_loss.backward()
    reference = grads(model)
    assert len(reference) == len(list(model.parameters()))

    losses = {}
    for micro in (1, 2, 4):
        model.zero_grad(set_to_none=True)
        losses[micro] = step_forward_backward(model, batch, micro, normalizer)
        got = grads(model)
        assert got.keys() == reference.keys()
        for name, grad in reference.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
        torch.testing.assert_close(losses[micro], reference_loss.detach(), rtol=1e-5, atol=1e-7)

    # A per-micro-batch mean would weigh rows of few label tokens more: not what we do.
    model.zero_grad(set_to_none=True)
    per_chunk_mean = (
        sum(model(**slice_rows(batch, start, start + 1)).loss.detach() for start in range(4)) / 4
    )
    assert not torch.allclose(per_chunk_mean, reference_loss.detach(), rtol=1e-3)


def test_step_calls_the_hooks_once_per_micro_batch() -> None:
    model = tiny_t5()
    batch = four_row_batch(model)
    chunks, backwards, contexts = [], [], []

    class Context:
        def __enter__(self):
            contexts.append("enter")

        def __exit__(self, *exc):
            contexts.append("exit")

    def backward(loss: torch.Tensor) -> None:
        backwards.append(loss.detach())
        loss.backward()

    total = step_forward_backward(
        model,
        batch,
        2,
        label_token_count(batch["labels"]),
        backward=backward,
        context=Context,
        before_micro_batch=lambda chunk: chunks.append(chunk["labels"].shape[0]),
    )
    assert chunks == [2, 2]
    assert contexts == ["enter", "exit", "enter", "exit"]
    torch.testing.assert_close(total, sum(backwards))


class LogitsProbe:
    """Wraps a model and remembers a weak reference to each forward's logits.

    Autograd keeps the Python object of a tensor it saved for backward alive, so a dead
    weak reference at ``backward`` means nothing holds the logits: neither a local
    variable of the step nor the graph.
    """

    def __init__(self, model, keep: bool = False) -> None:
        self.model = model
        self.keep = keep
        self.kept: list[torch.Tensor] = []
        self.refs: list[weakref.ref] = []
        self.alive_at_backward: list[bool] = []

    def __call__(self, **inputs):
        out = self.model(**inputs)
        self.refs.append(weakref.ref(out.logits))
        if self.keep:
            self.kept.append(out.logits)
        return out

    def backward(self, loss: torch.Tensor) -> None:
        gc.collect()
        self.alive_at_backward.append(self.refs[-1]() is not None)
        loss.backward()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_logits_are_released_before_backward(label_smoothing: float) -> None:
    model = tiny_t5()
    batch = four_row_batch(model)
    normalizer = label_token_count(batch["labels"])

    probe = LogitsProbe(model)
    step_forward_backward(
        probe, batch, 2, normalizer, label_smoothing=label_smoothing, backward=probe.backward
    )
    assert probe.alive_at_backward == [False, False]
    assert all(p.grad is not None for p in model.parameters())

    # The probe does see logits that something still holds.
    holding = LogitsProbe(model, keep=True)
    micro_batch_forward_backward(
        holding, batch, normalizer, label_smoothing=label_smoothing, backward=holding.backward
    )
    assert holding.alive_at_backward == [True]


# -- optimizer --------------------------------------------------------------------------


def _group_of(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> int:
    (index,) = [
        i for i, g in enumerate(optimizer.param_groups) if any(p is param for p in g["params"])
    ]
    return index


def test_adamw_is_fused_with_the_trainers_decay_groups() -> None:
    model = tiny_t5()
    named = dict(model.named_parameters())
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01)
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["fused"] for g in opt.param_groups] == [True, True]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    # every trainable parameter is in exactly one group
    in_groups = [p for g in opt.param_groups for p in g["params"]]
    assert len(in_groups) == len(named) == len({id(p) for p in in_groups})
    # T5's layer norms (T5LayerNorm, not nn.LayerNorm) get no weight decay; matrices do
    assert _group_of(opt, named["encoder.block.0.layer.0.layer_norm.weight"]) == 1
    assert _group_of(opt, named["decoder.final_layer_norm.weight"]) == 1
    assert _group_of(opt, named["encoder.block.0.layer.0.SelfAttention.q.weight"]) == 0
    assert _group_of(opt, named["encoder.block.0.layer.1.DenseReluDense.wi.weight"]) == 0


def test_bart_biases_and_layer_norms_get_no_weight_decay() -> None:
    model = tiny_bart()
    named = dict(model.named_parameters())
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    no_decay, decay = 1, 0
    assert _group_of(opt, named["model.encoder.layers.0.self_attn.q_proj.bias"]) == no_decay
    assert _group_of(opt, named["model.decoder.layers.0.fc1.bias"]) == no_decay
    assert _group_of(opt, named["model.encoder.layers.0.self_attn_layer_norm.weight"]) == no_decay
    assert _group_of(opt, named["model.encoder.layernorm_embedding.weight"]) == no_decay
    assert _group_of(opt, named["model.encoder.layers.0.self_attn.q_proj.weight"]) == decay
    assert _group_of(opt, named["model.decoder.layers.0.fc1.weight"]) == decay


def test_frozen_parameters_are_left_out() -> None:
    model = tiny_t5()
    frozen = model.shared.weight
    frozen.requires_grad_(False)
    opt = build_optimizer(model, "adamw", lr=1e-3)
    assert all(p is not frozen for g in opt.param_groups for p in g["params"])


def test_other_optimizers() -> None:
    model = tiny_t5()
    foreach = build_optimizer(model, "adamw_foreach", lr=1e-3)
    assert isinstance(foreach, torch.optim.AdamW)
    assert [g["foreach"] for g in foreach.param_groups] == [True, True]
    assert not any(g["fused"] for g in foreach.param_groups)

    adafactor = build_optimizer(model, "adafactor", lr=1e-3)
    assert isinstance(adafactor, transformers.optimization.Adafactor)
    assert adafactor.param_groups[0]["relative_step"] is False

    assert isinstance(build_optimizer(model, "sgd", lr=1e-3), torch.optim.SGD)

    with pytest.raises(ValueError, match="unknown optimizer 'adam'; use one of adamw, "):
        build_optimizer(model, "adam", lr=1e-3)

    assert optimizer_available("adamw") and optimizer_available("adafactor")
    assert not optimizer_available("adam")
    has_bnb = importlib.util.find_spec("bitsandbytes") is not None
    assert optimizer_available("adamw8bit") == has_bnb
    assert optimizer_available("paged_adamw8bit") == has_bnb
    if not has_bnb:
        with pytest.raises(UserError, match="bitsandbytes"):
            build_optimizer(model, "adamw8bit", lr=1e-3)
        with pytest.raises(UserError, match="paged_adamw8bit needs the bitsandbytes"):
            build_optimizer(model, "paged_adamw8bit", lr=1e-3)
    else:  # the states of the QLoRA recipes' paged_adamw_8bit (paged on CUDA only)
        import bitsandbytes as bnb

        paged = build_optimizer(model, "paged_adamw8bit", lr=1e-3)
        assert isinstance(paged, bnb.optim.PagedAdamW8bit)
        assert len(paged.param_groups) == 2  # the Trainer's decay groups


def test_optimizer_step_updates_only_decayed_weights_without_gradient() -> None:
    # With zero gradients, AdamW moves a parameter only by its weight decay.
    model = tiny_t5()
    named = dict(model.named_parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    norm, q = (
        named["decoder.final_layer_norm.weight"],
        named["encoder.block.0.layer.1.DenseReluDense.wi.weight"],
    )
    norm_before, q_before = norm.detach().clone(), q.detach().clone()
    build_optimizer(model, "adamw", lr=0.1, weight_decay=0.5).step()
    torch.testing.assert_close(norm.detach(), norm_before)
    torch.testing.assert_close(q.detach(), q_before * (1 - 0.1 * 0.5))


# -- causal LMs ---------------------------------------------------------------------------


def micro_llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return transformers.LlamaForCausalLM(config).eval()


def causal_batch() -> dict[str, torch.Tensor]:
    """4 right-padded rows of prompt + target, labels -100 on prompt and padding."""
    gen = torch.Generator().manual_seed(2)
    prompt_lens, target_lens = [5, 3, 7, 2], [3, 4, 1, 2]
    width = max(p + t for p, t in zip(prompt_lens, target_lens, strict=True))
    input_ids = torch.zeros(4, width, dtype=torch.long)
    attention_mask = torch.zeros(4, width, dtype=torch.long)
    labels = torch.full((4, width), -100, dtype=torch.long)
    for row, (p, t) in enumerate(zip(prompt_lens, target_lens, strict=True)):
        ids = torch.randint(2, VOCAB, (p + t,), generator=gen)
        input_ids[row, : p + t] = ids
        attention_mask[row, : p + t] = 1
        labels[row, p : p + t] = ids[p:]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def test_causal_loss_is_the_models_own_shifted_loss() -> None:
    """Token-sum of the shifted labels / token count = transformers' causal LM mean loss."""
    model, batch = micro_llama(), causal_batch()
    tokens = label_token_count(batch["labels"], causal=True)
    assert tokens == 10  # every target token is scored; position 0 predicts nothing
    ours = micro_batch_forward_backward(model, batch, float(tokens), causal=True)
    with torch.no_grad():
        reference = model(**batch).loss  # shifts internally, mean over label tokens
    torch.testing.assert_close(ours, reference)


def test_causal_slice_rows_cuts_every_sequence_tensor_at_the_longest_row() -> None:
    batch = causal_batch()  # row lengths 8, 7, 8, 4
    chunk = slice_rows(batch, 3, 4, causal=True)
    assert {k: tuple(v.shape) for k, v in chunk.items()} == {
        "input_ids": (1, 4),
        "attention_mask": (1, 4),
        "labels": (1, 4),
    }
    assert chunk["labels"].tolist() == [[-100, -100] + batch["input_ids"][3, 2:4].tolist()]


def test_causal_micro_batches_give_the_same_gradients_as_the_whole_batch() -> None:
    batch = causal_batch()
    normalizer = float(label_token_count(batch["labels"], causal=True))
    grads = []
    for micro in (4, 1):
        model = micro_llama()
        loss = step_forward_backward(model, batch, micro, normalizer, causal=True)
        grads.append((loss, [p.grad.clone() for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

"""The engine's in-place gradient sums under a dispatch mode, against the allocator.

``torch.profiler`` (``checks.measure``) sees what c10's allocator hands out, with no
dispatch mode involved: a backward run with no mode at all is the reference, and a run
under a mode plus ``InPlaceAccumulation`` must allocate exactly the same.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import T5Config

from dialsum.checks.measure import PhaseRecorder
from dialsum.models.architectures import model_from_config
from dialsum.trace.grad_accumulation import InPlaceAccumulation, exclusive_counts, graph_nodes

VOCAB, WIDTH = 2000, 64
GRAD_BYTES = VOCAB * WIDTH * 4  # one fp32 [2000, 64] embedding gradient


class Passthrough(TorchDispatchMode):
    """A mode that changes nothing but being there (as the tracer's modes are)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def backward_peak(run, *modes) -> int:
    """Peak allocator bytes of ``run()``'s forward and backward above what was live before
    (both inside the window: every activation's allocation and free is seen)."""
    with PhaseRecorder() as recorder, contextlib.ExitStack() as stack:
        for mode in modes:
            stack.enter_context(mode)
        loss = run()
        loss.backward()
        del loss
    return recorder.peak_bytes


def shared_embedding():
    # One weight feeding two lookups (T5's shared encoder/decoder embedding).
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, WIDTH, requires_grad=True)
    ids = torch.randint(0, VOCAB, (8,))
    return lambda: (
        torch.nn.functional.embedding(ids, weight).sum()
        + torch.nn.functional.embedding(ids, weight).sum()
    )


def test_a_mode_alone_sums_out_of_place_and_the_emulation_puts_it_back() -> None:
    run = shared_embedding()
    backward_peak(run)  # warm-up: first calls allocate once-only things
    plain = backward_peak(run)
    # The third tensor, give or take a few small temporaries that formulas allocate
    # differently under a mode (they check for tensor subclasses too).
    assert abs(backward_peak(run, Passthrough()) - plain - GRAD_BYTES) <= 4096
    accumulation = InPlaceAccumulation()
    assert backward_peak(run, Passthrough(), accumulation) == plain
    assert (accumulation.in_place, accumulation.out_of_place) == (1, 0)


def test_a_real_model_allocates_what_it_allocates_without_modes() -> None:
    # Residual streams, attention, a shared embedding and an untied head: sums where the
    # engine works in place and sums it must copy (a gradient still held elsewhere).
    torch.manual_seed(0)
    model = model_from_config(
        T5Config(
            vocab_size=VOCAB, d_model=WIDTH, d_ff=128, d_kv=16, num_heads=4, num_layers=2,
            num_decoder_layers=2, tie_word_embeddings=False, dropout_rate=0.0,
            decoder_start_token_id=0, pad_token_id=0,
        )
    )  # fmt: skip
    batch = {
        "input_ids": torch.randint(2, VOCAB, (2, 24)),
        "labels": torch.randint(2, VOCAB, (2, 8)),
    }

    def run():
        model.zero_grad(set_to_none=True)
        return model(**batch).loss

    backward_peak(run)  # warm-up
    plain = backward_peak(run)
    accumulation = InPlaceAccumulation()
    assert backward_peak(run, Passthrough(), accumulation) == plain
    assert accumulation.in_place > 0 and accumulation.out_of_place > 0
    assert backward_peak(run, Passthrough()) > plain


def test_the_same_gradient_twice_is_never_summed_in_place() -> None:
    # y = x + x: AddBackward sends one gradient tensor to both inputs; the engine must
    # copy (old is new), and so must the emulation.
    x = torch.randn(1000, requires_grad=True)
    accumulation = InPlaceAccumulation()
    run = lambda: (x * 2 + x * 2).sum() + (x + x).sum()  # noqa: E731
    backward_peak(run)  # warm-up
    assert backward_peak(run, Passthrough(), accumulation) == backward_peak(run)
    assert accumulation.out_of_place >= 1


def test_probe_and_graph_walk() -> None:
    assert exclusive_counts(False) == exclusive_counts(False)  # cached, one probe
    assert len(exclusive_counts(True)) == 2
    x = torch.randn(3, requires_grad=True)
    loss = (x * 2).sum() + (x * 3).sum()
    names = sorted(type(node).__name__ for node in graph_nodes([loss.grad_fn]))
    assert names == ["AccumulateGrad", "AddBackward0", "MulBackward0", "MulBackward0",
                     "SumBackward0", "SumBackward0"]  # fmt: skip


def test_autograd_grad_is_armed_too_and_the_values_are_the_engines() -> None:
    # Real tensors: the in-place sum must give the very gradient the engine gives alone.
    torch.manual_seed(0)
    weight = torch.randn(VOCAB, WIDTH, requires_grad=True)
    ids = torch.randint(0, VOCAB, (8,))

    def loss():
        return (torch.nn.functional.embedding(ids, weight) ** 2).sum() + (
            3 * torch.nn.functional.embedding(ids, weight)
        ).sum()

    (reference,) = torch.autograd.grad(outputs=loss(), inputs=[weight])
    accumulation = InPlaceAccumulation()
    with Passthrough(), accumulation:
        (grad,) = torch.autograd.grad(outputs=loss(), inputs=[weight])
    assert (accumulation.in_place, accumulation.out_of_place) == (1, 0)
    assert torch.equal(grad, reference)


def test_gradients_not_kept_counts_copies_and_sums_into_an_existing_grad() -> None:
    # [3, 4] leaf: a contiguous gradient is stolen; one arriving transposed ([4, 3].t())
    # breaks the layout contract and is copied; a second backward adds into .grad.
    weight = torch.zeros(3, 4, requires_grad=True)
    accumulation = InPlaceAccumulation()
    with Passthrough(), accumulation:
        (weight * 2).sum().backward()
        assert accumulation.gradients_not_kept == 0
        weight.grad = None
        (weight.t() * torch.ones(4, 3)).sum().backward()
        assert accumulation.gradients_not_kept == 1
        (weight * 2).sum().backward()
        assert accumulation.gradients_not_kept == 2

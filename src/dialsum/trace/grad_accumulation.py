"""The autograd engine's in-place gradient accumulation, kept while a dispatch mode runs.

When a tensor feeds several ops (T5/BART's shared embedding feeds the encoder, the decoder
and a tied head; a residual stream feeds two branches), the backward engine sums the
gradients arriving for it in an input buffer (``torch/csrc/autograd/input_buffer.cpp``,
``accumulate``). Without grad mode it reuses the first gradient's memory,
``old.add_(new)``, when ``can_accumulate_inplace(old)``: a plain dense tensor whose
last reference (and whose storage's last reference) the buffer holds. That test starts
with ``!at::isTensorSubclassLike(old)``, and ``isTensorSubclassLike`` answers *true for
every tensor while any Python dispatch mode is active*
(``ATen/TensorSubclassLikeUtils.h``). So under the tracer's modes (and under
``LiveBytesCap`` on real tensors) every accumulation is ``old + new``: a third tensor of
the gradient's size, alive next to both. A real run has no mode and has no such tensor:
on a 250k-vocabulary mT5 shape (d_model 256) that is one 244 MiB embedding gradient at
the backward peak (tracker 2,782.9 MiB vs the allocator's 2,538.9 MiB, measured with
``torch.profiler``).

``InPlaceAccumulation`` puts the engine's choice back. It must be the top dispatch mode
(entered last; a trace's ``trace_mode.TraceMode`` asks it first instead) and does two
things:

- around every ``Tensor.backward`` / ``torch.autograd.backward`` / ``torch.autograd.grad``
  (seen by a torch-function mode) it hooks every node of the graph: a pre-hook marks
  "inside a node", a post-hook "between nodes". The engine accumulates between a node's
  post-hooks and the next node's pre-hooks, so an ``aten.add.Tensor(old, new)`` seen
  between nodes, without grad mode, is the engine's accumulation and never a backward
  formula's add;
- such an add becomes ``old.add_(new)`` exactly when the engine would have done it in
  place: ``old`` dense, not ``new`` itself, and held only by the buffer. "Held only by the
  buffer" is read from the reference counts (``Tensor._use_count`` and the storage's),
  compared with those of a gradient known to be exclusive, measured once per process by
  a two-use probe under the same kind of tensors (the mode's own references are in both).

Post-hooks make the engine keep a node's incoming gradients until the hooks ran (right
after the node; no allocation happens in between), and ``AccumulateGrad`` already allows
for that reference when it steals a gradient, so the hooks move no peak. Proven against
``torch.profiler`` on real tensors: the guarded trainer on the mT5 shape above has the
same phase peaks with ``LiveBytesCap`` + this mode as with no mode at all.

The post-hook of a leaf's ``AccumulateGrad`` also tells whether ``.grad`` is now the very
gradient that arrived (the engine stole it) or not (``gradients_not_kept``): a traced
step with every gradient stolen has a second micro-batch that differs from its first only
in how the gradients land (``micro_batches.later_micro_batch``).
"""

from __future__ import annotations

import contextlib
import functools

import torch
from torch._prims_common import is_non_overlapping_and_dense_or_false
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

_ADD = torch.ops.aten.add.Tensor
_ADD_ = torch.ops.aten.add_.Tensor
_BACKWARDS = (torch.Tensor.backward, torch.autograd.backward, torch.autograd.grad)


def graph_nodes(roots) -> list:
    """Every autograd node reachable from ``roots`` (grad_fns), each once."""
    seen: dict[int, object] = {}
    stack = [root for root in roots if root is not None]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(fn for fn, _ in node.next_functions if fn is not None)
    return list(seen.values())


def _counts(tensor: torch.Tensor) -> tuple[int, int]:
    """(references to the tensor, references to its storage) as C++ sees them now."""
    return tensor._use_count(), torch._C._storage_Use_Count(tensor.untyped_storage()._cdata)


class _Observer(TorchDispatchMode):
    """Records the reference counts of the first operand of every engine accumulation."""

    def __init__(self, hooks: _NodeHooks) -> None:
        super().__init__()
        self.hooks = hooks
        self.seen: list[tuple[int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.hooks.between and func is _ADD and isinstance(args[0], torch.Tensor):
            self.seen.append(_counts(args[0]))
        return func(*args, **(kwargs or {}))


@functools.cache
def exclusive_counts(fake: bool) -> tuple[int, int]:
    """The counts an accumulation's first operand shows when the buffer holds its only
    reference: ``w`` used twice, its two gradients (``2g`` and ``3g``) fresh tensors."""
    hooks = _NodeHooks()
    observer = _Observer(hooks)
    with _disable_current_modes(), FakeTensorMode() if fake else contextlib.nullcontext():
        leaf = torch.zeros(4, requires_grad=True)
        loss = (leaf * 2).sum() + (leaf * 3).sum()
        handles = hooks.arm([loss.grad_fn])
        try:
            with observer:
                loss.backward()
        finally:
            for handle in handles:
                handle.remove()
    if len(observer.seen) != 1:
        raise RuntimeError(f"gradient accumulation probe saw {len(observer.seen)} sums, not 1")
    return observer.seen[0]


class _NodeHooks:
    """``between``: True from a node's post-hook until the next node's pre-hook.

    ``not_kept`` counts the leaves (``AccumulateGrad`` nodes) whose ``.grad`` after the
    node is not the gradient that arrived: copied into a new tensor (one laid out unlike
    its parameter) or added into an existing ``.grad``."""

    def __init__(self) -> None:
        self.between = False
        self.not_kept = 0

    def _inside(self, *_) -> None:
        self.between = False

    def _after(self, *_) -> None:
        self.between = True

    def _after_leaf(self, node, _grad_inputs, grad_outputs) -> None:
        # grad_outputs: (the gradient that arrived for node.variable,)
        self.between = True
        arrived, grad = grad_outputs[0], node.variable.grad
        if arrived is not None and (
            grad is None or grad.untyped_storage() is not arrived.untyped_storage()
        ):
            self.not_kept += 1

    def arm(self, roots) -> list:
        handles = []
        for node in graph_nodes(roots):
            handles.append(node.register_prehook(self._inside))
            leaf = isinstance(node, torch._C._functions.AccumulateGrad)
            handles.append(
                node.register_hook(
                    functools.partial(self._after_leaf, node) if leaf else self._after
                )
            )
        return handles


class _ArmOnBackward(TorchFunctionMode):
    def __init__(self, hooks: _NodeHooks) -> None:
        super().__init__()
        self.hooks = hooks

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _BACKWARDS:
            return func(*args, **kwargs)
        # The tensors the engine starts from: ``self`` / ``tensors`` / ``outputs``.
        first = (
            args[0]
            if args
            else next(kwargs[name] for name in ("self", "tensors", "outputs") if name in kwargs)
        )
        outputs = [first] if isinstance(first, torch.Tensor) else list(first)
        handles = self.hooks.arm([t.grad_fn for t in outputs])
        try:
            return func(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            self.hooks.between = False


class ArmingDispatchMode(TorchDispatchMode):
    """A dispatch mode entered together with the torch-function mode in ``_arming`` (which
    hooks every backward's graph): that one entered first and left last."""

    _arming: contextlib.AbstractContextManager

    def __enter__(self):
        self._arming.__enter__()
        return super().__enter__()

    def __exit__(self, *exc_info):
        try:
            return super().__exit__(*exc_info)
        finally:
            self._arming.__exit__(*exc_info)


class InPlaceAccumulation(ArmingDispatchMode):
    """Top dispatch mode: the engine's gradient sums in place where a real run has them so.

    ``with InPlaceAccumulation():`` entered after every other mode; ``in_place`` counts the
    sums made in place, ``out_of_place`` the ones the engine would copy too;
    ``gradients_not_kept`` the leaves whose ``.grad`` is not the gradient the engine passed
    them (``AccumulateGrad`` copied it, or added it into an existing one).
    """

    def __init__(self) -> None:
        super().__init__()
        self.hooks = _NodeHooks()
        self._arming = _ArmOnBackward(self.hooks)
        self._exclusive = {fake: exclusive_counts(fake) for fake in (False, True)}
        self.in_place = 0
        self.out_of_place = 0

    @property
    def gradients_not_kept(self) -> int:
        return self.hooks.not_kept

    def _engine_sum(self, args, kwargs) -> bool:
        return (
            self.hooks.between
            and not kwargs
            and len(args) == 2
            and all(isinstance(a, torch.Tensor) for a in args)
            and not torch.is_grad_enabled()
        )

    @property
    def arming(self) -> TorchFunctionMode:
        """The torch-function mode that hooks every backward's graph, for a mode that hosts
        ``in_place_sum`` in its own dispatch (``trace_mode.TraceMode``) and enters this
        instead of the whole mode."""
        return self._arming

    def in_place_sum(self, func, args: tuple, kwargs: dict | None) -> bool:
        """Whether the op is an engine sum a real run makes in place (``old.add_(new)``),
        counting it in ``in_place`` or ``out_of_place``. Must be asked first in the top
        mode's dispatch: the reference counts are those the probe measured there."""
        if func is not _ADD or not self._engine_sum(args, kwargs):
            return False
        old, new = args
        # [*shape] + [*shape] of one dtype; the result takes old's place in the buffer.
        if (
            old is not new
            and old.shape == new.shape
            and old.dtype == new.dtype
            and is_non_overlapping_and_dense_or_false(old)
            and _counts(old) == self._exclusive[isinstance(old, FakeTensor)]
        ):
            self.in_place += 1
            return True
        self.out_of_place += 1
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.in_place_sum(func, args, kwargs):
            return _ADD_(*args)
        return func(*args, **(kwargs or {}))

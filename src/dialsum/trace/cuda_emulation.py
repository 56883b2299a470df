"""Make fake *CPU* tensors allocate what the same code allocates on a CUDA GPU.

We trace on fake CPU tensors (fake CUDA tensors cannot run backward on a CPU-only host),
but a few ops pick a different kernel, and so different saved tensors, on CPU than on
CUDA. ``CudaEmulationMode`` is a ``TorchFunctionMode`` (it sits *above* autograd, so what
it changes is what autograd saves) that fixes the ones that matter for seq2seq training:

- ``F.dropout``: on CUDA it is the fused ``native_dropout``, which saves a 1-byte bool
  mask; the CPU path draws a mask in the input dtype (4 bytes for fp32).
- ``F.scaled_dot_product_attention``: CPU falls back to the math kernel for a float
  mask that needs a gradient (T5's position bias) and materialises the ``[B, H, L, S]``
  probabilities. CUDA picks the memory-efficient kernel (flash does not take fp32 or an
  additive mask), which saves only ``out`` and a ``[B, H, ceil(L/32)*32]`` fp32 logsumexp.
  We call that kernel (``aten._scaled_dot_product_efficient_attention``) directly. For
  bf16 without a mask CUDA would pick flash; its saved tensors are the same sizes.
- Autocast (``autocast_dtype``): CPU autocast casts a different op list than CUDA, so
  we apply CUDA's lists ourselves (``aten/src/ATen/autocast_mode.cpp``):
  * lower precision (inputs cast fp32 -> bf16/fp16): ``LOWER_PRECISION_FUNCS`` (linear,
    matmul, mm, bmm, addmm, baddbmm, addbmm, addmv, addr, mv, einsum, conv*, prelu,
    chain_matmul, scaled_dot_product_attention);
  * fp32 (low-precision inputs cast to fp32): ``FP32_FUNCS`` (exp, log*, pow, rsqrt,
    reciprocal, layer/group norm, losses such as nll/mse/l1/kl/bce-with-logits,
    logsumexp, cdist, softplus, ...);
  * fp32 via the op's ``dtype`` argument (no input copy): ``FP32_SET_DTYPE_FUNCS``
    (softmax, log_softmax, sum, prod, cumsum, cumprod). ``cross_entropy`` decomposes
    into ``log_softmax(dtype=float32)`` + ``nll_loss`` exactly as on CUDA.
  * everything else runs in the dtype of its inputs (type promotion does the rest).
  As on CUDA, casts of fp32 leaf tensors that require grad (the parameters) to the low
  dtype are cached until the autocast region exits (``clear_cache``); autograd keeps the
  copies it saved for backward alive after that.
- bitsandbytes' 4-bit matmul (``bitsandbytes::gemm_4bit``, QLoRA's forward): the fake op
  only makes the output, the CUDA kernel dispatch (``backends/cuda/ops.py``) dequantizes
  the whole weight to the input dtype first (``_dequant_linear_fallback``: ``[out, in]``,
  freed after the matmul) unless the rows are few: up to 4 rows (a decode step of one
  sequence) it always runs the fused kernel; from 5 to 1,536 rows the choice depends on the
  GPU model, so we take the fallback (an upper bound of one layer's weight); past 1,536
  rows it is always the fallback (``cuda_gemm_4bit``).
"""

from __future__ import annotations

import contextlib
import math
import weakref

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

_T = torch.Tensor

LOWER_PRECISION_FUNCS = frozenset(
    {
        F.linear,
        F.bilinear,
        F.conv1d,
        F.conv2d,
        F.conv3d,
        F.conv_transpose1d,
        F.conv_transpose2d,
        F.conv_transpose3d,
        F.prelu,
        F.scaled_dot_product_attention,
        torch.matmul,
        _T.matmul,
        _T.__matmul__,
        _T.__rmatmul__,
        torch.mm,
        _T.mm,
        torch.bmm,
        _T.bmm,
        torch.addmm,
        _T.addmm,
        torch.baddbmm,
        _T.baddbmm,
        torch.addbmm,
        _T.addbmm,
        torch.addmv,
        _T.addmv,
        torch.addr,
        _T.addr,
        torch.mv,
        _T.mv,
        torch.einsum,
        torch.chain_matmul,
    }
)

FP32_FUNCS = frozenset(
    {
        torch.acos,
        _T.acos,
        torch.asin,
        _T.asin,
        torch.cosh,
        _T.cosh,
        torch.erfinv,
        _T.erfinv,
        torch.exp,
        _T.exp,
        torch.expm1,
        _T.expm1,
        torch.log,
        _T.log,
        torch.log10,
        _T.log10,
        torch.log2,
        _T.log2,
        torch.log1p,
        _T.log1p,
        torch.reciprocal,
        _T.reciprocal,
        torch.rsqrt,
        _T.rsqrt,
        torch.sinh,
        _T.sinh,
        torch.tan,
        _T.tan,
        torch.pow,
        _T.pow,
        _T.__pow__,
        _T.__rpow__,
        torch.logsumexp,
        _T.logsumexp,
        torch.cdist,
        torch.dist,
        torch.renorm,
        F.softplus,
        F.layer_norm,
        F.group_norm,
        F.cosine_similarity,
        F.nll_loss,
        F.poisson_nll_loss,
        F.cosine_embedding_loss,
        F.hinge_embedding_loss,
        F.kl_div,
        F.l1_loss,
        F.smooth_l1_loss,
        F.huber_loss,
        F.mse_loss,
        F.margin_ranking_loss,
        F.multilabel_margin_loss,
        F.soft_margin_loss,
        F.triplet_margin_loss,
        F.multi_margin_loss,
        F.binary_cross_entropy_with_logits,
    }
)

FP32_SET_DTYPE_FUNCS = frozenset(
    {
        F.softmax,
        torch.softmax,
        _T.softmax,
        F.log_softmax,
        torch.log_softmax,
        _T.log_softmax,
        torch.sum,
        _T.sum,
        torch.prod,
        _T.prod,
        torch.cumsum,
        _T.cumsum,
        torch.cumprod,
        _T.cumprod,
    }
)

_LOW_DTYPES = (torch.float16, torch.bfloat16)
# The memory-efficient kernel wants the bias's last dim aligned to 16 elements.
_MEM_EFF_BIAS_ALIGNMENT = 16


def _is_castable(value: object) -> bool:
    # Autocast only touches floating tensors that are not float64.
    return (
        isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.dtype != torch.float64
    )


_ALL_FUNCS = (torch.all, torch.Tensor.all)
_ANY_FUNCS = (torch.any, torch.Tensor.any)


class CudaEmulationMode(TorchFunctionMode):
    """CUDA kernel choices (dropout, SDPA) and, optionally, CUDA autocast on any tensor."""

    def __init__(
        self, autocast_dtype: torch.dtype | None = None, cache_enabled: bool = True
    ) -> None:
        super().__init__()
        self.autocast_dtype = autocast_dtype
        self.cache_enabled = cache_enabled
        self._weight_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Results of .all()/.any() whose truth value model code may ask for (see below).
        # Weak references: keeping them alive would count their storage as live memory.
        self._reductions: dict[int, tuple[weakref.ref, bool]] = {}

    def clear_cache(self) -> None:
        """What leaving ``torch.autocast`` does: drop the cached low-precision weights."""
        self._weight_cache.clear()

    def _cast(self, value: object, dtype: torch.dtype) -> object:
        if not _is_castable(value) or value.dtype == dtype:
            return value
        cacheable = (
            self.cache_enabled
            and dtype in _LOW_DTYPES
            and value.dtype == torch.float32
            and value.is_leaf
            and value.requires_grad
            and not value._is_view()
        )
        if not cacheable:
            return value.to(dtype)
        hit = self._weight_cache.get(id(value))
        if hit is None or hit[0] is not value:
            hit = (value, value.to(dtype))
            self._weight_cache[id(value)] = hit
        return hit[1]

    def _cast_all(self, args: tuple, kwargs: dict, dtype: torch.dtype) -> tuple[tuple, dict]:
        def cast(value: object) -> object:
            return self._cast(value, dtype)

        return tree_map(cast, args), tree_map(cast, kwargs)

    def _to_fp32_if_low(self, value: object) -> object:
        if _is_castable(value) and value.dtype in _LOW_DTYPES:
            return value.to(torch.float32)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.__bool__ and id(args[0]) in self._reductions:
            # Fake tensors hold no values, so `if not torch.isfinite(h).all():` (BART's fp16
            # overflow guard) cannot be decided. Such guards check numeric health: assume
            # healthy values - all() is true, any() false - and the guard's branch is skipped,
            # as it is in a normal run.
            ref, truth = self._reductions.pop(id(args[0]))
            if ref() is args[0]:
                return truth
        if func in _ALL_FUNCS or func in _ANY_FUNCS:
            out = func(*args, **kwargs)
            if isinstance(out, torch.Tensor) and out.numel() == 1:
                self._reductions[id(out)] = (weakref.ref(out), func in _ALL_FUNCS)
            return out
        if func is F.dropout:
            return _cuda_dropout(*args, **kwargs)
        low = self.autocast_dtype
        if low is not None:
            if func in LOWER_PRECISION_FUNCS:
                args, kwargs = self._cast_all(args, kwargs, low)
            elif func in FP32_FUNCS:
                args = tree_map(self._to_fp32_if_low, args)
                kwargs = tree_map(self._to_fp32_if_low, kwargs)
            elif func in FP32_SET_DTYPE_FUNCS:
                kwargs = _with_fp32_dtype(args, kwargs)
            elif func is F.cross_entropy:
                return _autocast_cross_entropy(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return _cuda_sdpa(*args, **kwargs)
        if _is_gemm_4bit(func):
            return cuda_gemm_4bit(*args, **kwargs)
        return func(*args, **kwargs)


_GEMM_4BIT = "bitsandbytes::gemm_4bit"
GEMM_4BIT_FUSED_MAX_ROWS = 4
"""Rows up to which bitsandbytes' CUDA ``gemm_4bit`` always runs its fused kernel."""


def _is_gemm_4bit(func) -> bool:
    return isinstance(func, torch._ops.OpOverload) and func._schema.name == _GEMM_4BIT


def cuda_gemm_4bit(*args, **kwargs):
    """``bitsandbytes::gemm_4bit`` as its CUDA dispatch runs it (see the module docstring)."""
    return dequantized_gemm_4bit(*args, fused_max_rows=GEMM_4BIT_FUSED_MAX_ROWS, **kwargs)


def dequantized_gemm_4bit(
    A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
    absmax_offset=None, *, fused_max_rows: int,
):  # fmt: skip
    """A ``[..., in]`` times a 4-bit weight (B packed ``uint8 [(out*in+1)//2, 1]``) ->
    ``[..., out]``: the fused op up to ``fused_max_rows`` rows, else what the unfused
    kernels allocate - the absmax dequantized (double quant), the whole weight dequantized
    to A's dtype ``[out, in]``, then ``F.linear`` (CUDA's fallback; the CPU's only path)."""
    rows = A.numel() // A.shape[-1]
    if rows <= fused_max_rows:
        return torch.ops.bitsandbytes.gemm_4bit.default(
            A, B, shapeB, absmax, blocksize, quant_type, bias=bias, absmax_8bit=absmax_8bit,
            absmax_code=absmax_code, absmax_offset=absmax_offset,
        )  # fmt: skip
    if absmax_8bit is not None:
        # Double quant: the uint8 absmax dequantized to fp32 [blocks], plus the offset.
        absmax = torch.ops.bitsandbytes.dequantize_blockwise.default(
            absmax_8bit, absmax, absmax_code, 256, torch.float32
        )
        absmax = absmax + absmax_offset
    weight = torch.ops.bitsandbytes.dequantize_4bit.default(
        B, absmax, blocksize, quant_type, list(shapeB), A.dtype
    )  # [out, in] in A's dtype, alive for the matmul only
    return F.linear(A, weight, bias)


class CpuGemm4bitMode(TorchFunctionMode):
    """For a ``cpu`` trace (checked against a real CPU run): bitsandbytes' CPU
    ``gemm_4bit`` is its default kernel, always unfused (``backends/default/ops.py``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _is_gemm_4bit(func):
            return dequantized_gemm_4bit(*args, fused_max_rows=0, **kwargs)
        return func(*args, **kwargs)


def checkpoint_context_fn(autocast_dtype: torch.dtype | None):
    """``context_fn`` for ``torch.utils.checkpoint``: re-enter the emulation in recomputation.

    Backward (where non-reentrant checkpointing recomputes) does not see the function mode
    active at ``backward()``'s call site. The recompute gets its own autocast region, as on
    CUDA, so nothing stays in the weight cache.
    """

    def context_fn():
        return contextlib.nullcontext(), CudaEmulationMode(autocast_dtype, cache_enabled=False)

    return context_fn


def _with_fp32_dtype(args: tuple, kwargs: dict) -> dict:
    first = args[0] if args else kwargs.get("input")
    if kwargs.get("dtype") is None and _is_castable(first) and first.dtype in _LOW_DTYPES:
        return {**kwargs, "dtype": torch.float32}
    return kwargs


def _autocast_cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100,
                            reduce=None, reduction="mean", label_smoothing=0.0):  # fmt: skip
    # CUDA: cross_entropy -> log_softmax (fp32 via dtype, no input copy) -> nll_loss (fp32).
    if label_smoothing == 0.0 and input.dim() == 2:
        log_probs = F.log_softmax(input, dim=1, dtype=torch.float32)
        return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
    input = input.float() if input.dtype in _LOW_DTYPES else input
    return F.cross_entropy(
        input, target, weight, size_average, ignore_index, reduce, reduction, label_smoothing
    )


def _cuda_dropout(input, p=0.5, training=True, inplace=False):
    # CUDA's fused kernel saves a bool mask ([*input.shape], 1 byte/element).
    if not training or p == 0.0 or input.numel() == 0:
        return input
    if p == 1.0:
        return input * 0.0
    return torch.native_dropout(input, p, True)[0]


def _cuda_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
               enable_gqa=False):  # fmt: skip
    # query [B, H, L, E], key/value [B, H, S, E]; the efficient kernel takes an additive
    # bias broadcast (a view) to [B, H, L, S].
    batch, heads, q_len, _ = query.shape
    kv_len = key.shape[-2]
    if enable_gqa and key.shape[1] != heads:
        repeat = heads // key.shape[1]
        key = key.repeat_interleave(repeat, dim=1)
        value = value.repeat_interleave(repeat, dim=1)
    bias = attn_mask
    if bias is not None:
        if bias.dtype == torch.bool:
            # sdpa converts a boolean mask to an additive one of the mask's shape.
            bias = torch.zeros(bias.shape, dtype=query.dtype).masked_fill(~bias, -math.inf)
        elif bias.dtype != query.dtype:
            bias = bias.to(query.dtype)
        if kv_len % _MEM_EFF_BIAS_ALIGNMENT:
            padded = -(-kv_len // _MEM_EFF_BIAS_ALIGNMENT) * _MEM_EFF_BIAS_ALIGNMENT
            bias = F.pad(bias, (0, padded - kv_len))[..., :kv_len]
        bias = bias.expand(batch, heads, q_len, kv_len)
    needs_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (query, key, value) if t is not None
    )
    out = torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, needs_grad, dropout_p, is_causal, scale=scale
    )
    return out[0]

"""Dispatcher and custom op for the fused SAM attention (see ``kernels/_common.py`` for the backend rules)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from .._common import check_kernel_dtype, choose_backend, device_guard
from .reference import sam_attention_ref, validate

OP = "sam_attention"
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_guards(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias):
    """The explicit conditions the Triton kernel needs; each returns None or the reason it cannot run."""
    from .triton import HEAD_DIMS, MAX_REGION_SIDE

    B, H, W, C3 = qkv.shape
    D = C3 // (3 * num_heads)
    tensors = [qkv, rel_pos_h, rel_pos_w] + ([qkv_bias] if qkv_bias is not None else [])

    def g_device():
        return device_guard(*tensors)

    def g_dtype():
        return None if qkv.dtype in _DTYPES else f"dtype {qkv.dtype} not in {_DTYPES}"

    def g_head_dim():
        return None if D in HEAD_DIMS else f"head dim {D} not in {HEAD_DIMS}"

    def g_contig():
        return None if qkv.is_contiguous() else "qkv must be contiguous [B, H, W, 3*heads*D]"

    def g_region():
        side = window_size if window_size > 0 else max(H, W)
        return None if side <= MAX_REGION_SIDE else (
            f"attention region side {side} > {MAX_REGION_SIDE} (rel-pos table windows live in registers)")

    def g_int32():
        n = H * W * C3  # per-image offsets are int32 in the kernel (the batch offset is int64)
        return None if n < 2 ** 31 else f"one image's qkv has {n} elements (>= 2^31)"

    def g_grad():
        needs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return "inputs require grad and the Triton kernel has no backward" if needs else None

    return [g_device, g_dtype, g_head_dim, g_contig, g_region, g_int32, g_grad]


def _check_scale(scale) -> float:
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise TypeError(f"sam_attention: scale must be a number, got {type(scale).__name__}") from None
    if not math.isfinite(s):
        raise ValueError(f"sam_attention: scale must be finite, got {scale!r}")
    return s


def sam_attention(qkv: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, num_heads: int,
                  window_size: int, qkv_bias: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                  backend: str = "auto") -> torch.Tensor:
    """SAM attention with decomposed relative positions, straight from the qkv projection.

    ``qkv [B, H, W, 3*heads*D]`` (upstream's ``attn.qkv`` applied to the *unpartitioned* normed map,
    channels ``[q heads; k heads; v heads]``), ``rel_pos_h [2*Lh-1, D]``, ``rel_pos_w [2*Lw-1, D]``
    already resized (``deepencoder.reference.resize_rel_pos``); ``window_size`` 0 = global (Lh=H,
    Lw=W), else ws x ws windows (Lh=Lw=ws) over the grid padded bottom/right with tokens equal to
    ``qkv_bias`` (required when padding occurs). ``scale`` defaults to ``D**-0.5``.

    Returns ``[B, H, W, heads*D]`` in qkv's dtype, head-major (ready for ``proj``):
    ``softmax(q k^T * scale + q.Rh[i-kh+Lh-1] + q.Rw[j-kw+Lw-1]) v`` per window or over the grid.
    ``backend``: ``"auto" | "triton" | "torch"``; ``last_backend("sam_attention")`` tells which ran.
    """
    D = validate(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias)
    scale = float(D ** -0.5) if scale is None else _check_scale(scale)
    guards = triton_guards(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias)
    be = choose_backend(OP, backend, guards)
    if be == "torch":
        return sam_attention_ref(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias, scale)
    return _sam_attention_op(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias, scale)


@torch.library.custom_op("deepencoder::sam_attention", mutates_args=())
def _sam_attention_op(qkv: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, num_heads: int,
                      window_size: int, qkv_bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    from .triton import sam_attention_fwd

    # reachable as torch.ops.deepencoder.sam_attention too: never launch on unchecked arguments
    validate(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias)
    check_kernel_dtype(OP, "qkv", qkv)
    return sam_attention_fwd(qkv.contiguous(), rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias,
                             _check_scale(scale))


@_sam_attention_op.register_fake
def _(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias, scale):
    B, H, W, C3 = qkv.shape
    return qkv.new_empty((B, H, W, C3 // 3))

"""Pure-PyTorch SAM attention over the raw qkv projection: upstream's math, without its ``N x N`` tensor.

Upstream (``deepencoder.reference.SAMAttention`` + ``window_partition``; vLLM ``sam_vary_sdpa.py``)
pads the normed map with zeros, partitions it into windows, runs ``qkv``, builds
``attn_bias = rel_h + rel_w`` as ``[B, heads, N, N]`` and hands it to SDPA. Here the same values are
computed term for term (same dtypes, same rounding points: ``rel_h``/``rel_w`` by einsum in the
activation dtype, their sum in the activation dtype, SDPA with that float mask) but the bias is built
for a bounded chunk of (image-or-window, query rows) at a time, so peak extra memory is
``O(_CHUNK_BYTES)`` instead of ``B * heads * N^2``. Padded window tokens are synthesised from the qkv
bias (``Linear(0) = bias``), which is what upstream's zero padding before ``qkv`` produces.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .._common import check_tensors

_CHUNK_BYTES = 64 << 20  # budget for one chunk of the materialised bias


def validate(qkv: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, num_heads: int,
             window_size: int, qkv_bias: Optional[torch.Tensor]) -> int:
    """Check every argument (both backends); return the head dim ``D``.

    One-line ``TypeError`` (not a tensor, integer/complex dtype, tables not in qkv's dtype) or ``ValueError``
    (device, shape) naming the argument. ``qkv_bias`` may be any floating dtype (cast to qkv's).
    """
    check_tensors("sam_attention", [("qkv", qkv), ("rel_pos_h", rel_pos_h), ("rel_pos_w", rel_pos_w),
                                    ("qkv_bias", qkv_bias)], same_dtype=("rel_pos_h", "rel_pos_w"))
    if qkv.dim() != 4:
        raise ValueError(f"sam_attention: qkv must be [B, H, W, 3*heads*D], got {list(qkv.shape)}")
    if not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"sam_attention: num_heads must be a positive int, got {num_heads!r}")
    B, H, W, C3 = qkv.shape
    if C3 % (3 * num_heads) != 0 or C3 == 0:
        raise ValueError(f"sam_attention: qkv last dim {C3} is not 3*num_heads*D for num_heads={num_heads}")
    D = C3 // (3 * num_heads)
    if not isinstance(window_size, int) or window_size < 0:
        raise ValueError(f"sam_attention: window_size must be an int >= 0 (0 = global), got {window_size!r}")
    Lh, Lw = (window_size, window_size) if window_size > 0 else (H, W)
    for name, t, L in (("rel_pos_h", rel_pos_h, Lh), ("rel_pos_w", rel_pos_w, Lw)):
        if t.dim() != 2 or t.shape[0] != 2 * L - 1 or t.shape[1] != D:
            what = f"window_size={window_size}" if window_size > 0 else f"the {H}x{W} grid (global)"
            raise ValueError(f"sam_attention: {name} must be [2*{L}-1, D] = [{2 * L - 1}, {D}] for {what} "
                             f"(resize it with deepencoder.reference.resize_rel_pos), got {list(t.shape)}")
    if window_size > 0 and (H % window_size or W % window_size):
        if qkv_bias is None:
            raise ValueError(f"sam_attention: window_size={window_size} pads the {H}x{W} grid; the padded tokens "
                             "equal the qkv bias, so qkv_bias [3*heads*D] is required")
    if qkv_bias is not None:
        if qkv_bias.shape != (C3,):
            raise ValueError(f"sam_attention: qkv_bias must be [{C3}], got {list(qkv_bias.shape)}")
    return D


def _rel_table(rel_pos: torch.Tensor, L: int) -> torch.Tensor:
    """``R[i, k] = rel_pos[i - k + L - 1]`` -> ``[L, L, D]`` (upstream ``get_rel_pos``, q_size = k_size)."""
    idx = torch.arange(L, device=rel_pos.device)
    return rel_pos[(idx[:, None] - idx[None, :] + L - 1)]


def _attend(x: torch.Tensor, rel_pos_h, rel_pos_w, num_heads: int, scale: float) -> torch.Tensor:
    """``x [n, h, w, 3*C]`` (qkv of n independent regions) -> ``[n, h, w, C]`` (head-major channels)."""
    n, h, w, C3 = x.shape
    C = C3 // 3
    D = C // num_heads
    N = h * w
    q, k, v = x.reshape(n, N, 3, num_heads, D).permute(2, 0, 3, 1, 4).unbind(0)  # [n, heads, N, D]
    r_q = q.reshape(n, num_heads, h, w, D)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", r_q, _rel_table(rel_pos_h, h)).reshape(n, num_heads, N, h, 1)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", r_q, _rel_table(rel_pos_w, w)).reshape(n, num_heads, N, 1, w)
    out = torch.empty(n, num_heads, N, D, device=x.device, dtype=x.dtype)
    elt = x.element_size()
    per_region = num_heads * N * N * elt
    nb = max(1, _CHUNK_BYTES // per_region)  # whole regions per chunk
    qc = N if per_region <= _CHUNK_BYTES else max(1, _CHUNK_BYTES // (num_heads * N * elt))  # query rows
    for b0 in range(0, n, nb):
        b1 = min(n, b0 + nb)
        for m0 in range(0, N, qc):
            m1 = min(N, m0 + qc)
            bias = (rel_h[b0:b1, :, m0:m1] + rel_w[b0:b1, :, m0:m1]).reshape(b1 - b0, num_heads, m1 - m0, N)
            out[b0:b1, :, m0:m1] = F.scaled_dot_product_attention(
                q[b0:b1, :, m0:m1], k[b0:b1], v[b0:b1], attn_mask=bias, scale=scale)
    return out.permute(0, 2, 1, 3).reshape(n, h, w, C)


def sam_attention_ref(qkv: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, num_heads: int,
                      window_size: int, qkv_bias: Optional[torch.Tensor] = None,
                      scale: Optional[float] = None) -> torch.Tensor:
    """SAM attention from the qkv projection ``[B, H, W, 3*heads*D]`` -> ``[B, H, W, heads*D]``.

    ``out = softmax(q k^T * scale + rel_h + rel_w) v`` per window (``window_size > 0``, grid padded
    bottom/right with tokens equal to ``qkv_bias``) or over the whole grid (``window_size == 0``);
    ``rel_pos_h [2*Lh-1, D]``, ``rel_pos_w [2*Lw-1, D]`` already resized. ``scale`` defaults to D^-1/2.
    """
    D = validate(qkv, rel_pos_h, rel_pos_w, num_heads, window_size, qkv_bias)
    scale = D ** -0.5 if scale is None else float(scale)
    B, H, W, C3 = qkv.shape
    if window_size == 0:
        return _attend(qkv, rel_pos_h, rel_pos_w, num_heads, scale)
    ws = window_size
    Hp, Wp = math.ceil(H / ws) * ws, math.ceil(W / ws) * ws
    x = qkv
    if (Hp, Wp) != (H, W):
        x = qkv_bias.to(qkv.dtype).expand(B, Hp, Wp, C3).clone()
        x[:, :H, :W] = qkv
    win = x.view(B, Hp // ws, ws, Wp // ws, ws, C3).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws, ws, C3)
    o = _attend(win, rel_pos_h, rel_pos_w, num_heads, scale)
    o = o.view(B, Hp // ws, Wp // ws, ws, ws, -1).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, -1)
    return o[:, :H, :W].contiguous()

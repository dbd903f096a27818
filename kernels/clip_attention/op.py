"""CLIP global attention provider: ``qkv [B, N, 3*H*D] -> out [B, N, H*D]``, no mask, scale D^-0.5.

Backends, in ``auto`` order on CUDA with fp16/bf16:

* ``"flash_attn"``: ``flash_attn.flash_attn_qkvpacked_func`` (optional extra ``deepencoder[flash]``).
  It reads the packed ``[B, N, 3, H, D]`` projection output in place: no q/k/v copies.
* ``"sdpa"``: PyTorch SDPA restricted to the FlashAttention / cuDNN backends (no silent math fallback:
  if neither can run, SDPA raises).
* ``"torch"``: plain SDPA with every backend allowed (the CPU path and the reference).

``deepencoder.kernels.last_backend("clip_attention")`` tells which one ran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._common import BackendUnavailable, check_tensors, kill_switch, record_backend

CLIP_ATTENTION_BACKENDS = ("auto", "flash_attn", "sdpa", "torch")

try:  # optional: pip install deepencoder[flash]
    from flash_attn import flash_attn_qkvpacked_func as _flash_qkvpacked
except Exception:  # noqa: BLE001 - ImportError or a broken CUDA build
    _flash_qkvpacked = None


def flash_attn_available() -> bool:
    return _flash_qkvpacked is not None


def _split(qkv: torch.Tensor, num_heads: int):
    B, N, C3 = qkv.shape
    D = C3 // (3 * num_heads)
    q, k, v = qkv.reshape(B, N, 3, num_heads, D).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, D] views
    return q, k, v


def _sdpa_flash(qkv, num_heads):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = _split(qkv, num_heads)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
        out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


def _torch(qkv, num_heads):
    q, k, v = _split(qkv, num_heads)
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(qkv.shape[0], qkv.shape[1], -1)


def _flash(qkv, num_heads):
    B, N, C3 = qkv.shape
    D = C3 // (3 * num_heads)
    return _flash_qkvpacked(qkv.reshape(B, N, 3, num_heads, D).contiguous()).reshape(B, N, num_heads * D)


def _guards(qkv: torch.Tensor):
    if not qkv.is_cuda:
        return f"tensor on {qkv.device}, needs CUDA"
    if qkv.dtype not in (torch.float16, torch.bfloat16):
        return f"dtype {qkv.dtype} (FlashAttention needs float16 or bfloat16)"
    return None


def clip_attention(qkv: torch.Tensor, num_heads: int, backend: str = "auto") -> torch.Tensor:
    """Bias-free multi-head attention over ``qkv [B, N, 3*H*D]`` (rows ordered [q; k; v], head-major)."""
    check_tensors("clip_attention", [("qkv", qkv)])
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"clip_attention: num_heads must be a positive int, got {num_heads!r}")
    if qkv.dim() != 3 or qkv.shape[-1] % (3 * num_heads) or qkv.shape[-1] == 0:
        raise ValueError(f"clip_attention: qkv must be [B, N, 3*{num_heads}*D], got {list(qkv.shape)}")
    if backend not in CLIP_ATTENTION_BACKENDS:
        raise ValueError(f"clip_attention: unknown backend {backend!r}; choose one of {CLIP_ATTENTION_BACKENDS}")
    why = _guards(qkv)
    if backend == "auto":
        ks = kill_switch("clip_attention")
        if why or ks:
            backend = "torch"
            record_backend("clip_attention", "torch", why or ks)
            return _torch(qkv, num_heads)
        backend = "flash_attn" if flash_attn_available() else "sdpa"
    if backend in ("flash_attn", "sdpa") and why:
        raise BackendUnavailable(f"clip_attention: backend={backend!r} cannot run: {why}")
    if backend == "flash_attn":
        if not flash_attn_available():
            raise BackendUnavailable("clip_attention: backend='flash_attn' but flash_attn is not installed "
                                     "(pip install 'deepencoder[flash]')")
        record_backend("clip_attention", "flash_attn", "requested or auto")
        return _flash(qkv, num_heads)
    if backend == "sdpa":
        record_backend("clip_attention", "sdpa", "requested or auto")
        return _sdpa_flash(qkv, num_heads)
    record_backend("clip_attention", "torch", "requested")
    return _torch(qkv, num_heads)

"""Pure-PyTorch references for the residual add + RMSNorm of the Qwen2 layers (DeepSeek-OCR 2).

Upstream (transformers 4.46.3 ``Qwen2RMSNorm``, ``Qwen2DecoderLayer``)::

    residual = hidden_states + attn_out            # in the activation dtype
    h = residual.to(float32)
    h = h * rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    h = weight * h.to(input_dtype)                 # the product rounded to the activation dtype
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def validate(x: torch.Tensor, y: Optional[torch.Tensor], weight: torch.Tensor, eps, op: str) -> int:
    """Check every argument (both backends, before any launch); return the channel count C."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must be [..., C] with C > 0, got "
                         f"{list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x dtype {x.dtype} is not a floating dtype")
    C = x.shape[-1]
    if y is not None:
        if tuple(y.shape) != tuple(x.shape):
            raise ValueError(f"{op}: x {list(x.shape)} and y {list(y.shape)} differ")
        if y.dtype != x.dtype:
            raise TypeError(f"{op}: x dtype {x.dtype} != y dtype {y.dtype}")
        if y.device != x.device:
            raise ValueError(f"{op}: y is on {y.device}, x on {x.device}")
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != (C,):
        raise ValueError(f"{op}: weight must be [{C}], got "
                         f"{list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if weight.dtype != x.dtype:
        raise TypeError(f"{op}: weight dtype {weight.dtype} != x dtype {x.dtype} (upstream keeps the norm weight "
                        "in the model dtype; cast it once at load)")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device}, x on {x.device}")
    if not isinstance(eps, (float, int)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"{op}: eps must be a float >= 0, got {eps!r}")
    return C


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Upstream ``Qwen2RMSNorm``: ``(x.float() * rsqrt(mean(x.float()^2) + eps)).to(dtype) * weight``."""
    validate(x, None, weight, eps, "rms_norm")
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def add_rmsnorm_ref(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                    eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y`` (activation dtype), ``h = rms_norm(s)``; returns ``(s, h)``."""
    validate(x, y, weight, eps, "add_rmsnorm")
    s = x + y
    return s, rms_norm_ref(s, weight, eps)

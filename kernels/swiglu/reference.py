"""Pure-PyTorch reference for SwiGLU over the fused gate/up projection (Qwen2 MLP, DeepSeek-OCR 2).

Upstream (transformers 4.46.3 ``Qwen2MLP``): ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with
``act_fn = silu``. Here ``gate_up = cat(gate_proj(x), up_proj(x))`` ``[..., 2I]`` (gate first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def validate(gate_up: torch.Tensor) -> int:
    """Check the argument (both backends, before any launch); return I."""
    if not isinstance(gate_up, torch.Tensor) or gate_up.dim() < 1:
        raise ValueError(f"swiglu: gate_up must be [..., 2*I], got "
                         f"{list(gate_up.shape) if isinstance(gate_up, torch.Tensor) else type(gate_up).__name__}")
    if not gate_up.is_floating_point():
        raise TypeError(f"swiglu: gate_up dtype {gate_up.dtype} is not a floating dtype")
    W = gate_up.shape[-1]
    if W == 0 or W % 2:
        raise ValueError(f"swiglu: gate_up last dim {W} must be 2*I > 0 (gate_proj then up_proj outputs)")
    return W // 2


def swiglu_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """Upstream's two steps in the activation dtype: ``silu(gate)`` rounded, then ``* up`` rounded."""
    half = validate(gate_up)
    return F.silu(gate_up[..., :half]) * gate_up[..., half:]

"""Dispatcher for the fused residual + bias + LayerNorm (see ``kernels/_common.py`` for the rules)."""

from typing import Optional, Tuple

import torch

from .._common import choose_backend, device_guard
from .reference import add_layernorm_ref

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_C = 8192


def _validate(x, y, bias, weight, ln_bias):
    if x.shape != y.shape:
        raise ValueError(f"add_layernorm: x {list(x.shape)} and y {list(y.shape)} differ")
    C = x.shape[-1]
    for name, t in (("weight", weight), ("ln_bias", ln_bias)) + ((("bias", bias),) if bias is not None else ()):
        if t.shape != (C,):
            raise ValueError(f"add_layernorm: {name} must be [{C}], got {list(t.shape)}")
    if x.dtype != y.dtype:
        raise TypeError(f"add_layernorm: x dtype {x.dtype} != y dtype {y.dtype}")


def add_layernorm(x: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor], weight: torch.Tensor,
                  ln_bias: torch.Tensor, eps: float, backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y (+ bias)``; ``h = LayerNorm(s)``. Returns ``(s, h)``, both shaped like ``x``."""
    _validate(x, y, bias, weight, ln_bias)
    C = x.shape[-1]

    def g_dtype():
        return None if x.dtype in _DTYPES else f"dtype {x.dtype} not in {_DTYPES}"

    def g_size():
        return None if C <= MAX_C else f"C={C} > {MAX_C} (one row per program)"

    def g_contig():
        ok = x.is_contiguous() and y.is_contiguous()
        return None if ok else "x and y must be contiguous"

    be = choose_backend("add_layernorm", backend, [lambda: device_guard(x, y, weight), g_dtype, g_size, g_contig])
    if be == "torch":
        return add_layernorm_ref(x, y, bias, weight, ln_bias, eps)
    return _add_layernorm_op(x, y, bias, weight, ln_bias, float(eps))


@torch.library.custom_op("deepencoder::add_layernorm", mutates_args=())
def _add_layernorm_op(x: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor], weight: torch.Tensor,
                      ln_bias: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from .triton import add_layernorm_fwd

    C = x.shape[-1]
    s = torch.empty_like(x)
    h = torch.empty_like(x)
    add_layernorm_fwd(x.reshape(-1, C), y.reshape(-1, C), bias, weight, ln_bias, eps, s.view(-1, C), h.view(-1, C))
    return s, h


@_add_layernorm_op.register_fake
def _(x, y, bias, weight, ln_bias, eps):
    return torch.empty_like(x), torch.empty_like(x)

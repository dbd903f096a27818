"""Dispatcher for the fused residual + bias + LayerNorm (see ``kernels/_common.py`` for the rules)."""

from typing import Optional, Tuple

import torch

from .._common import FLOAT_DTYPES, check_eps, check_kernel_dtype, check_tensors, choose_backend, device_guard
from .reference import add_layernorm_ref

_DTYPES = FLOAT_DTYPES
MAX_C = 8192


def _validate(x, y, bias, weight, ln_bias, eps) -> float:
    """Every argument, whatever the backend: one-line ``TypeError`` / ``ValueError`` naming it.

    ``x``, ``y``, ``bias`` share one floating dtype (``s`` is stored in it); ``weight``, ``ln_bias`` may be
    any supported floating dtype (read as float32). All on one device. Returns ``eps`` as a float.
    """
    check_tensors("add_layernorm", [("x", x), ("y", y), ("bias", bias), ("weight", weight), ("ln_bias", ln_bias)],
                  same_dtype=("y", "bias"))
    if x.dim() < 1 or x.shape[-1] < 1:
        raise ValueError(f"add_layernorm: x must be [..., C] with C >= 1, got {list(x.shape)}")
    if x.shape != y.shape:
        raise ValueError(f"add_layernorm: x {list(x.shape)} and y {list(y.shape)} differ")
    C = x.shape[-1]
    for name, t in (("weight", weight), ("ln_bias", ln_bias)) + ((("bias", bias),) if bias is not None else ()):
        if t.shape != (C,):
            raise ValueError(f"add_layernorm: {name} must be [{C}], got {list(t.shape)}")
    return check_eps("add_layernorm", eps)


def add_layernorm(x: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor], weight: torch.Tensor,
                  ln_bias: torch.Tensor, eps: float, backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y (+ bias)``; ``h = LayerNorm(s)``. Returns ``(s, h)``, both shaped like ``x``."""
    eps = _validate(x, y, bias, weight, ln_bias, eps)
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
    return _add_layernorm_op(x, y, bias, weight, ln_bias, eps)


@torch.library.custom_op("deepencoder::add_layernorm", mutates_args=())
def _add_layernorm_op(x: torch.Tensor, y: torch.Tensor, bias: Optional[torch.Tensor], weight: torch.Tensor,
                      ln_bias: torch.Tensor, eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from .triton import add_layernorm_fwd

    _validate(x, y, bias, weight, ln_bias, eps)  # reachable as torch.ops.deepencoder.add_layernorm too
    check_kernel_dtype("add_layernorm", "x", x)
    C = x.shape[-1]
    # rows of x, y need a unit column stride (the dispatcher only sends contiguous ones; a direct call may not)
    x2, y2 = x.reshape(-1, C).contiguous(), y.reshape(-1, C).contiguous()
    s = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    h = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    if s.numel():
        # the kernel reads the vectors at unit stride
        add_layernorm_fwd(x2, y2, None if bias is None else bias.contiguous(), weight.contiguous(),
                          ln_bias.contiguous(), eps, s.view(-1, C), h.view(-1, C))
    return s, h


@_add_layernorm_op.register_fake
def _(x, y, bias, weight, ln_bias, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)

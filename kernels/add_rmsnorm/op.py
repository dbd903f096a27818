"""Dispatcher and custom ops for the residual add + RMSNorm (backend rules: ``kernels/_common.py``)."""

from __future__ import annotations

from typing import Tuple

import torch

from .._common import choose_backend, device_guard, interpreter_active
from .reference import add_rmsnorm_ref, rms_norm_ref, validate

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_C = 8192


def _guards(x, y, weight):
    C = x.shape[-1]
    tensors = [t for t in (x, y, weight) if t is not None]

    def g_device():
        return device_guard(*tensors)

    def g_dtype():
        return None if x.dtype in _DTYPES else f"dtype {x.dtype} not in {_DTYPES}"

    def g_size():
        return None if C <= MAX_C else f"C={C} > {MAX_C} (one row per program, in registers)"

    def g_contig():
        ok = all(t.is_contiguous() for t in tensors)
        return None if ok else "x, y and weight must be contiguous"

    def g_grad():
        needs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return "inputs require grad and the Triton kernel has no backward" if needs else None

    return [g_device, g_dtype, g_size, g_contig, g_grad]


def add_rmsnorm(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, eps: float,
                backend: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y`` (rounded to the activation dtype, as upstream adds the residual);
    ``h = (s.float() * rsqrt(mean(s.float()^2) + eps)).to(dtype) * weight`` (``Qwen2RMSNorm``).

    ``x, y [..., C]`` same dtype, ``weight [C]`` in that dtype. Returns ``(s, h)``, both shaped like x.
    ``last_backend("add_rmsnorm")`` tells which backend ran.
    """
    validate(x, y, weight, eps, "add_rmsnorm")
    be = choose_backend("add_rmsnorm", backend, _guards(x, y, weight))
    if be == "torch":
        return add_rmsnorm_ref(x, y, weight, eps)
    return _add_rmsnorm_op(x, y, weight, float(eps))


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, backend: str = "auto") -> torch.Tensor:
    """``Qwen2RMSNorm`` alone (the first layer's input norm, the final norm): the same kernel with no y.
    ``last_backend("rms_norm")`` tells which backend ran."""
    validate(x, None, weight, eps, "rms_norm")
    be = choose_backend("rms_norm", backend, _guards(x, None, weight))
    if be == "torch":
        return rms_norm_ref(x, weight, eps)
    return _rms_norm_op(x, weight, float(eps))


def _round_bits(dtype) -> bool:
    return interpreter_active() and dtype == torch.bfloat16


@torch.library.custom_op("deepencoder::add_rmsnorm", mutates_args=())
def _add_rmsnorm_op(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
                    eps: float) -> Tuple[torch.Tensor, torch.Tensor]:
    from .triton import add_rmsnorm_fwd

    C = x.shape[-1]
    s = torch.empty_like(x)
    h = torch.empty_like(x)
    add_rmsnorm_fwd(x.reshape(-1, C), y.reshape(-1, C), weight, eps, s.view(-1, C), h.view(-1, C),
                    round_bits=_round_bits(x.dtype))
    return s, h


@_add_rmsnorm_op.register_fake
def _(x, y, weight, eps):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("deepencoder::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    from .triton import add_rmsnorm_fwd

    C = x.shape[-1]
    h = torch.empty_like(x)
    add_rmsnorm_fwd(x.reshape(-1, C), None, weight, eps, None, h.view(-1, C), round_bits=_round_bits(x.dtype))
    return h


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return torch.empty_like(x)

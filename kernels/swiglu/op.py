"""Dispatcher and custom op for SwiGLU over the fused gate/up projection (rules: ``kernels/_common.py``)."""

from __future__ import annotations

import torch

from .._common import choose_backend, device_guard, interpreter_active
from .reference import swiglu_ref, validate

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def swiglu(gate_up: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = cat(gate_proj(x), up_proj(x)) [..., 2I]`` -> ``[..., I]``.

    Triton: computed in fp32, rounded once to the activation dtype (upstream rounds ``silu(gate)`` and then
    the product: two roundings; the kernel is at least as close to fp32). ``last_backend("swiglu")``.
    """
    validate(gate_up)

    def g_device():
        return device_guard(gate_up)

    def g_dtype():
        return None if gate_up.dtype in _DTYPES else f"dtype {gate_up.dtype} not in {_DTYPES}"

    def g_contig():
        return None if gate_up.is_contiguous() else "gate_up must be contiguous"

    def g_int32():
        return None if gate_up.shape[-1] < 2 ** 31 else "row too long for int32 column offsets"

    def g_grad():
        needs = torch.is_grad_enabled() and gate_up.requires_grad
        return "input requires grad and the Triton kernel has no backward" if needs else None

    be = choose_backend("swiglu", backend, [g_device, g_dtype, g_contig, g_int32, g_grad])
    if be == "torch":
        return swiglu_ref(gate_up)
    return _swiglu_op(gate_up)


@torch.library.custom_op("deepencoder::swiglu", mutates_args=())
def _swiglu_op(gate_up: torch.Tensor) -> torch.Tensor:
    from .triton import swiglu_fwd

    W = gate_up.shape[-1]
    out = gate_up.new_empty((*gate_up.shape[:-1], W // 2))
    swiglu_fwd(gate_up.reshape(-1, W), out.view(-1, W // 2),
               round_bits=interpreter_active() and gate_up.dtype == torch.bfloat16)
    return out


@_swiglu_op.register_fake
def _(gate_up):
    return gate_up.new_empty((*gate_up.shape[:-1], gate_up.shape[-1] // 2))

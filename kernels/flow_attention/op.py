"""Dispatcher and custom ops for the V2 causal-flow attention (backend rules: ``kernels/_common.py``).

Backends: ``"triton"`` (one launch, ``triton.py``), ``"library"`` (two calls: ``flash_attn`` when
importable on CUDA fp16/bf16, else SDPA with ``causal_lower_right``), ``"torch"`` (upstream's path with the
materialised mask), ``"auto"``: triton when every guard passes; else library on CUDA; else torch. The kill
switches (``DEEPENCODER_DISABLE_FLOW_ATTENTION`` / ``DEEPENCODER_DISABLE_TRITON``) take triton out of
``auto``. ``last_backend("flow_attention")`` is ``"triton" | "library" | "torch"``; for ``library`` the
reason names the route (``flash_attn`` or ``sdpa-causal_lower_right``) and its RoPE pass (``rope=triton``:
one Triton pass over q and k when the Triton guards pass, else ``rope=torch: <why>``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .._common import BackendUnavailable, device_guard, kill_switch, record_backend, triton_importable
from .reference import flow_attention_library, flow_attention_ref, validate

OP = "flow_attention"
FLOW_BACKENDS = ("auto", "triton", "library", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_guards(qkv, num_heads, num_kv_heads, cos, sin, out):
    """The conditions the Triton kernel needs; each returns None or the reason it cannot run."""
    try:
        from .triton import HEAD_DIMS
    except Exception:  # noqa: BLE001 - no triton: g_import names the reason
        HEAD_DIMS = None
    D = qkv.shape[-1] // (num_heads + 2 * num_kv_heads)
    tensors = [qkv, cos, sin] + ([out] if out is not None else [])

    def g_import():
        return triton_importable()[1] or None

    def g_device():
        return device_guard(*tensors)

    def g_dtype():
        return None if qkv.dtype in _DTYPES else f"dtype {qkv.dtype} not in {_DTYPES}"

    def g_head_dim():
        return None if HEAD_DIMS is None or D in HEAD_DIMS else f"head dim {D} not in {HEAD_DIMS}"

    def g_int32():
        B, L, W = qkv.shape
        n = max(qkv.stride(1) * (L - 1) + W, L * num_heads * D)  # per-batch offsets are int32 in the kernel
        return None if n < 2 ** 31 else f"one sample spans {n} elements (>= 2^31)"

    def g_grad():
        needs = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        return "inputs require grad and the Triton kernel has no backward" if needs else None

    return [g_import, g_device, g_dtype, g_head_dim, g_int32, g_grad]


def _library_guard(qkv) -> Optional[str]:
    if qkv.dtype not in _DTYPES:
        return f"dtype {qkv.dtype} not in {_DTYPES}"
    return None


def flow_attention(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                   sin: torch.Tensor, backend: str = "auto", out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DeepEncoder V2 (Qwen2 layer) attention with the causal-flow mask computed by index, never stored.

    ``qkv [B, L=2n, (H + 2*KV)*D]``: ``cat(q_proj, k_proj, v_proj)`` outputs, biases added, not rotated;
    last dim contiguous (a view into a larger buffer is fine). ``cos, sin [L, D]`` RoPE tables for
    positions ``0..L-1`` (float32, as upstream computes them). Returns ``[B, L, H*D]`` (head-major, the
    o_proj input), in ``out`` when given (last dim contiguous; e.g. a column slice of a wider buffer).

    ``out = softmax(rope(q) rope(k)^T / sqrt(D) + mask) v`` with query head h on KV head ``h // (H/KV)``;
    mask: row ``r`` sees column ``c`` iff ``c < n`` or ``c <= r`` (visual tokens see the visual block,
    query ``j`` sees every visual token and queries ``0..j``). Facts: DeepSeek-OCR-2 ``qwen2_d2e.py``.
    """
    D = validate(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out)
    del D
    if backend not in FLOW_BACKENDS:
        raise ValueError(f"{OP}: unknown backend {backend!r}; choose one of {FLOW_BACKENDS}")
    if backend == "torch":
        record_backend(OP, "torch", "requested")
        return _store(flow_attention_ref(qkv, n_visual, num_heads, num_kv_heads, cos, sin), out)
    if backend == "library":
        why = _library_guard(qkv)
        if why:
            raise BackendUnavailable(f"{OP}: backend='library' cannot run: {why}")
        return _library(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out, "requested")
    reasons = [r for r in (g() for g in triton_guards(qkv, num_heads, num_kv_heads, cos, sin, out)) if r]
    if backend == "triton":
        if reasons:
            raise BackendUnavailable(f"{OP}: backend='triton' cannot run: " + "; ".join(reasons))
        record_backend(OP, "triton", "requested")
        return _triton(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out)
    ks = kill_switch(OP)  # auto
    if ks is None and not reasons:
        record_backend(OP, "triton", "all guards passed")
        return _triton(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out)
    why = ks or "; ".join(reasons)
    if qkv.is_cuda and _library_guard(qkv) is None:
        return _library(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out, why)
    record_backend(OP, "torch", why)
    return _store(flow_attention_ref(qkv, n_visual, num_heads, num_kv_heads, cos, sin), out)


def _store(res: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return res
    out.copy_(res)
    return out


def _library(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out, why):
    # RoPE in one Triton pass when the attention kernel's own guards pass (it reads q/k the same way) and
    # no kill switch is set; else torch's rotation, as upstream
    rope_why = kill_switch(OP) or "; ".join(
        r for r in (g() for g in triton_guards(qkv, num_heads, num_kv_heads, cos, sin, out)) if r)
    rope_fn = None if rope_why else _rope_triton
    res, route = flow_attention_library(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out=out, rope_fn=rope_fn)
    rope = f"rope=torch: {rope_why}" if rope_why else "rope=triton"
    record_backend(OP, "library", f"{route}, {rope} ({why})")
    return res


def _rope_triton(qkv, num_heads, num_kv_heads, cos, sin):
    rot = _rope_qk_op(qkv, num_heads, num_kv_heads, cos, sin)  # [B, L, H+KV, D]
    return rot[:, :, :num_heads].transpose(1, 2), rot[:, :, num_heads:].transpose(1, 2)


def _triton(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out):
    if out is None:
        return _flow_attention_op(qkv, n_visual, num_heads, num_kv_heads, cos, sin)
    _flow_attention_out_op(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out)
    return out


@torch.library.custom_op("deepencoder::flow_attention", mutates_args=())
def _flow_attention_op(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                       sin: torch.Tensor) -> torch.Tensor:
    from .triton import flow_attention_fwd

    return flow_attention_fwd(qkv, n_visual, num_heads, num_kv_heads, cos, sin)


@_flow_attention_op.register_fake
def _(qkv, n_visual, num_heads, num_kv_heads, cos, sin):
    B, L, W = qkv.shape
    D = W // (num_heads + 2 * num_kv_heads)
    return qkv.new_empty((B, L, num_heads * D))


@torch.library.custom_op("deepencoder::flow_attention_out", mutates_args=("out",))
def _flow_attention_out_op(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                           sin: torch.Tensor, out: torch.Tensor) -> None:
    """Writes into a caller's buffer (e.g. a slice of a preallocated activation buffer)."""
    from .triton import flow_attention_fwd

    flow_attention_fwd(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out=out)


@_flow_attention_out_op.register_fake
def _(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out):
    return None


@torch.library.custom_op("deepencoder::flow_rope_qk", mutates_args=())
def _rope_qk_op(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                sin: torch.Tensor) -> torch.Tensor:
    """q and k heads of the fused projection, rotated: ``[B, L, H+KV, D]`` (the library route's RoPE)."""
    from .triton import rope_qk_fwd

    return rope_qk_fwd(qkv, num_heads, num_kv_heads, cos, sin)


@_rope_qk_op.register_fake
def _(qkv, num_heads, num_kv_heads, cos, sin):
    B, L, W = qkv.shape
    D = W // (num_heads + 2 * num_kv_heads)
    return qkv.new_empty((B, L, num_heads + num_kv_heads, D))

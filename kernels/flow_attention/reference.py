"""Pure-PyTorch references for the DeepEncoder V2 causal-flow attention (Qwen2 layer of DeepSeek-OCR 2).

Facts (DeepSeek-OCR-2 ``deepencoderv2/qwen2_d2e.py`` with transformers 4.46.3 ``Qwen2SdpaAttention``):

* ``qkv [B, L, (H + 2*KV)*D]`` is ``cat(q_proj(x), k_proj(x), v_proj(x))`` (biases added), L = 2n:
  tokens ``0..n-1`` are the visual tokens, ``n..2n-1`` the learned queries; positions are ``0..L-1``.
* RoPE rotate-half: ``x' = x*cos + rotate_half(x)*sin``, ``rotate_half(x) = cat(-x[D/2:], x[:D/2])``,
  ``cos/sin [L, D]`` computed in float32 and cast to the activation dtype before the rotation, which
  runs in the activation dtype (each product and the sum rounded).
* GQA: query head h uses KV head ``h // (H // KV)`` (``repeat_kv`` copies K/V heads ``H // KV`` times).
* mask (row = query position, column = key position): visual row i sees every visual column and no
  query column; query row n+j sees every visual column and queries n..n+j. Upstream materialises it as
  a float ``[B, 1, L, L]`` tensor (0 or ``finfo(dtype).min``) and calls SDPA with it (scale ``D**-0.5``).

:func:`flow_attention_ref` reproduces that term for term (the ``"torch"`` backend).
:func:`flow_attention_library` is the route a user would write instead of the mask: two attention
calls, never a mask in memory and no repeated K/V (the ``"library"`` backend).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

try:  # optional: pip install deepencoder[flash]
    import flash_attn as _flash_attn
    from flash_attn import flash_attn_func as _flash_attn_func

    # causal with seqlen_q < seqlen_k aligns bottom-right from flash_attn 2.1 on (top-left before: wrong here)
    if tuple(int(x) for x in _flash_attn.__version__.split(".")[:2]) < (2, 1):
        _flash_attn_func = None
except Exception:  # noqa: BLE001 - ImportError, a broken CUDA build, an unparsable version
    _flash_attn_func = None


def flash_attn_available() -> bool:
    return _flash_attn_func is not None


def validate(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
             sin: torch.Tensor, out: Optional[torch.Tensor] = None) -> int:
    """Check every argument (all backends, before any launch); return the head dim ``D``."""
    p = "flow_attention"
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3:
        raise ValueError(f"{p}: qkv must be [B, L, (heads + 2*kv_heads)*D], got "
                         f"{list(qkv.shape) if isinstance(qkv, torch.Tensor) else type(qkv).__name__}")
    if not qkv.is_floating_point():
        raise TypeError(f"{p}: qkv dtype {qkv.dtype} is not a floating dtype")
    for name, v in (("num_heads", num_heads), ("num_kv_heads", num_kv_heads)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{p}: {name} must be a positive int, got {v!r}")
    if num_heads % num_kv_heads:
        raise ValueError(f"{p}: num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads} (GQA groups)")
    B, L, W = qkv.shape
    per = num_heads + 2 * num_kv_heads
    if W == 0 or W % per:
        raise ValueError(f"{p}: qkv last dim {W} is not (num_heads + 2*num_kv_heads)*D = {per}*D")
    D = W // per
    if D % 2:
        raise ValueError(f"{p}: head dim {D} is odd (rotate-half RoPE needs an even head dim)")
    if not isinstance(n_visual, int) or isinstance(n_visual, bool) or n_visual < 1 or 2 * n_visual != L:
        raise ValueError(f"{p}: n_visual={n_visual!r} but qkv has L={L} tokens; the flow layout needs L = 2*n_visual "
                         "(n visual tokens, then n queries)")
    if qkv.stride(-1) != 1:
        raise ValueError(f"{p}: qkv last dim must be contiguous (stride 1), got strides {tuple(qkv.stride())}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or tuple(t.shape) != (L, D):
            raise ValueError(f"{p}: {name} must be [L, D] = [{L}, {D}] (positions 0..L-1), got "
                             f"{list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if t.dtype not in (torch.float32, qkv.dtype):
            raise TypeError(f"{p}: {name} dtype {t.dtype}; pass the float32 table (or one in qkv's dtype {qkv.dtype})")
        if t.device != qkv.device:
            raise ValueError(f"{p}: {name} is on {t.device}, qkv on {qkv.device}")
    if out is not None:
        want = (B, L, num_heads * D)
        if tuple(out.shape) != want or out.dtype != qkv.dtype or out.device != qkv.device:
            raise ValueError(f"{p}: out must be {list(want)} {qkv.dtype} on {qkv.device}, got {list(out.shape)} "
                             f"{out.dtype} on {out.device}")
        if out.stride(-1) != 1:
            raise ValueError(f"{p}: out last dim must be contiguous (stride 1), got strides {tuple(out.stride())}")
    return D


def split_heads(qkv: torch.Tensor, num_heads: int, num_kv_heads: int):
    """Views ``q [B, H, L, D]``, ``k, v [B, KV, L, D]`` of the fused projection (no copies)."""
    B, L, W = qkv.shape
    D = W // (num_heads + 2 * num_kv_heads)
    q = qkv[..., : num_heads * D].view(B, L, num_heads, D).transpose(1, 2)
    k = qkv[..., num_heads * D:(num_heads + num_kv_heads) * D].view(B, L, num_kv_heads, D).transpose(1, 2)
    v = qkv[..., (num_heads + num_kv_heads) * D:].view(B, L, num_kv_heads, D).transpose(1, 2)
    return q, k, v


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Upstream ``apply_rotary_pos_emb`` for one tensor ``[B, heads, L, D]``: tables cast to x's dtype."""
    c = cos.to(x.dtype)[None, None]
    s = sin.to(x.dtype)[None, None]
    return (x * c) + (_rotate_half(x) * s)


def flow_mask_bool(n_visual: int, device=None) -> torch.Tensor:
    """``[L, L]`` True where attention is allowed: ``col < n or col <= row`` (the V2 mask, by index)."""
    L = 2 * n_visual
    r = torch.arange(L, device=device)[:, None]
    c = torch.arange(L, device=device)[None, :]
    return (c < n_visual) | (c <= r)


def flow_mask_upstream(B: int, n_visual: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """Upstream's float mask ``[B, 1, L, L]``: 0 where allowed, ``finfo(dtype).min`` elsewhere, built by
    the same per-token writes as ``qwen2_d2e.py`` (visual rows: visual columns; query row n+j: visual
    columns and queries n..n+j)."""
    L = 2 * n_visual
    m = torch.full((B, 1, L, L), torch.finfo(dtype).min, dtype=dtype, device=device)
    m[:, :, :n_visual, :n_visual] = 0
    for j in range(n_visual):
        m[:, :, n_visual + j, : n_visual + j + 1] = 0
    return m


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """transformers ``repeat_kv``: ``[B, KV, L, D] -> [B, KV*n_rep, L, D]`` (KV head i -> heads i*n_rep..)."""
    B, KV, L, D = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None].expand(B, KV, n_rep, L, D).reshape(B, KV * n_rep, L, D)


def rotated_qkv(qkv, num_heads, num_kv_heads, cos, sin) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q, k, v = split_heads(qkv, num_heads, num_kv_heads)
    return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


def flow_attention_ref(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                       sin: torch.Tensor) -> torch.Tensor:
    """Upstream's path: RoPE in the activation dtype, ``repeat_kv``, the materialised float mask, SDPA.

    ``qkv [B, 2n, (H + 2*KV)*D]``, ``cos/sin [2n, D]`` -> ``[B, 2n, H*D]`` (head-major, ready for o_proj).
    """
    validate(qkv, n_visual, num_heads, num_kv_heads, cos, sin)
    B, L, _ = qkv.shape
    q, k, v = rotated_qkv(qkv, num_heads, num_kv_heads, cos, sin)
    n_rep = num_heads // num_kv_heads
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    mask = flow_mask_upstream(B, n_visual, qkv.dtype, qkv.device)
    o = F.scaled_dot_product_attention(q.contiguous(), k.contiguous(), v.contiguous(), attn_mask=mask)
    return o.transpose(1, 2).reshape(B, L, -1)


def flow_attention_library(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                           sin: torch.Tensor, out: Optional[torch.Tensor] = None, use_flash: Optional[bool] = None,
                           sdpa_causal_top_left: bool = False, rope_fn=None) -> Tuple[torch.Tensor, str]:
    """Two attention calls, no mask tensor, no repeated K/V. Returns ``(out [B, L, H*D], route)``.

    * visual half: rows ``0..n-1`` against keys ``0..n-1``, no mask;
    * query half: rows ``n..2n-1`` against all ``2n`` keys, causal **aligned bottom-right** (query j sees
      keys ``0..n+j``). ``flash_attn`` (>= 2.1) aligns bottom-right when ``seqlen_q < seqlen_k``; PyTorch
      SDPA's ``is_causal=True`` aligns top-left (query j would see keys ``0..j``: wrong), so the SDPA
      route passes ``torch.nn.attention.bias.causal_lower_right``.

    RoPE makes rotated q/k copies (the Triton attention kernel avoids them): by torch as upstream does, or by
    ``rope_fn(qkv, num_heads, num_kv_heads, cos, sin) -> (q [B, H, L, D], k [B, KV, L, D])`` (the dispatcher
    passes the one-pass Triton RoPE when it can run). ``use_flash``: None = flash_attn when importable and
    the inputs suit it (CUDA, fp16/bf16). ``sdpa_causal_top_left`` exists only so a test can show that the
    wrong alignment is detected.
    """
    from torch.nn.attention.bias import causal_lower_right

    D = validate(qkv, n_visual, num_heads, num_kv_heads, cos, sin, out)
    B, L, _ = qkv.shape
    n = n_visual
    if rope_fn is None:
        q, k, v = rotated_qkv(qkv, num_heads, num_kv_heads, cos, sin)
    else:
        q, k = rope_fn(qkv, num_heads, num_kv_heads, cos, sin)
        v = split_heads(qkv, num_heads, num_kv_heads)[2]
    if out is None:
        out = torch.empty(B, L, num_heads * D, device=qkv.device, dtype=qkv.dtype)
    flash_ok = flash_attn_available() and qkv.is_cuda and qkv.dtype in (torch.float16, torch.bfloat16)
    if use_flash is None:
        use_flash = flash_ok
    if use_flash:
        if not flash_ok:
            raise RuntimeError("flow_attention: flash_attn route needs flash_attn installed, CUDA, fp16/bf16")
        qb, kb, vb = (t.transpose(1, 2) for t in (q, k, v))  # [B, L, heads, D]; flash_attn does GQA itself
        out[:, :n].copy_(_flash_attn_func(qb[:, :n], kb[:, :n], vb[:, :n], causal=False).reshape(B, n, -1))
        out[:, n:].copy_(_flash_attn_func(qb[:, n:], kb, vb, causal=True).reshape(B, n, -1))
        return out, "flash_attn"
    vis = F.scaled_dot_product_attention(q[:, :, :n], k[:, :, :n], v[:, :, :n], enable_gqa=True)
    if sdpa_causal_top_left:
        qry = F.scaled_dot_product_attention(q[:, :, n:], k, v, is_causal=True, enable_gqa=True)
    else:
        # torch.compile cannot build a CausalBias (dynamo graph break, torch 2.13): there the same lower-right
        # rule goes in as an [n, 2n] bool mask computed by index (the query rows of flow_mask_bool)
        lower_right = (flow_mask_bool(n, qkv.device)[n:] if torch.compiler.is_compiling()
                       else causal_lower_right(n, L))
        qry = F.scaled_dot_product_attention(q[:, :, n:], k, v, attn_mask=lower_right, enable_gqa=True)
    out[:, :n].copy_(vis.transpose(1, 2).reshape(B, n, -1))
    out[:, n:].copy_(qry.transpose(1, 2).reshape(B, n, -1))
    return out, "sdpa-causal_lower_right"

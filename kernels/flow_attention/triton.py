"""One Triton launch for the DeepEncoder V2 causal-flow attention: both halves, mask by index, RoPE on load.

``qkv [B, L, (H + 2*KV)*D]`` straight from the fused q/k/v projection, L = 2n (tokens ``0..n-1``
visual, ``n..2n-1`` queries) -> ``[B, L, H*D]``. Mask ``allowed(r, c) = c < n or c <= r``: a row block's
key range ends at ``n`` (visual rows) or its last row + 1 (query rows), fully masked key blocks are never
visited and only the two edge tiles are masked. GQA: query head ``h`` reads KV head ``h // (H // KV)``.
RoPE (rotate-half) is applied to q once per program and to each k tile as loaded, in fp32, rounded once.
Design, rounding against upstream, interpreter notes and costs: ``docs/flow_attention.md``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .._common import interpreter_active


class FlowAttnConfig(NamedTuple):
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int


# Every entry is run by tests/kernels/test_flow_attention.py::test_every_config (fp16, bf16, fp32).
# AOT (Triton 3.9, fp16/bf16 alike, 14 heads / 2 KV heads / D 64), registers/thread (spill bytes):
#   M64-N64-w4:  sm_90 186 (0) wgmma   sm_80 255 (36: never picked there)
#   M128-N64-w8: sm_90 194 (0) wgmma   sm_80 252 (0) mma
#   M64-N32-w4:  sm_80 230 (0) mma     (sm_90 156 (0), but the N64 twin above runs there)
# The k tile's RoPE (k halves, cos/sin halves in fp32) is what costs registers: BLOCK_N=32 on sm_80.
HOPPER_ONLY = {FlowAttnConfig(64, 64, 4, 2)}
AMPERE_ONLY = {FlowAttnConfig(64, 32, 4, 2)}
CONFIGS = (
    # small batches (one 768 tile: 5 row blocks x 14 heads): many short programs keep the SMs busy, and
    # the diagonal tiles are 64 wide; one warpgroup of wgmma (Hopper only: spills on sm_80)
    FlowAttnConfig(64, 64, 4, 2),
    # large batches: 2 warpgroups / 8 warps share each K/V tile, half the K/V reads of the 64-row entries
    FlowAttnConfig(128, 64, 8, 2),
    # the small-batch entry for Ampere: 32-key tiles keep the k-tile RoPE within 255 registers
    FlowAttnConfig(64, 32, 4, 2),
)
HEAD_DIMS = (32, 64)  # both tested; D/2 >= 16 for tl.dot


@triton.jit
def _round_lp(x, dtype: tl.constexpr, INTERP_BF16: tl.constexpr):
    """``x.to(dtype)``, round-to-nearest-even. The interpreter converts fp32 -> bf16 by truncation (up to
    2x the hardware's error); there the rounding is done on the bits first, so the CPU tests judge the
    arithmetic the GPU does. Returns fp32 under the interpreter (its bf16 dot is wrong), else ``dtype``."""
    if INTERP_BF16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return x.to(dtype)


@triton.jit
def _flow_attention_fwd_kernel(
    QKV, COS, SIN, OUT,
    L, n_vis,
    stride_qkv_b, stride_qkv_l, stride_out_b, stride_out_l, stride_cs_l,
    scale_log2e,
    NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, INTERP_BF16: tl.constexpr, DOT_PREC: tl.constexpr,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and HEAD_DIM >= 32, "tl.dot needs tiles of 16+ (D/2 >= 16)")
    HALF: tl.constexpr = HEAD_DIM // 2
    GROUP: tl.constexpr = NUM_HEADS // NUM_KV_HEADS

    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_HEADS
    h = pid_bh % NUM_HEADS
    kvh = h // GROUP
    base = QKV + b.to(tl.int64) * stride_qkv_b
    q_col = h * HEAD_DIM
    k_col = (NUM_HEADS + kvh) * HEAD_DIM
    v_col = (NUM_HEADS + NUM_KV_HEADS + kvh) * HEAD_DIM

    m0 = pid_m * BLOCK_M
    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, HALF)
    offs_d = tl.arange(0, HEAD_DIM)
    m_ok = offs_m < L

    # q with RoPE, once per program; fp32 rotation, rounded once to the input dtype
    q_ptr = base + offs_m[:, None] * stride_qkv_l + q_col + offs_h[None, :]
    q1 = tl.load(q_ptr, mask=m_ok[:, None], other=0.0)
    q2 = tl.load(q_ptr + HALF, mask=m_ok[:, None], other=0.0)
    cs_ptr = offs_m[:, None] * stride_cs_l + offs_h[None, :]
    c1 = tl.load(COS + cs_ptr, mask=m_ok[:, None], other=0.0).to(tl.float32)
    c2 = tl.load(COS + cs_ptr + HALF, mask=m_ok[:, None], other=0.0).to(tl.float32)
    s1 = tl.load(SIN + cs_ptr, mask=m_ok[:, None], other=0.0).to(tl.float32)
    s2 = tl.load(SIN + cs_ptr + HALF, mask=m_ok[:, None], other=0.0).to(tl.float32)
    q1f = q1.to(tl.float32)
    q2f = q2.to(tl.float32)
    qr1 = _round_lp(q1f * c1 - q2f * s1, q1.dtype, INTERP_BF16)
    qr2 = _round_lp(q2f * c2 + q1f * s2, q1.dtype, INTERP_BF16)

    # key range of this block (see the module docstring)
    m_last = tl.minimum(m0 + BLOCK_M, L) - 1
    k_end = tl.where(m_last < n_vis, n_vis, m_last + 1)
    lim_min = tl.where(m0 < n_vis, n_vis, m0 + 1)
    n_full = (lim_min // BLOCK_N) * BLOCK_N  # key tiles below this need no mask

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    for start_n in range(0, k_end, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_ok = offs_n < L
        # k with RoPE on load (rows of the tile = key positions)
        k_ptr = base + offs_n[:, None] * stride_qkv_l + k_col + offs_h[None, :]
        k1 = tl.load(k_ptr, mask=n_ok[:, None], other=0.0)
        k2 = tl.load(k_ptr + HALF, mask=n_ok[:, None], other=0.0)
        kc_ptr = offs_n[:, None] * stride_cs_l + offs_h[None, :]
        kc1 = tl.load(COS + kc_ptr, mask=n_ok[:, None], other=0.0).to(tl.float32)
        kc2 = tl.load(COS + kc_ptr + HALF, mask=n_ok[:, None], other=0.0).to(tl.float32)
        ks1 = tl.load(SIN + kc_ptr, mask=n_ok[:, None], other=0.0).to(tl.float32)
        ks2 = tl.load(SIN + kc_ptr + HALF, mask=n_ok[:, None], other=0.0).to(tl.float32)
        k1f = k1.to(tl.float32)
        k2f = k2.to(tl.float32)
        kr1 = _round_lp(k1f * kc1 - k2f * ks1, k1.dtype, INTERP_BF16)
        kr2 = _round_lp(k2f * kc2 + k1f * ks2, k1.dtype, INTERP_BF16)
        qk = tl.dot(qr1, tl.trans(kr1), input_precision=DOT_PREC)
        qk = tl.dot(qr2, tl.trans(kr2), qk, input_precision=DOT_PREC)
        u = qk * scale_log2e
        if start_n + BLOCK_N > n_full:  # edge tile: the V2 mask, by index
            ok = ((offs_n[None, :] < n_vis) | (offs_n[None, :] <= offs_m[:, None])) & n_ok[None, :]
            u = tl.where(ok, u, float("-inf"))
        # every row sees column 0, so after the first tile m_new is finite and p never gets NaN
        m_new = tl.maximum(m_i, tl.max(u, axis=1))
        p = tl.exp2(u - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(base + offs_n[:, None] * stride_qkv_l + v_col + offs_d[None, :], mask=n_ok[:, None], other=0.0)
        p_lp = _round_lp(p, v.dtype, INTERP_BF16)
        if INTERP_BF16:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None] + tl.dot(p_lp, v, input_precision=DOT_PREC)
        m_i = m_new

    o = _round_lp(acc / l_i[:, None], OUT.dtype.element_ty, INTERP_BF16)
    o_ptr = OUT + b.to(tl.int64) * stride_out_b + offs_m[:, None] * stride_out_l + h * HEAD_DIM + offs_d[None, :]
    tl.store(o_ptr, o.to(OUT.dtype.element_ty), mask=m_ok[:, None])


def _excluded_here():
    """Configs not to pick on the current device (the interpreter runs every entry; its default is Hopper's)."""
    if interpreter_active() or not torch.cuda.is_available():
        return AMPERE_ONLY
    return AMPERE_ONLY if torch.cuda.get_device_capability()[0] >= 9 else HOPPER_ONLY


def pick_config(B: int, L: int, num_heads: int) -> FlowAttnConfig:
    """Deterministic choice (no autotuner: it would benchmark inside CUDA-graph capture): 128-row blocks
    when that still gives >= 2 waves of programs on an H100 (132 SMs), else the 64-row entry of this arch."""
    big = CONFIGS[1]
    if triton.cdiv(L, big.BLOCK_M) * B * num_heads >= 264:
        return big
    return next(c for c in CONFIGS if c.BLOCK_M == 64 and c not in _excluded_here())


def flow_attention_fwd(qkv: torch.Tensor, n_visual: int, num_heads: int, num_kv_heads: int, cos: torch.Tensor,
                       sin: torch.Tensor, out: Optional[torch.Tensor] = None,
                       config: Optional[FlowAttnConfig] = None) -> torch.Tensor:
    """Launcher. ``qkv [B, L, (H+2KV)*D]`` (last dim contiguous, any batch/token strides), ``cos/sin [L, D]``
    (float32 or qkv's dtype), ``out [B, L, H*D]`` with contiguous rows (written, not accumulated)."""
    B, L, W = qkv.shape
    D = W // (num_heads + 2 * num_kv_heads)
    if out is None:
        out = torch.empty((B, L, num_heads * D), device=qkv.device, dtype=qkv.dtype)
    if B == 0:
        return out
    cfg = config or pick_config(B, L, num_heads)
    cos = cos.contiguous()
    sin = sin.contiguous()
    interp = interpreter_active()
    dt = qkv.dtype
    grid = (triton.cdiv(L, cfg.BLOCK_M), B * num_heads)
    _flow_attention_fwd_kernel[grid](
        qkv, cos, sin, out, L, n_visual,
        qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), cos.stride(0),
        float(D ** -0.5) * 1.4426950408889634,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=D, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
        INTERP_BF16=bool(interp and dt == torch.bfloat16),
        DOT_PREC="ieee" if (dt == torch.float32 or interp) else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


# ------------------------------------------------------------------------------------------------
# RoPE for the library route: q and k of the fused projection rotated in one pass
# ------------------------------------------------------------------------------------------------

ROPE_BLOCK_L = 32


@triton.jit
def _rope_qk_fwd_kernel(QKV, COS, SIN, OUT, L,
                        stride_qkv_b, stride_qkv_l, stride_out_b, stride_out_l, stride_cs_l,
                        HEAD_DIM: tl.constexpr, BLOCK_L: tl.constexpr, NUM_QK_HEADS: tl.constexpr,
                        INTERP_BF16: tl.constexpr):
    """``OUT[b, l, j] = rope(qkv[b, l, j*D:(j+1)*D])`` for the ``NUM_QK_HEADS = H + KV`` q and k heads (v is
    read in place by the attention calls). One rounding to the input dtype, as the attention kernel does."""
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_l = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // NUM_QK_HEADS
    j = pid_bh % NUM_QK_HEADS
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_h = tl.arange(0, HALF)
    ok = (offs_l < L)[:, None]
    src = QKV + b.to(tl.int64) * stride_qkv_b + offs_l[:, None] * stride_qkv_l + j * HEAD_DIM + offs_h[None, :]
    x1 = tl.load(src, mask=ok, other=0.0)
    x2 = tl.load(src + HALF, mask=ok, other=0.0)
    cs = offs_l[:, None] * stride_cs_l + offs_h[None, :]
    c1 = tl.load(COS + cs, mask=ok, other=0.0).to(tl.float32)
    c2 = tl.load(COS + cs + HALF, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + cs, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + cs + HALF, mask=ok, other=0.0).to(tl.float32)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    y1 = _round_lp(x1f * c1 - x2f * s1, x1.dtype, INTERP_BF16)
    y2 = _round_lp(x2f * c2 + x1f * s2, x1.dtype, INTERP_BF16)
    dst = OUT + b.to(tl.int64) * stride_out_b + offs_l[:, None] * stride_out_l + j * HEAD_DIM + offs_h[None, :]
    tl.store(dst, y1.to(OUT.dtype.element_ty), mask=ok)
    tl.store(dst + HALF, y2.to(OUT.dtype.element_ty), mask=ok)


def rope_qk_fwd(qkv: torch.Tensor, num_heads: int, num_kv_heads: int, cos: torch.Tensor, sin: torch.Tensor,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``qkv [B, L, (H+2KV)*D]`` (last dim contiguous) -> rotated q and k ``[B, L, H+KV, D]`` (contiguous)."""
    B, L, W = qkv.shape
    D = W // (num_heads + 2 * num_kv_heads)
    nqk = num_heads + num_kv_heads
    if out is None:
        out = torch.empty((B, L, nqk, D), device=qkv.device, dtype=qkv.dtype)
    if B == 0:
        return out
    cos = cos.contiguous()
    sin = sin.contiguous()
    _rope_qk_fwd_kernel[(triton.cdiv(L, ROPE_BLOCK_L), B * nqk)](
        qkv, cos, sin, out, L, qkv.stride(0), qkv.stride(1), out.stride(0), out.stride(1), cos.stride(0),
        HEAD_DIM=D, BLOCK_L=ROPE_BLOCK_L, NUM_QK_HEADS=nqk,
        INTERP_BF16=bool(interpreter_active() and qkv.dtype == torch.bfloat16), num_warps=4)
    return out


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (consumed by kernels/_aot.py)
# ------------------------------------------------------------------------------------------------

def cost(B: int = 8, n: int = 256, heads: int = 14, D: int = 64, kv_heads: int = 2, elt: int = 2):
    """(flops, bytes) of one call: QK^T + PV over the allowed (row, key) pairs only
    (n*n visual + n*n + n*(n+1)/2 query pairs), 2 flops per MAC; bytes = read qkv once, write out."""
    pairs = n * n + n * n + n * (n + 1) // 2
    flops = B * heads * 4.0 * pairs * D
    nbytes = B * 2 * n * ((heads + 2 * kv_heads) * D + heads * D) * elt
    return float(flops), float(nbytes)


_CONSTEXPR_NAMES = ("NUM_HEADS", "NUM_KV_HEADS", "HEAD_DIM", "BLOCK_M", "BLOCK_N", "INTERP_BF16", "DOT_PREC")


def aot_specs() -> List[dict]:
    """One spec per shipped config x dtype (fp16, bf16): the Qwen2 layer of OCR-2 (14 heads, 2 KV heads,
    D = 64), global view n = 256 (L = 512), batch 8; cos/sin float32."""
    specs = []
    for cfg in CONFIGS:
        for dtype in ("fp16", "bf16"):
            sig = {"QKV": f"*{dtype}", "COS": "*fp32", "SIN": "*fp32", "OUT": f"*{dtype}"}
            sig.update({n: "i32" for n in ("L", "n_vis", "stride_qkv_b", "stride_qkv_l", "stride_out_b",
                                           "stride_out_l", "stride_cs_l")})
            sig["scale_log2e"] = "fp32"
            sig.update({n: "constexpr" for n in _CONSTEXPR_NAMES})
            flops, nbytes = cost()
            only = "-sm90" if cfg in HOPPER_ONLY else "-sm80" if cfg in AMPERE_ONLY else ""
            specs.append({
                "op": "flow_attention",
                "name": f"flow_attention{only}-M{cfg.BLOCK_M}-N{cfg.BLOCK_N}-w{cfg.num_warps}-s{cfg.num_stages}"
                        f"-{dtype}",
                "fn": _flow_attention_fwd_kernel, "signature": sig,
                "constexprs": {"NUM_HEADS": 14, "NUM_KV_HEADS": 2, "HEAD_DIM": 64, "BLOCK_M": cfg.BLOCK_M,
                               "BLOCK_N": cfg.BLOCK_N, "INTERP_BF16": False, "DOT_PREC": "tf32"},
                "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "dtype": dtype,
                "flops": flops, "bytes": nbytes,
            })
    for dtype in ("fp16", "bf16"):  # the library route's RoPE pass, same shapes
        sig = {"QKV": f"*{dtype}", "COS": "*fp32", "SIN": "*fp32", "OUT": f"*{dtype}", "L": "i32",
               "stride_qkv_b": "i32", "stride_qkv_l": "i32", "stride_out_b": "i32", "stride_out_l": "i32",
               "stride_cs_l": "i32", "HEAD_DIM": "constexpr", "BLOCK_L": "constexpr", "NUM_QK_HEADS": "constexpr",
               "INTERP_BF16": "constexpr"}
        rows = 8 * 512 * 16  # batch 8 global views x (14 + 2) heads
        specs.append({
            "op": "flow_attention", "name": f"flow_attention-rope_qk-{dtype}", "fn": _rope_qk_fwd_kernel,
            "signature": sig, "constexprs": {"HEAD_DIM": 64, "BLOCK_L": ROPE_BLOCK_L, "NUM_QK_HEADS": 16,
                                             "INTERP_BF16": False},
            "num_warps": 4, "num_stages": 1, "dtype": dtype,
            "flops": 6.0 * rows * 64, "bytes": 2.0 * 2 * rows * 64,
        })
    return specs

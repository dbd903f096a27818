"""Fused SAM attention with the decomposed relative-position bias computed in-kernel (Triton).

``qkv [B, H, W, 3*heads*D]`` (the qkv projection of the unpartitioned map) -> ``out [B, H, W, heads*D]``,
per ``ws x ws`` window (padded tokens = the qkv bias) or over the whole grid (global):
``out = softmax(q k^T * scale + q.Rh[i - kh + Lh - 1] + q.Rw[j - kw + Lw - 1]) v``.

Why: upstream materialises the ``[B, heads, N, N]`` bias (384 MiB bf16 per image per global block at
S=1024); here key tiles follow the grid (``BLOCK_N`` columns of one key row), so the bias splits into a
per-column tile ``bw`` (:func:`_rel_w_tile`, once per column chunk) and a per-row value ``bh``
(:func:`_rel_h_row`, folded into the online-softmax offset): no extra DRAM traffic. Design, alternatives,
rounding and the compiled register table: ``docs/sam_attention.md``.
"""

from __future__ import annotations

from typing import List, NamedTuple, Optional

import torch
import triton
import triton.language as tl

from .._common import interpreter_active, triton_version


class SamAttnConfig(NamedTuple):
    BLOCK_M: int
    BLOCK_N: int
    num_warps: int
    num_stages: int


# Every entry is run in its mode by tests/kernels/test_sam_attention.py::test_every_config. Registers and
# spills per arch (ahead-of-time compile): docs/sam_attention.md, generated from bench/results/aot_report*.json.
# configs that run on one architecture family only (major capability >= 9, or < 9)
AMPERE_ONLY = {SamAttnConfig(32, 128, 4, 2)}


def hopper_only(version) -> set:
    """Configs not run on sm_80 under Triton ``version`` (major, minor). Triton 3.6 (the GPU machine's)
    compiles the 128-row 8-warp configs for sm_80 with 16 bytes of spills, 3.7-3.9 without
    (bench/results/aot_report-triton3.6.md): under Triton < 3.7 they run on sm_90 only."""
    only = {SamAttnConfig(64, 128, 8, 2)}
    if tuple(version) < (3, 7):
        only |= {SamAttnConfig(128, 16, 8, 3), SamAttnConfig(128, 64, 8, 2)}
    return only


HOPPER_ONLY = hopper_only(triton_version())

CONFIGS = {
    "global": (
        # H100 G=64 (Base, Gundam global view): 2 warpgroups x m64n64k16 wgmma, one key row per step
        SamAttnConfig(128, 64, 8, 2),
        # one warpgroup (sm_90) / 4 warps of mma.sync (sm_80): twice the programs at small batch
        SamAttnConfig(64, 64, 4, 2),
        # grids 65..128 wide (Large, S=1280: G=80) in one key-row tile: 2 warpgroups split the 128
        # columns; column chunks of 64 instead keep acc live across a second bias gather and spill.
        # Hopper only: on sm_80 it needs 255 registers and spills 16 B.
        SamAttnConfig(64, 128, 8, 2),
        # the same tile for Ampere: 32-row blocks, 4 warps of mma.sync: 255 registers, no spills on sm_80
        # (it spills 84 B on sm_90, where the entry above runs instead)
        SamAttnConfig(32, 128, 4, 2),
    ),
    "window": (
        # 14x14 windows: one padded window row (16 keys, 14 real) per step, 4 query blocks of 64
        SamAttnConfig(64, 16, 4, 3),
        # 2 query blocks of 128 per window: K/V of a window read twice instead of 4 times
        SamAttnConfig(128, 16, 8, 3),
    ),
}

HEAD_DIMS = (16, 32, 64)
PIECE_MAX = 64  # widest gather source (columns); wider ones spill on sm_80 at Lw=80
MAX_REGION_SIDE = 128  # RW_WIN / RH_WIN register tiles grow with the side; S=1280 global is 80


@triton.jit
def _rel_w_tile(q, RELW, qj, kw0, offs_d, REG_W, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, RW_WIN: tl.constexpr, RW_PIECE: tl.constexpr, DOT_F32: tl.constexpr,
                DOT_PREC: tl.constexpr):
    """``bw[m, n] = q_m . Rw[qj_m - (kw0 + n) + Lw - 1] * log2(e)`` for the key columns ``kw0 + n``; ``-inf``
    on columns ``>= Lw``, so the key loop needs no column mask. ``[BLOCK_M, BLOCK_N]`` fp32.

    One dot with the ``RW_WIN`` table rows starting at ``Lw - kw0 - BLOCK_N``, then the Toeplitz skew as a
    gather along the row, in ``RW_PIECE``-wide pieces (a narrower gather source holds fewer registers).
    """
    LOG2E: tl.constexpr = 1.4426950408889634
    kn = tl.arange(0, BLOCK_N)
    gidx = qj[:, None] - kn[None, :] + (BLOCK_N - 1)  # in [0, Lw + BLOCK_N - 2]
    offs_p = tl.arange(0, RW_PIECE)
    bw = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for piece in tl.static_range(0, RW_WIN // RW_PIECE):
        rw_row = REG_W - kw0 - BLOCK_N + piece * RW_PIECE + offs_p
        rw_ok = (rw_row >= 0) & (rw_row < 2 * REG_W - 1)
        rwt = tl.load(RELW + rw_row[None, :] * HEAD_DIM + offs_d[:, None], mask=rw_ok[None, :], other=0.0)
        if DOT_F32:
            rwt = rwt.to(tl.float32)
        pw = tl.dot(q, rwt, input_precision=DOT_PREC)  # [BLOCK_M, RW_PIECE]
        pidx = gidx - piece * RW_PIECE
        g = tl.gather(pw, tl.minimum(tl.maximum(pidx, 0), RW_PIECE - 1), axis=1)
        bw = tl.where((pidx >= 0) & (pidx < RW_PIECE), g, bw)
    return tl.where((kw0 + kn < REG_W)[None, :], bw * LOG2E, float("-inf"))


@triton.jit
def _rel_h_row(q, RELH, kh, i_lo, row_in_win, offs_d, REG_H, HEAD_DIM: tl.constexpr, RH_WIN: tl.constexpr,
               DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr):
    """``bh[m] = q_m . Rh[qi_m - kh + Lh - 1] * log2(e)`` for key row ``kh``: ``[BLOCK_M]`` fp32.

    The block's queries span rows ``i_lo .. i_lo + RH_WIN - 1`` of the region, so the table rows they need
    are the ``RH_WIN`` consecutive rows from ``i_lo - kh + Lh - 1``: one small dot, then each query picks
    its column ``row_in_win = qi - i_lo`` (a select-sum).
    """
    LOG2E: tl.constexpr = 1.4426950408889634
    offs_th = tl.arange(0, RH_WIN)
    rh_row = i_lo - kh + REG_H - 1 + offs_th
    rh_ok = (rh_row >= 0) & (rh_row < 2 * REG_H - 1)
    rht = tl.load(RELH + rh_row[None, :] * HEAD_DIM + offs_d[:, None], mask=rh_ok[None, :], other=0.0)
    if DOT_F32:
        rht = rht.to(tl.float32)
    pk = tl.dot(q, rht, input_precision=DOT_PREC)  # [BLOCK_M, RH_WIN]
    return tl.sum(tl.where(offs_th[None, :] == row_in_win[:, None], pk, 0.0), axis=1) * LOG2E


@triton.jit
def _sam_attention_fwd_kernel(
    QKV, RELH, RELW, BIAS, OUT,
    H, W,  # the image grid (rows, cols) of qkv and out
    REG_H, REG_W,  # attention region: (ws, ws) for windows, (H, W) for global; also Lh, Lw
    n_win_w,  # regions per grid row (1 in global mode)
    scale_log2e,  # softmax scale * log2(e)
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    RW_WIN: tl.constexpr, RW_PIECE: tl.constexpr, RH_WIN: tl.constexpr,
    HAS_PAD: tl.constexpr, DOT_F32: tl.constexpr, DOT_PREC: tl.constexpr, N_CHUNKS: tl.constexpr,
):
    """One block of ``BLOCK_M`` consecutive queries of one region of one (batch, head); see the module doc."""
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and HEAD_DIM >= 16, "tl.dot needs tiles of 16+")
    tl.static_assert(RH_WIN >= 16 and RW_WIN >= BLOCK_N, "rel-pos windows too narrow")
    C: tl.constexpr = NUM_HEADS * HEAD_DIM
    C3: tl.constexpr = 3 * C

    pid_m = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_bh = tl.program_id(2)
    b = pid_bh // NUM_HEADS
    hd = pid_bh % NUM_HEADS
    r0 = (pid_r // n_win_w) * REG_H  # region origin in the grid
    c0 = (pid_r % n_win_w) * REG_W
    qkv_base = QKV + b.to(tl.int64) * H * W * C3 + hd * HEAD_DIM
    out_base = OUT + b.to(tl.int64) * H * W * C + hd * HEAD_DIM

    offs_d = tl.arange(0, HEAD_DIM)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    qi = offs_m // REG_W  # query row / col inside the region
    qj = offs_m % REG_W
    q_tok = (r0 + qi) * W + (c0 + qj)
    q_ok = (offs_m < REG_H * REG_W) & (r0 + qi < H) & (c0 + qj < W)
    q = tl.load(qkv_base + q_tok[:, None] * C3 + offs_d[None, :], mask=q_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)

    if HAS_PAD:  # padded tokens: Linear(0) = bias
        kb = tl.load(BIAS + C + hd * HEAD_DIM + offs_d)
        vb = tl.load(BIAS + 2 * C + hd * HEAD_DIM + offs_d)

    i_lo = (pid_m * BLOCK_M) // REG_W  # first region row of this query block
    row_in_win = qi - i_lo  # < RH_WIN by construction of RH_WIN

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # unrolled: a runtime chunk loop keeps acc live across the bw gather and spills (ptxas)
    for ch in tl.static_range(0, N_CHUNKS):
        kw0 = ch * BLOCK_N
        kn = tl.arange(0, BLOCK_N)
        kw = kw0 + kn
        bw = _rel_w_tile(q, RELW, qj, kw0, offs_d, REG_W, HEAD_DIM, BLOCK_M, BLOCK_N, RW_WIN, RW_PIECE, DOT_F32,
                         DOT_PREC)
        k_col_ok = (kw < REG_W) & (c0 + kw < W)
        for kh in range(0, REG_H):
            k_ok = k_col_ok & (kn * 0 + (r0 + kh) < H)  # (a tensor: a scalar bool breaks the interpreter's mask)
            k_tok = (r0 + kh) * W + (c0 + kw)
            k = tl.load(qkv_base + C + k_tok[:, None] * C3 + offs_d[None, :], mask=k_ok[:, None], other=0.0)
            if HAS_PAD:
                k = tl.where(k_ok[:, None], k, kb[None, :])
            if DOT_F32:
                k = k.to(tl.float32)
            qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)  # [BLOCK_M, BLOCK_N]
            bh = _rel_h_row(q, RELH, kh, i_lo, row_in_win, offs_d, REG_H, HEAD_DIM, RH_WIN, DOT_F32, DOT_PREC)

            # online softmax in base 2; bh is constant along the tile: fold it into the row offset
            u = qk * scale_log2e + bw
            m_new = tl.maximum(m_i, tl.max(u, axis=1) + bh)
            p = tl.exp2(u - (m_new - bh)[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)

            v = tl.load(qkv_base + 2 * C + k_tok[:, None] * C3 + offs_d[None, :], mask=k_ok[:, None], other=0.0)
            if HAS_PAD:
                v = tl.where(k_ok[:, None], v, vb[None, :])
            p_lp = p.to(v.dtype)
            if DOT_F32:
                p_lp = p_lp.to(tl.float32)
                v = v.to(tl.float32)
            acc = acc * alpha[:, None] + tl.dot(p_lp, v, input_precision=DOT_PREC)
            m_i = m_new

    o = acc / l_i[:, None]
    tl.store(out_base + q_tok[:, None] * C + offs_d[None, :], o.to(OUT.dtype.element_ty), mask=q_ok[:, None])


def derived_constexprs(cfg: SamAttnConfig, reg_w: int) -> dict:
    """Constexprs that follow from a config and the region width ``Lw`` (see the module docstring)."""
    qspan = (cfg.BLOCK_M - 1) // reg_w + 2  # grid rows a block of BLOCK_M consecutive queries can touch
    rw_win = max(16, triton.next_power_of_2(reg_w + cfg.BLOCK_N - 1))
    return {"RW_WIN": rw_win, "RW_PIECE": max(16, min(PIECE_MAX, rw_win // 2)),
            "RH_WIN": max(16, triton.next_power_of_2(qspan)),
            "N_CHUNKS": triton.cdiv(reg_w, cfg.BLOCK_N)}


def _excluded_here():
    """Configs not to pick on the current device (none under the interpreter: every entry is tested)."""
    if interpreter_active() or not torch.cuda.is_available():
        return AMPERE_ONLY  # the interpreter runs everything; the Hopper entry stays the default
    major = torch.cuda.get_device_capability()[0]
    return AMPERE_ONLY if major >= 9 else HOPPER_ONLY


def pick_config(window_size: int, H: int, W: int, B: int, num_heads: int) -> SamAttnConfig:
    """Deterministic choice from :data:`CONFIGS` (no autotuner: it would benchmark inside CUDA-graph
    capture and cost seconds per new shape; every entry is correctness-tested).

    Column work per key row ~ ``cdiv(Lw, BLOCK_N) * (BLOCK_N + 16)`` (16 ~ the fixed per-step cost in
    score columns); among equals prefer 128-row blocks unless that leaves fewer than ~2 waves of
    programs on an H100 (132 SMs), where the 64-row twin keeps the SMs busy.
    """
    mode = "window" if window_size > 0 else "global"
    reg_h, reg_w = (window_size, window_size) if window_size > 0 else (H, W)
    n_reg = (triton.cdiv(H, window_size) * triton.cdiv(W, window_size)) if window_size > 0 else 1
    cfgs = [c for c in CONFIGS[mode] if c not in _excluded_here()]

    def cost(c):
        return triton.cdiv(reg_w, c.BLOCK_N) * (c.BLOCK_N + 16)

    best = min(cost(c) for c in cfgs)
    cands = [c for c in cfgs if cost(c) == best]
    for c in cands:
        progs = triton.cdiv(reg_h * reg_w, c.BLOCK_M) * n_reg * B * num_heads
        if c.BLOCK_M >= 128 and progs >= 264:
            return c
    return min(cands, key=lambda c: c.BLOCK_M)


def sam_attention_fwd(qkv: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, num_heads: int,
                      window_size: int, qkv_bias: Optional[torch.Tensor], scale: float,
                      out: Optional[torch.Tensor] = None, config: Optional[SamAttnConfig] = None) -> torch.Tensor:
    """Launcher. ``qkv [B,H,W,3*heads*D]`` contiguous; tables already resized (``[2L-1, D]``);
    ``qkv_bias`` needed only when windows pad; ``out [B,H,W,heads*D]`` (written, not accumulated)."""
    B, H, W, C3 = qkv.shape
    C = C3 // 3
    D = C // num_heads
    if out is None:
        out = torch.empty((B, H, W, C), device=qkv.device, dtype=qkv.dtype)
    assert out.shape == (B, H, W, C) and out.is_contiguous() and out.dtype == qkv.dtype
    if B == 0 or H == 0 or W == 0:
        return out
    if window_size > 0:
        reg_h = reg_w = window_size
        nwh, nww = triton.cdiv(H, window_size), triton.cdiv(W, window_size)
        has_pad = (nwh * window_size != H) or (nww * window_size != W)
    else:
        reg_h, reg_w, nwh, nww, has_pad = H, W, 1, 1, False
    cfg = config or pick_config(window_size, H, W, B, num_heads)
    dt = qkv.dtype
    rh = rel_pos_h.to(dt).contiguous()
    rw = rel_pos_w.to(dt).contiguous()
    bias = qkv_bias.to(dt).contiguous() if has_pad else qkv  # dummy pointer when unused
    interp = interpreter_active()
    grid = (triton.cdiv(reg_h * reg_w, cfg.BLOCK_M), nwh * nww, B * num_heads)
    _sam_attention_fwd_kernel[grid](
        qkv, rh, rw, bias, out, H, W, reg_h, reg_w, nww, float(scale) * 1.4426950408889634,
        NUM_HEADS=num_heads, HEAD_DIM=D, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
        **derived_constexprs(cfg, reg_w), HAS_PAD=has_pad,
        DOT_F32=bool(interp and dt == torch.bfloat16),
        DOT_PREC="ieee" if (dt == torch.float32 or interp) else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs (consumed by kernels/_aot.py)
# ------------------------------------------------------------------------------------------------

def _cost(window: bool, B: int = 8, G: int = 64, heads: int = 12, D: int = 64, ws: int = 14, elt: int = 2):
    """(flops, bytes) of one SAM attention call: dense QK^T + PV over the attended keys plus the
    rel-pos dots (2*N*D*(Lh+Lw)); bytes = read q,k,v once + write out (the minimum, both modes)."""
    C = heads * D
    if window:
        nw = (-(-G // ws)) ** 2
        pairs = nw * (ws * ws) ** 2
        n_q = nw * ws * ws
        L = 2 * ws
    else:
        pairs = (G * G) ** 2
        n_q = G * G
        L = 2 * G
    flops = B * heads * (4.0 * pairs * D + 2.0 * n_q * D * L)
    nbytes = B * G * G * 4 * C * elt
    return float(flops), float(nbytes)


_SIG_INTS = ("H", "W", "REG_H", "REG_W", "n_win_w")
_CONSTEXPR_NAMES = ("NUM_HEADS", "HEAD_DIM", "BLOCK_M", "BLOCK_N", "RW_WIN", "RW_PIECE", "RH_WIN", "HAS_PAD", "DOT_F32",
                    "DOT_PREC", "N_CHUNKS")


def aot_specs() -> List[dict]:
    """One spec per shipped config of each mode x dtype (fp16, bf16): window 14 over G=64 padded
    to 70, and global G=64; S=1024, batch 8, 12 heads of 64. ``attrs`` (16-byte aligned pointers, as the JIT
    specialises them) is an optional extra for ``ASTSource(..., attrs=...)``."""
    specs = []
    for mode in ("window", "global"):
        for cfg in CONFIGS[mode]:
            for dtype in ("fp16", "bf16"):
                window = mode == "window"
                reg_w = 14 if window else 64
                constexprs = {"NUM_HEADS": 12, "HEAD_DIM": 64, "BLOCK_M": cfg.BLOCK_M, "BLOCK_N": cfg.BLOCK_N,
                              **derived_constexprs(cfg, reg_w), "HAS_PAD": window, "DOT_F32": False,
                              "DOT_PREC": "tf32"}
                sig = {n: f"*{dtype}" for n in ("QKV", "RELH", "RELW", "BIAS", "OUT")}
                sig.update({n: "i32" for n in _SIG_INTS})
                sig["scale_log2e"] = "fp32"
                sig.update({n: "constexpr" for n in _CONSTEXPR_NAMES})
                flops, nbytes = _cost(window)
                only = "-sm90" if cfg in HOPPER_ONLY else "-sm80" if cfg in AMPERE_ONLY else ""
                specs.append({
                    "op": "sam_attention",
                    "name": f"sam_attention-{mode}{only}-M{cfg.BLOCK_M}-N{cfg.BLOCK_N}-w{cfg.num_warps}"
                            f"-s{cfg.num_stages}-{dtype}",
                    "fn": _sam_attention_fwd_kernel, "signature": sig, "constexprs": constexprs,
                    "attrs": {(i,): [["tt.divisibility", 16]] for i in range(5)},
                    "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "dtype": dtype,
                    "flops": flops, "bytes": nbytes,
                })
    return specs


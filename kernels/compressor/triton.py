"""Triton implicit-GEMM convolutions, channels-last, for the 16x compressor (neck + net_2 + net_3).

One kernel, :func:`_conv2d_nhwc_fwd_kernel`, launched four times: neck0 (1x1, 768->256, + LayerNorm2d),
neck2 (3x3 s1 p1, 256->256, + LayerNorm2d), net2 (3x3 s2 p1, 256->512), net3 (3x3 s2 p1, 512->1024,
stored straight into the caller's ``[B, g*g, 1024]`` token buffer through its strides).

GEMM row ``m`` = output pixel ``(b, oh, ow)``, column ``n`` = output channel, reduction
``k = (kh*KW + kw)*CIN + cin``: each A-tile row is one coalesced read of ``BLOCK_K`` channels of one
input pixel (zero outside the image: the padding). Weights are packed once to ``[KH*KW*CIN, COUT]``.
Why: with ``BLOCK_N >= COUT`` a program owns whole pixels, so both LayerNorm2d run on the float32
accumulator in registers before the single store: no permutes, no separate LayerNorm passes, no concat
copy. Stage table, DRAM bytes, config choices and the compiled register table: ``docs/compressor.md``.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .._common import compressor_grids, interpreter_active
from .reference import out_size


@triton.jit
def _load_w(WP, k_rows, k_ok, offs_n, n_ok, COUT: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
            ALIGNED: tl.constexpr):
    """B tile ``WP[k_rows, offs_n]`` of the packed ``[K, COUT]`` weight, zero outside."""
    w_ptrs = WP + k_rows[:, None] * COUT + offs_n[None, :]
    if ALIGNED:
        w_ptrs = tl.multiple_of(w_ptrs, [1, 16])
    if EVEN_K and EVEN_N:
        b = tl.load(w_ptrs)
    elif EVEN_K:
        b = tl.load(w_ptrs, mask=n_ok[None, :], other=0.0)
    else:
        b = tl.load(w_ptrs, mask=k_ok[:, None] & n_ok[None, :], other=0.0)
    return b


@triton.jit
def _mma(a, b, acc, INTERP_BF16: tl.constexpr, IEEE: tl.constexpr):
    if INTERP_BF16:  # the interpreter multiplies raw bf16 bits in tl.dot: upcast there only
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:  # float32 activations: a true fp32 GEMM, not TF32
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _store(Y, y_row, offs_n, n_ok, m_ok, v, EVEN_N: tl.constexpr, ALIGNED: tl.constexpr,
           INTERP_BF16: tl.constexpr):
    if INTERP_BF16:
        # The interpreter's float32 -> bfloat16 cast truncates (rounds toward zero); a GPU rounds to
        # nearest even. Round here by hand so the tests see the GPU's numerics.
        bits = v.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        v = bits.to(tl.float32, bitcast=True)
    y_ptrs = Y + y_row[:, None] + offs_n[None, :]
    if ALIGNED:  # Y and its strides are 16-byte multiples (checked by the launcher)
        y_ptrs = tl.multiple_of(y_ptrs, [1, 16])
    mask = m_ok[:, None]
    if not EVEN_N:
        mask = mask & n_ok[None, :]
    tl.store(y_ptrs, v.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _ln_store(Y, y_row, offs_n, n_ok, m_ok, d, rstd, LNW, LNB, EVEN_N: tl.constexpr, ALIGNED: tl.constexpr,
              INTERP_BF16: tl.constexpr):
    lw = tl.load(LNW + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    lb = tl.load(LNB + offs_n, mask=n_ok, other=0.0).to(tl.float32)
    _store(Y, y_row, offs_n, n_ok, m_ok, d * rstd[:, None] * lw[None, :] + lb[None, :], EVEN_N, ALIGNED,
           INTERP_BF16)


@triton.jit
def _conv2d_nhwc_fwd_kernel(
        X, WP, Y, LNW, LNB,
        M, H, W, OH, OW, eps,
        stride_y_b, stride_y_h, stride_y_w,
        CIN: tl.constexpr, COUT: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        STRIDE: tl.constexpr, PAD: tl.constexpr, HAS_LN: tl.constexpr, SPLIT_N: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        INTERP_BF16: tl.constexpr, IEEE: tl.constexpr, ALIGNED: tl.constexpr):
    """``Y[b,oh,ow,:] = (LN?)(sum_{kh,kw,c} X[b, oh*S-P+kh, ow*S-P+kw, c] * WP[(kh*KW+kw)*CIN+c, :])``.

    X: ``[B,H,W,CIN]`` contiguous. WP: ``[KH*KW*CIN, COUT]`` contiguous. Y: ``[B,OH,OW,COUT]`` with
    strides ``(stride_y_b, stride_y_h, stride_y_w, 1)``. LNW/LNB: ``[COUT]`` (read only when HAS_LN).
    SPLIT_N: the program's BLOCK_N columns are two accumulators of BLOCK_N/2 (two MMAs per step), so the
    LayerNorm epilogue normalises and stores one half at a time and its weight/bias vectors never hold
    all BLOCK_N columns in registers at once (a 128 x 256 tile spills on sm_90 otherwise).
    INTERP_BF16: running under the interpreter with bf16 data (two workarounds, see _mma and _store).
    IEEE: float32 data, true fp32 products (no TF32). ALIGNED: X, WP, Y and Y's strides are 16-byte
    multiples.
    """
    tl.static_assert(BLOCK_K >= 16)
    tl.static_assert(BLOCK_M >= 16)
    tl.static_assert(BLOCK_N >= 16)
    tl.static_assert(CIN % 16 == 0)
    tl.static_assert(COUT % 16 == 0)
    if HAS_LN:  # LayerNorm over the channels needs the whole row in this program
        tl.static_assert(BLOCK_N >= COUT)
    if SPLIT_N:
        tl.static_assert(BLOCK_N >= 32)
    HALF: tl.constexpr = BLOCK_N // 2 if SPLIT_N else BLOCK_N
    NUM_N: tl.constexpr = (COUT + BLOCK_N - 1) // BLOCK_N
    KB: tl.constexpr = (CIN + BLOCK_K - 1) // BLOCK_K
    EVEN_K: tl.constexpr = CIN % BLOCK_K == 0
    EVEN_N: tl.constexpr = COUT % BLOCK_N == 0

    pid = tl.program_id(0)
    pid_m = pid // NUM_N  # N-tiles of one M-tile run side by side: the gathered A rows stay in L2
    pid_n = pid % NUM_N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n0 = pid_n * BLOCK_N + tl.arange(0, HALF)
    offs_n1 = offs_n0 + HALF  # used only when SPLIT_N
    offs_k = tl.arange(0, BLOCK_K)
    m_ok = offs_m < M
    n0_ok = offs_n0 < COUT
    n1_ok = offs_n1 < COUT
    ow = offs_m % OW
    t = offs_m // OW
    oh = t % OH
    bi = t // OH
    ih0 = oh * STRIDE - PAD
    iw0 = ow * STRIDE - PAD
    # pixel index of tap (0, 0); int64 because B*H*W*CIN passes 2**31 at large batch
    pix0 = (bi.to(tl.int64) * H + ih0) * W + iw0

    acc0 = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_M, HALF), dtype=tl.float32)  # dead code unless SPLIT_N
    for kk in range(0, KH * KW * KB):
        tap = kk // KB
        c0 = (kk - tap * KB) * BLOCK_K
        kh = tap // KW
        kw = tap - kh * KW
        a_ok = m_ok
        if PAD > 0:  # with no padding every tap of a valid output pixel lies inside the image
            ih = ih0 + kh
            iw = iw0 + kw
            a_ok = a_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        cin = c0 + offs_k
        k_ok = cin < CIN
        a_ptrs = X + (pix0 + (kh * W + kw))[:, None] * CIN + cin[None, :]
        if ALIGNED:
            # Every row starts a multiple of 16 elements past a 16-byte aligned base (checked by the
            # launcher). The JIT infers that from the arguments anyway; the hints make an ahead-of-time
            # compile see the same 16-byte cp.async / vector loads.
            a_ptrs = tl.multiple_of(a_ptrs, [1, 16])
        if EVEN_K:
            a = tl.load(a_ptrs, mask=a_ok[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=a_ok[:, None] & k_ok[None, :], other=0.0)
        k_rows = tap * CIN + cin
        b0 = _load_w(WP, k_rows, k_ok, offs_n0, n0_ok, COUT, EVEN_K, EVEN_N, ALIGNED)
        acc0 = _mma(a, b0, acc0, INTERP_BF16, IEEE)
        if SPLIT_N:
            b1 = _load_w(WP, k_rows, k_ok, offs_n1, n1_ok, COUT, EVEN_K, EVEN_N, ALIGNED)
            acc1 = _mma(a, b1, acc1, INTERP_BF16, IEEE)

    y_row = bi.to(tl.int64) * stride_y_b + oh.to(tl.int64) * stride_y_h + ow.to(tl.int64) * stride_y_w
    if HAS_LN:
        # LayerNorm2d over the COUT channels of each row, statistics in float32 on the accumulator.
        # Padded columns (COUT < BLOCK_N) hold exact zeros (masked weight loads) and are kept out of
        # the variance.
        row_sum = tl.sum(acc0, axis=1)
        if SPLIT_N:
            row_sum += tl.sum(acc1, axis=1)
        mean = row_sum / COUT
        d0 = acc0 - mean[:, None]
        if not EVEN_N:
            d0 = tl.where(n0_ok[None, :], d0, 0.0)
        ssq = tl.sum(d0 * d0, axis=1)
        if SPLIT_N:
            d1 = acc1 - mean[:, None]
            if not EVEN_N:
                d1 = tl.where(n1_ok[None, :], d1, 0.0)
            ssq += tl.sum(d1 * d1, axis=1)
        rstd = 1.0 / tl.sqrt(ssq / COUT + eps)
        _ln_store(Y, y_row, offs_n0, n0_ok, m_ok, d0, rstd, LNW, LNB, EVEN_N, ALIGNED, INTERP_BF16)
        if SPLIT_N:
            _ln_store(Y, y_row, offs_n1, n1_ok, m_ok, d1, rstd, LNW, LNB, EVEN_N, ALIGNED, INTERP_BF16)
    else:
        _store(Y, y_row, offs_n0, n0_ok, m_ok, acc0, EVEN_N, ALIGNED, INTERP_BF16)
        if SPLIT_N:
            _store(Y, y_row, offs_n1, n1_ok, m_ok, acc1, EVEN_N, ALIGNED, INTERP_BF16)


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvConfig:
    """Tile sizes and launch options of one conv stage. ``block_n=None``: the full channel row
    (``next_power_of_2(COUT)``), required by the LayerNorm epilogues."""

    block_m: int
    block_n: Optional[int]
    block_k: int
    num_warps: int
    num_stages: int
    split_n: bool = False  # two half-width accumulators (LayerNorm stages on sm90; see the kernel)

    def label(self) -> str:
        bn = "row" if self.block_n is None else str(self.block_n)
        split = "x2" if self.split_n else ""
        return f"BM{self.block_m}-BN{bn}{split}-BK{self.block_k}-w{self.num_warps}-s{self.num_stages}"


STAGES = ("neck0", "neck2", "net2", "net3")
LN_STAGES = ("neck0", "neck2")

# Explicit config lists. The first entry of each list is the one shipped (what ``auto`` runs); the
# others are alternates, kept correct too (the tests force every entry). sm90: 8 warps = 2 warpgroups for
# wgmma; split_n on the LayerNorm stages keeps the epilogue vectors from spilling. Registers, spills and
# shared memory per arch: docs/compressor.md (generated from bench/results/aot_report*.json).
CONFIGS: Dict[str, Dict[str, List[ConvConfig]]] = {
    "sm90": {
        "neck0": [ConvConfig(128, None, 64, 8, 3, True), ConvConfig(64, None, 64, 8, 3, True)],
        "neck2": [ConvConfig(128, None, 64, 8, 3, True), ConvConfig(64, None, 64, 8, 3, True)],
        "net2": [ConvConfig(128, 256, 64, 8, 3), ConvConfig(128, 128, 64, 4, 4)],
        "net3": [ConvConfig(128, 256, 64, 8, 3), ConvConfig(128, 128, 64, 4, 4)],
    },
    "sm80": {
        "neck0": [ConvConfig(128, None, 32, 8, 3), ConvConfig(64, None, 32, 8, 3)],
        "neck2": [ConvConfig(128, None, 32, 8, 3), ConvConfig(64, None, 32, 8, 3)],
        "net2": [ConvConfig(128, 128, 32, 4, 4), ConvConfig(128, 256, 32, 8, 3)],
        "net3": [ConvConfig(128, 128, 32, 4, 4), ConvConfig(128, 256, 32, 8, 3)],
    },
    # float32 activations (a correctness path, any arch): the fp32 "ieee" dot runs on FMA units with its
    # operands in registers, so the big 16-bit tiles spill by kilobytes; these 64-row tiles do not.
    "fp32": {
        "neck0": [ConvConfig(64, None, 32, 8, 2)],
        "neck2": [ConvConfig(64, None, 32, 8, 2)],
        "net2": [ConvConfig(64, 256, 32, 8, 2)],
        "net3": [ConvConfig(64, 256, 32, 8, 2)],
    },
}
# conv2d_nhwc (a lone conv, no LayerNorm) uses the net2 list.


def arch_of(device: torch.device) -> str:
    """Config family for a device: "sm90" for Hopper and datacenter Blackwell (>= 200 KiB smem),
    "sm80" for everything else; the interpreter uses "sm90"."""
    if device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        return "sm90" if major in (9, 10) else "sm80"
    return "sm90"


def config_family(x: torch.Tensor) -> str:
    """The config list used for ``x``: "fp32" for float32 data, else the device's arch family."""
    return "fp32" if x.dtype == torch.float32 else arch_of(x.device)


# --------------------------------------------------------------------------------------------------
# Weight packing
# --------------------------------------------------------------------------------------------------

_PACK_CACHE: "Dict[tuple, Tuple[object, torch.Tensor]]" = {}
_PACK_CACHE_MAX = 64


def _version(w: torch.Tensor) -> int:
    try:
        return w._version
    except RuntimeError:  # inference tensors have no version counter
        return -1


def pack_conv_weight(w: torch.Tensor) -> torch.Tensor:
    """``[Cout, Cin, KH, KW]`` -> ``[KH*KW*Cin, Cout]`` contiguous (row ``(kh*KW+kw)*Cin + cin``).

    Cached per weight tensor (same storage, shape, strides, dtype and in-place version; the source is
    held by weak reference, so a freed weight never aliases a new one at the same address).
    """
    import weakref

    key = (w.data_ptr(), tuple(w.shape), tuple(w.stride()), w.dtype, w.device, _version(w))
    hit = _PACK_CACHE.get(key)
    if hit is not None and hit[0]() is not None:
        return hit[1]
    cout, cin, kh, kw = w.shape
    packed = w.detach().permute(2, 3, 1, 0).reshape(kh * kw * cin, cout).contiguous()
    for k in [k for k in _PACK_CACHE if k[:-1] == key[:-1]]:  # an older version of this weight
        del _PACK_CACHE[k]
    if len(_PACK_CACHE) >= _PACK_CACHE_MAX:
        _PACK_CACHE.pop(next(iter(_PACK_CACHE)))
    try:
        ref = weakref.ref(w)
    except TypeError:
        return packed
    _PACK_CACHE[key] = (ref, packed)
    return packed


# --------------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------------


def split_n(cfg: ConvConfig, has_ln: bool, block_n: int) -> bool:
    """Two half-width accumulators: asked by the config, for a LayerNorm stage, halves of >= 16 columns."""
    return cfg.split_n and has_ln and block_n >= 32


def _launch_conv(x: torch.Tensor, wp: torch.Tensor, kh: int, kw: int, stride: int, pad: int, y: torch.Tensor,
                 ln: Optional[Tuple[torch.Tensor, torch.Tensor]], eps: float, cfg: ConvConfig) -> torch.Tensor:
    """``x`` ``[B,H,W,CIN]`` contiguous, ``wp`` packed, ``y`` ``[B,OH,OW,COUT]`` with channel stride 1."""
    B, H, W, CIN = x.shape
    _, OH, OW, COUT = y.shape
    M = B * OH * OW
    block_n = cfg.block_n if cfg.block_n is not None else max(16, triton.next_power_of_2(COUT))
    if ln is not None and block_n < COUT:
        raise ValueError(f"conv LayerNorm epilogue needs BLOCK_N >= COUT ({block_n} < {COUT})")
    grid = (triton.cdiv(M, cfg.block_m) * triton.cdiv(COUT, block_n),)
    lnw, lnb = ln if ln is not None else (wp, wp)
    interp = interpreter_active()
    es = y.element_size()
    aligned = (x.data_ptr() % 16 == 0 and wp.data_ptr() % 16 == 0 and y.data_ptr() % 16 == 0
               and all(y.stride(i) * es % 16 == 0 for i in range(3)))
    _conv2d_nhwc_fwd_kernel[grid](
        x, wp, y, lnw, lnb, M, H, W, OH, OW, float(eps),
        y.stride(0), y.stride(1), y.stride(2),
        CIN=CIN, COUT=COUT, KH=kh, KW=kw, STRIDE=stride, PAD=pad, HAS_LN=ln is not None,
        SPLIT_N=split_n(cfg, ln is not None, block_n),
        BLOCK_M=cfg.block_m, BLOCK_N=block_n, BLOCK_K=cfg.block_k,
        INTERP_BF16=interp and x.dtype == torch.bfloat16, IEEE=x.dtype == torch.float32, ALIGNED=aligned,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return y


def conv2d_nhwc_fwd(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int,
                    y: Optional[torch.Tensor] = None, ln: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                    eps: float = 1e-6, config: Optional[ConvConfig] = None) -> torch.Tensor:
    """One implicit-GEMM conv (optionally with the LayerNorm2d epilogue): ``[B,H,W,Cin]`` -> ``[B,OH,OW,Cout]``.

    ``config`` forces a tile config (tests); default: the first ``net2`` entry (``neck0`` with ``ln``)
    of the device's list.
    """
    B, H, W, _ = x.shape
    cout, _, kh, kw = w.shape
    OH, OW = out_size(H, kh, stride, padding), out_size(W, kw, stride, padding)
    if y is None:
        y = torch.empty(B, OH, OW, cout, device=x.device, dtype=x.dtype)
    if config is None:
        config = CONFIGS[config_family(x)]["neck0" if ln is not None else "net2"][0]
    if ln is not None:
        ln = (ln[0].contiguous(), ln[1].contiguous())
    return _launch_conv(x, pack_conv_weight(w), kh, kw, stride, padding, y, ln, eps, config)


def compressor_fwd(x: torch.Tensor, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w,
                   eps: float, out: torch.Tensor, configs: Optional[Dict[str, ConvConfig]] = None) -> torch.Tensor:
    """The four launches. ``out`` ``[B, g*g, C4]`` with last-dim stride 1 (any token/batch strides).

    ``configs`` maps stage -> :class:`ConvConfig` to force tiles (tests); default: the shipped ones.
    """
    B, H, W, _ = x.shape
    c1, c3, c4 = neck0_w.shape[0], net2_w.shape[0], net3_w.shape[0]
    shipped = {s: lst[0] for s, lst in CONFIGS[config_family(x)].items()}
    cfg = {**shipped, **(configs or {})}
    (oh1, oh2), (ow1, ow2) = compressor_grids(H), compressor_grids(W)
    y1 = torch.empty(B, H, W, c1, device=x.device, dtype=x.dtype)
    y2 = torch.empty_like(y1)
    y3 = torch.empty(B, oh1, ow1, c3, device=x.device, dtype=x.dtype)
    # the LayerNorm vectors are read at unit stride
    ln1 = (ln1_w.contiguous(), ln1_b.contiguous())
    ln2 = (ln2_w.contiguous(), ln2_b.contiguous())
    _launch_conv(x, pack_conv_weight(neck0_w), 1, 1, 1, 0, y1, ln1, eps, cfg["neck0"])
    _launch_conv(y1, pack_conv_weight(neck2_w), 3, 3, 1, 1, y2, ln2, eps, cfg["neck2"])
    _launch_conv(y2, pack_conv_weight(net2_w), 3, 3, 2, 1, y3, None, eps, cfg["net2"])
    # out [B, g*g, C4] seen as [B, g, g, C4]: token t = oh*ow2 + ow
    y4 = out.as_strided((B, oh2, ow2, c4), (out.stride(0), ow2 * out.stride(1), out.stride(1), 1),
                        out.storage_offset())
    _launch_conv(y3, pack_conv_weight(net3_w), 3, 3, 2, 1, y4, None, eps, cfg["net3"])
    return out


# --------------------------------------------------------------------------------------------------
# Ahead-of-time compile specs
# --------------------------------------------------------------------------------------------------

# (stage, KH, STRIDE, PAD, CIN, COUT, HAS_LN) of the real DeepSeek-OCR compressor
_REAL_STAGES = (("neck0", 1, 1, 0, 768, 256, True), ("neck2", 3, 1, 1, 256, 256, True),
                ("net2", 3, 2, 1, 256, 512, False), ("net3", 3, 2, 1, 512, 1024, False))


def stage_cost(stage: str, S: int = 1024, batch: int = 32, elem: int = 2) -> Tuple[float, float]:
    """(flops, minimum DRAM bytes) of one stage: input read once, packed weights once, output written once."""
    G = S // 16
    g1, g2 = compressor_grids(G)
    hw_in = {"neck0": G, "neck2": G, "net2": G, "net3": g1}[stage]
    hw_out = {"neck0": G, "neck2": G, "net2": g1, "net3": g2}[stage]
    _, k, _, _, cin, cout, ln = next(r for r in _REAL_STAGES if r[0] == stage)
    M = batch * hw_out * hw_out
    flops = 2.0 * M * k * k * cin * cout + (8.0 * M * cout if ln else 0.0)
    nbytes = elem * (batch * hw_in * hw_in * cin + k * k * cin * cout + M * cout + (2 * cout if ln else 0))
    return flops, float(nbytes)


_CONSTEXPR_NAMES = ("CIN", "COUT", "KH", "KW", "STRIDE", "PAD", "HAS_LN", "SPLIT_N", "BLOCK_M", "BLOCK_N",
                    "BLOCK_K", "INTERP_BF16", "IEEE", "ALIGNED")


def aot_specs() -> List[dict]:
    """One spec per shipped config (every entry of both the sm90 and the sm80 lists) x dtype (fp16, bf16),
    at the real channel counts; flops/bytes for S=1024, batch 32. See kernels/_aot.py. (The "fp32" list,
    a correctness path, is not in the AOT report.)"""
    specs = []
    for arch in ("sm90", "sm80"):
        stages = CONFIGS[arch]
        for stage, k, stride, pad, cin, cout, ln in _REAL_STAGES:
            for i, cfg in enumerate(stages[stage]):
                block_n = cfg.block_n if cfg.block_n is not None else triton.next_power_of_2(cout)
                for dtype in ("fp16", "bf16"):
                    ptr = f"*{dtype}"
                    sig = {n: ptr for n in ("X", "WP", "Y", "LNW", "LNB")}
                    sig.update({n: "i32" for n in ("M", "H", "W", "OH", "OW")})
                    sig["eps"] = "fp32"
                    sig.update({n: "i32" for n in ("stride_y_b", "stride_y_h", "stride_y_w")})
                    sig.update({n: "constexpr" for n in _CONSTEXPR_NAMES})
                    constexprs = {"CIN": cin, "COUT": cout, "KH": k, "KW": k, "STRIDE": stride, "PAD": pad,
                                  "HAS_LN": ln, "SPLIT_N": split_n(cfg, ln, block_n), "BLOCK_M": cfg.block_m,
                                  "BLOCK_N": block_n, "BLOCK_K": cfg.block_k, "INTERP_BF16": False,
                                  "IEEE": False, "ALIGNED": True}
                    flops, nbytes = stage_cost(stage)
                    specs.append({
                        "op": "compressor",
                        "name": f"compressor-{stage}-{arch}-cfg{i}-{cfg.label()}-{dtype}",
                        "fn": _conv2d_nhwc_fwd_kernel,
                        "signature": sig, "constexprs": constexprs,
                        "num_warps": cfg.num_warps, "num_stages": cfg.num_stages, "dtype": dtype,
                        "flops": flops, "bytes": nbytes,
                    })
    return specs

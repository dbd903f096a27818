"""The benchmark matrix: per-op cases, end-to-end cases, and the providers that run each.

A :class:`Case` makes its inputs (random normal activations, random weights, random pixels: never zeros)
and knows its FLOPs and minimum bytes (:mod:`bench.flops`). A :class:`Provider` builds a callable; it
raises :class:`Unavailable` (with the reason) when it cannot run here, and the row says so.

Per-op providers
    ``upstream``          upstream's code path, re-typed here: the padded/partitioned qkv, the full
                          ``[B, heads, N, N]`` rel-pos bias materialised and handed to SDPA (SAM); the NCHW
                          neck/net_2/net_3 with LayerNorm2d (compressor); SDPA on split q/k/v (CLIP)
    ``reference``         the op's pure-PyTorch backend (``backend="torch"``; SAM's is chunked)
    ``reference-compile`` ``torch.compile(upstream, mode="max-autotune")``
    ``fast``              the op's fast backend (``backend="triton"``; CLIP: ``flash_attn`` or SDPA flash)
    ``fast-graphs``       ``fast`` captured in one CUDA graph per input set, replayed
    ``flash-nobias``      SDPA (flash backend on CUDA) on pre-split q/k/v at the same shape, no bias at all:
                          the ceiling an attention with a bias can approach; judged against its own
                          fp32 no-bias oracle
End-to-end providers (``DeepEncoder``, seeded random weights, one set shared by all providers)
    ``reference`` (eager upstream-equivalent model), ``reference-compile`` (``torch.compile`` of it),
    ``fast`` (``backend="fast"``), ``fast-graphs`` (``cuda_graphs=True``). DeepSeek-OCR 2 (family ``ocr2``,
    modes ``ocr2-*``): ``upstream`` (the reference with upstream's per-token mask loop), ``upstream-compile``,
    ``fast``, ``fast-graphs`` (:mod:`bench.e2e`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from deepencoder.config import DeepEncoderConfig

from . import flops as fl


class Unavailable(RuntimeError):
    """A provider that cannot run on this machine / these inputs (the message is the reason)."""


@dataclass
class Provider:
    name: str
    build: Callable[[], Callable]  # -> fn(*inputs) -> output
    graphs: bool = False  # capture fn per input set in a CUDA graph and replay it
    prepare: Optional[Callable] = None  # inputs -> inputs, done outside the timed region
    oracle: Optional[Callable] = None  # high-precision inputs -> this provider's reference output
    oracle_key: str = "default"
    note: str = ""
    compile: bool = False


@dataclass
class Case:
    kind: str  # "op" | "e2e"
    op: str
    shape: str
    batch: int
    make: Callable[[int, int, torch.dtype], Tuple]  # (seed, batch, dtype) -> inputs
    oracle: Callable  # high-precision inputs -> output
    flops: float  # per call at ``batch``
    bytes: float  # minimum, per call at ``batch`` (at the run dtype)
    images: int  # images (pages) per call
    mode: Optional[str] = None
    baseline: str = "upstream"  # provider whose same-dtype error widens the others' bound
    providers: List[Provider] = field(default_factory=list)
    extra: Dict[str, Any] = field(default_factory=dict)
    cleanup: Optional[Callable[[], None]] = None  # after the case's providers ran (e.g. drop CUDA graphs)

    @property
    def key(self) -> Tuple:
        return (self.kind, self.op, self.mode, self.shape, self.batch)


def _randn(shape, gen, device, dtype, scale=1.0):
    return (torch.randn(shape, generator=gen, device="cpu", dtype=torch.float32) * scale).to(device, dtype)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(seed)


def _kernel_import(modname: str, attr: str):
    try:
        mod = __import__(f"deepencoder.kernels.{modname}", fromlist=[attr])
        return getattr(mod, attr)
    except Exception as e:  # noqa: BLE001 - not landed yet, or broken: the row says why
        raise Unavailable(f"cannot import deepencoder.kernels.{modname}.{attr}: {type(e).__name__}: {e}") from e


def _need_cuda(device: torch.device, what: str):
    if device.type != "cuda":
        raise Unavailable(f"{what}: needs a CUDA device (this run: {device.type})")


def _compiled(fn, opts):
    return torch.compile(fn, mode=opts.get("compile_mode", "max-autotune"),
                         backend=opts.get("compile_backend", "inductor"), dynamic=False)


def _compile_note(opts) -> str:
    b = opts.get("compile_backend", "inductor")
    return f"torch.compile(mode={opts.get('compile_mode', 'max-autotune')!r}, backend={b!r})" + (
        "" if b == "inductor" else ": exercises the code path, not inductor")


# --------------------------------------------------------------------------------------------------
# SAM attention
# --------------------------------------------------------------------------------------------------


def _pad_partition(qkv, window: int, qkv_bias):
    """Upstream's window padding + partition applied to the qkv projection: padded tokens equal the qkv
    bias (zero padding before ``qkv``). Returns ``([B*nW, ws, ws, 3C] or qkv, (Hp, Wp))``."""
    B, H, W, C3 = qkv.shape
    if window <= 0:
        return qkv, (H, W)
    Hp, Wp = math.ceil(H / window) * window, math.ceil(W / window) * window
    x = qkv
    if (Hp, Wp) != (H, W):
        x = qkv_bias.to(qkv.dtype).expand(B, Hp, Wp, C3).clone()
        x[:, :H, :W] = qkv
    x = x.view(B, Hp // window, window, Wp // window, window, C3).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window, window, C3), (Hp, Wp)


def sam_attention_upstream(qkv, rel_pos_h, rel_pos_w, num_heads: int, window: int, qkv_bias=None):
    """Upstream's SAM attention from the qkv projection: pad with tokens equal to the qkv bias (what
    upstream's zero padding before ``qkv`` gives), partition, materialise ``[B*nW, heads, n, n]``, SDPA."""
    from deepencoder.reference import add_decomposed_rel_pos, window_unpartition

    x, (Hp, Wp) = _pad_partition(qkv, window, qkv_bias)
    Bw, h, w, _ = x.shape
    t = x.reshape(Bw, h * w, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = t.reshape(3, Bw * num_heads, h * w, -1).unbind(0)
    rel_h, rel_w = add_decomposed_rel_pos(q, rel_pos_h, rel_pos_w, (h, w), (h, w))
    q = q.view(Bw, num_heads, h * w, -1)
    k = k.view(Bw, num_heads, h * w, -1)
    v = v.view(Bw, num_heads, h * w, -1)
    rel_h = rel_h.view(Bw, num_heads, rel_h.size(1), rel_h.size(2), rel_h.size(3))
    rel_w = rel_w.view(Bw, num_heads, rel_w.size(1), rel_w.size(2), rel_w.size(3))
    bias = (rel_h + rel_w).view(Bw, num_heads, rel_h.size(2), rel_h.size(3) * rel_w.size(4))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    o = o.view(Bw, num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(Bw, h, w, -1)
    if window > 0:
        o = window_unpartition(o, window, (Hp, Wp), tuple(qkv.shape[1:3]))
    return o


def _split_regions(qkv, num_heads, window, qkv_bias):
    """q, k, v ``[B*nW, heads, n, D]`` contiguous (for the no-bias ceiling; padded like upstream)."""
    x, _ = _pad_partition(qkv, window, qkv_bias)
    Bw, h, w, _ = x.shape
    q, k, v = x.reshape(Bw, h * w, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _sdpa_nobias(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _sdpa_flash(q, k, v):
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


def sam_attention_case(G: int, window: int, batch: int, heads: int, head_dim: int, device, dtype,
                       opts: Dict[str, Any]) -> Case:
    C = heads * head_dim
    L = window if window > 0 else G
    op = "sam_window_attention" if window > 0 else "sam_global_attention"

    def make(seed, B, dt):
        g = _gen(seed)
        qkv = _randn((B, G, G, 3 * C), g, device, dt)
        rh = _randn((2 * L - 1, head_dim), g, device, dt, 0.1)
        rw = _randn((2 * L - 1, head_dim), g, device, dt, 0.1)
        bias = _randn((3 * C,), g, device, dt, 0.5)
        return (qkv, rh, rw, bias)

    def upstream(qkv, rh, rw, bias):
        return sam_attention_upstream(qkv, rh, rw, heads, window, bias)

    def b_reference():
        f = _kernel_import("sam_attention", "sam_attention")
        return lambda qkv, rh, rw, bias: f(qkv, rh, rw, heads, window, qkv_bias=bias, backend="torch")

    def b_fast():
        f = _kernel_import("sam_attention", "sam_attention")
        return lambda qkv, rh, rw, bias: f(qkv, rh, rw, heads, window, qkv_bias=bias, backend="triton")

    def b_graphs():
        _need_cuda(device, "CUDA graphs")
        return b_fast()

    def nobias_prepare(qkv, rh, rw, bias):
        return _split_regions(qkv, heads, window, bias)

    def nobias_oracle(qkv, rh, rw, bias):
        return _sdpa_nobias(*_split_regions(qkv, heads, window, bias))

    provs = [
        Provider("upstream", lambda: upstream, note="materialised [B*nW, heads, n, n] bias + SDPA"),
        Provider("reference", b_reference, note="sam_attention(backend='torch')"),
        Provider("reference-compile", lambda: _compiled(upstream, opts), compile=True, note=_compile_note(opts)),
        Provider("fast", b_fast, note="sam_attention(backend='triton')"),
        Provider("fast-graphs", b_graphs, graphs=True, note="backend='triton' in a CUDA graph"),
        Provider("flash-nobias", lambda: _sdpa_flash, prepare=nobias_prepare, oracle=nobias_oracle,
                 oracle_key="nobias", note="SDPA (flash on CUDA) on pre-split q/k/v, no bias: the ceiling"),
    ]
    elem = fl.elem_bytes(dtype)
    return Case("op", op, f"B{batch}-G{G}-H{heads}-D{head_dim}-w{window}", batch, make, upstream,
                fl.sam_attention_macs(batch, G, heads, head_dim, window) * 2,
                fl.sam_attention_bytes(batch, G, heads, head_dim, window, elem), batch,
                mode=opts.get("grid_modes", {}).get(G), providers=provs,
                extra={"upstream_bias_mb": fl.upstream_bias_bytes(batch, G, heads, window, elem) / 2 ** 20})


# --------------------------------------------------------------------------------------------------
# Compressor
# --------------------------------------------------------------------------------------------------


def compressor_upstream(x, neck0_w, ln1_w, ln1_b, neck2_w, ln2_w, ln2_b, net2_w, net3_w, eps=1e-6):
    """Upstream's neck + net_2 + net_3 in NCHW with LayerNorm2d in the activation dtype, then tokens."""

    def ln2d(t, w, b):
        u = t.mean(1, keepdim=True)
        s = (t - u).pow(2).mean(1, keepdim=True)
        t = (t - u) / torch.sqrt(s + eps)
        return w[:, None, None] * t + b[:, None, None]

    t = x.permute(0, 3, 1, 2)
    t = ln2d(F.conv2d(t, neck0_w), ln1_w, ln1_b)
    t = ln2d(F.conv2d(t, neck2_w, padding=1), ln2_w, ln2_b)
    t = F.conv2d(F.conv2d(t, net2_w, stride=2, padding=1), net3_w, stride=2, padding=1)
    return t.flatten(2).transpose(1, 2)


def compressor_case(G: int, batch: int, cfg: DeepEncoderConfig, device, dtype, opts) -> Case:
    s = cfg.sam
    C, c1, c3, c4 = s.embed_dim, s.out_chans, s.net2_chans, s.net3_chans

    def make(seed, B, dt):
        g = _gen(seed)
        x = _randn((B, G, G, C), g, device, dt)

        def w(co, ci, k):
            return _randn((co, ci, k, k), g, device, dt, 1.0 / math.sqrt(ci * k * k))

        ln = lambda: (_randn((c1,), g, device, dt, 0.1) + 1.0, _randn((c1,), g, device, dt, 0.02))
        l1, l2 = ln(), ln()
        return (x, w(c1, C, 1), l1[0], l1[1], w(c1, c1, 3), l2[0], l2[1], w(c3, c1, 3), w(c4, c3, 3))

    def b_reference():
        f = _kernel_import("compressor", "compressor")
        return lambda *a: f(*a, eps=s.norm_eps, backend="torch")

    def b_fast():
        f = _kernel_import("compressor", "compressor")
        return lambda *a: f(*a, eps=s.norm_eps, backend="triton")

    def b_graphs():
        _need_cuda(device, "CUDA graphs")
        return b_fast()

    upstream = lambda *a: compressor_upstream(*a, eps=s.norm_eps)
    provs = [
        Provider("upstream", lambda: upstream, note="NCHW convs + LayerNorm2d (activation dtype)"),
        Provider("reference", b_reference, note="compressor(backend='torch')"),
        Provider("reference-compile", lambda: _compiled(upstream, opts), compile=True, note=_compile_note(opts)),
        Provider("fast", b_fast, note="compressor(backend='triton')"),
        Provider("fast-graphs", b_graphs, graphs=True, note="backend='triton' in a CUDA graph"),
    ]
    elem = fl.elem_bytes(dtype)
    return Case("op", "compressor", f"B{batch}-G{G}-C{C}-{c1}-{c3}-{c4}", batch, make, upstream,
                fl.compressor_macs(batch, G, cfg) * 2, fl.compressor_bytes(batch, G, elem, cfg), batch,
                mode=opts.get("grid_modes", {}).get(G), providers=provs)


# --------------------------------------------------------------------------------------------------
# CLIP attention
# --------------------------------------------------------------------------------------------------


def clip_attention_upstream(qkv, num_heads: int):
    """Upstream ``clip_sdpa.py``: split the fused qkv, SDPA with no mask, heads back together."""
    B, N, C3 = qkv.shape
    q, k, v = qkv.view(B, N, 3, num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=None)
    return out.permute(0, 2, 1, 3).reshape(B, N, -1)


def clip_attention_case(g: int, batch: int, heads: int, head_dim: int, device, dtype, opts) -> Case:
    N = g * g + 1
    C = heads * head_dim

    def make(seed, B, dt):
        return (_randn((B, N, 3 * C), _gen(seed), device, dt),)

    upstream = lambda qkv: clip_attention_upstream(qkv, heads)

    def b_backend(name):
        def build():
            f = _kernel_import("clip_attention", "clip_attention")
            be = name
            if name == "fast":
                fa = _kernel_import("clip_attention.op", "flash_attn_available")
                be = "flash_attn" if fa() else "sdpa"
            return lambda qkv: f(qkv, heads, backend=be)
        return build

    def b_graphs():
        _need_cuda(device, "CUDA graphs")
        return b_backend("fast")()

    def split(qkv):
        q, k, v = qkv.view(qkv.shape[0], N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return q.contiguous(), k.contiguous(), v.contiguous()

    provs = [
        Provider("upstream", lambda: upstream, note="SDPA on split q/k/v (default backend choice)"),
        Provider("reference", b_backend("torch"), note="clip_attention(backend='torch')"),
        Provider("reference-compile", lambda: _compiled(upstream, opts), compile=True, note=_compile_note(opts)),
        Provider("fast", b_backend("fast"), note="clip_attention: flash_attn if installed, else SDPA flash"),
        Provider("fast-graphs", b_graphs, graphs=True, note="fast in a CUDA graph"),
        Provider("flash-nobias", lambda: _sdpa_flash, prepare=split, note="SDPA flash on pre-split q/k/v"),
    ]
    elem = fl.elem_bytes(dtype)
    return Case("op", "clip_attention", f"B{batch}-N{N}-H{heads}-D{head_dim}", batch, make, upstream,
                fl.clip_attention_macs(batch, N, heads, head_dim) * 2,
                fl.clip_attention_bytes(batch, N, heads, head_dim, elem), batch,
                mode=opts.get("clip_modes", {}).get(g), providers=provs)


# --------------------------------------------------------------------------------------------------
# DeepEncoder V2 causal-flow attention (Qwen2 layer of DeepSeek-OCR 2)
# --------------------------------------------------------------------------------------------------


def _rope_tables(L: int, head_dim: int, device, theta: float = 1e6):
    """Qwen2's RoPE tables for positions 0..L-1 in float32 (rotate-half layout: cat(angle, angle))."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ang = torch.arange(L, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(device), emb.sin().to(device)


def flow_attention_upstream(n: int, heads: int, kv_heads: int):
    """Upstream's path: RoPE in the activation dtype, repeat_kv, the ``[B, 1, 2n, 2n]`` float mask built by
    the per-token loop, SDPA (``deepencoder.kernels.flow_attention.flow_attention_ref``). Imported here, not
    inside the function, so ``torch.compile`` of it traces no import."""
    try:
        f = _kernel_import("flow_attention", "flow_attention_ref")
    except Unavailable as e:
        why = str(e)

        def missing(qkv, cos, sin):
            raise Unavailable(why)
        return missing
    return lambda qkv, cos, sin: f(qkv, n, heads, kv_heads, cos, sin)


def flow_attention_case(n: int, batch: int, heads: int, kv_heads: int, head_dim: int, device, dtype,
                        opts: Dict[str, Any]) -> Case:
    """One flow-attention call over ``[B, 2n, (H+2KV)D]``: visual rows see the visual block, query j sees
    the visual block and queries 0..j. Providers: ``upstream`` (materialised float mask), ``flex``
    (``flex_attention`` with a block mask, compiled on CUDA: what a user would write instead), ``library``
    (two calls: flash_attn or SDPA with ``causal_lower_right``), ``fast`` (the Triton kernel),
    ``flash-nobias`` (non-causal SDPA flash over the same 2n tokens, K/V repeated outside the timing: the
    ceiling), ``reference-compile`` (torch.compile of upstream)."""
    L = 2 * n
    W = (heads + 2 * kv_heads) * head_dim

    def make(seed, B, dt):
        g = _gen(seed)
        cos, sin = _rope_tables(L, head_dim, device)
        return (_randn((B, L, W), g, device, dt), cos, sin)

    upstream = flow_attention_upstream(n, heads, kv_heads)

    def b_backend(be):
        def build():
            f = _kernel_import("flow_attention", "flow_attention")
            return lambda qkv, cos, sin: f(qkv, n, heads, kv_heads, cos, sin, backend=be)
        return build

    def b_graphs():
        _need_cuda(device, "CUDA graphs")
        return b_backend("triton")()

    def b_flex():
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"flex_attention not importable: {e}") from e
        rot = _kernel_import("flow_attention.reference", "rotated_qkv")

        def mask_mod(b, h, q_idx, kv_idx):
            return (kv_idx < n) | (kv_idx <= q_idx)

        bm = create_block_mask(mask_mod, B=None, H=None, Q_LEN=L, KV_LEN=L, device=str(device))
        attend = torch.compile(flex_attention, dynamic=False) if device.type == "cuda" else flex_attention

        def fn(qkv, cos, sin):
            q, k, v = rot(qkv, heads, kv_heads, cos, sin)
            o = attend(q, k, v, block_mask=bm, enable_gqa=True)
            return o.transpose(1, 2).reshape(qkv.shape[0], L, heads * head_dim)
        return fn

    def nobias_prepare(qkv, cos, sin):
        split = _kernel_import("flow_attention.reference", "split_heads")
        q, k, v = split(qkv, heads, kv_heads)
        rep = heads // kv_heads
        return (q.contiguous(), k.repeat_interleave(rep, 1).contiguous(), v.repeat_interleave(rep, 1).contiguous())

    def nobias_oracle(qkv, cos, sin):
        return _sdpa_nobias(*nobias_prepare(qkv, cos, sin))

    provs = [
        Provider("upstream", lambda: upstream, note="RoPE + repeat_kv + materialised [B,1,2n,2n] float mask + SDPA"),
        Provider("reference-compile", lambda: _compiled(upstream, opts), compile=True, note=_compile_note(opts)),
        Provider("flex", b_flex, note="flex_attention + block mask (compiled on CUDA), RoPE by torch"),
        Provider("library", b_backend("library"), note="flow_attention(backend='library'): two calls, "
                 "flash_attn or SDPA causal_lower_right"),
        Provider("fast", b_backend("triton"), note="flow_attention(backend='triton'): one launch, RoPE on load"),
        Provider("fast-graphs", b_graphs, graphs=True, note="backend='triton' in a CUDA graph"),
        Provider("flash-nobias", lambda: _sdpa_flash, prepare=nobias_prepare, oracle=nobias_oracle,
                 oracle_key="nobias", note="SDPA (flash on CUDA), no mask, no RoPE, over the same 2n tokens"),
    ]
    elem = fl.elem_bytes(dtype)
    return Case("op", "flow_attention", f"B{batch}-n{n}-H{heads}-KV{kv_heads}-D{head_dim}", batch, make, upstream,
                fl.flow_attention_macs(batch, n, heads, head_dim) * 2,
                fl.flow_attention_bytes(batch, n, heads, kv_heads, head_dim, elem), batch,
                mode=opts.get("flow_modes", {}).get(n), providers=provs,
                extra={"upstream_mask_mb": batch * L * L * elem / 2 ** 20})

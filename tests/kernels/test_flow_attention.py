"""DeepEncoder V2 causal-flow attention (kernels/flow_attention): reference, library route, Triton kernel.

Oracles: a float64 derivation written from the spec's words (per-row key ranges, rotate-half RoPE,
query head h on KV head h // (H/KV)), and ``flow_attention_ref`` (upstream's path: RoPE in the
activation dtype, ``repeat_kv``, the materialised ``[B, 1, L, L]`` float mask, SDPA) in float64.
Low precision follows the same-dtype rule (``conftest.assert_same_dtype_rule``).
"""

import pytest
import torch
from deepencoder.kernels import BackendUnavailable, last_backend, last_backend_reason
from deepencoder.kernels.flow_attention import flow_attention, flow_attention_library, flow_attention_ref
from deepencoder.kernels.flow_attention import reference as ref_mod
from deepencoder.kernels.flow_attention import triton as tri

from tests.conftest import DEVICE, HAS_CUDA, assert_same_dtype_rule, max_err, poison

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
D = 64


def rope_tables(L, dim=D, theta=1e6):
    """Qwen2's tables for positions 0..L-1, float32 (upstream: inv_freq, cat(angle, angle))."""
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    ang = torch.arange(L, dtype=torch.float32)[:, None] * inv[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


def make(B, n, H, KV, dim=D, seed=0):
    """qkv in float64 (random normal, q/k/v scales as after a projection), cos/sin float32."""
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, 2 * n, (H + 2 * KV) * dim, generator=g, dtype=torch.float64).to(DEVICE)
    cos, sin = rope_tables(2 * n, dim)
    return qkv, cos, sin


def naive64(qkv, n, H, KV, cos, sin):
    """The spec, spelled out: visual row i sees keys 0..n-1, query row n+j keys 0..n+j; float64."""
    B, L, W = qkv.shape
    dim = W // (H + 2 * KV)
    x = qkv.double().cpu()
    c, s = cos.double().cpu(), sin.double().cpu()
    q = x[..., :H * dim].view(B, L, H, dim)
    k = x[..., H * dim:(H + KV) * dim].view(B, L, KV, dim)
    v = x[..., (H + KV) * dim:].view(B, L, KV, dim)

    def rot(t):
        half = dim // 2
        rh = torch.cat((-t[..., half:], t[..., :half]), -1)
        return t * c[None, :, None] + rh * s[None, :, None]

    q, k = rot(q), rot(k)
    out = torch.empty(B, L, H, dim, dtype=torch.float64)
    for h in range(H):
        kv = h // (H // KV)
        for r in range(L):
            keys = n if r < n else r + 1
            sc = torch.einsum("bd,bkd->bk", q[:, r, h], k[:, :keys, kv]) / dim ** 0.5
            out[:, r, h] = torch.einsum("bk,bkd->bd", sc.softmax(-1), v[:, :keys, kv])
    return out.reshape(B, L, H * dim)


def check(out, ref_lp, ref64, dtype, what="flow attention"):
    """The acceptance check: finite, fp32 within 2e-5 of the float64 oracle, fp16/bf16 by the same-dtype rule."""
    assert torch.isfinite(out.float()).all(), f"{what}: non-finite values (an unwritten tile?)"
    if dtype == torch.float32:
        e = max_err(out.cpu(), ref64.cpu())
        assert e < 2e-5, f"{what}: fp32 error {e:.3e} >= 2e-5"
    assert_same_dtype_rule(out.cpu(), ref_lp.cpu(), ref64.cpu(), factor=2.0, atol=1e-5, what=what)


def refs(qkv64, n, H, KV, cos, sin, dtype):
    ref64 = flow_attention_ref(qkv64, n, H, KV, cos.double(), sin.double())
    ref_lp = flow_attention_ref(qkv64.to(dtype), n, H, KV, cos, sin)
    return ref_lp, ref64


# ------------------------------------------------------------------------------------------------ oracles

@pytest.mark.parametrize("B,n,H,KV", [(1, 9, 14, 2), (2, 5, 4, 2), (1, 7, 3, 3)], ids=["B1-n9-H14-KV2", "B2-n5-H4-KV2",
                                                                                        "B1-n7-H3-KV3-noGQA"])
def test_reference_matches_the_spec_float64(B, n, H, KV):
    """Upstream's path (materialised mask, repeat_kv) == the spec's per-row key ranges, float64; and the
    mask by index (``col < n or col <= row``) == upstream's per-token writes."""
    qkv, cos, sin = make(B, n, H, KV, seed=n)
    got = flow_attention_ref(qkv, n, H, KV, cos.double(), sin.double())
    torch.testing.assert_close(got.cpu(), naive64(qkv, n, H, KV, cos, sin), rtol=1e-12, atol=1e-12)
    m = ref_mod.flow_mask_upstream(2, n, torch.float32)
    assert torch.equal(m == 0, ref_mod.flow_mask_bool(n)[None, None].expand(2, 1, -1, -1))
    assert (m[:, :, :n, n:] == torch.finfo(torch.float32).min).all()  # visual rows never see queries


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_library_route_and_wrong_causal_alignment_is_detected(dt):
    """The two-call route (SDPA + causal_lower_right on the CPU) passes ``check``; the same route with SDPA's
    ``is_causal=True`` (top-left: query j would see keys 0..j) must FAIL the same check."""
    dtype = DT[dt]
    B, n, H, KV = 2, 13, 14, 2
    qkv, cos, sin = make(B, n, H, KV, seed=3)
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, dtype)
    out = flow_attention(qkv.to(dtype), n, H, KV, cos, sin, backend="library")
    assert last_backend("flow_attention") == "library"
    want_route = "flash_attn" if (HAS_CUDA and ref_mod.flash_attn_available() and dtype != torch.float32) else "sdpa"
    why = last_backend_reason("flow_attention")
    assert why.startswith(want_route) and "rope=triton" in why, why  # the one-pass RoPE (CUDA or interpreter)
    check(out, ref_lp, ref64, dtype)
    good, route = flow_attention_library(qkv.to(dtype), n, H, KV, cos, sin, use_flash=False)  # torch RoPE
    assert route == "sdpa-causal_lower_right"
    check(good, ref_lp, ref64, dtype, what="library, torch RoPE")
    bad, _ = flow_attention_library(qkv.to(dtype), n, H, KV, cos, sin, use_flash=False, sdpa_causal_top_left=True)
    with pytest.raises(AssertionError):
        check(bad, ref_lp, ref64, dtype, what="top-left causal")
    # the visual half is untouched by the alignment; every query row but the last is wrong
    torch.testing.assert_close(bad[:, :n], good[:, :n], rtol=0, atol=0)
    assert max_err(bad[:, n:2 * n - 1], ref64[:, n:2 * n - 1]) > 0.05


# ------------------------------------------------------------------------------------------------ Triton kernel

CASES = [
    # B, n, H, KV, dtype   (n odd and small on purpose; n=72 gives 3 row blocks and unmasked key tiles)
    (1, 9, 14, 2, "fp32"),
    (2, 37, 14, 2, "bf16"),
    (1, 25, 4, 2, "fp16"),
    (1, 72, 2, 1, "bf16"),
    (2, 19, 2, 2, "fp32"),
    (1, 144, 2, 1, "fp16"),  # the real 768-tile length (L = 288): 5 row blocks, up to 5 key tiles each
]


@pytest.mark.interpreter
@pytest.mark.parametrize("B,n,H,KV,dt", CASES, ids=[f"B{c[0]}-n{c[1]}-H{c[2]}-KV{c[3]}-{c[4]}" for c in CASES])
def test_triton_matches_reference(B, n, H, KV, dt):
    dtype = DT[dt]
    qkv, cos, sin = make(B, n, H, KV, seed=B * 100 + n)
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, dtype)
    out = flow_attention(qkv.to(dtype), n, H, KV, cos, sin, backend="triton")
    assert last_backend("flow_attention") == "triton"
    assert out.shape == (B, 2 * n, H * D) and out.dtype == dtype
    check(out, ref_lp, ref64, dtype)
    if n == 9:  # and the float64 spec derivation, directly
        assert max_err(out.cpu(), naive64(qkv, n, H, KV, cos, sin)) < 2e-5


@pytest.mark.interpreter
def test_triton_reads_strided_qkv_and_writes_into_a_slice():
    """qkv as a column slice of a wider buffer (non-contiguous rows), out as a batch and column slice of a
    bigger NaN-poisoned buffer: only the slice is written."""
    B, n, H, KV = 2, 11, 4, 2
    qkv, cos, sin = make(B, n, H, KV, seed=5)
    wide = torch.randn(B, 2 * n, qkv.shape[-1] + 96, dtype=torch.float32, device=DEVICE)
    wide[..., 32:32 + qkv.shape[-1]] = qkv.float()
    view = wide[..., 32:32 + qkv.shape[-1]]
    assert not view.is_contiguous()
    big = poison(torch.empty(B + 1, 2 * n, H * D + 64, device=DEVICE))
    dst = big[1:, :, 32:32 + H * D]  # a batch and column slice: rows of stride H*D + 64
    got = flow_attention(view, n, H, KV, cos, sin, backend="triton", out=dst)
    assert got.data_ptr() == dst.data_ptr()
    assert torch.isnan(big[0]).all() and torch.isnan(big[1:, :, :32]).all() and torch.isnan(big[1:, :, -32:]).all()
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, torch.float32)
    check(dst, ref_lp, ref64, torch.float32)


@pytest.mark.interpreter
@pytest.mark.parametrize("cfg", tri.CONFIGS, ids=[f"M{c.BLOCK_M}-N{c.BLOCK_N}-w{c.num_warps}-s{c.num_stages}"
                                                  for c in tri.CONFIGS])
@pytest.mark.parametrize("dt", ["fp16", "bf16", "fp32"])
def test_every_config(cfg, dt):
    """Every shipped config, forced, into a NaN-poisoned buffer; n=37 straddles the first row block and
    leaves a partial last block; batch 1."""
    dtype = DT[dt]
    B, n, H, KV = 1, 37, 2, 1
    qkv, cos, sin = make(B, n, H, KV, seed=17)
    out = poison(torch.empty(B, 2 * n, H * D, device=DEVICE, dtype=dtype))
    tri.flow_attention_fwd(qkv.to(dtype), n, H, KV, cos, sin, out=out, config=cfg)
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, dtype)
    check(out, ref_lp, ref64, dtype, what=f"config {cfg}")


@pytest.mark.interpreter
def test_head_dim_32_and_tables_in_activation_dtype():
    B, n, H, KV, dim = 1, 10, 2, 1, 32
    qkv, cos, sin = make(B, n, H, KV, dim=dim, seed=9)
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, torch.float16)
    out = flow_attention(qkv.half(), n, H, KV, cos, sin, backend="triton")
    check(out, ref_lp, ref64, torch.float16)
    out_h = flow_attention(qkv.half(), n, H, KV, cos.half(), sin.half(), backend="triton")  # fp16 tables
    check(out_h, ref_lp, ref64, torch.float16, what="fp16 tables")


# ------------------------------------------------------------------------------------------------ dispatch

@pytest.mark.interpreter
def test_backends_direct_and_auto():
    B, n, H, KV = 1, 6, 4, 2
    qkv, cos, sin = make(B, n, H, KV, seed=2)
    x = qkv.float()
    o_t = flow_attention(x, n, H, KV, cos, sin, backend="triton")
    assert last_backend("flow_attention") == "triton"
    o_l = flow_attention(x, n, H, KV, cos, sin, backend="library")
    assert last_backend("flow_attention") == "library"
    o_r = flow_attention(x, n, H, KV, cos, sin, backend="torch")
    assert last_backend("flow_attention") == "torch"
    o_a = flow_attention(x, n, H, KV, cos, sin)  # auto: every guard passes (CUDA, or the interpreter)
    assert last_backend("flow_attention") == "triton", last_backend_reason("flow_attention")
    torch.testing.assert_close(o_t, o_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_l, o_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_a, o_t, rtol=0, atol=0)
    for be, want in (("triton", o_t), ("library", o_l), ("torch", o_r), ("auto", o_t)):  # out= on every route
        buf = poison(torch.empty(B, 2 * n, H * D, device=DEVICE))
        got = flow_attention(x, n, H, KV, cos, sin, backend=be, out=buf)
        assert got.data_ptr() == buf.data_ptr(), be
        torch.testing.assert_close(buf, want, rtol=0, atol=0)


def test_kill_switch(monkeypatch):
    qkv, cos, sin = make(1, 4, 2, 1, seed=1)
    want = "library" if HAS_CUDA else "torch"
    for var in ("DEEPENCODER_DISABLE_FLOW_ATTENTION", "DEEPENCODER_DISABLE_TRITON"):
        monkeypatch.setenv(var, "1")
        flow_attention(qkv.float(), 4, 2, 1, cos, sin)
        assert last_backend("flow_attention") == want
        assert var in last_backend_reason("flow_attention")
        flow_attention(qkv.float(), 4, 2, 1, cos, sin, backend="library")  # and its RoPE pass goes to torch
        assert f"rope=torch: {var}" in last_backend_reason("flow_attention")
        monkeypatch.delenv(var)


def test_guards_name_the_problem():
    qkv, cos, sin = make(1, 4, 2, 1, seed=1)
    with pytest.raises(BackendUnavailable, match="dtype torch.float64"):
        flow_attention(qkv, 4, 2, 1, cos, sin, backend="triton")
    o = flow_attention(qkv, 4, 2, 1, cos, sin)  # auto: visible fallback
    assert last_backend("flow_attention") == ("library" if HAS_CUDA else "torch")
    assert "float64" in last_backend_reason("flow_attention") and o.dtype == torch.float64
    q48, c48, s48 = make(1, 4, 2, 1, dim=48, seed=1)
    with pytest.raises(BackendUnavailable, match="head dim 48"):
        flow_attention(q48.float(), 4, 2, 1, c48, s48, backend="triton")
    with pytest.raises(BackendUnavailable, match="grad"):
        flow_attention(qkv.float().requires_grad_(), 4, 2, 1, cos, sin, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        flow_attention(qkv.float(), 4, 2, 1, cos, sin, backend="flash")


def test_validation_errors_are_one_line():
    qkv, cos, sin = make(1, 4, 2, 1, seed=1)
    x = qkv.float()
    cos_t = cos[:-1]
    nc = x.transpose(1, 2).contiguous().transpose(1, 2)
    bad = [
        ((x, 5, 2, 1, cos, sin), {}, ValueError, "L = 2\\*n_visual"),
        ((x[0], 4, 2, 1, cos, sin), {}, ValueError, "qkv must be"),
        ((x, 4, 3, 1, cos, sin), {}, ValueError, "not \\(num_heads"),
        ((x, 4, 2, 3, cos, sin), {}, ValueError, "not a multiple"),
        ((x, 4, 2, 1, cos_t, sin), {}, ValueError, "cos must be \\[L, D\\] = \\[8, 64\\]"),
        ((x, 4, 2, 1, cos, sin.double()), {}, TypeError, "sin dtype"),
        ((x.int(), 4, 2, 1, cos, sin), {}, TypeError, "not a floating"),
        ((nc, 4, 2, 1, cos, sin), {}, ValueError, "last dim must be contiguous"),
        ((x, 4, 2, 1, cos, sin), {"out": torch.empty(1, 8, 64, device=DEVICE)}, ValueError, "out must be"),
        ((x, 4, 2, 1, cos, sin), {"out": torch.empty(1, 128, 8, device=DEVICE).transpose(1, 2)}, ValueError,
         "out last dim must be contiguous"),
    ]
    for args, kw, exc, pat in bad:
        for backend in ("triton", "library", "torch", "auto"):
            with pytest.raises(exc, match=pat) as e:
                flow_attention(*args, backend=backend, **kw)
            assert "\n" not in str(e.value)


def test_pick_config_and_aot_specs():
    assert tri.pick_config(8, 512, 14) == tri.FlowAttnConfig(128, 64, 8, 2)  # batch 8 global views
    assert tri.pick_config(1, 288, 14).BLOCK_M == 64  # one 768 tile: 70 programs of 64 rows
    for c in tri.CONFIGS:
        assert c.BLOCK_M >= 16 and c.BLOCK_N >= 16  # tl.dot tiles
    specs = tri.aot_specs()
    assert len(specs) == 2 * len(tri.CONFIGS) + 2 and len({s["name"] for s in specs}) == len(specs)
    for s in specs:
        assert set(s["signature"]) == set(s["fn"].arg_names)
        assert {k for k, v in s["signature"].items() if v == "constexpr"} == set(s["constexprs"])
        assert s["signature"]["QKV"] == "*" + s["dtype"] and s["flops"] > 0 and s["bytes"] > 0
    # the FLOP count is the allowed pairs only: 2.5 n^2 of the dense 4 n^2
    f, _ = tri.cost(B=1, n=256, heads=1, D=64)
    assert f == 4.0 * 64 * (2 * 256 * 256 + 256 * 257 // 2)


# ------------------------------------------------------------------------------------------------ custom op

@pytest.mark.interpreter
def test_custom_ops_opcheck_and_compile():
    """All of opcheck's default checks on both custom ops (functional and out=); torch.compile traces the
    dispatcher whole (fullgraph) for both."""
    from deepencoder.kernels.flow_attention.op import _flow_attention_op, _flow_attention_out_op

    B, n, H, KV = 1, 5, 2, 1
    qkv, cos, sin = make(B, n, H, KV, seed=21)
    x = qkv.float()
    torch.library.opcheck(_flow_attention_op, (x, n, H, KV, cos, sin))
    out = torch.empty(B, 2 * n, H * D, device=DEVICE)
    torch.library.opcheck(_flow_attention_out_op, (x, n, H, KV, cos, sin, out))
    ref = flow_attention_ref(x, n, H, KV, cos, sin)
    f = torch.compile(lambda a, c, s: flow_attention(a, n, H, KV, c, s, backend="triton"), backend="aot_eager",
                      fullgraph=True)
    torch.testing.assert_close(f(x, cos, sin), ref, rtol=1e-5, atol=1e-5)

    def g(a, c, s, o):
        flow_attention(a, n, H, KV, c, s, backend="triton", out=o)
        return o * 1.0

    o2 = poison(torch.empty(B, 2 * n, H * D, device=DEVICE))
    got = torch.compile(g, backend="aot_eager", fullgraph=True)(x, cos, sin, o2)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o2, ref, rtol=1e-5, atol=1e-5)
    # the library route's RoPE pass: its op, and the route traced whole
    from deepencoder.kernels.flow_attention.op import _rope_qk_op

    torch.library.opcheck(_rope_qk_op, (x, H, KV, cos, sin))
    f_lib = torch.compile(lambda a, c, s: flow_attention(a, n, H, KV, c, s, backend="library"), backend="aot_eager",
                          fullgraph=True)
    torch.testing.assert_close(f_lib(x, cos, sin), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_rope_pass_writes_every_element(dt):
    """The library route's one-pass RoPE into a NaN-poisoned buffer: odd L, batch 1, strided qkv; against
    the float64 rotation (same-dtype rule vs upstream's rotation in that dtype)."""
    dtype = DT[dt]
    B, n, H, KV = 1, 7, 14, 2
    qkv, cos, sin = make(B, n, H, KV, seed=41)
    wide = torch.zeros(B, 2 * n, qkv.shape[-1] + 64, device=DEVICE, dtype=dtype)
    wide[..., :qkv.shape[-1]] = qkv.to(dtype)
    x = wide[..., :qkv.shape[-1]]
    out = poison(torch.empty(B, 2 * n, H + KV, D, device=DEVICE, dtype=dtype))
    tri.rope_qk_fwd(x, H, KV, cos, sin, out=out)
    q64, k64, _ = ref_mod.rotated_qkv(qkv.double(), H, KV, cos.double(), sin.double())
    q_lp, k_lp, _ = ref_mod.rotated_qkv(qkv.to(dtype), H, KV, cos, sin)
    assert_same_dtype_rule(out[:, :, :H].transpose(1, 2).cpu(), q_lp.cpu(), q64.cpu(), what="rope q")
    assert_same_dtype_rule(out[:, :, H:].transpose(1, 2).cpu(), k_lp.cpu(), k64.cpu(), what="rope k")


# ------------------------------------------------------------------------------------------------ GPU

@pytest.mark.cuda
@pytest.mark.parametrize("n", [144, 256])
def test_cuda_real_shapes_all_routes(n):
    """Real OCR-2 shapes on the GPU, bf16: Triton, the library route (flash_attn when installed, else SDPA
    lower-right) and the top-left failure, all against the float64 reference."""
    B, H, KV = 4, 14, 2
    qkv, cos, sin = make(B, n, H, KV, seed=n)
    ref_lp, ref64 = refs(qkv, n, H, KV, cos, sin, torch.bfloat16)
    x = qkv.bfloat16()
    check(flow_attention(x, n, H, KV, cos, sin, backend="triton"), ref_lp, ref64, torch.bfloat16)
    check(flow_attention(x, n, H, KV, cos, sin, backend="library"), ref_lp, ref64, torch.bfloat16)
    check(flow_attention(x, n, H, KV, cos, sin), ref_lp, ref64, torch.bfloat16)
    assert last_backend("flow_attention") == "triton"
    if ref_mod.flash_attn_available():
        o, route = flow_attention_library(x, n, H, KV, cos, sin, use_flash=True)
        assert route == "flash_attn"
        check(o, ref_lp, ref64, torch.bfloat16, what="flash_attn two-call")
    bad, _ = flow_attention_library(x, n, H, KV, cos, sin, use_flash=False, sdpa_causal_top_left=True)
    with pytest.raises(AssertionError):
        check(bad, ref_lp, ref64, torch.bfloat16)
    for cfg in tri.CONFIGS:
        if cfg in tri._excluded_here():
            continue
        out = poison(torch.empty(B, 2 * n, H * D, device=DEVICE, dtype=torch.bfloat16))
        tri.flow_attention_fwd(x, n, H, KV, cos, sin, out=out, config=cfg)
        check(out, ref_lp, ref64, torch.bfloat16, what=f"config {cfg}")


@pytest.mark.interpreter
def test_ocr2_ops_trace_together_with_auto():
    """What a Qwen2 layer of the fast path calls, with ``backend="auto"``: one fullgraph trace, same values."""
    from deepencoder.kernels.add_rmsnorm import add_rmsnorm, rms_norm
    from deepencoder.kernels.swiglu import swiglu

    B, n, H, KV = 1, 4, 2, 1
    qkv, cos, sin = make(B, n, H, KV, seed=31)
    x = torch.randn(B, 2 * n, H * D, device=DEVICE)
    w = 1 + 0.1 * torch.randn(H * D, device=DEVICE)
    gu = torch.randn(B, 2 * n, 4 * H * D, device=DEVICE)

    def layer(qkv, x, w, gu):
        o = flow_attention(qkv, n, H, KV, cos, sin)
        s, h = add_rmsnorm(x, o, w, 1e-6)
        return s, rms_norm(h, w, 1e-6), swiglu(gu)

    got = torch.compile(layer, backend="aot_eager", fullgraph=True)(qkv.float(), x, w, gu)
    want = layer(qkv.float(), x, w, gu)
    assert last_backend("flow_attention") == "triton"
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

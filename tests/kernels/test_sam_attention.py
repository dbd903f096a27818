"""Fused SAM attention (kernels/sam_attention) against upstream's pathway and the torch reference.

Oracles: ``deepencoder.reference.SAMAttention`` fed exactly as upstream feeds it (norm'd map ->
``window_partition`` (zero pad) -> ``attn`` -> ``window_unpartition``), and
``kernels/sam_attention/reference.py`` in float64. Low precision follows the same-dtype rule
(``conftest.assert_same_dtype_rule``): the kernel's error against the float64 oracle must be within
2x the error of the same pathway run by torch in that dtype.
"""

import math

import pytest
import torch
from deepencoder.kernels import BackendUnavailable, last_backend, last_backend_reason
from deepencoder.kernels.sam_attention import reference as ref_mod
from deepencoder.kernels.sam_attention import sam_attention, sam_attention_ref
from deepencoder.kernels.sam_attention import triton as tri

from deepencoder.reference import SAMAttention, resize_rel_pos, window_partition, window_unpartition
from tests.conftest import DEVICE, assert_same_dtype_rule, max_err, poison

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------ helpers

def make_attn(C, heads, rel_len, seed):
    """An upstream SAMAttention with random (never zero) weights, float64 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    m = SAMAttention(C, heads, rel_len).double()
    D = C // heads
    with torch.no_grad():
        m.qkv.weight.copy_(torch.randn(3 * C, C, generator=g, dtype=torch.float64) / math.sqrt(C))
        m.qkv.bias.copy_(0.5 * torch.randn(3 * C, generator=g, dtype=torch.float64))
        m.proj.weight.copy_(torch.randn(C, C, generator=g, dtype=torch.float64) / math.sqrt(C))
        m.proj.bias.copy_(0.1 * torch.randn(C, generator=g, dtype=torch.float64))
        m.rel_pos_h.copy_(0.5 * torch.randn(2 * rel_len - 1, D, generator=g, dtype=torch.float64))
        m.rel_pos_w.copy_(0.5 * torch.randn(2 * rel_len - 1, D, generator=g, dtype=torch.float64))
    return m.eval()


def normed_map(B, H, W, C, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    x = torch.randn(B, H, W, C, generator=g, dtype=torch.float64)
    return torch.nn.functional.layer_norm(x, (C,))


def upstream(attn, x, ws):
    """What upstream's SAM block does around ``attn`` (after norm1)."""
    if ws == 0:
        return attn(x)
    H, W = x.shape[1], x.shape[2]
    win, pad_hw = window_partition(x, ws)
    return window_unpartition(attn(win), ws, pad_hw, (H, W))


def kernel_path(attn, x, ws, backend):
    """The fast path: qkv on the unpartitioned map, fused attention, proj. Returns (attn out, proj out)."""
    H, W = x.shape[1], x.shape[2]
    L_h, L_w = (ws, ws) if ws else (H, W)
    rh = resize_rel_pos(attn.rel_pos_h, L_h).contiguous()
    rw = resize_rel_pos(attn.rel_pos_w, L_w).contiguous()
    qkv = attn.qkv(x)
    o = sam_attention(qkv, rh, rw, attn.num_heads, ws, qkv_bias=attn.qkv.bias, backend=backend)
    return o, attn.proj(o)


def rand_qkv(B, H, W, heads, D, ws, dtype=torch.float64, seed=0, table_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    L_h, L_w = (ws, ws) if ws else (H, W)
    qkv = torch.randn(B, H, W, 3 * heads * D, generator=g, dtype=torch.float64)
    rh = table_scale * torch.randn(2 * L_h - 1, D, generator=g, dtype=torch.float64)
    rw = table_scale * torch.randn(2 * L_w - 1, D, generator=g, dtype=torch.float64)
    bias = torch.randn(3 * heads * D, generator=g, dtype=torch.float64)
    return [t.to(DEVICE, dtype) for t in (qkv, rh, rw, bias)]


def case_id(mode, B, H, W, heads, D, dt):
    grid = f"G{H}" if H == W else f"G{H}x{W}"
    return f"{mode}-B{B}-{grid}-H{heads}-D{D}-{dt}"


# ------------------------------------------------------------------------------------------------ oracles agree

@pytest.mark.parametrize("B,H,W,heads,ws,rel_len", [
    (2, 16, 16, 2, 14, 14), (1, 20, 20, 3, 14, 14), (1, 9, 13, 2, 0, 9), (2, 8, 8, 2, 0, 64), (1, 5, 7, 1, 3, 5),
], ids=["win14-B2-G16-H2", "win14-B1-G20-H3", "global-B1-G9x13-H2-resizeW", "global-B2-G8-H2-resize64",
        "win3-B1-G5x7-H1-resize"])
def test_reference_matches_upstream_float64(B, H, W, heads, ws, rel_len):
    """reference.py (no N x N tensor, bias-synthesised padding) == upstream (zero pad, materialised bias)."""
    C = heads * 32
    attn = make_attn(C, heads, rel_len, seed=B + H)
    x = normed_map(B, H, W, C, seed=H * W)
    with torch.no_grad():
        want = upstream(attn, x, ws)
        _, got = kernel_path(attn, x, ws, backend="torch")
    assert last_backend("sam_attention") == "torch"
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_reference_chunking_matches(monkeypatch):
    """Tiny chunk budgets force the batch- and query-chunk loops; results must not change (float64;
    SDPA's blocking differs with the chunk shape, so equal to the last bits, not bitwise)."""
    qkv, rh, rw, bias = rand_qkv(2, 16, 15, 2, 16, 14, seed=3)
    full = sam_attention_ref(qkv, rh, rw, 2, 14, bias)
    qkv_g, rh_g, rw_g, _ = rand_qkv(2, 6, 7, 2, 16, 0, seed=4)
    full_g = sam_attention_ref(qkv_g, rh_g, rw_g, 2, 0)
    monkeypatch.setattr(ref_mod, "_CHUNK_BYTES", 2 * 196 * 196 * 8 * 2 + 1)  # 2 windows per chunk
    torch.testing.assert_close(sam_attention_ref(qkv, rh, rw, 2, 14, bias), full, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(ref_mod, "_CHUNK_BYTES", 2 * 42 * 8 * 5)  # 5 query rows per chunk
    torch.testing.assert_close(sam_attention_ref(qkv_g, rh_g, rw_g, 2, 0), full_g, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ kernel vs oracles

UPSTREAM_CASES = [
    # mode, B, H, W, heads, D, dtype
    ("window", 2, 16, 16, 2, 64, "fp32"),
    ("window", 1, 20, 20, 2, 64, "bf16"),
    ("window", 1, 16, 16, 1, 64, "fp16"),
    ("global", 2, 9, 13, 2, 64, "fp16"),
    ("global", 1, 20, 20, 1, 64, "bf16"),
    ("global", 1, 8, 8, 12, 64, "fp32"),
    ("global", 2, 16, 16, 2, 64, "bf16"),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("mode,B,H,W,heads,D,dt", UPSTREAM_CASES, ids=[case_id(*c) for c in UPSTREAM_CASES])
def test_triton_matches_upstream_and_reference(mode, B, H, W, heads, D, dt):
    dtype = DT[dt]
    ws = 14 if mode == "window" else 0
    C = heads * D
    attn64 = make_attn(C, heads, 14 if ws else 16, seed=7 * B + H)  # global tables resized 16 -> H, W
    x64 = normed_map(B, H, W, C, seed=H + W + B)
    attn_lp = SAMAttention(C, heads, attn64.rel_pos_h.shape[0] // 2 + 1).to(dtype)
    attn_lp.load_state_dict({k: v.to(dtype) for k, v in attn64.state_dict().items()})
    attn_lp = attn_lp.to(DEVICE).eval()
    x_lp = x64.to(DEVICE, dtype)
    with torch.no_grad():
        up64 = upstream(attn64, x64, ws)  # the oracle, float64
        up_lp = upstream(attn_lp, x_lp, ws).cpu()  # upstream run by torch in this dtype
        o_k, p_k = kernel_path(attn_lp, x_lp, ws, backend="triton")
        assert last_backend("sam_attention") == "triton"
        # the same attention inputs through reference.py: float64 oracle and same-dtype torch
        L_h, L_w = (ws, ws) if ws else (H, W)
        rh, rw = resize_rel_pos(attn_lp.rel_pos_h, L_h), resize_rel_pos(attn_lp.rel_pos_w, L_w)
        qkv = attn_lp.qkv(x_lp)
        o_ref64 = sam_attention_ref(qkv.double().cpu(), rh.double().cpu(), rw.double().cpu(), heads, ws,
                                    attn_lp.qkv.bias.double().cpu())
        o_ref_lp = sam_attention_ref(qkv, rh, rw, heads, ws, attn_lp.qkv.bias).cpu()
    assert o_k.shape == (B, H, W, C) and o_k.dtype == dtype and p_k.shape == (B, H, W, C)
    assert torch.isfinite(o_k.float()).all()
    assert_same_dtype_rule(o_k.cpu(), o_ref_lp, o_ref64, factor=2.0, atol=1e-5, what="attention vs reference.py")
    assert_same_dtype_rule(p_k.cpu(), up_lp, up64, factor=2.0, atol=1e-5, what="attention+proj vs upstream")
    if dtype == torch.float32:
        assert max_err(o_k.cpu(), o_ref64) < 1e-4


# Every shipped config, forced, in its mode, into a NaN-poisoned out= buffer (full coverage).
CONFIG_CASES = [("window", c) for c in tri.CONFIGS["window"]] + [("global", c) for c in tri.CONFIGS["global"]]


@pytest.mark.interpreter
@pytest.mark.parametrize("mode,cfg", CONFIG_CASES,
                         ids=[f"{m}-M{c.BLOCK_M}-N{c.BLOCK_N}-w{c.num_warps}-s{c.num_stages}" for m, c in CONFIG_CASES])
@pytest.mark.parametrize("dt", ["fp16", "bf16"])
def test_every_config(mode, cfg, dt):
    dtype = DT[dt]
    B, H, W, heads, D, ws = (1, 16, 15, 1, 64, 14) if mode == "window" else (1, 9, 20, 1, 64, 0)
    qkv, rh, rw, bias = rand_qkv(B, H, W, heads, D, ws, seed=11)
    out = poison(torch.empty(B, H, W, heads * D, device=DEVICE, dtype=dtype))
    lp = [t.to(dtype) for t in (qkv, rh, rw, bias)]
    tri.sam_attention_fwd(lp[0], lp[1], lp[2], heads, ws, lp[3], D ** -0.5, out=out, config=cfg)
    ref64 = sam_attention_ref(qkv.cpu(), rh.cpu(), rw.cpu(), heads, ws, bias.cpu())
    ref_lp = sam_attention_ref(*[t.cpu() for t in lp[:3]], heads, ws, lp[3].cpu())
    assert_same_dtype_rule(out.cpu(), ref_lp, ref64, factor=2.0, atol=1e-5, what=f"config {cfg}")


@pytest.mark.interpreter
@pytest.mark.parametrize("B,H,W,heads,D,ws,dt,cfg", [
    (1, 9, 40, 1, 16, 0, "fp32", tri.SamAttnConfig(64, 16, 4, 2)),  # 3 column chunks per key row
    (2, 7, 5, 2, 32, 3, "fp32", tri.SamAttnConfig(16, 16, 1, 1)),  # tiny windows: 3x2 windows, both edges padded
    (1, 16, 16, 1, 32, 14, "fp16", None),
    (2, 6, 11, 2, 16, 0, "bf16", None),
], ids=["global-B1-G9x40-H1-D16-fp32-chunked", "win3-B2-G7x5-H2-D32-fp32", "window-B1-G16-H1-D32-fp16",
        "global-B2-G6x11-H2-D16-bf16"])
def test_head_dims_chunks_small_windows(B, H, W, heads, D, ws, dt, cfg):
    dtype = DT[dt]
    qkv, rh, rw, bias = rand_qkv(B, H, W, heads, D, ws, seed=B * H + W)
    lp = [t.to(dtype) for t in (qkv, rh, rw, bias)]
    out = poison(torch.empty(B, H, W, heads * D, device=DEVICE, dtype=dtype))
    tri.sam_attention_fwd(lp[0], lp[1], lp[2], heads, ws, lp[3], D ** -0.5, out=out, config=cfg)
    ref64 = sam_attention_ref(qkv.cpu(), rh.cpu(), rw.cpu(), heads, ws, bias.cpu())
    ref_lp = sam_attention_ref(*[t.cpu() for t in lp[:3]], heads, ws, lp[3].cpu())
    assert_same_dtype_rule(out.cpu(), ref_lp, ref64, factor=2.0, atol=1e-5)
    if dtype == torch.float32:
        assert max_err(out.cpu(), ref64) < 1e-5


@pytest.mark.interpreter
def test_padded_window_tokens_are_attended_not_masked():
    """Upstream pads after norm1, so padded keys equal the qkv bias and are NOT masked. Make them matter
    (every q shares a component u and the k bias is u) and check the kernel agrees with the unmasked
    oracle, not with a kernel that masks padded keys."""
    B, H, W, heads, D, ws = 1, 16, 16, 1, 64, 14
    qkv, rh, rw, bias = rand_qkv(B, H, W, heads, D, ws, dtype=torch.float32, seed=5)
    C = heads * D
    u = torch.randn(C, generator=torch.Generator().manual_seed(8)).to(DEVICE)
    u = 6.0 * u / u.norm()
    qkv[..., :C] += u
    bias[C:2 * C] = u  # q . k_pad * scale ~ 36/8 for every query: padded keys carry real weight
    out = sam_attention(qkv, rh, rw, heads, ws, qkv_bias=bias, backend="triton")
    assert last_backend("sam_attention") == "triton"
    unmasked = sam_attention_ref(qkv.double().cpu(), rh.double().cpu(), rw.double().cpu(), heads, ws,
                                 bias.double().cpu())
    win = torch.zeros(B, 28, 28, 3 * C, dtype=torch.float64)
    win[:, :H, :W] = qkv.double().cpu()
    masked = _masked_window_attention(win, rh.double().cpu(), rw.double().cpu(), heads, ws, H, W)
    got = out.double().cpu()
    assert max_err(got, unmasked) < 1e-4
    assert max_err(got, masked) > 100 * max_err(got, unmasked) and max_err(got, masked) > 1e-2
    # and the padded tokens really come from qkv_bias: changing only the v bias changes edge outputs
    bias2 = bias.clone()
    bias2[2 * C:] += 1.0
    out2 = sam_attention(qkv, rh, rw, heads, ws, qkv_bias=bias2, backend="triton")
    assert max_err(out2[:, 14:, :], out[:, 14:, :]) > 1e-2  # rows in windows that hold padding
    torch.testing.assert_close(out2[:, :14, :14], out[:, :14, :14], rtol=0, atol=0)  # the full window


def _masked_window_attention(win_map, rh, rw, heads, ws, H, W):
    """Window attention where keys outside the image get -inf (the behaviour upstream does NOT have)."""
    B, Hp, Wp, C3 = win_map.shape
    C = C3 // 3
    D = C // heads
    valid = torch.zeros(Hp, Wp, dtype=torch.bool)
    valid[:H, :W] = True
    out = torch.empty(B, Hp, Wp, C, dtype=torch.float64)
    idx = torch.arange(ws)
    Rh = rh[idx[:, None] - idx[None, :] + ws - 1]
    Rw = rw[idx[:, None] - idx[None, :] + ws - 1]
    for r in range(0, Hp, ws):
        for c in range(0, Wp, ws):
            x = win_map[:, r:r + ws, c:c + ws].reshape(B, ws * ws, 3, heads, D).permute(2, 0, 3, 1, 4)
            q, k, v = x[0], x[1], x[2]
            rq = q.reshape(B, heads, ws, ws, D)
            bias = (torch.einsum("bnhwc,hkc->bnhwk", rq, Rh)[..., :, None]
                    + torch.einsum("bnhwc,wkc->bnhwk", rq, Rw)[..., None, :]).reshape(B, heads, ws * ws, ws * ws)
            keep = valid[r:r + ws, c:c + ws].reshape(-1)
            bias = bias.masked_fill(~keep, float("-inf"))
            o = torch.softmax(q @ k.transpose(-1, -2) * D ** -0.5 + bias, -1) @ v
            out[:, r:r + ws, c:c + ws] = o.permute(0, 2, 1, 3).reshape(B, ws, ws, C)
    return out[:, :H, :W]


# ------------------------------------------------------------------------------------------------ dispatch

@pytest.mark.interpreter
def test_backends_direct_and_auto():
    qkv, rh, rw, bias = rand_qkv(2, 6, 7, 2, 32, 0, dtype=torch.float32, seed=9)
    o_t = sam_attention(qkv, rh, rw, 2, 0, backend="triton")
    assert last_backend("sam_attention") == "triton"
    o_r = sam_attention(qkv, rh, rw, 2, 0, backend="torch")
    assert last_backend("sam_attention") == "torch"
    o_a = sam_attention(qkv, rh, rw, 2, 0)  # auto: every guard passes here
    assert last_backend("sam_attention") == "triton", last_backend_reason("sam_attention")
    torch.testing.assert_close(o_t, o_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(o_a, o_t, rtol=0, atol=0)


def test_kill_switch(monkeypatch):
    qkv, rh, rw, _ = rand_qkv(1, 4, 4, 1, 16, 0, dtype=torch.float32, seed=2)
    for var in ("DEEPENCODER_DISABLE_SAM_ATTENTION", "DEEPENCODER_DISABLE_TRITON"):
        monkeypatch.setenv(var, "1")
        sam_attention(qkv, rh, rw, 1, 0)
        assert last_backend("sam_attention") == "torch"
        assert var in last_backend_reason("sam_attention")
        monkeypatch.delenv(var)


def test_guards_name_the_problem():
    qkv, rh, rw, bias = rand_qkv(1, 16, 16, 1, 16, 14, dtype=torch.float32, seed=1)
    with pytest.raises(BackendUnavailable, match="dtype torch.float64"):  # the torch backend's oracle dtype
        sam_attention(qkv.double(), rh.double(), rw.double(), 1, 14, bias.double(), backend="triton")
    q48, rh48, rw48, b48 = rand_qkv(1, 4, 4, 1, 48, 0, dtype=torch.float32, seed=1)
    with pytest.raises(BackendUnavailable, match="head dim 48"):
        sam_attention(q48, rh48, rw48, 1, 0, backend="triton")
    o = sam_attention(q48, rh48, rw48, 1, 0)  # auto falls back, visibly
    assert last_backend("sam_attention") == "torch" and "head dim 48" in last_backend_reason("sam_attention")
    assert o.shape == (1, 4, 4, 48)
    big = torch.randn(2, 4, 4, 3 * 32)
    with pytest.raises(BackendUnavailable, match="contiguous"):
        sam_attention(big.transpose(1, 2), *rand_qkv(1, 4, 4, 1, 32, 0, dtype=torch.float32)[1:3], 1, 0,
                      backend="triton")
    with pytest.raises(BackendUnavailable, match="grad"):
        sam_attention(qkv.clone().requires_grad_(), rh, rw, 1, 14, bias, backend="triton")
    wide, rhw, rww, _ = rand_qkv(1, 2, 130, 1, 16, 0, dtype=torch.float32)
    with pytest.raises(BackendUnavailable, match="region side 130"):
        sam_attention(wide, rhw, rww, 1, 0, backend="triton")


def test_validation_errors():
    qkv, rh, rw, bias = rand_qkv(1, 16, 16, 1, 16, 14, dtype=torch.float32, seed=1)
    with pytest.raises(ValueError, match="qkv_bias"):  # 16 is not a multiple of 14: padding needs the bias
        sam_attention(qkv, rh, rw, 1, 14)
    with pytest.raises(ValueError, match="qkv_bias"):
        sam_attention(qkv, rh, rw, 1, 14, backend="triton")
    with pytest.raises(ValueError, match="qkv_bias must be"):
        sam_attention(qkv, rh, rw, 1, 14, bias[:10])
    with pytest.raises(ValueError, match=r"rel_pos_h must be \[2\*14-1, D\] = \[27, 16\]"):
        sam_attention(qkv, rh[:-1], rw, 1, 14, bias)
    with pytest.raises(ValueError, match=r"rel_pos_w must be \[2\*16-1, D\]"):  # global needs L = grid side
        sam_attention(qkv, torch.randn(31, 16), rw, 1, 0)
    with pytest.raises(ValueError, match="not 3\\*num_heads\\*D"):
        sam_attention(qkv, rh, rw, 5, 14, bias)
    with pytest.raises(TypeError, match="rel_pos_h dtype float64 != qkv dtype float32"):
        sam_attention(qkv, rh.double(), rw, 1, 14, bias)
    with pytest.raises(ValueError, match="qkv must be"):
        sam_attention(qkv[0], rh, rw, 1, 14, bias)
    # no padding (28 = 2 x 14): no bias needed
    q28, rh28, rw28, _ = rand_qkv(1, 28, 14, 1, 16, 14, dtype=torch.float32)
    sam_attention(q28, rh28, rw28, 1, 14, backend="torch")


BAD_ARGS = [
    # (id, argument index -> replacement, error type, message)
    ("qkv-int", lambda a: a.__setitem__(0, a[0].int()), TypeError, "qkv has dtype int32"),
    ("all-int", lambda a: a.__setitem__(slice(0, 3), [t.long() for t in a[:3]]), TypeError, "qkv has dtype int64"),
    ("rel_pos_h-meta", lambda a: a.__setitem__(1, a[1].to("meta")), ValueError, "rel_pos_h on meta but qkv on"),
    ("rel_pos_w-int", lambda a: a.__setitem__(2, a[2].int()), TypeError, "rel_pos_w has dtype int32"),
    ("qkv_bias-meta", lambda a: a.__setitem__(3, a[3].to("meta")), ValueError, "qkv_bias on meta"),
    ("qkv_bias-int", lambda a: a.__setitem__(3, a[3].int()), TypeError, "qkv_bias has dtype int32"),
    ("qkv_bias-list", lambda a: a.__setitem__(3, a[3].tolist()), TypeError, "qkv_bias must be a torch.Tensor"),
    ("qkv-complex", lambda a: a.__setitem__(0, a[0].to(torch.complex64)), TypeError, "qkv has dtype complex64"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.parametrize("case,mutate,exc,match", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_every_tensor_argument_is_checked_on_every_backend(case, mutate, exc, match, backend):
    """Device, dtype and type of each tensor, before any backend runs (the torch one too)."""
    args = rand_qkv(1, 16, 16, 1, 16, 14, dtype=torch.float32, seed=5)
    mutate(args)
    qkv, rh, rw, bias = args
    with pytest.raises(exc, match=match):
        sam_attention(qkv, rh, rw, 1, 14, qkv_bias=bias, backend=backend)


def test_scale_and_direct_custom_op_calls_are_checked():
    qkv, rh, rw, bias = rand_qkv(1, 4, 4, 1, 16, 0, dtype=torch.float32, seed=6)
    with pytest.raises(ValueError, match="scale must be finite"):
        sam_attention(qkv, rh, rw, 1, 0, scale=float("nan"), backend="torch")
    # torch.ops.deepencoder.sam_attention is public too: it checks before launching
    with pytest.raises(TypeError, match="rel_pos_w has dtype int32"):
        torch.ops.deepencoder.sam_attention(qkv, rh, rw.int(), 1, 0, None, 0.25)
    with pytest.raises(TypeError, match="Triton kernel takes qkv in float32, float16 or bfloat16, got float64"):
        torch.ops.deepencoder.sam_attention(qkv.double(), rh.double(), rw.double(), 1, 0, None, 0.25)


def test_pick_config_for_real_shapes():
    pick = tri.pick_config
    assert pick(0, 64, 64, 8, 12) == tri.SamAttnConfig(128, 64, 8, 2)  # Base global, batch 8
    assert pick(0, 32, 32, 1, 12) == tri.SamAttnConfig(64, 64, 4, 2)  # Tiny, 1 image: 96 programs of 128
    assert pick(0, 80, 80, 8, 12) == tri.SamAttnConfig(64, 128, 8, 2)  # Large: one 128-wide key row
    assert pick(14, 64, 64, 8, 12) == tri.SamAttnConfig(128, 16, 8, 3)
    for G in (32, 40, 64, 80):
        c = pick(0, G, G, 8, 12)
        assert c in tri.CONFIGS["global"] and tri.derived_constexprs(c, G)["N_CHUNKS"] == 1


def test_triton36_keeps_the_sm80_spilling_configs_off_ampere(monkeypatch):
    """Triton 3.6 spills 16 B on sm_80 in the 128-row 8-warp configs (3.7-3.9 do not; the AOT reports):
    under it those run on Hopper only, and Ampere picks spill-free ones for every real shape."""
    M128W, M128G, M64G128 = tri.SamAttnConfig(128, 16, 8, 3), tri.SamAttnConfig(128, 64, 8, 2), \
        tri.SamAttnConfig(64, 128, 8, 2)
    assert tri.hopper_only((3, 9)) == tri.hopper_only((3, 7)) == {M64G128}
    assert tri.hopper_only((3, 6)) == {M64G128, M128W, M128G}
    monkeypatch.setattr(tri, "_excluded_here", lambda: tri.hopper_only((3, 6)))  # an A100 under Triton 3.6
    assert tri.pick_config(14, 64, 64, 8, 12) == tri.SamAttnConfig(64, 16, 4, 3)
    assert tri.pick_config(0, 64, 64, 8, 12) == tri.SamAttnConfig(64, 64, 4, 2)
    assert tri.pick_config(0, 80, 80, 8, 12) == tri.SamAttnConfig(32, 128, 4, 2)
    for G in (32, 40, 64, 80):
        assert tri.pick_config(0, G, G, 8, 12) not in tri.hopper_only((3, 6))


def test_aot_specs_cover_every_config_and_argument():
    specs = tri.aot_specs()
    n_cfg = len(tri.CONFIGS["window"]) + len(tri.CONFIGS["global"])
    assert len(specs) == 2 * n_cfg and len({s["name"] for s in specs}) == len(specs)
    args = tri._sam_attention_fwd_kernel.arg_names
    for s in specs:
        assert set(s["signature"]) == set(args)
        assert {k for k, v in s["signature"].items() if v == "constexpr"} == set(s["constexprs"])
        assert s["dtype"] in ("fp16", "bf16") and s["signature"]["QKV"] == "*" + s["dtype"]
        assert s["flops"] > 0 and s["bytes"] > 0 and s["op"] == "sam_attention"
    g = [s for s in specs if "global" in s["name"]][0]
    assert g["flops"] == pytest.approx(8 * 12 * (4 * 4096 ** 2 * 64 + 2 * 4096 * 64 * 128))


# ------------------------------------------------------------------------------------------------ custom op

@pytest.mark.interpreter
def test_custom_op_opcheck_and_compile():
    """All of opcheck's default checks (schema, autograd registration, fake tensor, aot dispatch with
    dynamic shapes) on tiny global and padded-window inputs; torch.compile traces the op whole."""
    from deepencoder.kernels.sam_attention.op import _sam_attention_op

    qkv, rh, rw, _ = rand_qkv(1, 4, 5, 1, 16, 0, dtype=torch.float32, seed=21)
    torch.library.opcheck(_sam_attention_op, (qkv, rh, rw, 1, 0, None, 0.25))
    qkv_w, rh_w, rw_w, b_w = rand_qkv(1, 4, 5, 1, 16, 3, dtype=torch.float32, seed=22)
    torch.library.opcheck(_sam_attention_op, (qkv_w, rh_w, rw_w, 1, 3, b_w, 0.25))
    f = torch.compile(lambda a, b, c, d: sam_attention(a, b, c, 1, 3, qkv_bias=d, backend="triton"),
                      backend="aot_eager", fullgraph=True)
    got = f(qkv_w, rh_w, rw_w, b_w)
    torch.testing.assert_close(got, sam_attention_ref(qkv_w, rh_w, rw_w, 1, 3, b_w), rtol=1e-5, atol=1e-5)

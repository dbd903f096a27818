"""Fused 16x compressor (neck + net_2 + net_3) against upstream's math (SAMEncoder.compress) and F.conv2d.

Interpreter budget: real channel counts (768/256/512/1024) only at tiny grids; the broad parametrisation
uses reduced channel counts with the same structure.
"""

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from deepencoder.kernels import BackendUnavailable, last_backend, last_backend_reason
from deepencoder.kernels._common import compressor_grids, token_grid
from deepencoder.kernels.compressor import (
    compressor,
    compressor_ref,
    conv2d_nhwc,
    conv2d_nhwc_ref,
    layer_norm2d_ref,
)
from deepencoder.kernels.compressor.op import _compressor_op, _compressor_out_op, _conv2d_nhwc_op
from deepencoder.kernels.compressor.reference import out_size
from deepencoder.kernels.compressor.triton import (
    CONFIGS,
    LN_STAGES,
    STAGES,
    aot_specs,
    compressor_fwd,
    conv2d_nhwc_fwd,
)

from deepencoder.config import SAMConfig
from deepencoder.reference import SAMEncoder
from tests.conftest import DEVICE, assert_same_dtype_rule, max_err, poison

REAL = (768, 256, 512, 1024)  # Cin, C1, C3, C4 of DeepSeek-OCR
SMALL = (64, 32, 48, 64)  # same structure, interpreter-cheap (C3=48: a partial N tile)
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_sam(chans, seed=0):
    """A SAMEncoder (no blocks) whose neck/net_2/net_3 carry random weights and random LN affines."""
    cin, c1, c3, c4 = chans
    sam = SAMEncoder(SAMConfig(img_size=64, embed_dim=cin, depth=0, global_attn_indexes=(), out_chans=c1,
                               net2_chans=c3, net3_chans=c4))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for conv in (sam.neck[0], sam.neck[2], sam.net_2, sam.net_3):
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / conv.weight[0].numel() ** 0.5)
        for ln in (sam.neck[1], sam.neck[3]):
            ln.weight.copy_(1 + 0.3 * torch.randn(ln.weight.shape, generator=g))
            ln.bias.copy_(0.3 * torch.randn(ln.bias.shape, generator=g))
    return sam.eval()


def params(sam, dtype, device=DEVICE):
    n = sam.neck
    ts = (n[0].weight, n[1].weight, n[1].bias, n[2].weight, n[3].weight, n[3].bias, sam.net_2.weight,
          sam.net_3.weight)
    return [t.detach().to(device, dtype) for t in ts]


def upstream_tokens(sam, x, dtype):
    """SAMEncoder.compress in ``dtype`` (float64 for the oracle), as tokens ``[B, g*g, C4]``, on the CPU."""
    import copy

    m = copy.deepcopy(sam).to(dtype)
    with torch.no_grad():
        return m.compress(x.cpu().to(dtype)).flatten(2).transpose(1, 2)


def ref64(x, p):
    """compressor_ref in float64 on the CPU (an oracle free of TF32 / device differences)."""
    return compressor_ref(x.cpu().double(), *(t.cpu().double() for t in p))


def rand_x(B, H, W, cin, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, H, W, cin, generator=g)


def grid_out(H, W):
    return token_grid(H), token_grid(W)


def run_triton(x, p, out_mode, c4):
    """Run the Triton backend into a NaN-poisoned buffer: a fresh ``[B, g*g, C4]`` or the right half of a
    ``[B, g*g, 2*C4]`` concat buffer (a strided view). Returns (tokens, full buffer)."""
    B, H, W, _ = x.shape
    gh, gw = grid_out(H, W)
    if out_mode == "view":
        buf = poison(torch.empty(B, gh * gw, 2 * c4, device=x.device, dtype=x.dtype))
        out = buf[..., c4:]
    else:
        buf = out = poison(torch.empty(B, gh * gw, c4, device=x.device, dtype=x.dtype))
    y = compressor(x, *p, eps=1e-6, out=out, backend="triton")
    assert last_backend("compressor") == "triton"
    assert y.data_ptr() == out.data_ptr() and y.shape == (B, gh * gw, c4) and y.dtype == x.dtype
    if out_mode == "view":
        assert torch.isnan(buf[..., :c4].float()).all(), "the kernel wrote outside its half of the buffer"
    return y, buf


def check_chain(chans, B, H, W, dt, out_mode, seed):
    dtype = DT[dt]
    sam = make_sam(chans, seed)
    x = rand_x(B, H, W, chans[0], seed + 1)
    y, _ = run_triton(x.to(DEVICE, dtype), params(sam, dtype), out_mode, chans[3])
    ref64 = upstream_tokens(sam, x, torch.float64)
    ref_lp = upstream_tokens(sam, x, dtype)
    assert_same_dtype_rule(y.cpu(), ref_lp, ref64, factor=2.0, atol=1e-5, what=f"compressor {dt}")
    return y, ref_lp, ref64


# ---------------------------------------------------------------------------------------------------
# Single convolutions against F.conv2d (NCHW)
# ---------------------------------------------------------------------------------------------------

CONV_KINDS = {"1x1": (1, 1, 0), "3x3s1p1": (3, 1, 1), "3x3s2p1": (3, 2, 1)}
CONV_CASES = [(kind, B, G, dt) for kind in CONV_KINDS for (B, G, dt) in
              [(1, 5, "fp32"), (2, 8, "bf16"), (2, 9, "fp16"), (1, 12, "bf16")]]


@pytest.mark.interpreter
@pytest.mark.parametrize("kind,B,G,dt", CONV_CASES, ids=[f"{k}-B{b}-G{g}-{d}" for k, b, g, d in CONV_CASES])
def test_conv2d_nhwc_triton_vs_conv2d(kind, B, G, dt):
    k, s, p = CONV_KINDS[kind]
    dtype = DT[dt]
    g = torch.Generator().manual_seed(G * 10 + B)
    cin, cout = 96, 48  # 96: a partial K block at BLOCK_K=64; 48: a partial N tile
    x = torch.randn(B, G, G, cin, generator=g)
    w = torch.randn(cout, cin, k, k, generator=g) / (cin * k * k) ** 0.5
    y = conv2d_nhwc(x.to(DEVICE, dtype), w.to(DEVICE, dtype), s, p, backend="triton")
    assert last_backend("conv2d_nhwc") == "triton"
    # the oracle: F.conv2d on NCHW tensors
    ref64 = F.conv2d(x.double().permute(0, 3, 1, 2), w.double(), stride=s, padding=p).permute(0, 2, 3, 1)
    ref_lp = F.conv2d(x.to(dtype).permute(0, 3, 1, 2).contiguous(), w.to(dtype), stride=s, padding=p)
    ref_lp = ref_lp.permute(0, 2, 3, 1)
    assert y.shape == ref64.shape and y.dtype == dtype and y.is_contiguous()
    assert_same_dtype_rule(y.cpu(), ref_lp, ref64, factor=2.0, atol=1e-5, what=f"conv {kind}")
    y_auto = conv2d_nhwc(x.to(DEVICE, dtype), w.to(DEVICE, dtype), s, p)
    assert last_backend("conv2d_nhwc") == "triton"
    torch.testing.assert_close(y_auto, y, rtol=0, atol=0)
    y_t = conv2d_nhwc(x.to(DEVICE, dtype), w.to(DEVICE, dtype), s, p, backend="torch")
    assert last_backend("conv2d_nhwc") == "torch"
    want_t = conv2d_nhwc_ref(x.to(DEVICE, dtype), w.to(DEVICE, dtype), s, p)
    torch.testing.assert_close(y_t, want_t, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# The whole chain against SAMEncoder.compress
# ---------------------------------------------------------------------------------------------------

# real channel counts, tiny grids (each call ~3-8 s under the interpreter)
REAL_CASES = [(1, 9, "fp32", "new"), (2, 8, "bf16", "view"), (1, 5, "fp16", "view"), (2, 4, "bf16", "new")]


@pytest.mark.interpreter
@pytest.mark.parametrize("B,G,dt,out_mode", REAL_CASES, ids=[f"B{b}-G{g}-{d}-{o}" for b, g, d, o in REAL_CASES])
def test_compressor_real_channels_vs_upstream(B, G, dt, out_mode):
    y, ref_lp, ref64 = check_chain(REAL, B, G, G, dt, out_mode, seed=B * 100 + G)
    g = token_grid(G)
    assert y.shape == (B, g * g, 1024)
    if dt == "bf16":  # fp32 LayerNorm statistics: strictly closer to the fp32 truth than upstream's bf16
        assert max_err(y, ref64) < max_err(ref_lp, ref64)


# reduced channels: broad coverage of grids (odd, even, 1, non-square), batch, dtypes, out modes
SMALL_CASES = [(1, 1, 1, "fp32", "new"), (2, 2, 2, "bf16", "view"), (1, 5, 5, "fp16", "new"),
               (2, 7, 7, "fp32", "view"), (1, 9, 9, "bf16", "new"), (2, 13, 13, "fp16", "view"),
               (1, 16, 16, "bf16", "view"), (2, 10, 10, "fp32", "new"), (1, 6, 11, "bf16", "new"),
               (2, 12, 12, "fp16", "new")]


@pytest.mark.interpreter
@pytest.mark.parametrize("B,H,W,dt,out_mode", SMALL_CASES,
                         ids=[f"B{b}-G{h}" + (f"x{w}" if w != h else "") + f"-{d}-{o}" for b, h, w, d, o in SMALL_CASES])
def test_compressor_small_channels_vs_upstream(B, H, W, dt, out_mode):
    y, _, _ = check_chain(SMALL, B, H, W, dt, out_mode, seed=B * 1000 + H * 10 + W)
    gh, gw = grid_out(H, W)
    assert y.shape == (B, gh * gw, SMALL[3])


@pytest.mark.parametrize("G,g", [(64, 16), (40, 10), (80, 20), (32, 8), (9, 3), (5, 2), (1, 1), (2, 1)])
def test_output_grid_follows_pytorch(G, g):
    """kernels._common.token_grid (the one place g = ceil(G/4) is computed) against F.conv2d's own sizes."""
    assert token_grid(G) == g == math.ceil(G / 4)
    assert compressor_grids(G) == (out_size(G, 3, 2, 1), g)
    x = torch.empty(1, 1, G, G)
    y = F.conv2d(F.conv2d(x, torch.empty(1, 1, 3, 3), stride=2, padding=1), torch.empty(1, 1, 3, 3), stride=2,
                 padding=1)
    assert y.shape[-1] == g


# ---------------------------------------------------------------------------------------------------
# Every shipped config, forced
# ---------------------------------------------------------------------------------------------------

CFG_CASES = [(arch, stage, i) for arch in CONFIGS for stage in STAGES for i in range(len(CONFIGS[arch][stage]))]


@pytest.mark.interpreter
@pytest.mark.parametrize("arch,stage,i", CFG_CASES,
                         ids=[f"{a}-{s}-{CONFIGS[a][s][i].label()}" for a, s, i in CFG_CASES])
def test_every_config(arch, stage, i):
    """Each config forced on its own stage kind. LayerNorm stages at the real width (256 channels: the
    full-row tile); the others at reduced widths with partial K and N tiles. M = 162 spans a partial
    second M tile for every BLOCK_M in the lists."""
    cfg = CONFIGS[arch][stage][i]
    k, s, p = {"neck0": (1, 1, 0), "neck2": (3, 1, 1), "net2": (3, 2, 1), "net3": (3, 2, 1)}[stage]
    cin, cout, G = {"neck0": (768, 256, 9), "neck2": (256, 256, 9), "net2": (96, 320, 17),
                    "net3": (160, 272, 17)}[stage]
    B, dtype = 2, (torch.float32 if arch == "fp32" else torch.bfloat16)
    gen = torch.Generator().manual_seed(len(stage) * 7 + i)
    x = torch.randn(B, G, G, cin, generator=gen)
    w = torch.randn(cout, cin, k, k, generator=gen) / (cin * k * k) ** 0.5
    lnw = 1 + 0.3 * torch.randn(cout, generator=gen)
    lnb = 0.3 * torch.randn(cout, generator=gen)
    oh = out_size(G, k, s, p)
    assert B * oh * oh > cfg.block_m
    y = poison(torch.empty(B, oh, oh, cout, device=DEVICE, dtype=dtype))
    ln = (lnw.to(DEVICE, dtype), lnb.to(DEVICE, dtype)) if stage in LN_STAGES else None
    conv2d_nhwc_fwd(x.to(DEVICE, dtype), w.to(DEVICE, dtype), s, p, y=y, ln=ln, eps=1e-6, config=cfg)

    def ref(dt_):
        h = F.conv2d(x.to(dt_).permute(0, 3, 1, 2), w.to(dt_), stride=s, padding=p)
        if ln is not None:
            h = layer_norm2d_ref(h, lnw.to(dt_), lnb.to(dt_), 1e-6)
        return h.permute(0, 2, 3, 1)

    assert_same_dtype_rule(y.cpu(), ref(dtype), ref(torch.float64), factor=2.0, atol=1e-5,
                           what=f"{arch}/{stage}/{cfg.label()}")


@pytest.mark.interpreter
def test_chain_with_sm80_configs_real_channels():
    """The Ampere list's shipped configs, chained at the real widths (the interpreter default is sm90)."""
    sam = make_sam(REAL, seed=5)
    x = rand_x(1, 5, 5, 768, 6)
    dtype = torch.bfloat16
    out = poison(torch.empty(1, 4, 1024, device=DEVICE, dtype=dtype))
    cfgs = {s: CONFIGS["sm80"][s][0] for s in STAGES}
    compressor_fwd(x.to(DEVICE, dtype), *params(sam, dtype), 1e-6, out, configs=cfgs)
    assert_same_dtype_rule(out.cpu(), upstream_tokens(sam, x, dtype), upstream_tokens(sam, x, torch.float64))


# ---------------------------------------------------------------------------------------------------
# LayerNorm2d statistics: float32 in the kernel, activation dtype upstream
# ---------------------------------------------------------------------------------------------------


@pytest.mark.interpreter
def test_ln_fp32_statistics_beat_upstream_bf16():
    """neck.0 + neck.1 (conv1x1 768->256 + LayerNorm2d) in bf16: error against float64.

    The kernel normalises its float32 accumulator; upstream rounds the conv output to bf16 and computes
    mean/variance/normalisation in bf16. The kernel's error must be below upstream's, and no worse than
    the torch reference with float32 statistics (``ln_fp32=True``)."""
    sam = make_sam(REAL, seed=9)
    x = rand_x(2, 8, 8, 768, 10)
    w, lnw, lnb = sam.neck[0].weight.detach(), sam.neck[1].weight.detach(), sam.neck[1].bias.detach()

    def torch_stage(dt_, ln_fp32=False):
        h = F.conv2d(x.to(dt_).permute(0, 3, 1, 2), w.to(dt_))
        return layer_norm2d_ref(h, lnw.to(dt_), lnb.to(dt_), 1e-6, ln_fp32=ln_fp32).permute(0, 2, 3, 1)

    bf = torch.bfloat16
    y = conv2d_nhwc_fwd(x.to(DEVICE, bf), w.to(DEVICE, bf), 1, 0, ln=(lnw.to(DEVICE, bf), lnb.to(DEVICE, bf)))
    ref64 = torch_stage(torch.float64)
    e_kernel = max_err(y.cpu(), ref64)
    e_upstream = max_err(torch_stage(bf), ref64)
    e_ref_fp32 = max_err(torch_stage(bf, ln_fp32=True), ref64)
    assert torch.isfinite(y.float()).all()
    assert e_kernel < e_upstream, (e_kernel, e_upstream)
    assert e_kernel <= e_ref_fp32 * 1.01 + 1e-6, (e_kernel, e_ref_fp32)


# ---------------------------------------------------------------------------------------------------
# Reference, dispatch, guards, errors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dt", ["fp32", "bf16"])
def test_reference_is_upstream_bit_for_bit(dt):
    dtype = DT[dt]
    sam = make_sam(REAL, seed=3)
    x = rand_x(2, 9, 9, 768, 4).to(dtype)
    want = upstream_tokens(sam, x, dtype)
    p = params(sam, dtype, device="cpu")
    torch.testing.assert_close(compressor_ref(x, *p), want, rtol=0, atol=0)
    y = compressor(x.to(DEVICE), *params(sam, dtype), backend="torch")
    assert last_backend("compressor") == "torch" and y.is_contiguous()
    torch.testing.assert_close(y, compressor_ref(x.to(DEVICE), *params(sam, dtype)), rtol=0, atol=0)
    fp32_stats = compressor_ref(x, *p, ln_fp32=True)
    if dtype == torch.float32:
        torch.testing.assert_close(fp32_stats, want, rtol=0, atol=0)
    else:
        assert not torch.equal(fp32_stats, want)


@pytest.mark.interpreter
def test_auto_picks_triton_and_matches_direct_call():
    sam = make_sam(SMALL, seed=11)
    x = rand_x(2, 6, 6, SMALL[0], 12).to(DEVICE)
    p = params(sam, torch.float32)
    y_tri = compressor(x, *p, backend="triton")
    assert last_backend("compressor") == "triton"
    y_auto = compressor(x, *p)
    assert last_backend("compressor") == "triton", last_backend_reason("compressor")
    torch.testing.assert_close(y_auto, y_tri, rtol=0, atol=0)
    y_torch = compressor(x, *p, backend="torch")
    assert last_backend("compressor") == "torch"
    torch.testing.assert_close(y_torch, compressor_ref(x, *p), rtol=0, atol=0)
    torch.testing.assert_close(y_tri.cpu().double(), ref64(x, p), rtol=1e-4, atol=1e-4)


@pytest.mark.interpreter
@pytest.mark.parametrize("var", ["DEEPENCODER_DISABLE_COMPRESSOR", "DEEPENCODER_DISABLE_TRITON"])
def test_kill_switch(monkeypatch, var):
    sam = make_sam(SMALL, seed=13)
    x = rand_x(1, 4, 4, SMALL[0], 14).to(DEVICE)
    p = params(sam, torch.float32)
    monkeypatch.setenv(var, "1")
    y = compressor(x, *p)
    assert last_backend("compressor") == "torch" and var in last_backend_reason("compressor")
    torch.testing.assert_close(y, compressor_ref(x, *p), rtol=0, atol=0)
    y_t = compressor(x, *p, backend="triton")  # an explicit request still runs the kernel
    assert last_backend("compressor") == "triton"
    torch.testing.assert_close(y_t.cpu().double(), ref64(x, p), rtol=1e-4, atol=1e-4)


def _small_inputs(chans=SMALL, G=4, dtype=torch.float32, device=DEVICE):
    sam = make_sam(chans, seed=21)
    return rand_x(1, G, G, chans[0], 22).to(device, dtype), params(sam, dtype, device=device)


@pytest.mark.parametrize("case,match", [
    ("cin40", "multiples of 16"), ("c1_272", "whole channel row"), ("noncontig", "contiguous"),
    ("out_stride", "stride 1"), ("meta", "needs CUDA"),
], ids=["cin40", "c1_272", "noncontig", "out_stride", "meta"])
def test_unsupported_inputs_raise_for_triton_and_fall_back_for_auto(case, match):
    out = None
    if case == "cin40":
        x, p = _small_inputs((40, 32, 48, 64))
    elif case == "c1_272":
        x, p = _small_inputs((64, 272, 48, 64))
    elif case == "noncontig":
        x, p = _small_inputs()
        x = x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)  # NCHW memory, NHWC view
    elif case == "out_stride":
        x, p = _small_inputs()
        out = torch.empty(1, 1, 128, device=DEVICE)[..., ::2]  # [1, 1, 64], last-dim stride 2
    else:
        x, p = _small_inputs(device="meta")
    with pytest.raises(BackendUnavailable, match=match):
        compressor(x, *p, out=out, backend="triton")
    if case != "meta":
        y = compressor(x, *p, out=out)
        assert last_backend("compressor") == "torch" and match.split()[0] in last_backend_reason("compressor")
        torch.testing.assert_close(y, compressor_ref(x, *p), rtol=0, atol=0)


def test_malformed_calls_raise_clear_errors():
    x, p = _small_inputs()
    with pytest.raises(ValueError, match=r"out must be \[1, 1, 64\]"):
        compressor(x, *p, out=torch.empty(1, 4, 64, device=DEVICE))
    with pytest.raises(TypeError, match="out dtype"):
        compressor(x, *p, out=torch.empty(1, 1, 64, device=DEVICE, dtype=torch.float16))
    with pytest.raises(ValueError, match="out on meta"):
        compressor(x, *p, out=torch.empty(1, 1, 64, device="meta"))
    bad = list(p)
    bad[3] = bad[3][:, :16]
    with pytest.raises(ValueError, match="neck2_w must be"):
        compressor(x, *bad)
    bad = list(p)
    bad[1] = bad[1].half()
    with pytest.raises(TypeError, match="ln1_w dtype"):
        compressor(x, *bad)
    with pytest.raises(ValueError, match="must be \\[B, G, G, Cin\\]"):
        compressor(x[0], *p)
    with pytest.raises(ValueError, match="unknown backend"):
        compressor(x, *p, backend="cuda")
    with pytest.raises(BackendUnavailable, match="multiples of 16"):
        conv2d_nhwc(torch.randn(1, 4, 4, 24, device=DEVICE), torch.randn(16, 24, 3, 3, device=DEVICE), 1, 1,
                    backend="triton")
    with pytest.raises(ValueError, match="conv2d_nhwc"):
        conv2d_nhwc(x, torch.randn(16, 8, 3, 3, device=DEVICE))


PARAM_NAMES = ("neck0_w", "ln1_w", "ln1_b", "neck2_w", "ln2_w", "ln2_b", "net2_w", "net3_w")


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.parametrize("i", range(len(PARAM_NAMES)), ids=PARAM_NAMES)
def test_every_weight_is_checked_for_device_and_dtype_on_every_backend(i, backend):
    """One weight on ``meta`` returned uninitialised memory, an integer one computed garbage: both now
    raise before any backend runs, naming the weight."""
    x, p = _small_inputs()
    bad = list(p)
    bad[i] = p[i].to("meta")
    with pytest.raises(ValueError, match=f"compressor: {PARAM_NAMES[i]} on meta but x on"):
        compressor(x, *bad, backend=backend)
    bad[i] = p[i].round().int()
    with pytest.raises(TypeError, match=f"compressor: {PARAM_NAMES[i]} has dtype int32"):
        compressor(x, *bad, backend=backend)


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
def test_input_out_and_eps_are_checked_on_every_backend(backend):
    x, p = _small_inputs()
    with pytest.raises(TypeError, match="x has dtype int64"):
        compressor(x.long(), *p, backend=backend)
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        compressor(x, *p, out=[0.0] * 64, backend=backend)
    with pytest.raises(ValueError, match="eps must be finite"):
        compressor(x, *p, eps=float("nan"), backend=backend)
    with pytest.raises(ValueError, match="w on meta but x on"):
        conv2d_nhwc(x, torch.randn(16, 32, 3, 3, device="meta"), 1, 1, backend=backend)
    with pytest.raises(TypeError, match="conv2d_nhwc: x has dtype int32"):
        conv2d_nhwc(x.int(), torch.randn(16, 32, 3, 3, device=DEVICE), 1, 1, backend=backend)


def test_direct_custom_op_calls_are_checked():
    x, p = _small_inputs()
    bad = list(p)
    bad[4] = p[4].long()
    with pytest.raises(TypeError, match="ln2_w has dtype int64"):
        torch.ops.deepencoder.compressor(x, *bad, 1e-6)
    with pytest.raises(TypeError, match="Triton kernel takes x in float32, float16 or bfloat16, got float64"):
        torch.ops.deepencoder.compressor(x.double(), *(t.double() for t in p), 1e-6)
    with pytest.raises(ValueError, match="out must be"):
        torch.ops.deepencoder.compressor_out(x, *p, 1e-6, torch.empty(1, 2, 64, device=DEVICE))


def test_float64_runs_on_the_torch_backend_only():
    x, p = _small_inputs(dtype=torch.float64)
    y = compressor(x, *p)
    assert last_backend("compressor") == "torch" and "float64" in last_backend_reason("compressor")
    torch.testing.assert_close(y, compressor_ref(x, *p).contiguous(), rtol=0, atol=0)
    with pytest.raises(BackendUnavailable, match="dtype torch.float64"):
        compressor(x, *p, backend="triton")


# ---------------------------------------------------------------------------------------------------
# Custom ops: opcheck, torch.compile with the in-place concat
# ---------------------------------------------------------------------------------------------------

TINY = (32, 16, 16, 32)


@pytest.mark.interpreter
def test_custom_ops_opcheck():
    x, p = _small_inputs(TINY, G=5)
    torch.library.opcheck(_compressor_op, (x, *p, 1e-6))
    buf = poison(torch.empty(1, 4, 64, device=DEVICE))
    torch.library.opcheck(_compressor_out_op, (x, *p, 1e-6, buf[..., 32:]))
    w = torch.randn(16, 32, 3, 3, generator=torch.Generator().manual_seed(1)).to(DEVICE) / 17
    torch.library.opcheck(_conv2d_nhwc_op, (x, w, 2, 1))


@pytest.mark.interpreter
def test_torch_compile_with_concat_buffer():
    x, p = _small_inputs(TINY, G=5)

    def f(x, *p):
        buf = torch.zeros(x.shape[0], 4, 64, device=x.device, dtype=x.dtype)
        compressor(x, *p, out=buf[..., 32:], backend="triton")
        return buf

    got = torch.compile(f, backend="aot_eager", fullgraph=True)(x, *p)
    torch.testing.assert_close(got[..., 32:].cpu().double(), ref64(x, p), rtol=1e-4, atol=1e-4)
    assert (got[..., :32] == 0).all()


# ---------------------------------------------------------------------------------------------------
# Ahead-of-time specs
# ---------------------------------------------------------------------------------------------------


def test_aot_specs_structure():
    specs = aot_specs()
    n_cfg = sum(len(v) for a in ("sm90", "sm80") for v in CONFIGS[a].values())
    assert len(specs) == 2 * n_cfg and len({s["name"] for s in specs}) == len(specs)
    for s in specs:
        assert set(s) == {"op", "name", "fn", "signature", "constexprs", "num_warps", "num_stages", "dtype",
                          "flops", "bytes"}
        assert s["op"] == "compressor" and s["dtype"] in ("fp16", "bf16")
        assert list(s["signature"]) == list(s["fn"].arg_names)
        assert {k for k, v in s["signature"].items() if v == "constexpr"} == set(s["constexprs"])
        assert all(v == f"*{s['dtype']}" for k, v in s["signature"].items() if k in ("X", "WP", "Y"))
        assert s["flops"] > 0 and s["bytes"] > 0
        assert s["constexprs"]["BLOCK_N"] >= (s["constexprs"]["COUT"] if s["constexprs"]["HAS_LN"] else 16)


_AOT_SCRIPT = r"""
import re
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from deepencoder.kernels.compressor.triton import aot_specs
specs = aot_specs()
for cc, arch, inst in ((90, "sm90", "wgmma.mma_async"), (80, "sm80", "mma.sync")):
    s = next(s for s in specs if f"-net3-{arch}-cfg0-" in s["name"] and s["dtype"] == "bf16")
    k = triton.compile(ASTSource(fn=s["fn"], signature=s["signature"], constexprs=s["constexprs"]),
                       target=GPUTarget("cuda", cc, 32),
                       options={"num_warps": s["num_warps"], "num_stages": s["num_stages"]})
    ptx = k.asm["ptx"]
    assert inst in ptx, (cc, "no " + inst)
    assert "cp.async.cg.shared.global" in ptx, (cc, "no 16-byte cp.async")
    assert re.search(r"st\.global\.v4", ptx), (cc, "no 16-byte stores")
print("ok")
"""


def test_aot_compile_emits_tensor_core_mma():
    """The shipped net3 bf16 configs compile ahead of time (no GPU) to wgmma on sm_90 / mma on sm_80,
    with 16-byte cp.async loads. In a subprocess: under TRITON_INTERPRET=1 kernels are not compilable."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    r = subprocess.run([sys.executable, "-c", _AOT_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-3000:]


@pytest.mark.interpreter
def test_packed_weight_cache_sees_in_place_updates():
    x, p = _small_inputs(TINY, G=5)
    y0 = compressor(x, *p, backend="triton")
    with torch.no_grad():
        p[7].mul_(-0.5)  # net3_w updated in place: the cached packed copy must not be reused
    y1 = compressor(x, *p, backend="triton")
    torch.testing.assert_close(y1, y0 * -0.5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y1.cpu().double(), ref64(x, p), rtol=1e-4, atol=1e-4)

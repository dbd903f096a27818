"""Residual add + RMSNorm (kernels/add_rmsnorm) against upstream's Qwen2RMSNorm sequence.

The kernel rounds at the same points as upstream (``s`` to the activation dtype; the normalised row to the
activation dtype; the weight product), so besides the same-dtype rule against float64, ``s`` must equal
torch's ``x + y`` bit for bit and ``h`` may differ from torch's same-dtype result by at most one rounding
step of the activation dtype (the fp32 mean is summed in a different order).
"""

import pytest
import torch
from deepencoder.kernels import BackendUnavailable, last_backend, last_backend_reason
from deepencoder.kernels.add_rmsnorm import add_rmsnorm, add_rmsnorm_ref, rms_norm, rms_norm_ref
from deepencoder.kernels.add_rmsnorm import triton as tri

from tests.conftest import DEVICE, assert_same_dtype_rule, poison

EPS = 1e-6
DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ULP = {torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}

CASES = [((1, 7, 896), "fp32"), ((2, 5, 896), "bf16"), ((3, 13, 200), "fp16"), ((1, 1, 97), "bf16"),
         ((2, 9, 896), "fp16")]


def make(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randn(shape, generator=g, dtype=torch.float64)
    w = 1 + 0.3 * torch.randn(C, generator=g, dtype=torch.float64)
    return x, y, w


def within_one_rounding(a, b, dtype):
    """|a - b| <= one unit in the last place of the activation dtype at |b| (plus fp32 rsqrt slack)."""
    a, b = a.double().cpu(), b.double().cpu()
    return bool(((a - b).abs() <= b.abs() * ULP[dtype] * 1.01 + 1e-6).all())


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,dt", CASES, ids=[f"{'x'.join(map(str, s))}-{d}" for s, d in CASES])
def test_add_rmsnorm_triton(shape, dt):
    dtype = DT[dt]
    x, y, w = make(shape, seed=shape[-1] + shape[1])
    lp = lambda t: t.to(DEVICE, dtype)  # noqa: E731
    s64, h64 = add_rmsnorm_ref(x, y, w, EPS)
    s_t, h_t = add_rmsnorm_ref(lp(x), lp(y), lp(w), EPS)
    s, h = add_rmsnorm(lp(x), lp(y), lp(w), EPS, backend="triton")
    assert last_backend("add_rmsnorm") == "triton"
    assert s.dtype == dtype and h.dtype == dtype and s.shape == x.shape and h.shape == x.shape
    assert torch.equal(s.cpu(), s_t.cpu()), "residual must be torch's x + y exactly"
    assert_same_dtype_rule(h.cpu(), h_t.cpu(), h64, factor=2.0, atol=1e-5, what="rmsnorm")
    assert within_one_rounding(h, h_t, dtype)
    s2, h2 = add_rmsnorm(lp(x), lp(y), lp(w), EPS)  # auto
    assert last_backend("add_rmsnorm") == "triton", last_backend_reason("add_rmsnorm")
    assert torch.equal(h2, h) and torch.equal(s2, s)


@pytest.mark.interpreter
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_rms_norm_plain(dt):
    dtype = DT[dt]
    x, _, w = make((2, 11, 896), seed=3)
    h64 = rms_norm_ref(x, w, EPS)
    h_t = rms_norm_ref(x.to(DEVICE, dtype), w.to(DEVICE, dtype), EPS)
    h = rms_norm(x.to(DEVICE, dtype), w.to(DEVICE, dtype), EPS, backend="triton")
    assert last_backend("rms_norm") == "triton"
    assert_same_dtype_rule(h.cpu(), h_t.cpu(), h64, factor=2.0, atol=1e-5, what="rms_norm")
    assert within_one_rounding(h, h_t, dtype)
    # upstream's module, literally (transformers 4.46.3 Qwen2RMSNorm.forward)
    xs = x.to(DEVICE, dtype)
    hs = xs.to(torch.float32)
    hs = hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + EPS)
    assert within_one_rounding(h, w.to(DEVICE, dtype) * hs.to(dtype), dtype)


@pytest.mark.interpreter
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_launcher_writes_every_element(dt):
    """The launcher into NaN-poisoned buffers: odd row count and width, batch 1, both modes."""
    dtype = DT[dt]
    x, y, w = make((1, 13, 201), seed=8)
    x2, y2, w2 = x.view(-1, 201).to(DEVICE, dtype), y.view(-1, 201).to(DEVICE, dtype), w.to(DEVICE, dtype)
    s_out = poison(torch.empty(13, 201, device=DEVICE, dtype=dtype))
    h_out = poison(torch.empty(13, 201, device=DEVICE, dtype=dtype))
    rb = dtype == torch.bfloat16
    tri.add_rmsnorm_fwd(x2, y2, w2, EPS, s_out, h_out, round_bits=rb)
    s64, h64 = add_rmsnorm_ref(x.view(-1, 201), y.view(-1, 201), w, EPS)
    s_t, h_t = add_rmsnorm_ref(x2, y2, w2, EPS)
    assert torch.equal(s_out.cpu(), s_t.cpu())
    assert_same_dtype_rule(h_out.cpu(), h_t.cpu(), h64, what="add_rmsnorm")
    h_only = poison(torch.empty(13, 201, device=DEVICE, dtype=dtype))
    tri.add_rmsnorm_fwd(x2, None, w2, EPS, None, h_only, round_bits=rb)
    assert_same_dtype_rule(h_only.cpu(), rms_norm_ref(x2, w2, EPS).cpu(), rms_norm_ref(x.view(-1, 201), w, EPS),
                           what="rms_norm")


def test_kill_switch_and_guards(monkeypatch):
    x, y, w = (t.float().to(DEVICE) for t in make((2, 3, 64)))
    for var in ("DEEPENCODER_DISABLE_ADD_RMSNORM", "DEEPENCODER_DISABLE_TRITON"):
        monkeypatch.setenv(var, "1")
        add_rmsnorm(x, y, w, EPS)
        assert last_backend("add_rmsnorm") == "torch" and var in last_backend_reason("add_rmsnorm")
        monkeypatch.delenv(var)
    monkeypatch.setenv("DEEPENCODER_DISABLE_RMS_NORM", "1")
    rms_norm(x, w, EPS)
    assert last_backend("rms_norm") == "torch"
    monkeypatch.delenv("DEEPENCODER_DISABLE_RMS_NORM")
    xt = x.transpose(0, 1)
    with pytest.raises(BackendUnavailable, match="contiguous"):
        add_rmsnorm(xt, xt.clone(), w, EPS, backend="triton")
    add_rmsnorm(xt, xt.clone(), w, EPS)  # auto: visible fallback
    assert last_backend("add_rmsnorm") == "torch" and "contiguous" in last_backend_reason("add_rmsnorm")
    with pytest.raises(BackendUnavailable, match="float64"):
        rms_norm(x.double(), w.double(), EPS, backend="triton")
    with pytest.raises(BackendUnavailable, match="grad"):
        rms_norm(x.clone().requires_grad_(), w, EPS, backend="triton")


def test_validation_errors_are_one_line():
    x, y, w = (t.float().to(DEVICE) for t in make((2, 3, 64)))
    bad = [
        (lambda be: add_rmsnorm(x, y[:, :2], w, EPS, backend=be), ValueError, "differ"),
        (lambda be: add_rmsnorm(x, y.half(), w, EPS, backend=be), TypeError, "y dtype"),
        (lambda be: add_rmsnorm(x, y, w[:10], EPS, backend=be), ValueError, r"weight must be \[64\]"),
        (lambda be: add_rmsnorm(x, y, w.half(), EPS, backend=be), TypeError, "weight dtype"),
        (lambda be: rms_norm(x.int(), w, EPS, backend=be), TypeError, "not a floating"),
        (lambda be: rms_norm(x, w, -1.0, backend=be), ValueError, "eps"),
        (lambda be: rms_norm(x[..., :0], w[:0], EPS, backend=be), ValueError, "C > 0"),
    ]
    for fn, exc, pat in bad:
        for be in ("triton", "torch", "auto"):
            with pytest.raises(exc, match=pat) as e:
                fn(be)
            assert "\n" not in str(e.value)


@pytest.mark.interpreter
def test_custom_ops_opcheck_and_compile():
    from deepencoder.kernels.add_rmsnorm.op import _add_rmsnorm_op, _rms_norm_op

    x, y, w = (t.float().to(DEVICE) for t in make((2, 3, 64), seed=4))
    torch.library.opcheck(_add_rmsnorm_op, (x, y, w, EPS))
    torch.library.opcheck(_rms_norm_op, (x, w, EPS))

    def f(a, b, c):
        s, h = add_rmsnorm(a, b, c, EPS, backend="triton")
        return s, h, rms_norm(s, c, EPS, backend="triton")

    s, h, h2 = torch.compile(f, backend="aot_eager", fullgraph=True)(x, y, w)
    s_r, h_r = add_rmsnorm_ref(x, y, w, EPS)
    torch.testing.assert_close(s, s_r, rtol=0, atol=0)
    torch.testing.assert_close(h, h_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h2, h_r, rtol=1e-5, atol=1e-5)


def test_aot_specs_cover_every_argument():
    specs = tri.aot_specs()
    args = tri._add_rmsnorm_fwd_kernel.arg_names
    assert {s["constexprs"]["HAS_Y"] for s in specs} == {True, False}
    for s in specs:
        assert set(s["signature"]) == set(args) and s["flops"] > 0 and s["bytes"] > 0
        assert {k for k, v in s["signature"].items() if v == "constexpr"} == set(s["constexprs"])

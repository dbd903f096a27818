"""Fused residual + bias + LayerNorm kernel against the reference."""

import pytest
import torch
from deepencoder.kernels import BackendUnavailable, last_backend
from deepencoder.kernels.add_layernorm import add_layernorm, add_layernorm_ref

from tests.conftest import DEVICE, assert_same_dtype_rule

CASES = [((1, 7, 768), True, torch.float32), ((2, 5, 5, 768), True, torch.float16),
         ((3, 17, 1024), False, torch.bfloat16), ((1, 1, 97), True, torch.float32)]


def make(shape, has_bias, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = shape[-1]
    x = torch.randn(shape, generator=g)
    y = torch.randn(shape, generator=g)
    bias = torch.randn(C, generator=g) if has_bias else None
    w = 1 + 0.1 * torch.randn(C, generator=g)
    b = 0.1 * torch.randn(C, generator=g)
    return x, y, bias, w, b


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,has_bias,dtype", CASES,
                         ids=[f"{'x'.join(map(str, s))}-{'bias' if hb else 'nobias'}-{str(d)[6:]}" for s, hb, d in CASES])
def test_add_layernorm_triton(shape, has_bias, dtype):
    x, y, bias, w, b = make(shape, has_bias)
    dev = lambda t: None if t is None else t.to(DEVICE)  # noqa: E731
    s32, h32 = add_layernorm_ref(x.double(), y.double(), None if bias is None else bias.double(), w.double(),
                                 b.double(), 1e-6)
    lp = lambda t: None if t is None else t.to(DEVICE, dtype)  # noqa: E731
    s_t, h_t = add_layernorm_ref(lp(x), lp(y), lp(bias), dev(w), dev(b), 1e-6)
    s, h = add_layernorm(lp(x), lp(y), lp(bias), dev(w), dev(b), 1e-6, backend="triton")
    assert last_backend("add_layernorm") == "triton"
    assert s.dtype == dtype and h.dtype == dtype
    assert_same_dtype_rule(s.cpu(), s_t.cpu(), s32, factor=2.0, atol=1e-5, what="residual")
    assert_same_dtype_rule(h.cpu(), h_t.cpu(), h32, factor=2.0, atol=1e-5, what="layernorm")
    s2, h2 = add_layernorm(lp(x), lp(y), lp(bias), dev(w), dev(b), 1e-6, backend="auto")
    assert last_backend("add_layernorm") == "triton"
    torch.testing.assert_close(h2, h, rtol=0, atol=0)


def test_add_layernorm_kill_switch_and_guards(monkeypatch):
    x, y, bias, w, b = make((2, 3, 64), True)
    monkeypatch.setenv("DEEPENCODER_DISABLE_ADD_LAYERNORM", "1")
    add_layernorm(x.to(DEVICE), y.to(DEVICE), bias.to(DEVICE), w.to(DEVICE), b.to(DEVICE), 1e-6)
    assert last_backend("add_layernorm") == "torch"
    monkeypatch.delenv("DEEPENCODER_DISABLE_ADD_LAYERNORM")
    with pytest.raises(BackendUnavailable, match="contiguous"):
        xt = x.to(DEVICE).transpose(0, 1)
        add_layernorm(xt, xt.clone(), bias.to(DEVICE), w.to(DEVICE), b.to(DEVICE), 1e-6, backend="triton")
    with pytest.raises(ValueError, match="weight must be"):
        add_layernorm(x, y, bias, w[:10], b, 1e-6)


@pytest.mark.interpreter
def test_add_layernorm_custom_op_opcheck_and_compile():
    x, y, bias, w, b = (t.to(DEVICE) for t in make((2, 3, 64), True, seed=4))
    from deepencoder.kernels.add_layernorm.op import _add_layernorm_op

    # all four of opcheck's checks: schema, autograd registration, fake tensor, aot dispatch (dynamic)
    torch.library.opcheck(_add_layernorm_op, (x, y, bias, w, b, 1e-6))
    torch.library.opcheck(_add_layernorm_op, (x, y, None, w, b, 1e-5))
    f = torch.compile(lambda *a: add_layernorm(*a, 1e-6, backend="triton"), backend="aot_eager", fullgraph=True)
    s, h = f(x, y, bias, w, b)
    s_r, h_r = add_layernorm_ref(x, y, bias, w, b, 1e-6)
    torch.testing.assert_close(h, h_r, rtol=1e-5, atol=1e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_add_layernorm_launcher_writes_every_element(dtype):
    """The launcher into NaN-poisoned output buffers, odd row count and width (batch 1)."""
    from deepencoder.kernels.add_layernorm.triton import add_layernorm_fwd

    from tests.conftest import poison

    x, y, bias, w, b = make((1, 13, 200), True, seed=8)
    x2, y2 = x.view(-1, 200).to(DEVICE, dtype), y.view(-1, 200).to(DEVICE, dtype)
    s_out = poison(torch.empty(13, 200, device=DEVICE, dtype=dtype))
    h_out = poison(torch.empty(13, 200, device=DEVICE, dtype=dtype))
    add_layernorm_fwd(x2, y2, bias.to(DEVICE, dtype), w.to(DEVICE), b.to(DEVICE), 1e-6, s_out, h_out)
    s32, h32 = add_layernorm_ref(x.view(-1, 200).double(), y.view(-1, 200).double(), bias.double(), w.double(),
                                 b.double(), 1e-6)
    s_t, h_t = add_layernorm_ref(x2.cpu(), y2.cpu(), bias.to(dtype), w, b, 1e-6)
    assert_same_dtype_rule(s_out.cpu(), s_t, s32, what="residual")
    assert_same_dtype_rule(h_out.cpu(), h_t, h32, what="layernorm")


# (id, argument index, replacement, error type, message); arguments: x, y, bias, weight, ln_bias
BAD_ARGS = [
    ("bias-meta", 2, lambda t: t.to("meta"), ValueError, "bias on meta but x on"),  # returned NaN before
    ("weight-meta", 3, lambda t: t.to("meta"), ValueError, "weight on meta"),
    ("ln_bias-meta", 4, lambda t: t.to("meta"), ValueError, "ln_bias on meta"),
    ("x-int", 0, lambda t: t.long(), TypeError, "x has dtype int64"),  # returned integers before
    ("xy-int", None, None, TypeError, "x has dtype int32"),
    ("weight-int", 3, lambda t: t.int(), TypeError, "weight has dtype int32"),
    ("y-fp16", 1, lambda t: t.half(), TypeError, "y dtype float16 != x dtype float32"),
    ("bias-fp16", 2, lambda t: t.half(), TypeError, "bias dtype float16 != x dtype float32"),
    ("ln_bias-ndarray", 4, lambda t: t.numpy(), TypeError, "ln_bias must be a torch.Tensor, got ndarray"),
    ("x-bool", 0, lambda t: t > 0, TypeError, "x has dtype bool"),
]


@pytest.mark.parametrize("backend", ["auto", "torch", "triton"])
@pytest.mark.parametrize("case,idx,change,exc,match", BAD_ARGS, ids=[c[0] for c in BAD_ARGS])
def test_every_tensor_argument_is_checked_on_every_backend(case, idx, change, exc, match, backend):
    args = list(make((2, 3, 64), True, seed=6))
    if idx is None:
        args[0], args[1] = args[0].int(), args[1].int()
    else:
        args[idx] = change(args[idx])
    with pytest.raises(exc, match=match):
        add_layernorm(*args, 1e-6, backend=backend)


def test_eps_and_direct_custom_op_calls_are_checked():
    x, y, bias, w, b = make((2, 3, 64), True, seed=7)
    for eps in (float("nan"), -1.0, float("inf")):
        with pytest.raises(ValueError, match="eps must be finite and >= 0"):
            add_layernorm(x, y, bias, w, b, eps, backend="torch")
    with pytest.raises(TypeError, match="weight has dtype int64"):
        torch.ops.deepencoder.add_layernorm(x, y, bias, w.long(), b, 1e-6)
    with pytest.raises(TypeError, match="Triton kernel takes x in float32, float16 or bfloat16, got float64"):
        torch.ops.deepencoder.add_layernorm(x.double(), y.double(), None, w, b, 1e-6)


@pytest.mark.interpreter
def test_strided_vectors_and_rows_reach_the_kernel_at_the_strides_it_reads():
    """The kernel reads weight / bias / ln_bias at unit stride and rows at unit column stride: strided
    views (every other element of a buffer) must give the reference's result, not the neighbours' values."""
    x, y, bias, w, b = make((1, 5, 64), True, seed=9)
    wide = lambda t: torch.stack([t, torch.full_like(t, 1e3)], -1).reshape(-1)[::2]  # noqa: E731
    bias_s, w_s, b_s = (wide(t).to(DEVICE) for t in (bias, w, b))
    assert w_s.stride() == (2,)
    xd, yd = x.to(DEVICE), y.to(DEVICE)
    s_r, h_r = add_layernorm_ref(xd, yd, bias.to(DEVICE), w.to(DEVICE), b.to(DEVICE), 1e-6)
    s, h = add_layernorm(xd, yd, bias_s, w_s, b_s, 1e-6, backend="triton")
    assert last_backend("add_layernorm") == "triton"
    torch.testing.assert_close(h, h_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s, s_r, rtol=0, atol=0)
    # a direct op call with column-strided rows (the dispatcher would send these to torch)
    xt = torch.stack([xd, torch.full_like(xd, 1e3)], -1).reshape(1, 5, 128)[..., ::2]
    s2, h2 = torch.ops.deepencoder.add_layernorm(xt, yd, bias_s, w_s, b_s, 1e-6)
    torch.testing.assert_close(h2, h_r, rtol=1e-5, atol=1e-5)

"""SwiGLU over the fused gate/up projection (kernels/swiglu) against upstream's ``silu(gate) * up``.

The kernel rounds once (fp32 ``silu(g) * u``, then the activation dtype), upstream twice; judged by the
same-dtype rule against the float64 result.
"""

import pytest
import torch
from deepencoder.kernels import BackendUnavailable, last_backend, last_backend_reason
from deepencoder.kernels.swiglu import swiglu, swiglu_ref
from deepencoder.kernels.swiglu import triton as tri

from tests.conftest import DEVICE, assert_same_dtype_rule, max_err, poison

DT = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
CASES = [((1, 3, 2 * 4864), "bf16"), ((2, 7, 2 * 97), "fp16"), ((1, 1, 2 * 1025), "fp32"), ((5, 2 * 1024), "bf16"),
         ((2, 3, 2 * 4864), "fp16")]


def make(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(shape, generator=g, dtype=torch.float64)  # silu's bend and both tails


@pytest.mark.interpreter
@pytest.mark.parametrize("shape,dt", CASES, ids=[f"{'x'.join(map(str, s))}-{d}" for s, d in CASES])
def test_swiglu_triton(shape, dt):
    dtype = DT[dt]
    gu = make(shape, seed=shape[-1])
    ref64 = swiglu_ref(gu)
    ref_lp = swiglu_ref(gu.to(DEVICE, dtype))
    out = swiglu(gu.to(DEVICE, dtype), backend="triton")
    assert last_backend("swiglu") == "triton"
    assert out.shape == (*shape[:-1], shape[-1] // 2) and out.dtype == dtype
    assert_same_dtype_rule(out.cpu(), ref_lp.cpu(), ref64, factor=2.0, atol=1e-6, what="swiglu")
    if dtype == torch.float32:
        assert max_err(out.cpu(), ref64) < 1e-5
    out2 = swiglu(gu.to(DEVICE, dtype))  # auto
    assert last_backend("swiglu") == "triton", last_backend_reason("swiglu")
    assert torch.equal(out2, out)


@pytest.mark.interpreter
@pytest.mark.parametrize("dt", ["fp32", "fp16", "bf16"])
def test_launcher_writes_every_element(dt):
    dtype = DT[dt]
    gu = make((1, 9, 2 * 1100), seed=5)
    x = gu.view(-1, 2200).to(DEVICE, dtype)
    out = poison(torch.empty(9, 1100, device=DEVICE, dtype=dtype))
    tri.swiglu_fwd(x, out, round_bits=dtype == torch.bfloat16)
    assert_same_dtype_rule(out.cpu(), swiglu_ref(x).cpu(), swiglu_ref(gu.view(-1, 2200)), what="swiglu launcher")


def test_gate_first_then_up():
    """Order matters: swapping gate and up is detected (silu is not symmetric)."""
    gu = make((2, 8), seed=1).float().to(DEVICE)
    want = torch.nn.functional.silu(gu[..., :4]) * gu[..., 4:]
    torch.testing.assert_close(swiglu(gu, backend="torch"), want)
    assert max_err(want, torch.nn.functional.silu(gu[..., 4:]) * gu[..., :4]) > 0.1


def test_kill_switch_guards_and_validation(monkeypatch):
    gu = make((2, 3, 64)).float().to(DEVICE)
    for var in ("DEEPENCODER_DISABLE_SWIGLU", "DEEPENCODER_DISABLE_TRITON"):
        monkeypatch.setenv(var, "1")
        swiglu(gu)
        assert last_backend("swiglu") == "torch" and var in last_backend_reason("swiglu")
        monkeypatch.delenv(var)
    with pytest.raises(BackendUnavailable, match="contiguous"):
        swiglu(gu.transpose(0, 1), backend="triton")
    with pytest.raises(BackendUnavailable, match="float64"):
        swiglu(gu.double(), backend="triton")
    with pytest.raises(BackendUnavailable, match="grad"):
        swiglu(gu.clone().requires_grad_(), backend="triton")
    for be in ("triton", "torch", "auto"):
        with pytest.raises(ValueError, match="2\\*I") as e:
            swiglu(gu[..., :63], backend=be)
        assert "\n" not in str(e.value)
        with pytest.raises(TypeError, match="not a floating"):
            swiglu(gu.int(), backend=be)


@pytest.mark.interpreter
def test_custom_op_opcheck_and_compile():
    from deepencoder.kernels.swiglu.op import _swiglu_op

    gu = make((2, 3, 64), seed=4).float().to(DEVICE)
    torch.library.opcheck(_swiglu_op, (gu,))
    f = torch.compile(lambda a: swiglu(a, backend="triton"), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(f(gu), swiglu_ref(gu), rtol=1e-5, atol=1e-6)


def test_aot_specs_cover_every_argument():
    for s in tri.aot_specs():
        assert set(s["signature"]) == set(tri._swiglu_fwd_kernel.arg_names) and s["flops"] > 0
        assert {k for k, v in s["signature"].items() if v == "constexpr"} == set(s["constexprs"])

"""The fast OCR-2 encoder against the reference: the flow encoder on the kernels, the shared trunk writing
into the flow input, dispatch, bf16 rule, inference mode, compile, CUDA graphs and sync (on a GPU)."""

import pytest
import torch
from deepencoder.kernels import last_backend

from deepencoder.config import DeepEncoderV2Config
from deepencoder.encoder import DeepEncoder
from deepencoder.fast import FastDeepEncoderV2
from deepencoder.models import DeepEncoderV2Reference
from deepencoder.weights import init_random_
from tests.conftest import DEVICE, assert_same_dtype_rule, max_err

CFG = DeepEncoderV2Config.small_test()
FLOW_OPS = ("flow_attention", "add_rmsnorm", "swiglu")


def small_v2(dtype=torch.float32, seed=0):
    return init_random_(DeepEncoderV2Reference(CFG), seed).to(DEVICE, dtype).eval()


def pixels(B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(DEVICE)


def flow_input(B, n, C, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 2 * n, C, generator=g).to(DEVICE, dtype)


@pytest.mark.parametrize("B,S", [(2, 768), (1, 1024)], ids=["B2-S768", "B1-S1024"])
def test_fast_v2_plumbing_with_torch_ops_matches_reference(B, S):
    """FastDeepEncoderV2's own code (flow input buffer, fused weights, last-layer query slice) on the ops'
    torch backends, end to end at both view sizes."""
    m = small_v2()
    x = pixels(B, S, seed=S)
    with torch.no_grad():
        ref = m(x)
        out = FastDeepEncoderV2(m, op_backend="torch")(x)
    assert all(last_backend(op) == "torch" for op in FLOW_OPS + ("sam_attention", "compressor"))
    assert out.shape == ref.shape == (B, (S // 64) ** 2, CFG.n_embed)
    torch.testing.assert_close(out, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.interpreter
@pytest.mark.parametrize("B,n", [(1, 144), (2, 9)], ids=["B1-n144", "B2-n9"])
def test_fast_flow_triton_fp32_matches_reference(B, n):
    m = small_v2()
    x = flow_input(B, n, CFG.flow.hidden_size, seed=n)
    with torch.no_grad():
        want = m.qwen2_model.model.model(x, n)[:, n:]
        got = FastDeepEncoderV2(m).flow_forward(x.clone(), n)
    assert [last_backend(op) for op in FLOW_OPS] == ["triton"] * 3  # no silent fallback
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.interpreter
def test_fast_trunk_writes_only_the_visual_half():
    """The compressor writes the tokens into the visual half of a NaN-poisoned [B, 2n, C] flow buffer and
    leaves the query half untouched (triton kernels, S=256: G=16, g=4)."""
    m = small_v2()
    x = pixels(1, 256, seed=4)
    n, C = 16, CFG.flow.hidden_size
    buf = torch.full((1, 2 * n, C), float("nan"), device=DEVICE)
    with torch.no_grad():
        want = m.sam_model(x).flatten(2).transpose(1, 2)
        FastDeepEncoderV2(m).sam_forward(x, out=buf[:, :n])
    assert last_backend("sam_attention") == "triton" and last_backend("compressor") == "triton"
    torch.testing.assert_close(buf[:, :n], want, rtol=1e-3, atol=1e-3)
    assert torch.isnan(buf[:, n:]).all()


@pytest.mark.interpreter
def test_fast_flow_bf16_error_rule():
    """fast bf16 vs reference fp32 <= 2 x (reference bf16 vs reference fp32) on the flow stage's output."""
    m32, m16 = small_v2(torch.float32), small_v2(torch.bfloat16)
    n = 144
    x = flow_input(1, n, CFG.flow.hidden_size, seed=3)
    with torch.no_grad():
        ref32 = m32.qwen2_model.model.model(x, n)[:, n:]
        ref16 = m16.qwen2_model.model.model(x.bfloat16(), n)[:, n:]
        got = FastDeepEncoderV2(m16).flow_forward(x.bfloat16(), n)
    assert [last_backend(op) for op in FLOW_OPS] == ["triton"] * 3
    assert_same_dtype_rule(got, ref16, ref32, factor=2.0, atol=1e-3, what="flow output bf16")


@pytest.mark.parametrize("family", ["ocr1", "ocr2"])
def test_built_under_inference_mode(family):
    """Serving code builds models under torch.inference_mode(): parameters are inference tensors (no
    version counter); the fast path's caches must cope."""
    from deepencoder.config import family_config

    with torch.inference_mode():
        enc = DeepEncoder(family_config(family, small=True), device=DEVICE, backend="fast", op_backend="torch")
        S = 768 if family == "ocr2" else 256
        x = pixels(1, S, seed=1)
        a = enc.encode_pixels(x)
        b = enc.encode_pixels(x)  # second call: cached tables reused
    assert torch.equal(a, b)
    ref = enc.with_backend("reference").encode_pixels(x)
    torch.testing.assert_close(a, ref, rtol=2e-4, atol=2e-4)


def test_cached_weights_follow_in_place_updates():
    m = small_v2()
    f = FastDeepEncoderV2(m, op_backend="torch")
    x = flow_input(1, 9, CFG.flow.hidden_size)
    with torch.no_grad():
        a = f.flow_forward(x.clone(), 9)
        m.qwen2_model.model.model.layers[0].self_attn.k_proj.weight.mul_(1.5)  # the fused qkv must be rebuilt
        b = f.flow_forward(x.clone(), 9)
        want = m.qwen2_model.model.model(x, 9)[:, 9:]
    assert max_err(a, b) > 1e-4
    torch.testing.assert_close(b, want, rtol=2e-5, atol=2e-5)


@pytest.mark.interpreter
def test_torch_compile_traces_the_fast_flow():
    """Every flow op is a custom op with a fake implementation: dynamo traces the flow stage whole."""
    m = small_v2()
    n = 9
    x = flow_input(1, n, CFG.flow.hidden_size, seed=8)
    fast = FastDeepEncoderV2(m)
    compiled = torch.compile(fast.flow_forward, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got = compiled(x.clone(), n)
        want = m.qwen2_model.model.model(x, n)[:, n:]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
def test_fast_v2_forward_has_no_host_sync_and_graphs_match():
    m = small_v2(torch.bfloat16)
    x = pixels(2, 768).bfloat16()
    f = FastDeepEncoderV2(m)
    eager = f(x)  # warm-up: JIT compile may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        f(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    graphed = FastDeepEncoderV2(m, cuda_graphs=True)
    for seed in range(2):
        xs = pixels(2, 768, seed=seed).bfloat16()
        torch.testing.assert_close(graphed(xs), f(xs))
    assert len(graphed._graphs) == 1
    ref = m(x)
    assert max_err(eager, ref) / float(ref.abs().max()) < 5e-2

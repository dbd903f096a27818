"""The fast encoder against the reference: kernels end to end, batching, patch/unpatch, dispatch."""

import copy

import numpy as np
import pytest
import torch
from deepencoder.kernels import last_backend

import deepencoder
from deepencoder.config import DeepEncoderConfig
from deepencoder.encoder import DeepEncoder
from deepencoder.fast import FastDeepEncoder
from deepencoder.patching import is_patched, patch, unpatch
from deepencoder.reference import DeepEncoderReference
from deepencoder.weights import init_random_
from tests.conftest import DEVICE, max_err


def small_model(dtype=torch.float32, seed=0):
    return init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), seed).to(DEVICE, dtype).eval()


def pixels(B, S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, 3, S, S, generator=g) * 2 - 1).to(DEVICE)


def test_fast_plumbing_with_torch_ops_matches_reference():
    """FastDeepEncoder's own code (layouts, in-place residuals, concat buffer) with the ops' torch backends."""
    m = small_model()
    x = pixels(2, 256)
    with torch.no_grad():
        ref = m(x)
        out = FastDeepEncoder(m, op_backend="torch")(x)
    assert last_backend("sam_attention") == "torch" and last_backend("compressor") == "torch"
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)


@pytest.mark.interpreter
@pytest.mark.parametrize("B,S", [(1, 256), (2, 320)], ids=["B1-S256", "B2-S320"])
def test_fast_triton_fp32_matches_reference(B, S):
    m = small_model()
    x = pixels(B, S, seed=B)
    with torch.no_grad():
        ref = m(x)
        out = FastDeepEncoder(m)(x)
    # the dispatcher must have picked the kernels, not silently fallen back
    assert last_backend("sam_attention") == "triton"
    assert last_backend("compressor") == "triton"
    assert last_backend("clip_attention") == ("sdpa" if DEVICE == "cuda" else "torch")
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


@pytest.mark.interpreter
def test_fast_bf16_error_rule():
    """fast bf16 vs reference fp32 <= 2 x (reference bf16 vs reference fp32), on every output."""
    m32, m16 = small_model(torch.float32), small_model(torch.bfloat16)
    x = pixels(1, 256, seed=7)
    with torch.no_grad():
        ref32 = m32(x)
        ref16 = m16(x.bfloat16())
        fast16 = FastDeepEncoder(m16)(x.bfloat16())
    assert last_backend("sam_attention") == "triton" and last_backend("compressor") == "triton"
    assert fast16.dtype == torch.bfloat16 and torch.isfinite(fast16.float()).all()
    assert max_err(fast16, ref32) <= 2 * max_err(ref16, ref32)


def _images(sizes, seed=0):
    # Pillow is a dependency of the package, but the GPU machine's bare environment may lack it
    Image = pytest.importorskip("PIL.Image")

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.mark.parametrize("backend", ["reference", "fast"])
def test_encoder_api_batches_mixed_modes_like_single_calls(backend):
    """N mixed-mode images in one call (tiles of every Gundam page in one batch, global views grouped by
    size) equal N single calls. The fast path runs its own code here on the ops' torch references, so the
    batching is checked at full mode sizes in CI time; the kernels are checked under the interpreter below."""
    enc = DeepEncoder(DeepEncoderConfig.small_test(), device=DEVICE, backend=backend, op_backend="torch")
    assert enc.backend == backend
    imgs = _images([(700, 1000), (300, 200), (900, 650), (1300, 700)])
    modes = ["gundam", "tiny", "small", "gundam"]
    batched = enc.encode(imgs, mode=modes)
    singles = [enc.encode([im], mode=md)[0] for im, md in zip(imgs, modes)]
    assert [b.grid for b in batched] == [(2, 3), (1, 1), (1, 1), (2, 1)]
    for b, s, md in zip(batched, singles, modes):
        assert b.mode == md and b.num_tokens == deepencoder.vision_token_count(*b.size, md)
        assert b.tokens.shape == (b.num_tokens, 96)
        torch.testing.assert_close(b.tokens, s.tokens, rtol=1e-4, atol=1e-4)


@pytest.mark.interpreter
def test_encoder_api_fast_kernels_batching():
    enc = DeepEncoder(DeepEncoderConfig.small_test(), device=DEVICE, backend="fast")
    ref = DeepEncoder(DeepEncoderConfig.small_test(), device=DEVICE, backend="reference")
    imgs = _images([(300, 200), (500, 512), (200, 300)], seed=1)
    got = enc.encode(imgs, mode="tiny")
    assert last_backend("sam_attention") == "triton" and last_backend("compressor") == "triton"
    want = ref.encode(imgs, mode="tiny")
    for g, w in zip(got, want):
        assert g.num_tokens == w.num_tokens == 73
        torch.testing.assert_close(g.tokens, w.tokens, rtol=1e-3, atol=1e-3)


def test_encoder_api_reference_and_fast_share_weights():
    enc = DeepEncoder(DeepEncoderConfig.small_test(), device=DEVICE, backend="reference")
    fast = enc.fast_model
    assert fast.sam.blocks[0].attn.qkv.weight.data_ptr() == enc.model.sam_model.blocks[0].attn.qkv.weight.data_ptr()


class UpstreamLike(torch.nn.Module):
    """A module tree with upstream's names and forward signatures (the HF model keeps the encoder
    under ``model.model``): ``sam_model(x)`` and ``vision_model(x, sam_features)``."""

    def __init__(self, enc: DeepEncoderReference):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.sam_model = enc.sam_model
        self.model.vision_model = enc.vision_model
        self.model.projector = enc.projector

    def encode(self, x):
        m = self.model
        f1 = m.sam_model(x)
        f2 = m.vision_model(x, f1)
        return m.projector(torch.cat((f2[:, 1:], f1.flatten(2).permute(0, 2, 1)), dim=-1))


@pytest.mark.interpreter
def test_patch_unpatch_round_trip():
    ref = small_model()
    up = UpstreamLike(copy.deepcopy(ref))
    x = pixels(1, 256, seed=3)
    with torch.no_grad():
        want = ref(x)
        before = up.encode(x)
        sam_fwd = up.model.sam_model.forward
        patch(up)
        assert is_patched(up)
        patch(up)  # idempotent
        got = up.encode(x)
        assert last_backend("sam_attention") == "triton" and last_backend("compressor") == "triton"
        unpatch(up)
        after = up.encode(x)
    assert not is_patched(up)
    assert up.model.sam_model.forward == sam_fwd
    assert "forward" not in up.model.sam_model.__dict__ and "forward" not in up.model.vision_model.__dict__
    torch.testing.assert_close(before, want, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(after, want, rtol=0, atol=0)


def test_patch_rejects_foreign_models():
    with pytest.raises(ValueError, match="sam_model"):
        patch(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.interpreter
def test_fast_real_widths_s512_matches_reference():
    """The real DeepSeek-OCR widths (SAM 768 / 12 heads, compressor 768->256->512->1024, CLIP 1024 / 16
    heads, projector 2048->1280) at the smallest mode (Tiny, S=512: windows padded 32->42, a 32x32 global
    block), fp32, under the interpreter. Depth is cut to 3 SAM blocks (window, window, global) and 2 CLIP
    layers: the full 12 + 24 take over 10 minutes in the interpreter; every block of a kind runs the same
    kernels at the same shapes."""
    from deepencoder.config import CLIPConfig, SAMConfig

    cfg = DeepEncoderConfig(sam=SAMConfig(depth=3, global_attn_indexes=(2,)), clip=CLIPConfig(num_layers=2))
    m = init_random_(DeepEncoderReference(cfg), seed=2).to(DEVICE).eval()
    x = pixels(1, 512, seed=11)
    with torch.no_grad():
        ref = m(x)
        out = FastDeepEncoder(m)(x)
    assert last_backend("sam_attention") == "triton" and last_backend("compressor") == "triton"
    assert out.shape == (1, 64, 1280)
    rel = max_err(out, ref) / float(ref.abs().max())
    assert rel < 1e-3, rel


@pytest.mark.interpreter
def test_torch_compile_traces_the_fast_model():
    """Every kernel is a custom op with a fake implementation, so dynamo traces the fast path whole."""
    m = small_model()
    x = pixels(1, 256, seed=5)
    fast = FastDeepEncoder(m)
    compiled = torch.compile(fast.forward, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        got = compiled(x)
        want = m(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.cuda
def test_fast_forward_has_no_host_sync():
    m = small_model(torch.bfloat16)
    x = pixels(2, 256).bfloat16()
    f = FastDeepEncoder(m)
    f(x)  # warm-up: JIT compile and autotune may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        f(x)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
def test_cuda_graphs_match_eager():
    m = small_model(torch.bfloat16)
    eager = FastDeepEncoder(m)
    graphed = FastDeepEncoder(m, cuda_graphs=True)
    for seed in range(3):  # replays with fresh inputs each time
        x = pixels(2, 256, seed=seed).bfloat16()
        torch.testing.assert_close(graphed(x), eager(x))  # bf16 default tolerances
    assert len(graphed._graphs) == 1


def test_with_backend_shares_the_module():
    enc = DeepEncoder(DeepEncoderConfig.small_test(), device=DEVICE, backend="reference")
    other = enc.with_backend("fast", op_backend="torch")
    assert other.backend == "fast" and enc.backend == "reference"
    assert other.model is enc.model
    x = pixels(1, 256, seed=9)
    torch.testing.assert_close(other.encode_pixels(x), enc.encode_pixels(x), rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="unknown backend"):
        enc.with_backend("turbo")

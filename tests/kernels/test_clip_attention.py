"""CLIP attention provider: backends called directly, the dispatcher's choice asserted."""

import pytest
import torch
import torch.nn.functional as F
from deepencoder.kernels import BackendUnavailable, last_backend
from deepencoder.kernels.clip_attention import clip_attention, flash_attn_available

from tests.conftest import DEVICE, assert_same_dtype_rule, rel_err


def naive(qkv, heads):
    """Written out: per head softmax(q k^T / sqrt(D)) v in float64."""
    B, N, C3 = qkv.shape
    D = C3 // (3 * heads)
    t = qkv.double().view(B, N, 3, heads, D)
    q, k, v = t[:, :, 0], t[:, :, 1], t[:, :, 2]  # [B, N, H, D]
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) / D ** 0.5
    return torch.einsum("bhnm,bmhd->bnhd", torch.softmax(s, -1), v).reshape(B, N, heads * D)


@pytest.mark.parametrize("B,N,H", [(1, 65, 2), (2, 101, 3)], ids=["B1-N65-H2", "B2-N101-H3"])
def test_torch_backend_matches_naive(B, N, H):
    qkv = torch.randn(B, N, 3 * H * 64, generator=torch.Generator().manual_seed(N))
    out = clip_attention(qkv, H, backend="torch")
    assert last_backend("clip_attention") == "torch"
    torch.testing.assert_close(out.double(), naive(qkv, H), rtol=1e-5, atol=1e-5)


def test_auto_on_cpu_picks_torch_and_flash_backends_refuse():
    qkv = torch.randn(1, 17, 3 * 64)
    clip_attention(qkv, 1)
    assert last_backend("clip_attention") == "torch"
    with pytest.raises(BackendUnavailable, match="needs CUDA"):
        clip_attention(qkv, 1, backend="sdpa")
    with pytest.raises(ValueError, match="3\\*2\\*D"):
        clip_attention(torch.randn(1, 17, 100), 2)
    with pytest.raises(ValueError, match="unknown backend"):
        clip_attention(qkv, 1, backend="xformers")


@pytest.mark.parametrize("backend", ["auto", "torch", "sdpa", "flash_attn"])
def test_bad_arguments_raise_one_line_errors_on_every_backend(backend):
    qkv = torch.randn(1, 17, 3 * 64)
    with pytest.raises(TypeError, match="qkv has dtype int64"):  # integers returned integers before
        clip_attention(qkv.long(), 1, backend=backend)
    with pytest.raises(TypeError, match="qkv must be a torch.Tensor, got ndarray"):
        clip_attention(qkv.numpy(), 1, backend=backend)
    with pytest.raises(ValueError, match="num_heads must be a positive int, got 0"):
        clip_attention(qkv, 0, backend=backend)


def test_strided_qkv_runs_on_the_torch_backend():
    """A column-strided qkv (every other channel of a buffer) is read as its values, not as raw memory."""
    base = torch.randn(1, 33, 2 * 3 * 2 * 16, generator=torch.Generator().manual_seed(11))
    qkv = base[..., ::2]
    out = clip_attention(qkv, 2, backend="torch")
    torch.testing.assert_close(out.double(), naive(qkv.contiguous(), 2), rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_cuda_auto_picks_flash(dtype):
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(2, 257, 3 * 16 * 64, generator=g).to(DEVICE)
    ref32 = naive(qkv.cpu(), 16)
    ref_lp = F.scaled_dot_product_attention(*[t.transpose(1, 2) for t in qkv.to(dtype).view(2, 257, 3, 16, 64).unbind(2)],
                                            ).transpose(1, 2).reshape(2, 257, -1)
    out = clip_attention(qkv.to(dtype), 16)
    assert last_backend("clip_attention") == ("flash_attn" if flash_attn_available() else "sdpa")
    assert out.is_cuda and out.dtype == dtype and out.shape == (2, 257, 16 * 64)
    # judged against the float64 oracle on its own (ref_lp runs the same SDPA kernels, so a fault shared
    # by both would pass the same-dtype rule): a half-precision attention is within ~1e-2 relative
    assert rel_err(out.cpu(), ref32) < (2e-2 if dtype == torch.bfloat16 else 4e-3)
    assert_same_dtype_rule(out.cpu(), ref_lp.cpu(), ref32, what="clip attention")
    # a wrong result must fail: the same check on a permuted-heads output does
    wrong = out.view(2, 257, 16, 64).roll(1, dims=2).reshape(2, 257, -1)
    assert rel_err(wrong.cpu(), ref32) > 0.1

"""The reference encoder against independent, deliberately naive derivations of SPEC.md."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepencoder.config import DeepEncoderConfig, SAMConfig, grid_sizes
from deepencoder.reference import (
    DeepEncoderReference,
    SAMBlock,
    add_newlines,
    layout_tokens,
    resize_clip_pos_embed,
    resize_rel_pos,
    resize_sam_pos_embed,
)
from deepencoder.weights import init_random_

# ----------------------------------------------------------------------------------------- helpers


def naive_linear_resize(table: torch.Tensor, n: int):
    """1-D linear interpolation, align_corners=False, written out from the definition in float64.

    Returns (values, bound). torch computes the source coordinate ``(i + 0.5) * L0 / n - 0.5`` in
    float32, so its weight may differ from the exact one by about one float32 ulp of the coordinate;
    ``bound`` is that rounding propagated: 2 * ulp(src) * |b - a| + 1e-6 per element.
    """
    L0 = table.shape[0]
    t = table.double()
    out = torch.empty(n, table.shape[1], dtype=torch.float64)
    bound = torch.empty_like(out)
    for i in range(n):
        src = max((i + 0.5) * L0 / n - 0.5, 0.0)
        i0 = min(int(src), L0 - 1)
        i1 = min(i0 + 1, L0 - 1)
        w = src - i0
        out[i] = (1 - w) * t[i0] + w * t[i1]
        ulp = float(np.spacing(np.float32(max(src, 1.0))))
        bound[i] = 2 * ulp * (t[i1] - t[i0]).abs() + 1e-6
    return out, bound


def naive_block_attention(blk: SAMBlock, x: torch.Tensor, mask_padding: bool = False) -> torch.Tensor:
    """SAM block attention (norm1 -> qkv -> rel-pos attention -> proj) with explicit window loops and the
    bias written from SPEC's formula. ``x`` is the block input [B, G, G, C] in float64."""
    B, H, W, C = x.shape
    attn = blk.attn
    nh = attn.num_heads
    D = C // nh
    xn = blk.norm1(x)
    ws = blk.window_size
    if ws == 0:
        wins = [(0, 0, H, W)]
        L_h, L_w = H, W
    else:
        Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
        wins = [(r, c, ws, ws) for r in range(0, Hp, ws) for c in range(0, Wp, ws)]
        L_h = L_w = ws
    Rh_t = resize_rel_pos(attn.rel_pos_h, L_h).double()
    Rw_t = resize_rel_pos(attn.rel_pos_w, L_w).double()
    Wqkv, bqkv = attn.qkv.weight.double(), attn.qkv.bias.double()
    out = torch.zeros(B, H, W, C, dtype=torch.float64)
    for b in range(B):
        for (r0, c0, hh, ww) in wins:
            toks, real = [], []
            for i in range(hh):
                for j in range(ww):
                    y, xx = r0 + i, c0 + j
                    inside = y < H and xx < W
                    # padded positions are zeros after norm1, so their qkv equals the qkv bias
                    feat = xn[b, y, xx] if inside else torch.zeros(C, dtype=torch.float64)
                    toks.append(feat @ Wqkv.t() + bqkv)
                    real.append(inside)
            qkv = torch.stack(toks)  # [n, 3C]
            n = qkv.shape[0]
            real_t = torch.tensor(real)
            ii = torch.arange(hh).repeat_interleave(ww)
            jj = torch.arange(ww).repeat(hh)
            for h in range(nh):
                q = qkv[:, h * D:(h + 1) * D]
                k = qkv[:, C + h * D:C + (h + 1) * D]
                v = qkv[:, 2 * C + h * D:2 * C + (h + 1) * D]
                logits = q @ k.t() / D ** 0.5
                # bias[q, (kh, kw)] = q . Rh[i - kh + L - 1] + q . Rw[j - kw + L - 1]
                Rh = Rh_t[ii[:, None] - ii[None, :] + L_h - 1]  # [n, n, D]
                Rw = Rw_t[jj[:, None] - jj[None, :] + L_w - 1]
                bias = (q[:, None, :] * Rh).sum(-1) + (q[:, None, :] * Rw).sum(-1)
                logits = logits + bias
                if mask_padding:
                    logits = logits.masked_fill(~real_t[None, :], float("-inf"))
                p = torch.softmax(logits, dim=-1)
                o = p @ v
                for t in range(n):
                    if real[t]:
                        out[b, r0 + int(ii[t]), c0 + int(jj[t]), h * D:(h + 1) * D] = o[t]
    return out @ attn.proj.weight.double().t() + attn.proj.bias.double()


def attn_half(blk: SAMBlock, x: torch.Tensor) -> torch.Tensor:
    """Run the reference block with its MLP zeroed: returns x + attn(x); subtract x."""
    b2 = copy.deepcopy(blk)
    with torch.no_grad():
        b2.mlp.lin2.weight.zero_()
        b2.mlp.lin2.bias.zero_()
    return b2(x) - x


def make_block(window: int, G: int, heads=2, dim=128, seed=0):
    cfg = SAMConfig(img_size=G * 16, embed_dim=dim, num_heads=heads, depth=1, window_size=window,
                    global_attn_indexes=() if window else (0,))
    blk = SAMBlock(cfg, window)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.2 if p.dim() > 1 else 0.1))
        blk.norm1.weight.add_(1.0)
    return blk.double().eval()


# ----------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("G,window", [(16, 14), (20, 14), (9, 0), (12, 0)], ids=lambda v: str(v))
def test_block_attention_matches_naive_derivation(G, window):
    blk = make_block(window, G)
    x = torch.randn(2, G, G, 128, dtype=torch.float64)
    with torch.no_grad():
        got = attn_half(blk, x)
        want = naive_block_attention(blk, x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_padded_window_positions_are_attended_not_masked():
    """Upstream attends to the zero-padded tokens (their q,k,v = qkv bias). Masking them changes the
    output of every window touching the edge: this test fails if the reference masked them."""
    G = 16  # padded to 28: three of four windows hold padding
    blk = make_block(14, G)
    x = torch.randn(1, G, G, 128, dtype=torch.float64)
    with torch.no_grad():
        got = attn_half(blk, x)
        attended = naive_block_attention(blk, x, mask_padding=False)
        masked = naive_block_attention(blk, x, mask_padding=True)
    torch.testing.assert_close(got, attended, rtol=1e-9, atol=1e-9)
    # the edge windows differ when padding is masked; the top-left window (no padding) is identical
    diff = (got - masked).abs().amax(dim=-1)[0]
    assert diff[14:, :].min() > 1e-6 and diff[:, 14:].min() > 1e-6
    assert diff[:14, :14].max() < 1e-9


# ----------------------------------------------------------------------------------------- resizing


@pytest.mark.parametrize("S", [512, 640, 1024, 1280])
def test_sam_pos_embed_resize(S):
    G, _ = grid_sizes(S)
    pos = torch.randn(1, 64, 64, 32)
    out = resize_sam_pos_embed(pos, G)
    if S == 1024:
        assert out is pos  # no resize at the pretraining size
        return
    assert out.shape == (1, G, G, 32)
    want = F.interpolate(pos.permute(0, 3, 1, 2), size=(G, G), mode="bicubic", antialias=True,
                         align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(out, want)
    no_aa = F.interpolate(pos.permute(0, 3, 1, 2), size=(G, G), mode="bicubic", antialias=False,
                          align_corners=False).permute(0, 2, 3, 1)
    if G < 64:  # downsampling: antialias changes the result (the trap some ports fall into)
        assert (out - no_aa).abs().max() > 1e-3
    # bf16 tables are resized in float32 and cast back
    out16 = resize_sam_pos_embed(pos.bfloat16(), G)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16, resize_sam_pos_embed(pos.bfloat16().float(), G).bfloat16(), rtol=0, atol=0)


@pytest.mark.parametrize("L0,L", [(64, 32), (64, 40), (64, 80), (64, 64), (14, 14), (14, 9)])
def test_rel_pos_resize_is_linear_align_corners_false(L0, L):
    t = torch.randn(2 * L0 - 1, 16, generator=torch.Generator().manual_seed(L0 * 1000 + L))
    out = resize_rel_pos(t, L)
    assert out.shape == (2 * L - 1, 16)
    if L == L0:
        assert out is t
    want, bound = naive_linear_resize(t, 2 * L - 1)
    err = (out.double() - want).abs()
    assert (err <= bound).all(), f"max excess {float((err - bound).max()):.3e}"


@pytest.mark.parametrize("g", [8, 10, 16, 20])
def test_clip_pos_embed_keeps_cls_and_resizes_grid(g):
    pos = torch.randn(257, 24)
    out = resize_clip_pos_embed(pos, g * g + 1)
    assert out.shape == (1, g * g + 1, 24)
    torch.testing.assert_close(out[0, 0], pos[0])
    if g == 16:
        torch.testing.assert_close(out[0], pos)
    else:
        grid = pos[1:].view(1, 16, 16, 24).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(g, g), mode="bicubic", antialias=True, align_corners=False)
        torch.testing.assert_close(out[0, 1:], want.permute(0, 2, 3, 1).reshape(g * g, 24))


# ----------------------------------------------------------------------------------------- whole model


def small_model(seed=0, dtype=torch.float32):
    return init_random_(DeepEncoderReference(DeepEncoderConfig.small_test()), seed).to(dtype).eval()


@pytest.mark.parametrize("S", [256, 320, 512])
def test_small_forward_shapes(S):
    m = small_model()
    x = torch.rand(2, 3, S, S) * 2 - 1
    with torch.no_grad():
        y = m(x)
        y1 = m(x[:1])
    g = grid_sizes(S)[1]
    assert y.shape == (2, g * g, 96)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y[:1], y1, rtol=1e-4, atol=1e-4)  # batching does not mix images


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_forward_close_to_fp32(dtype):
    m32 = small_model()
    m16 = small_model(dtype=dtype)
    x = torch.rand(1, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        y32 = m32(x)
        y16 = m16(x.to(dtype))
    assert y16.dtype == dtype
    rel = (y16.float() - y32).abs().max() / y32.abs().max()
    assert rel < 0.1, rel


def test_state_dict_keys_are_checkpoint_keys():
    m = DeepEncoderReference()
    keys = set(m.state_dict())
    assert "sam_model.blocks.11.attn.rel_pos_h" in keys
    assert m.state_dict()["sam_model.blocks.2.attn.rel_pos_h"].shape == (127, 64)
    assert m.state_dict()["sam_model.blocks.0.attn.rel_pos_h"].shape == (27, 64)
    assert "vision_model.transformer.layers.23.self_attn.qkv_proj.weight" in keys
    assert "vision_model.embeddings.position_ids" not in keys  # a buffer only some saves carry
    assert {"projector.layers.weight", "image_newline", "view_seperator"} <= keys
    n = lambda pre: sum(p.numel() for k, p in m.named_parameters() if k.startswith(pre))  # noqa: E731
    assert round(n("sam_model") / 1e6, 1) == 95.6
    assert round(n("vision_model") / 1e6, 1) == 303.2
    assert round(n("projector") / 1e6, 1) == 2.6


@pytest.mark.slow
def test_full_size_forward_s512_deterministic():
    torch.manual_seed(0)
    m = init_random_(DeepEncoderReference(), seed=1).eval()
    x = torch.rand(1, 3, 512, 512) * 2 - 1
    with torch.no_grad():
        a = m(x)
        b = m(x)
    assert a.shape == (1, 64, 1280)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)  # bitwise deterministic across two runs


# ----------------------------------------------------------------------------------------- layout


def test_layout_newlines_and_separator():
    C = 4
    nl, sep = torch.full((C,), -1.0), torch.full((C,), -2.0)
    g = torch.arange(16 * C, dtype=torch.float32).view(16, C)
    out = layout_tokens(g, nl, sep)
    assert out.shape == (4 * 5 + 1, C)
    assert torch.equal(out[4], nl) and torch.equal(out[-1], sep) and torch.equal(out[5], g[4])
    # tiles: 2 across x 3 down of 2x2 tokens -> stitched 6 rows x 4 cols, newline after every row
    tiles = torch.arange(6 * 4 * C, dtype=torch.float32).view(6, 4, C)
    out = layout_tokens(g, nl, sep, tiles, (2, 3))
    assert out.shape == (6 * 5 + 4 * 5 + 1, C)
    stitched = out[:30].view(6, 5, C)
    assert torch.equal(stitched[:, 4], nl.expand(6, C))
    # row 0 of the map = tile 0 row 0, then tile 1 row 0
    assert torch.equal(stitched[0, :2], tiles[0, :2]) and torch.equal(stitched[0, 2:4], tiles[1, :2])
    # row 2 of the map = tile 2 (second tile row, first column) row 0
    assert torch.equal(stitched[2, :2], tiles[2, :2])
    assert torch.equal(add_newlines(g.view(4, 4, C), nl)[4], nl)

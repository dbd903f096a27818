"""The OCR-2 reference (flow encoder, assembly, layout) against independent, deliberately naive derivations
of DeepSeek-OCR 2's encoder: explicit loops for the mask, RoPE and GQA, float64."""

import math

import pytest
import torch

from deepencoder.config import DeepEncoderV2Config, FlowConfig
from deepencoder.models import (
    DeepEncoderV2Reference,
    flow_mask,
    flow_mask_bool,
    layout_tokens_v2,
    rope_tables,
)
from deepencoder.models.flow import FlowDecoder, FlowEncoder
from deepencoder.weights import init_random_

# ----------------------------------------------------------------------------------------- naive oracles


def naive_mask(n: int) -> torch.Tensor:
    """Upstream's per-token construction, literally: visual block all visible, then per query i the visual
    columns and queries 0..i."""
    L = 2 * n
    m = torch.zeros(L, L, dtype=torch.bool)
    for r in range(n):
        for c in range(n):
            m[r, c] = True
    for i in range(n):
        r = n + i
        for c in range(n):
            m[r, c] = True
        for j in range(i + 1):
            m[r, n + j] = True
    return m


def naive_rope(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """Rotate-half RoPE of one head vector ``[D]`` at position ``pos``, from the definition (float64)."""
    D = x.shape[0]
    h = D // 2
    out = torch.empty_like(x)
    for i in range(h):
        ang = pos * theta ** (-2.0 * i / D)
        c, s = math.cos(ang), math.sin(ang)
        out[i] = x[i] * c - x[i + h] * s
        out[i + h] = x[i + h] * c + x[i] * s
    return out


def naive_decoder(dec: FlowDecoder, x: torch.Tensor, n: int) -> torch.Tensor:
    """The whole flow decoder in float64 with explicit loops over heads, positions and keys."""
    cfg = dec.cfg
    H, KV, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    groups = H // KV
    allowed = naive_mask(n)

    def rms(v, w):
        return w.double() * (v / torch.sqrt((v * v).mean(-1, keepdim=True) + cfg.rms_norm_eps))

    h = x.double()
    L = h.shape[1]
    for layer in dec.layers:
        a = layer.self_attn
        y = rms(h, layer.input_layernorm.weight)
        q = y @ a.q_proj.weight.double().t() + a.q_proj.bias.double()
        k = y @ a.k_proj.weight.double().t() + a.k_proj.bias.double()
        v = y @ a.v_proj.weight.double().t() + a.v_proj.bias.double()
        o = torch.zeros(h.shape[0], L, H * D, dtype=torch.float64)
        for b in range(h.shape[0]):
            for hd in range(H):
                kv = hd // groups  # GQA: query head hd reads KV head hd // groups
                qs = [naive_rope(q[b, p, hd * D:(hd + 1) * D], p, cfg.rope_theta) for p in range(L)]
                ks = [naive_rope(k[b, p, kv * D:(kv + 1) * D], p, cfg.rope_theta) for p in range(L)]
                for r in range(L):
                    cols = [c for c in range(L) if allowed[r, c]]
                    s = torch.stack([qs[r] @ ks[c] / math.sqrt(D) for c in cols])
                    w = torch.softmax(s, 0)
                    o[b, r, hd * D:(hd + 1) * D] = sum(w[j] * v[b, c, kv * D:(kv + 1) * D] for j, c in enumerate(cols))
        h = h + o @ a.o_proj.weight.double().t()
        y = rms(h, layer.post_attention_layernorm.weight)
        mlp = layer.mlp
        g = y @ mlp.gate_proj.weight.double().t()
        u = y @ mlp.up_proj.weight.double().t()
        h = h + (g * torch.sigmoid(g) * u) @ mlp.down_proj.weight.double().t()
    return rms(h, dec.norm.weight)


# ----------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("n", [1, 3, 9, 144])
def test_flow_mask_matches_upstream_loop(n):
    want = naive_mask(n)
    assert torch.equal(flow_mask_bool(n), want)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        m = flow_mask(n, dtype)
        assert m.shape == (1, 1, 2 * n, 2 * n) and m.dtype == dtype
        assert torch.equal(m[0, 0] == 0, want)
        assert (m[0, 0][~want] == torch.finfo(dtype).min).all()
    # visual rows never see a query column; query row n+j sees exactly n + j + 1 keys
    assert not want[:n, n:].any()
    assert want[n:].sum(1).tolist() == [n + j + 1 for j in range(n)]


def test_upstream_loop_mask_equals_vectorised():
    from deepencoder.models.flow import flow_mask_upstream_loop

    for n in (1, 4, 12):
        loop = flow_mask_upstream_loop(n, 2, torch.bfloat16)
        assert loop.shape == (2, 1, 2 * n, 2 * n)
        assert torch.equal(loop, flow_mask(n, torch.bfloat16).expand(2, -1, -1, -1))


def test_rope_tables_match_definition():
    L, D, theta = 40, 64, 1e6
    cos, sin = rope_tables(L, D, theta)
    assert cos.dtype == torch.float32 and cos.shape == (L, D)
    for p in (0, 1, 17, 39):
        for i in (0, 5, 31):
            ang = p * theta ** (-2.0 * i / D)
            assert abs(cos[p, i].item() - math.cos(ang)) < 1e-6 and abs(cos[p, i + 32].item() - math.cos(ang)) < 1e-6
            assert abs(sin[p, i].item() - math.sin(ang)) < 1e-6 and abs(sin[p, i + 32].item() - math.sin(ang)) < 1e-6


@pytest.mark.parametrize("heads,kv,n", [(2, 1, 3), (4, 2, 4), (14, 2, 1)], ids=["H2-KV1-n3", "H4-KV2-n4", "H14-KV2-n1"])
def test_flow_decoder_matches_naive_derivation(heads, kv, n):
    """RoPE at positions 0..2n-1, GQA head mapping, the mask, RMSNorm, SwiGLU, the final norm (float64)."""
    cfg = FlowConfig(hidden_size=heads * 64, num_layers=2, num_heads=heads, num_kv_heads=kv, intermediate_size=96)
    dec = init_random_(FlowDecoder(cfg), seed=heads).double().eval()
    with torch.no_grad():  # untrained-looking norms: not all ones
        for p in dec.parameters():
            if p.dim() == 1 and p.shape[0] == cfg.hidden_size:
                p.add_(0.2 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=p.dtype))
    x = torch.randn(2, 2 * n, cfg.hidden_size, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    with torch.no_grad():
        got = dec(x, n)
    want = naive_decoder(dec, x, n)
    # upstream computes the cos/sin tables in float32 (kept here); the oracle's angles are exact, so the
    # two differ by float32 rounding of the tables (~1e-7), far below what a wrong position, head mapping
    # or mask entry produces (> 1e-3, see the next test)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-6)


def test_wrong_gqa_mapping_or_positions_would_be_caught():
    """The naive oracle is sensitive to the two easy mistakes: interleaved KV heads and shifted positions."""
    cfg = FlowConfig(hidden_size=256, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64)
    dec = init_random_(FlowDecoder(cfg), seed=3).double().eval()
    x = torch.randn(1, 6, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        good = dec(x, 3)
        a = dec.layers[0].self_attn
        # swap the two KV heads: a head mapping of h % kv instead of h // groups would look like this
        a.k_proj.weight.copy_(torch.cat([a.k_proj.weight[64:], a.k_proj.weight[:64]]))
        a.k_proj.bias.copy_(torch.cat([a.k_proj.bias[64:], a.k_proj.bias[:64]]))
        swapped = dec(x, 3)
    assert (good - swapped).abs().max() > 1e-3


def test_queries_per_view_and_unknown_sizes():
    enc = init_random_(FlowEncoder(FlowConfig(hidden_size=128, num_layers=1, num_heads=2, num_kv_heads=1,
                                              intermediate_size=64)), 0).eval()
    assert enc.queries(144) is enc.query_768.weight and enc.queries(256) is enc.query_1024.weight
    with pytest.raises(ValueError, match="144.*256"):
        enc.queries(100)
    m = DeepEncoderV2Reference(DeepEncoderV2Config.small_test())
    with pytest.raises(ValueError, match="768, 1024"):
        m(torch.zeros(1, 3, 512, 512))


def test_encoder_output_is_query_rows_of_final_norm():
    """FlowEncoder = [V; Q] -> decoder -> last n rows; queries chosen by the view's token count."""
    cfg = FlowConfig(hidden_size=128, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64)
    enc = init_random_(FlowEncoder(cfg), 1).eval()
    f = torch.randn(2, 128, 12, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = enc(f)
        x = torch.cat([f.flatten(2).transpose(1, 2), enc.query_768.weight.expand(2, -1, -1)], 1)
        full = enc.model.model(x, 144)
    assert y.shape == (2, 144, 128)
    torch.testing.assert_close(y, full[:, 144:], rtol=0, atol=0)


def test_state_dict_keys_and_counts_are_the_checkpoints():
    m = DeepEncoderV2Reference()
    sd = m.state_dict()
    assert len(sd) == 473
    count = lambda pre: sum(v.numel() for k, v in sd.items() if k.startswith(pre))
    assert round(count("sam_model.") / 1e6, 1) == 95.0
    assert round(count("qwen2_model.") / 1e6, 1) == 358.3
    assert round(count("projector.") / 1e6, 1) == 1.1
    for k in ("qwen2_model.model.model.layers.23.self_attn.k_proj.weight", "qwen2_model.model.model.norm.weight",
              "qwen2_model.query_768.weight", "qwen2_model.query_1024.weight", "projector.layers.weight",
              "view_seperator", "sam_model.net_3.weight"):
        assert k in sd, k
    assert tuple(sd["sam_model.net_3.weight"].shape) == (896, 512, 3, 3)
    assert tuple(sd["qwen2_model.model.model.layers.0.self_attn.k_proj.weight"].shape) == (128, 896)
    assert tuple(sd["qwen2_model.query_768.weight"].shape) == (144, 896)
    assert tuple(sd["projector.layers.weight"].shape) == (1280, 896)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_small_forward_dtypes(dtype):
    m = init_random_(DeepEncoderV2Reference(DeepEncoderV2Config.small_test()), 0).eval()
    x = torch.rand(1, 3, 768, 768, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref = m(x)
        out = m.to(dtype)(x.to(dtype))
    assert out.dtype == dtype and out.shape == (1, 144, 96)
    assert torch.isfinite(out.float()).all()
    if dtype != torch.float32:
        assert (out.float() - ref).abs().max() / ref.abs().max() < 0.1


def test_layout_v2():
    C = 5
    glob = torch.randn(256, C)
    sep = torch.randn(C)
    crops = torch.randn(3, 144, C)
    t = layout_tokens_v2(glob, sep, crops)
    assert t.shape == (144 * 3 + 257, C)
    assert torch.equal(t[:144], crops[0]) and torch.equal(t[288:432], crops[2])
    assert torch.equal(t[432:688], glob) and torch.equal(t[-1], sep)
    t0 = layout_tokens_v2(glob, sep, None)
    assert t0.shape == (257, C) and torch.equal(t0[-1], sep)


@pytest.mark.slow
@pytest.mark.xdist_group("full_size")
def test_full_size_forward_s768_deterministic():
    """The real OCR-2 encoder (95 M + 358 M + 1.1 M parameters) at a 768 crop on the CPU."""
    m = init_random_(DeepEncoderV2Reference(), 0).eval()
    x = torch.rand(1, 3, 768, 768, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a = m(x)
        b = m(x)
    assert a.shape == (1, 144, 1280)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)

"""Cost model: multiply-accumulates, FLOPs and minimum device-memory bytes, per op and per image.

Everything is computed from a :class:`deepencoder.config.DeepEncoderConfig`, so the same functions serve
the real encoder and the small test config. FLOPs = 2 x MACs. Softmax, LayerNorm, GELU and the residual
adds are left out (a few percent of the total, not matrix work). The project's cost budget for one
1024x1024 image ("Cost of one image", counted by hand from the DeepSeek-OCR architecture) gives the figures
this model must reproduce at S=1024 (``tests/test_bench.py`` checks it):

=====================  ===========  ===============================================================
term                   budget MACs  counted here
=====================  ===========  ===============================================================
SAM linear layers      348 G        qkv, proj, lin1, lin2 over the G*G real tokens of all 12 blocks
SAM global attention   103 G        q.k^T and p.v over N = G*G, plus the rel-pos terms q.Rh, q.Rw
window attention       12 G         the same per 14x14 window, over every window of the padded grid
                                    (upstream attends to the padded tokens, so that work is done)
CLIP-L                 81 G         24 layers over 1+g*g tokens: qkv, out, fc1, fc2, attention
convolutions           8 G          patch embed, neck 1x1 and 3x3, net_2, net_3
projector              (not listed) 2048 -> 1280 over g*g tokens (0.7 G at S=1024)
=====================  ===========  ===============================================================

Minimum bytes: every input read once and every output written once (weights included where an op owns
them); intermediates that a fused kernel keeps on chip are not counted. This is the floor the roofline
uses, not what any implementation moves: upstream also writes and re-reads the ``[B, heads, N, N]`` bias
(:func:`upstream_bias_bytes`).
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

from deepencoder.kernels._common import compressor_grids, token_grid

from deepencoder.config import DeepEncoderConfig, grid_sizes

DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "fp16": 2, "bfloat16": 2, "bf16": 2}


def _cfg(cfg: Optional[DeepEncoderConfig]) -> DeepEncoderConfig:
    return cfg or DeepEncoderConfig.deepseek_ocr()


def elem_bytes(dtype) -> int:
    """Bytes per element of a dtype given as a name (``"bf16"``) or a ``torch.dtype``."""
    name = str(dtype).replace("torch.", "")
    return DTYPE_BYTES[name]


# --------------------------------------------------------------------------------------------------
# SAM attention (one call: qkv of B images -> attention output, linear layers excluded)
# --------------------------------------------------------------------------------------------------


def sam_attention_macs(B: int, G: int, heads: int, head_dim: int, window: int) -> float:
    """MACs of one SAM attention call on a ``G x G`` grid: q.k^T + p.v + the decomposed rel-pos terms.

    ``window`` > 0: ``ceil(G/window)^2`` windows of ``window^2`` tokens, each attending within itself
    (padded tokens included, as upstream computes them); ``window`` == 0: one global window of ``G^2``
    tokens. Per head and window of n tokens and side L: ``2 n^2 D`` (scores and values) + ``2 n L D``
    (``rel_h[q, kh] = q.Rh`` for L key rows, same for columns).
    """
    if window > 0:
        n_win = math.ceil(G / window) ** 2
        L = window
    else:
        n_win = 1
        L = G
    n = L * L
    return float(B * n_win * heads * (2 * n * n * head_dim + 2 * n * L * head_dim))


def sam_attention_bytes(B: int, G: int, heads: int, head_dim: int, window: int, elem: int) -> float:
    """Minimum bytes of one call: qkv ``[B,G,G,3C]`` read, output ``[B,G,G,C]`` written, both tables read."""
    C = heads * head_dim
    L = window if window > 0 else G
    return float(elem * (B * G * G * 4 * C + 2 * (2 * L - 1) * head_dim + 3 * C))


def upstream_bias_bytes(B: int, G: int, heads: int, window: int, elem: int) -> float:
    """Size of the ``[B*nW, heads, n, n]`` bias upstream materialises for one call (written, then read)."""
    if window > 0:
        n_win, n = math.ceil(G / window) ** 2, window * window
    else:
        n_win, n = 1, G * G
    return float(elem * B * n_win * heads * n * n)


# --------------------------------------------------------------------------------------------------
# Compressor (neck + net_2 + net_3) and CLIP attention
# --------------------------------------------------------------------------------------------------


def compressor_macs(B: int, G: int, cfg: Optional[DeepEncoderConfig] = None) -> float:
    """neck 1x1 (C -> c1), neck 3x3 (c1 -> c1), net_2 3x3 s2 (c1 -> c3), net_3 3x3 s2 (c3 -> c4)."""
    s = _cfg(cfg).sam
    g1, g2 = compressor_grids(G)
    return float(B * (G * G * s.embed_dim * s.out_chans + G * G * s.out_chans * s.out_chans * 9
                      + g1 * g1 * s.out_chans * s.net2_chans * 9 + g2 * g2 * s.net2_chans * s.net3_chans * 9))


def compressor_bytes(B: int, G: int, elem: int, cfg: Optional[DeepEncoderConfig] = None) -> float:
    """Input ``[B,G,G,C]`` read, the four weights read, tokens ``[B,g*g,c4]`` written (fused floor)."""
    s = _cfg(cfg).sam
    g = token_grid(G)
    w = (s.embed_dim * s.out_chans + s.out_chans ** 2 * 9 + s.out_chans * s.net2_chans * 9
         + s.net2_chans * s.net3_chans * 9 + 4 * s.out_chans)
    return float(elem * (B * G * G * s.embed_dim + w + B * g * g * s.net3_chans))


def clip_attention_macs(B: int, N: int, heads: int, head_dim: int) -> float:
    """q.k^T + p.v over N tokens (CLS included), no bias."""
    return float(B * heads * 2 * N * N * head_dim)


def clip_attention_bytes(B: int, N: int, heads: int, head_dim: int, elem: int) -> float:
    C = heads * head_dim
    return float(elem * B * N * 4 * C)


# --------------------------------------------------------------------------------------------------
# DeepEncoder V2 (DeepSeek-OCR 2): the causal-flow attention and one view end to end
# --------------------------------------------------------------------------------------------------

# Qwen2 stage of DeepEncoder V2 (SPEC_V2.md "Qwen2 layer, exactly")
QWEN2 = {"hidden": 896, "heads": 14, "kv_heads": 2, "head_dim": 64, "mlp": 4864, "layers": 24}
OCR2_NET3 = 896  # net_3 output channels in V2 (1024 in V1)
OCR2_N_EMBED = 1280


def flow_pairs(n: int, dense: bool = False) -> int:
    """(row, key) pairs the V2 mask allows over L = 2n tokens: n*n visual + n*n + n(n+1)/2 query pairs
    (``dense``: all (2n)^2, what upstream's masked SDPA computes)."""
    return (2 * n) ** 2 if dense else 2 * n * n + n * (n + 1) // 2


def flow_attention_macs(B: int, n: int, heads: int = 14, head_dim: int = 64, dense: bool = False) -> float:
    """MACs of one flow-attention call: q.k^T and p.v over the allowed pairs (``dense``: over all L^2)."""
    return float(B * heads * 2 * flow_pairs(n, dense) * head_dim)


def flow_attention_bytes(B: int, n: int, heads: int, kv_heads: int, head_dim: int, elem: int) -> float:
    """Minimum bytes: the fused qkv ``[B, 2n, (H+2KV)D]`` read once, out ``[B, 2n, HD]`` written, the fp32
    cos/sin tables ``[2n, D]`` read once."""
    L = 2 * n
    return float(elem * B * L * ((heads + 2 * kv_heads) * head_dim + heads * head_dim) + 2 * 4 * L * head_dim)


def _flow_dims(cfg) -> Dict[str, int]:
    """Qwen2 stage dims of a :class:`DeepEncoderV2Config` (``QWEN2``'s keys); the real ones for anything else."""
    f = getattr(cfg, "flow", None)
    if f is None:
        return dict(QWEN2)
    return {"hidden": f.hidden_size, "heads": f.num_heads, "kv_heads": f.num_kv_heads, "head_dim": f.head_dim,
            "mlp": f.intermediate_size, "layers": f.num_layers}


def ocr2_view_macs(S: int, cfg=None, dense_attention: bool = True) -> Dict[str, float]:
    """MACs of one DeepEncoder V2 view (S = 1024 global, 768 tile), by SPEC_V2.md's terms.

    SAM + neck + net_2 as V1 at ``G = S/16`` (windows of 14 over the padded grid), net_3 512 -> 896;
    Qwen2: 24 layers over L = 2n tokens (n = (S/64)^2): q/o 896x896, k/v 896x128, MLP 3 x 896x4864, and the
    attention over L^2 pairs (``dense_attention``: what upstream's masked SDPA computes; False: the allowed
    pairs only, what the flow kernel computes); projector 896 -> 1280 over the n query outputs.
    SPEC_V2 "Cost": 1024 view ~ 665 G (SAM 470, Qwen2 195), 768 tile ~ 347 G (SAM 240, Qwen2 107).

    ``cfg``: a :class:`DeepEncoderV2Config` (its own SAM, flow and projector dims: the small test config
    counts its own work), or a V1 :class:`DeepEncoderConfig` / None (its SAM with net_3 -> 896 and the real
    Qwen2 dims).
    """
    import dataclasses

    if getattr(cfg, "flow", None) is not None:
        s, c2, n_embed = cfg.sam, cfg, cfg.n_embed
    else:
        c = _cfg(cfg)
        s = dataclasses.replace(c.sam, net3_chans=OCR2_NET3)
        c2, n_embed = c.replace(sam=s), OCR2_N_EMBED
    G, g = grid_sizes(S, s.patch_size)
    N = G * G
    C = s.embed_dim
    n_global = sum(1 for i in range(s.depth) if i in s.global_attn_indexes)
    sam = (s.depth * N * (3 * C * C + C * C + 2 * C * s.mlp_dim)
           + n_global * sam_attention_macs(1, G, s.num_heads, s.head_dim, 0)
           + (s.depth - n_global) * sam_attention_macs(1, G, s.num_heads, s.head_dim, s.window_size)
           + N * C * s.in_chans * s.patch_size ** 2 + compressor_macs(1, G, c2))
    q = _flow_dims(cfg)
    n = g * g
    L = 2 * n
    kv = q["kv_heads"] * q["head_dim"]
    qwen_linear = q["layers"] * L * (2 * q["hidden"] ** 2 + 2 * q["hidden"] * kv + 3 * q["hidden"] * q["mlp"])
    qwen_attn = q["layers"] * flow_attention_macs(1, n, q["heads"], q["head_dim"], dense=dense_attention)
    out = {"sam": float(sam), "qwen2_linear": float(qwen_linear), "qwen2_attn": float(qwen_attn),
           "projector": float(n * s.net3_chans * n_embed)}
    out["total"] = sum(out.values())
    return out


def ocr2_view_flops(S: int, cfg=None) -> float:
    """FLOPs (2 x MACs) of one OCR-2 view of side ``S`` (1024 global, 768 crop)."""
    return 2.0 * ocr2_view_macs(S, cfg)["total"]


def ocr2_page_flops(crops: int, global_size: int = 1024, tile_size: int = 768, cfg=None) -> float:
    """FLOPs of one OCR-2 Gundam page: the global view plus ``crops`` crops (3x2 grid: 6 crops ~ 5.5 TFLOP)."""
    return ocr2_view_flops(global_size, cfg) + crops * ocr2_view_flops(tile_size, cfg)


# --------------------------------------------------------------------------------------------------
# One image end to end
# --------------------------------------------------------------------------------------------------


def image_macs(S: int, cfg: Optional[DeepEncoderConfig] = None) -> Dict[str, float]:
    """MACs of one ``S x S`` view through the whole encoder, by the cost budget's terms (see the module doc)."""
    c = _cfg(cfg)
    s, k = c.sam, c.clip
    G, g = grid_sizes(S, s.patch_size)
    N = G * G
    C = s.embed_dim
    n_global = sum(1 for i in range(s.depth) if i in s.global_attn_indexes)
    n_window = s.depth - n_global
    sam_linear = s.depth * N * (3 * C * C + C * C + 2 * C * s.mlp_dim)
    glob = n_global * sam_attention_macs(1, G, s.num_heads, s.head_dim, 0)
    win = n_window * sam_attention_macs(1, G, s.num_heads, s.head_dim, s.window_size)
    convs = (N * C * s.in_chans * s.patch_size ** 2) + compressor_macs(1, G, c)
    n = g * g + 1
    H = k.hidden_size
    clip = k.num_layers * (n * (4 * H * H + 2 * H * k.ffn_hidden_size)) \
        + k.num_layers * clip_attention_macs(1, n, k.num_heads, k.head_dim)
    proj = g * g * c.projector_in * c.n_embed
    out = {"sam_linear": float(sam_linear), "sam_global_attn": float(glob), "sam_window_attn": float(win),
           "clip": float(clip), "convs": float(convs), "projector": float(proj)}
    out["total"] = sum(out.values())
    return out


def image_flops(S: int, cfg: Optional[DeepEncoderConfig] = None) -> float:
    """FLOPs (2 x MACs) of one ``S x S`` view."""
    return 2.0 * image_macs(S, cfg)["total"]


def gundam_flops(tiles: Tuple[int, int] = (2, 3), global_size: int = 1024, tile_size: int = 640,
                 cfg: Optional[DeepEncoderConfig] = None) -> float:
    """FLOPs of one Gundam page: the global view plus ``across x down`` tiles."""
    return image_flops(global_size, cfg) + tiles[0] * tiles[1] * image_flops(tile_size, cfg)


def param_count(cfg: Optional[DeepEncoderConfig] = None) -> int:
    """Encoder parameters (the bytes floor of a forward reads each once)."""
    import torch

    from deepencoder.models import reference_model

    with torch.device("meta"):
        m = reference_model(_cfg(cfg))  # the config's family: V1 or V2
    return sum(p.numel() for p in m.parameters())


def image_bytes(S: int, batch: int, elem: int, n_params: int, n_embed: int = 1280, patch: int = 16,
                views_per_item: int = 1) -> float:
    """Minimum bytes of one forward of ``batch`` views: weights once, pixels in, tokens out."""
    _, g = grid_sizes(S, patch)
    return float(elem * (n_params + batch * views_per_item * (3 * S * S + g * g * n_embed)))


def summary(S: int = 1024, cfg: Optional[DeepEncoderConfig] = None) -> str:
    """Human-readable per-term table in G MACs (``python -m bench.flops``)."""
    m = image_macs(S, cfg)
    lines = [f"S={S}: " + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in m.items()),
             f"  = {2 * m['total'] / 1e12:.3f} TFLOP per image"]
    return "\n".join(lines)


if __name__ == "__main__":
    for S in (512, 640, 1024, 1280):
        print(summary(S))
    print(f"gundam 2x3: {gundam_flops() / 1e12:.3f} TFLOP per page")
    for S in (1024, 768):
        m = ocr2_view_macs(S)
        print(f"OCR-2 S={S}: " + ", ".join(f"{k} {v / 1e9:.1f} G" for k, v in m.items()))

"""The reference DeepEncoder: upstream DeepSeek-OCR's encoder reproduced term for term, in plain PyTorch.

This is the correctness oracle for every kernel and for the fast path. It follows the public release
(vLLM folder ``deepencoder/sam_vary_sdpa.py``, ``clip_sdpa.py``, ``build_linear.py`` and
``deepseek_ocr.py``; the Hugging Face remote code holds the same encoder), including its costs: the SAM
attention materialises the full ``[B, heads, N, N]`` relative-position bias and hands it to SDPA, window
blocks pad with zeros and attend to the padded tokens unmasked, LayerNorm2d runs in the activation dtype.

Module names and parameter shapes match the checkpoint, so ``state_dict()`` keys equal the DeepSeek-OCR
safetensors keys minus the ``model.`` prefix.

Data flow (``../shared/SPEC.md``)::

    pixels [B,3,S,S] -> sam_model -> F [B,1024,g,g]
    vision_model(pixels, F) -> [B,1+g^2,1024]
    cat(CLIP[:,1:], F.flatten(2).T) -> [B,g^2,2048] -> projector -> [B,g^2,1280]
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import CLIPConfig, DeepEncoderConfig, SAMConfig

# --------------------------------------------------------------------------------------------------
# SAM-B (ViTDet-style image encoder with decomposed relative positions)
# --------------------------------------------------------------------------------------------------


def resize_sam_pos_embed(pos_embed: torch.Tensor, G: int) -> torch.Tensor:
    """``[1, P, P, C]`` -> ``[1, G, G, C]``: bicubic, antialias=True, align_corners=False, in float32.

    Upstream ``get_abs_pos`` in sam_vary_sdpa.py; returns the table itself when no resize is needed.
    """
    if pos_embed.shape[1] == G:
        return pos_embed
    dtype = pos_embed.dtype
    x = pos_embed.permute(0, 3, 1, 2).to(torch.float32)
    x = F.interpolate(x, size=(G, G), mode="bicubic", antialias=True, align_corners=False).to(dtype)
    return x.permute(0, 2, 3, 1)


def resize_rel_pos(rel_pos: torch.Tensor, L: int) -> torch.Tensor:
    """``[2*L0-1, C]`` -> ``[2*L-1, C]`` by linear interpolation (align_corners=False) in float32.

    Upstream ``get_rel_pos``; returns the table itself when the length already matches.
    """
    n = 2 * L - 1
    if rel_pos.shape[0] == n:
        return rel_pos
    dtype = rel_pos.dtype
    r = rel_pos.to(torch.float32).reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1)
    r = F.interpolate(r, size=n, mode="linear").to(dtype)
    return r.reshape(-1, n).permute(1, 0)


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Gather ``[q_size, k_size, C]`` relative-position rows (upstream ``get_rel_pos``)."""
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    rel_pos_resized = resize_rel_pos(rel_pos, max(q_size, k_size))
    assert rel_pos_resized.shape[0] == max_rel_dist
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def add_decomposed_rel_pos(q, rel_pos_h, rel_pos_w, q_size, k_size):
    """Upstream ``add_decomposed_rel_pos``: returns ``rel_h [B, N, kh, 1]`` and ``rel_w [B, N, 1, kw]``."""
    q_h, q_w = q_size
    k_h, k_w = k_size
    Rh = get_rel_pos(q_h, k_h, rel_pos_h)
    Rw = get_rel_pos(q_w, k_w, rel_pos_w)
    B, _, dim = q.shape
    r_q = q.reshape(B, q_h, q_w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, Rh)
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, Rw)
    rel_h = rel_h.unsqueeze(-1).reshape(B, q_h * q_w, k_h, 1)
    rel_w = rel_w.unsqueeze(-2).reshape(B, q_h * q_w, 1, k_w)
    return rel_h, rel_w


def window_partition(x: torch.Tensor, window_size: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B*nW, ws, ws, C]``, zero-padding bottom/right to a multiple of ws."""
    B, H, W, C = x.shape
    pad_h = (window_size - H % window_size) % window_size
    pad_w = (window_size - W % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    Hp, Wp = H + pad_h, W + pad_w
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    windows = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, window_size, window_size, C)
    return windows, (Hp, Wp)


def window_unpartition(windows, window_size, pad_hw, hw):
    """Inverse of :func:`window_partition`; drops the padded positions."""
    Hp, Wp = pad_hw
    H, W = hw
    B = windows.shape[0] // (Hp * Wp // window_size // window_size)
    x = windows.view(B, Hp // window_size, Wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).contiguous().view(B, Hp, Wp, -1)
    if Hp > H or Wp > W:
        x = x[:, :H, :W, :].contiguous()
    return x


class SAMAttention(nn.Module):
    """Multi-head attention with decomposed rel-pos; keys ``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``."""

    def __init__(self, dim: int, num_heads: int, rel_len: int):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_len - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_len - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        rel_h, rel_w = add_decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (H, W), (H, W))
        q = q.view(B, self.num_heads, H * W, -1)
        k = k.view(B, self.num_heads, H * W, -1)
        v = v.view(B, self.num_heads, H * W, -1)
        rel_h = rel_h.view(B, self.num_heads, rel_h.size(1), rel_h.size(2), rel_h.size(3))
        rel_w = rel_w.view(B, self.num_heads, rel_w.size(1), rel_w.size(2), rel_w.size(3))
        attn_bias = (rel_h + rel_w).view(B, self.num_heads, rel_h.size(2), rel_h.size(3) * rel_w.size(4))
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias)
        x = x.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)


class MLPBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, dim)
        self.act = nn.GELU()  # exact erf GELU

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class SAMBlock(nn.Module):
    def __init__(self, cfg: SAMConfig, window_size: int):
        super().__init__()
        dim = cfg.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.attn = SAMAttention(dim, cfg.num_heads, window_size if window_size > 0 else cfg.pos_grid)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = MLPBlock(dim, cfg.mlp_dim)
        self.window_size = window_size

    def forward(self, x):
        shortcut = x
        x = self.norm1(x)
        if self.window_size > 0:
            H, W = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, self.window_size)
        x = self.attn(x)
        if self.window_size > 0:
            x = window_unpartition(x, self.window_size, pad_hw, (H, W))
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """Channel LayerNorm on NCHW, computed in the activation dtype (no float32 upcast), as upstream."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SAMConfig):
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x):
        return self.proj(x).permute(0, 2, 3, 1)  # B C H W -> B H W C


class SAMEncoder(nn.Module):
    """SAM-B image encoder + neck + net_2 + net_3 (the 16x compressor). ``[B,3,S,S] -> [B,1024,g,g]``."""

    def __init__(self, cfg: SAMConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.pos_grid, cfg.pos_grid, cfg.embed_dim))
        self.blocks = nn.ModuleList(
            SAMBlock(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size) for i in range(cfg.depth)
        )
        c = cfg.out_chans
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, c, kernel_size=1, bias=False),
            LayerNorm2d(c, eps=cfg.norm_eps),
            nn.Conv2d(c, c, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(c, eps=cfg.norm_eps),
        )
        self.net_2 = nn.Conv2d(c, cfg.net2_chans, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(cfg.net2_chans, cfg.net3_chans, kernel_size=3, stride=2, padding=1, bias=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        return x + resize_sam_pos_embed(self.pos_embed, x.size(1))

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,G,G,C]`` channels-last block output -> ``[B,1024,g,g]``."""
        x = self.neck(x.permute(0, 3, 1, 2))
        return self.net_3(self.net_2(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.compress(x)


# --------------------------------------------------------------------------------------------------
# CLIP-L fed with SAM features
# --------------------------------------------------------------------------------------------------


def resize_clip_pos_embed(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``[P^2+1, C]`` -> ``[1, g^2+1, C]``: CLS row kept, grid resized bicubic (antialias) in float32.

    Upstream ``get_abs_pos`` in clip_sdpa.py (``g = int(sqrt(num_tokens))``).
    """
    dim = pos.size(-1)
    cls_token, old = pos[:1], pos[1:]
    src = int(math.sqrt(pos.shape[0] - 1))
    tgt = int(math.sqrt(num_tokens))
    if src == tgt:
        return pos.unsqueeze(0)
    dtype = pos.dtype
    old = old.view(1, src, src, dim).permute(0, 3, 1, 2).contiguous().to(torch.float32)
    new = F.interpolate(old, size=(tgt, tgt), mode="bicubic", antialias=True, align_corners=False).to(dtype)
    new = new.permute(0, 2, 3, 1).reshape(tgt * tgt, dim)
    return torch.cat([cls_token, new], dim=0).view(1, tgt * tgt + 1, dim)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.hidden_size))
        self.patch_embedding = nn.Conv2d(3, cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size,
                                         bias=False)  # never run; its weight is in the checkpoint
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.hidden_size)
        self.register_buffer("position_ids", torch.arange(cfg.num_positions).expand((1, -1)), persistent=False)

    def forward(self, pixel_values: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        batch_size = pixel_values.shape[0]
        patch_embeds = patch_embeds.flatten(2).transpose(1, 2)
        class_embeds = self.class_embedding.expand(batch_size, 1, -1)
        emb = torch.cat([class_embeds, patch_embeds], dim=1)
        return emb + resize_clip_pos_embed(self.position_embedding(self.position_ids)[0], emb.size(1))


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.head_dim = cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size * 3, bias=True)
        self.out_proj = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x):
        bsz, seqlen, _ = x.shape
        xqkv = self.qkv_proj(x).view(bsz, seqlen, 3, self.num_heads, self.head_dim)
        xq, xk, xv = (t.squeeze(2).permute(0, 2, 1, 3) for t in torch.split(xqkv, 1, dim=2))
        out = F.scaled_dot_product_attention(xq, xk, xv, attn_mask=None)
        out = out.permute(0, 2, 1, 3).reshape(bsz, seqlen, -1)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_hidden_size)
        self.fc2 = nn.Linear(cfg.ffn_hidden_size, cfg.hidden_size)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class CLIPLayer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.self_attn = CLIPAttention(cfg)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layernorm_eps)

    def forward(self, x):
        h = x + self.self_attn(self.layer_norm1(x))
        return h + self.mlp(self.layer_norm2(h))


class CLIPTransformer(nn.Module):
    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPLayer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class CLIPVision(nn.Module):
    """CLIP-L over SAM features: ``(pixels, F [B,1024,g,g]) -> [B, 1+g^2, 1024]`` (no final LayerNorm)."""

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = CLIPEmbeddings(cfg)
        self.transformer = CLIPTransformer(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.pre_layernorm_eps)

    def forward(self, x: torch.Tensor, patch_embeds: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(x, patch_embeds)))


class LinearProjector(nn.Module):
    """Upstream ``MlpProjector(projector_type='linear')``: key ``projector.layers``."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.layers = nn.Linear(in_dim, out_dim)

    def forward(self, x):
        return self.layers(x)


# --------------------------------------------------------------------------------------------------
# The whole encoder and the LLM token layout
# --------------------------------------------------------------------------------------------------


class DeepEncoderReference(nn.Module):
    """The reference encoder. Attributes and parameters named as in the DeepSeek-OCR checkpoint."""

    def __init__(self, cfg: Optional[DeepEncoderConfig] = None):
        super().__init__()
        cfg = cfg or DeepEncoderConfig.deepseek_ocr()
        cfg.validate()
        self.cfg = cfg
        self.sam_model = SAMEncoder(cfg.sam)
        self.vision_model = CLIPVision(cfg.clip)
        self.projector = LinearProjector(cfg.projector_in, cfg.n_embed)
        self.image_newline = nn.Parameter(torch.zeros(cfg.n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.n_embed))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B,3,S,S]`` -> projected vision tokens ``[B, g^2, n_embed]`` (no newline/separator)."""
        check_pixels(pixels, self.cfg)
        feats = self.sam_model(pixels)
        clip_out = self.vision_model(pixels, feats)
        features = torch.cat((clip_out[:, 1:], feats.flatten(2).permute(0, 2, 1)), dim=-1)
        return self.projector(features)


def check_pixels(pixels: torch.Tensor, cfg: DeepEncoderConfig, param_dtype: Optional[torch.dtype] = None):
    """Clear errors for bad pixel tensors (shape, dtype, size) before anything reaches a kernel."""
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"pixels must be a torch.Tensor [B,3,S,S], got {type(pixels).__name__}")
    if pixels.dim() != 4 or pixels.shape[1] != cfg.sam.in_chans:
        raise ValueError(f"pixels must have shape [B, {cfg.sam.in_chans}, S, S], got {list(pixels.shape)}")
    if pixels.shape[0] == 0:
        raise ValueError("pixels has batch size 0")
    if not pixels.is_floating_point():
        raise TypeError(f"pixels must be a floating tensor normalised to [-1, 1], got dtype {pixels.dtype}; "
                        "use deepencoder.preprocess to turn uint8 images into pixels")
    S, S2 = pixels.shape[-2:]
    if S != S2:
        raise ValueError(f"pixels must be square, got {S}x{S2}")
    p = cfg.sam.patch_size
    if S % (4 * p):
        raise ValueError(f"image side {S} must be a multiple of {4 * p} (patch {p} x two stride-2 convs)")
    if param_dtype is not None and pixels.dtype != param_dtype:
        raise TypeError(f"pixels dtype {pixels.dtype} does not match the model dtype {param_dtype}")


def add_newlines(grid_tokens: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
    """``[h, w, C]`` -> ``[h*(w+1), C]``: ``image_newline`` appended after every row."""
    h, _, C = grid_tokens.shape
    return torch.cat([grid_tokens, newline[None, None, :].expand(h, 1, C)], dim=1).reshape(-1, C)


def layout_tokens(global_tokens: torch.Tensor, image_newline: torch.Tensor, view_seperator: torch.Tensor,
                  tile_tokens: Optional[torch.Tensor] = None, tiles: Tuple[int, int] = (1, 1)) -> torch.Tensor:
    """Upstream ``_pixel_values_to_embedding`` layout for one image.

    global_tokens ``[g^2, C]``; tile_tokens ``[cols*rows, t^2, C]`` (row-major tiles) or None;
    tiles = (cols across, rows down). Returns ``[T, C]``: stitched tiles with newlines (if any), then
    the global view with newlines, then ``view_seperator``.
    """
    hw, C = global_tokens.shape
    h = int(math.isqrt(hw))
    parts = []
    cols, rows = tiles
    if tile_tokens is not None and (cols > 1 or rows > 1):
        n, hw2, C2 = tile_tokens.shape
        if n != cols * rows:
            raise ValueError(f"got {n} tiles for a {cols}x{rows} grid")
        t = int(math.isqrt(hw2))
        local = tile_tokens.view(rows, cols, t, t, C2).permute(0, 2, 1, 3, 4).reshape(rows * t, cols * t, C2)
        parts.append(add_newlines(local, image_newline))
    parts.append(add_newlines(global_tokens.view(h, h, C), image_newline))
    parts.append(view_seperator[None, :])
    return torch.cat(parts, dim=0)
